#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetches the real QEMU builds
# (ci/fetch-qemu.sh, cached under .cache/qemu), then runs every test of the
# workspace with the real-QEMU trials switched on: each golden fixture is
# replayed against mock-qemu (in process and as a binary) and against the
# real QEMU it was recorded from, and the socket tests run against both.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash ci/fetch-qemu.sh | grep -E '^QEMU_[A-Z0-9_]+=' | sed 's/^/export /')"
export QMP_CONFORM_REAL=1

cargo build --workspace --locked
cargo test --workspace --locked "$@"
