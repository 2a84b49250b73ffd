#!/usr/bin/env bash
# Re-records every golden fixture and profile from real QEMU with the
# project's recorder. Fixtures are never edited by hand: change a scenario
# under fixtures/scenarios/, run this, review `git diff fixtures/`.
#   ci/record-fixtures.sh            all five builds
#   ci/record-fixtures.sh qsd-10.0   one of: qsd-10.0 qsd-7.2 qsd-5.2 sys-7.2 sys-10.0
#   RECORD_FILTER=jobs/drive- ci/record-fixtures.sh   only scenarios whose id
#                                    contains the filter (others left alone)
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash ci/fetch-qemu.sh | grep -E '^QEMU_[A-Z0-9_]+=' | sed 's/^/export /')"
cargo build -q --locked -p conformance --bin qmp-conform
filter=()
[ -n "${RECORD_FILTER:-}" ] && filter=(--filter "$RECORD_FILTER")
rec() { ./target/debug/qmp-conform record --flavor "$1" --qemu "$2" "${filter[@]}"; }
only=("$@")
sel() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }
sel qsd-10.0 && rec qsd "$QEMU_QSD_10_0"
sel qsd-7.2 && rec qsd "$QEMU_QSD_7_2"
sel qsd-5.2 && rec qsd "$QEMU_QSD_5_2"
sel sys-7.2 && rec system "$QEMU_SYS_7_2"
sel sys-10.0 && rec system "$QEMU_SYS_10_0"
git status --short fixtures/ | head -50
