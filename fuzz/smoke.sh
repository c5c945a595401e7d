#!/usr/bin/env bash
# Fuzz smoke runs: builds the cargo-fuzz targets (nightly Rust, AddressSanitizer; the library's
# `decode` feature, without the ONNX runtime) and runs each for SECS seconds (default 30) from
# seed inputs made here from files already in the repository (sample frames, the bad-input
# corpus, gate.json files, and a replay buffer, IDX files and an MJPEG stream written below), so
# no binary seed corpus is committed. A crash, a leak, an out-of-memory (past -rss_limit_mb) or a
# timeout fails the run (at the first failing target); libFuzzer leaves the input under
# fuzz/artifacts/<target>/.
#
#   fuzz/smoke.sh [SECS] [TARGET...]        e.g. fuzz/smoke.sh 600 decode_image
#
# FUZZ_TARGET_DIR=DIR builds there instead of cargo's default (fuzz/target, or $CARGO_TARGET_DIR
# when set; the artefacts land under its x86_64-unknown-linux-gnu/ folder either way).
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`); .ci/run installs
# both when missing. New inputs found go to a temporary corpus, not into the repository.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(mjpeg_split raw_convert decode_image idx_read gate_json replay_buffer)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seeds=$work/seeds
mkdir -p "$seeds"/{mjpeg_split,raw_convert,decode_image,idx_read,gate_json,replay_buffer}
repo=..
samples=$repo/models/cifar10-airnet/samples
bad=$repo/tests/data/bad

# decode_image: small frames of every kind the repository has, and the bad-input corpus.
cp "$repo"/tests/data/frames/0{0,3,9}_*.png "$samples"/{rocket.jpg,noise.png,flat_gray.png} "$seeds"/decode_image/
for f in "$bad"/*; do [[ $f == *.json || $f == *idx3-ubyte ]] || cp "$f" "$seeds"/decode_image/; done

# mjpeg_split: two JPEGs with garbage between, and a cut one at the end.
{ cat "$samples"/rocket.jpg; printf 'garbage\xff\x00'; cat "$samples"/rocket.jpg; head -c 2000 "$samples"/rocket.jpg; } \
  >"$seeds"/mjpeg_split/stream.mjpeg
cp "$bad"/jpeg_no_scan_data.jpg "$seeds"/mjpeg_split/

# raw_convert: 6 layout bytes (format, width, height, stride, plane rows, YUV flags), then pixels.
for fmt in 0 1 2 3 4 5; do
  { printf "\\x0$fmt\\x0f\\x0b\\x00\\x00\\x00"; head -c 2000 "$samples"/noise.png; } >"$seeds"/raw_convert/fmt$fmt
  { printf "\\x0$fmt\\x10\\x0c\\x1a\\x03\\x03"; head -c 2000 "$samples"/noise.png; } >"$seeds"/raw_convert/padded$fmt
done

# idx_read: a flag byte (1 = gzip), then an IDX file: a valid 3 x 4 x 4 one, plain and gzip,
# and the bad-input corpus's IDX files.
idx() { printf '\x00\x00\x08\x03\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x04'; head -c 48 "$samples"/noise.png; }
{ printf '\x00'; idx; } >"$seeds"/idx_read/valid
{ printf '\x01'; idx | gzip -c; } >"$seeds"/idx_read/valid_gz
for f in "$bad"/*idx3-ubyte; do { printf '\x00'; cat "$f"; } >"$seeds"/idx_read/"$(basename "$f")"; done

# gate_json: the bundles' own files.
cp "$repo"/models/digits-mlp/gate.json "$seeds"/gate_json/digits.json
cp "$repo"/tests/data/tiny_fixed_batch4.json "$seeds"/gate_json/tiny.json

# replay_buffer: a valid 2-sample buffer of [1, 2, 2] (magic, header length, JSON header, f32s).
header='{"format_version":1,"shape":[1,2,2],"pixel_range":[0.0,1.0],"capacity":2,"reinit_prob":0.05,"num_classes":2,"model_sha256":null,"draws":0}'
{
  printf 'EBMRBUF\x01'
  printf "$(printf '\\x%02x\\x%02x\\x00\\x00' $((${#header} % 256)) $((${#header} / 256)))"
  printf '%s' "$header"
  for _ in 1 2 3 4 5 6 7 8; do printf '\x00\x00\x00\x3f'; done # 0.5f32
} >"$seeds"/replay_buffer/valid.bin

tdir=()
[[ -n ${FUZZ_TARGET_DIR:-} ]] && tdir=(--target-dir "$FUZZ_TARGET_DIR")
cargo +nightly fuzz build -O "${tdir[@]}"
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t"
  printf '\n--> %s, %s s\n' "$t" "$secs"
  status=0
  cargo +nightly fuzz run -O "${tdir[@]}" "$t" "$work/corpus/$t" "$seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$work/$t.log" 2>&1 || status=$?
  if ((status)); then
    # libFuzzer's report (or cargo's error, when the run did not start) is at the end of the log.
    tail -n 40 "$work/$t.log" >&2
    echo "fuzz target $t failed (cargo fuzz exit $status); a failing input, if the fuzzer found one, is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$work/$t.log" || true
done
echo "fuzz smoke runs: ${#targets[@]} target(s), ${secs} s each, no failure"
