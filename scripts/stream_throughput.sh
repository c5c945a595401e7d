#!/usr/bin/env bash
# Throughput, latency and peak memory of `ebm-gate stream` on 640x480 frames into the reference
# model: the figures of the README's "Gating a camera feed".
#
#   scripts/stream_throughput.sh            # FFMPEG=/path/to/ffmpeg if it is not on PATH
#   THREADS=2 scripts/stream_throughput.sh  # the model on 2 threads (`stream --threads 2`)
#   BIN=path/to/ebm-gate ...                 # another build than target/release/ebm-gate
#
# Needs ffmpeg (to make the feeds), ../shared/data/cifar10/test, python3, GNU time
# (/usr/bin/time), and builds the release binary if it is missing. Run it on a quiet machine.
#   1. Feeds: N (2000) CIFAR-10 test pictures (every 5th), scaled to 640x480 by ffmpeg, as
#      rgb24 and as MJPEG (q 3), and at 32x32 as they are (no resize: the model's own rate).
#   2. Each feed read from a file as fast as it goes, at --batch 1, 4, 32: frames/s and peak RSS.
#      (Latency here is mostly queueing: the reader runs ahead by the channel's depth.)
#   3. A live feed at 30 fps (scripts/pace_frames.py) of rgb24 and MJPEG: latency p50 / p99
#      from the frame's last byte read to its verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
FFMPEG=${FFMPEG:-ffmpeg}
N=${N:-2000}
LIVE=${LIVE:-900}
THREADS=${THREADS:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=${BIN:-target/release/ebm-gate}
[[ -x $bin ]] || cargo build --release
data=../shared/data/cifar10/test
[[ -d $data ]] || { echo "needs $data" >&2; exit 2; }

mkdir "$work/links"
i=0
for f in $(find "$data" -name '*.jpg' | sort | awk 'NR % 5 == 0' | head -n "$N"); do
  ln -s "$(realpath "$f")" "$work/links/$(printf %05d $i).jpg"
  i=$((i + 1))
done
ff() { "$FFMPEG" -hide_banner -loglevel error -i "$work/links/%05d.jpg" "$@"; }
ff -vf scale=640:480 -f rawvideo -pix_fmt rgb24 -y "$work/feed.rgb"
ff -vf scale=640:480 -c:v mjpeg -q:v 3 -f mjpeg -y "$work/feed.mjpeg"
ff -f rawvideo -pix_fmt rgb24 -y "$work/feed32.rgb"

echo "$(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, $N frames, --threads $THREADS"
summary() { tail -n 1 | sed 's/.*saved; //'; }
for feed in "rgb24 640x480:--format rgb24 --size 640x480:feed.rgb" "mjpeg 640x480:--format mjpeg:feed.mjpeg" \
            "rgb24 32x32 (no resize):--format rgb24 --size 32x32:feed32.rgb"; do
  IFS=: read -r name flags file <<<"$feed"
  for batch in 1 4 32; do
    # shellcheck disable=SC2086
    out=$({ /usr/bin/time -f 'peak RSS %M KB' "$bin" stream models/cifar10-airnet $flags --input "$work/$file" \
            --every 1000000000 --batch "$batch" --threads "$THREADS" >/dev/null; } 2>&1)
    echo "file, $name, batch $batch: $(grep '^stream: .* frames (' <<<"$out" | summary) $(grep 'peak RSS' <<<"$out")"
  done
done
echo "live 30 fps, rgb24 640x480: $(python3 scripts/pace_frames.py "$work/feed.rgb" 30 "$LIVE" --raw 921600 |
  "$bin" stream models/cifar10-airnet --format rgb24 --size 640x480 --every 1000000000 --threads "$THREADS" 2>&1 >/dev/null | summary)"
echo "live 30 fps, mjpeg 640x480: $(python3 scripts/pace_frames.py "$work/feed.mjpeg" 30 "$LIVE" --mjpeg |
  "$bin" stream models/cifar10-airnet --format mjpeg --every 1000000000 --threads "$THREADS" 2>&1 >/dev/null | summary)"
