#!/usr/bin/env bash
# The camera feed into the gate: rpicam-vid (Raspberry Pi OS Bookworm; libcamera-vid on
# Bullseye takes the same flags) writes MJPEG to stdout, ebm-gate reads it from stdin and
# writes one JSON line per EVERY-th frame, an event line whenever the debounced state changes,
# a summary line every SUMMARY_EVERY seconds and one at the end; every line carries its time.
# Settings come from the environment (see ebm-gate.service):
#
#   BUNDLE    the model bundle                        (default /opt/ebm-gate/cifar10-airnet)
#   EBM_GATE  the ebm-gate binary                     (default /opt/ebm-gate/ebm-gate)
#   CAMERA    the command that writes frames          (default: rpicam-vid, 640x480 MJPEG, 15 fps)
#   FORMAT    what CAMERA writes: mjpeg, or a raw format with SIZE (e.g. i420 + 640x480)
#   SIZE      WxH of raw frames
#   EVERY     print every N-th frame line             (default 15: one a second at 15 fps)
#   SUMMARY_EVERY  seconds between heartbeat summaries (default 60; 0 = only at the end)
#   SAVE_DIR  keep rejected frames here as PNG        (default: none)
#   EXTRA     more flags for `ebm-gate stream` (e.g. "--window 15 --enter 10 --exit 3")
#   MQTT      publish the state and events to this broker: mqtt://HOST or mqtts://USER@HOST
#   MQTT_TOPIC     the topic prefix                   (default ebm-gate/<hostname>)
#   MQTT_CA   PEM file of the CA of a TLS broker      (default: the system's)
#   The broker password: systemd's credential `mqtt-password` (LoadCredential= in the unit),
#   else EBM_GATE_MQTT_PASSWORD.
#
# Raw YUV instead of MJPEG (no JPEG decoding on the Pi's CPU; use a width that is a multiple
# of 64 so rpicam-vid does not pad rows):
#   CAMERA="rpicam-vid -t 0 -n --codec yuv420 --width 640 --height 480 --framerate 15 -o -" \
#   FORMAT=i420 SIZE=640x480 ./run-camera.sh
set -uo pipefail

BUNDLE=${BUNDLE:-/opt/ebm-gate/cifar10-airnet}
EBM_GATE=${EBM_GATE:-/opt/ebm-gate/ebm-gate}
CAMERA=${CAMERA:-rpicam-vid -t 0 -n --codec mjpeg --width 640 --height 480 --framerate 15 -o -}
FORMAT=${FORMAT:-mjpeg}
EVERY=${EVERY:-15}
SUMMARY_EVERY=${SUMMARY_EVERY:-60}

args=(stream "$BUNDLE" --format "$FORMAT" --every "$EVERY" --summary-every "$SUMMARY_EVERY")
[[ -n ${SIZE:-} ]] && args+=(--size "$SIZE")
# Evidence survives restarts (files named by time): up to 500 frames a run, the folder under
# 1 GiB (the oldest removed).
[[ -n ${SAVE_DIR:-} ]] && args+=(--save-rejected "$SAVE_DIR" --max-saved 500 --max-saved-mib 1024)
if [[ -n ${MQTT:-} ]]; then
  args+=(--mqtt "$MQTT")
  [[ -n ${MQTT_TOPIC:-} ]] && args+=(--mqtt-topic "$MQTT_TOPIC")
  [[ -n ${MQTT_CA:-} ]] && args+=(--mqtt-ca "$MQTT_CA")
  if [[ -n ${CREDENTIALS_DIRECTORY:-} && -r $CREDENTIALS_DIRECTORY/mqtt-password ]]; then
    args+=(--mqtt-password-file "$CREDENTIALS_DIRECTORY/mqtt-password")
  fi
fi
# Under systemd's watchdog (WatchdogSec= in the unit), the gate pings it, not this script:
# WATCHDOG_PID names this script, and a gate that sees another PID there would not ping.
unset WATCHDOG_PID
# shellcheck disable=SC2206 # EXTRA and the two commands are word-split on purpose
extra=(${EXTRA:-})

# shellcheck disable=SC2086
$CAMERA | $EBM_GATE "${args[@]}" "${extra[@]}"
# ebm-gate's exit status: 0 end of input, 1 the input had corrupt/torn frames, 2 could not
# start, 130/143 stopped by SIGINT/SIGTERM, 141 its stdout was closed.
status=("${PIPESTATUS[@]}")
# The gate's status, unless it merely saw its input end because the camera command failed (not
# installed, no camera, unplugged): then the camera's, so that a service restarts.
if [[ ${status[1]} -eq 0 && ${status[0]} -ne 0 ]]; then
  echo "run-camera.sh: the camera command failed (exit ${status[0]})" >&2
  exit "${status[0]}"
fi
exit "${status[1]}"
