#!/usr/bin/env bash
# A GStreamer pipeline into the gate on an NVIDIA Jetson (JetPack 5/6, L4T). The camera,
# scaling and colour conversion run on the Jetson's ISP and VIC engines (NVMM buffers); the
# pipeline hands ebm-gate raw I420 frames on stdout (fdsink), so the CPU only resizes
# 640x480 -> 32x32 and runs the model. See README.md for what runs where.
#
#   SOURCE=csi ./run-camera.sh                  # a CSI camera through nvarguscamerasrc (default)
#   SOURCE=usb DEVICE=/dev/video0 ./run-camera.sh   # a USB (UVC) camera sending MJPEG,
#                                                  # decoded by nvjpegdec (off the CPU)
#   SOURCE=usb-mjpeg ./run-camera.sh            # the same camera, JPEG decoded by ebm-gate on the CPU
#
#   BUNDLE, EBM_GATE, EVERY, EXTRA: as in ../raspberry-pi/run-camera.sh
set -uo pipefail

BUNDLE=${BUNDLE:-/opt/ebm-gate/cifar10-airnet}
EBM_GATE=${EBM_GATE:-/opt/ebm-gate/ebm-gate}
SOURCE=${SOURCE:-csi}
DEVICE=${DEVICE:-/dev/video0}
EVERY=${EVERY:-30}
W=640
H=480

# gst-launch-1.0 writes its own messages to stdout unless -q: keep -q, or they land in the
# frame stream.
case "$SOURCE" in
  csi)
    gst=(gst-launch-1.0 -q nvarguscamerasrc sensor-id=0
         ! "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1"
         ! nvvidconv ! "video/x-raw,format=I420,width=$W,height=$H"
         ! fdsink fd=1 sync=false)
    fmt=(--format i420 --size "${W}x${H}") ;;
  usb)
    gst=(gst-launch-1.0 -q v4l2src device="$DEVICE"
         ! "image/jpeg,width=$W,height=$H,framerate=30/1" ! nvjpegdec
         ! nvvidconv ! "video/x-raw,format=I420,width=$W,height=$H"
         ! fdsink fd=1 sync=false)
    fmt=(--format i420 --size "${W}x${H}") ;;
  usb-mjpeg)
    gst=(gst-launch-1.0 -q v4l2src device="$DEVICE"
         ! "image/jpeg,width=$W,height=$H,framerate=30/1" ! fdsink fd=1 sync=false)
    fmt=(--format mjpeg) ;;
  *) echo "SOURCE must be csi, usb or usb-mjpeg, got $SOURCE" >&2; exit 2 ;;
esac

# shellcheck disable=SC2206 # EXTRA and EBM_GATE are word-split on purpose
extra=(${EXTRA:-})
# shellcheck disable=SC2086
"${gst[@]}" | $EBM_GATE stream "$BUNDLE" "${fmt[@]}" --every "$EVERY" "${extra[@]}"
status=("${PIPESTATUS[@]}")
# The gate's status, unless it merely saw its input end because the camera command failed (not
# installed, no camera, unplugged): then the camera's, so that a service restarts.
if [[ ${status[1]} -eq 0 && ${status[0]} -ne 0 ]]; then
  echo "run-camera.sh: the camera command failed (exit ${status[0]})" >&2
  exit "${status[0]}"
fi
exit "${status[1]}"
