#!/usr/bin/env bash
# Cross-compiles ebm-gate for 64-bit Raspberry Pi OS (aarch64-unknown-linux-gnu) on a
# Debian/Ubuntu x86_64 host, and checks the binary under qemu-user on the shipped samples.
#
#   firmware-examples/raspberry-pi/cross-build.sh [--features v4l2]
#
# Host packages: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user (Debian/Ubuntu).
# The binary lands in target/aarch64-unknown-linux-gnu/release/ebm-gate.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if ((${#missing[@]})); then
  echo "missing host packages: sudo apt-get install -y ${missing[*]}" >&2
  exit 2
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu

# The linker is set here rather than in .cargo/config.toml, so native builds on the Pi itself
# are not affected.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
cargo build --release --target aarch64-unknown-linux-gnu "$@"
bin=target/aarch64-unknown-linux-gnu/release/ebm-gate
file "$bin" 2>/dev/null || true

# Smoke test under emulation (timings under qemu mean nothing): the samples as an MJPEG stream.
for f in models/cifar10-airnet/samples/*.jpg; do cat "$f" "$f" "$f"; done |
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" stream models/cifar10-airnet --format mjpeg
echo "built $bin"
