#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetches the real QEMU builds
# (ci/fetch-qemu.sh, cached under .cache/qemu) and python qemu.qmp (a venv in
# .cache/qemu-qmp-venv), then runs every test of the workspace with the
# real-QEMU trials switched on: each golden fixture is replayed against
# mock-qemu (in process and as a binary) and against the real QEMU it was
# recorded from, the socket tests run against both, and the client checks
# judge qemu.qmp, the project's own client and a deliberately broken one;
# qmp-shell (from qemu.qmp) and go-qemu are driven against the mock binary
# and real qemu-storage-daemon 10.0.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash ci/fetch-qemu.sh | grep -E '^QEMU_[A-Z0-9_]+=' | sed 's/^/export /')"
export QMP_CONFORM_REAL=1
# Test threads get 8 MiB stacks (the default is 2 MiB): whole-scenario play
# futures are deep in debug builds, and a suite-wide test once overflowed.
export RUST_MIN_STACK=${RUST_MIN_STACK:-8388608}

# Python qemu.qmp for the client checks (conformance/tests/client.rs runs
# `qmp-conform client` against it), in a venv cached under .cache/.
QMP_VENV=.cache/qemu-qmp-venv
if ! "$QMP_VENV/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
    rm -rf "$QMP_VENV"
    python3 -m venv "$QMP_VENV" || {
        echo "ci/test.sh: python3 -m venv failed (Debian's python3 needs the python3-venv package)" >&2
        exit 1
    }
    "$QMP_VENV/bin/pip" install --quiet --disable-pip-version-check 'qemu.qmp==0.0.6'
fi

# libvirt 9.0 (embedded driver), virsh and python3-libvirt for the libvirt
# end-to-end test (conformance/tests/libvirt.rs); installing them removes nothing.
bash ci/libvirt/setup.sh
export QMP_CONFORM_LIBVIRT=1

# DigitalOcean's go-qemu for conformance/tests/go_qemu.rs: Debian's
# packages (installed when missing), built offline into target/go.
go_qemu=$(bash ci/go-qemu.sh)
export "$(grep -E '^GO_QEMU_CLIENT=' <<<"$go_qemu")"

cargo build --workspace --locked
cargo test --workspace --locked "$@"
