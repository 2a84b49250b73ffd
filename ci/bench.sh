#!/usr/bin/env bash
# Benchmark mock-qemu against the machine's floor and the real
# qemu-storage-daemon: launch → greeting, query-version round trip,
# pipelined throughput. Builds both binaries in release mode first.
#
#   ci/bench.sh                     default run (< 1 minute)
#   ci/bench.sh --json bench.json   also write the results as JSON
#   ci/bench.sh --help              all options (--mock, --qsd, --launches, …)
#
# Nothing is pinned to a CPU; see the noise note at the end of the output.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet -p mock-qemu --bin mock-qemu
cargo build --release --quiet -p conformance --bin qmp-bench
# qmp-bench finds mock-qemu next to itself (override with --mock).
exec "$root/target/release/qmp-bench" "$@"
