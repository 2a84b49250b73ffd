#!/usr/bin/env bash
# Builds ci/go-qemu (a QMP session of DigitalOcean's go-qemu) offline from
# Debian's packages: golang-go and golang-github-digitalocean-go-qemu-dev
# (sources under /usr/share/gocode, GOPATH mode, no module download).
# Installs them when missing, refusing an install that would remove a
# package (qemu-utils comes from backports here). Prints
# GO_QEMU_CLIENT=<binary> for ci/test.sh; conformance/tests/go_qemu.rs runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(golang-go golang-github-digitalocean-go-qemu-dev)
installed=$(dpkg-query -W -f='${Status}\n' "${PKGS[@]}" 2>/dev/null | grep -c 'install ok installed' || true)
if [ "$installed" -ne "${#PKGS[@]}" ]; then
    echo "ci/go-qemu.sh: installing ${PKGS[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    sim=$(apt-get -s install --no-install-recommends "${PKGS[@]}" 2>&1) || {
        apt-get update -qq >&2
        sim=$(apt-get -s install --no-install-recommends "${PKGS[@]}" 2>&1)
    }
    if grep -q '^Remv' <<<"$sim"; then
        echo "ci/go-qemu.sh: installing ${PKGS[*]} would remove packages; not installing:" >&2
        grep '^Remv' <<<"$sim" >&2
        exit 1
    fi
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi

OUT=target/go/go-qemu-client
mkdir -p target/go
GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off GOFLAGS= GOCACHE="$PWD/target/go/cache" \
    go build -o "$OUT" ./ci/go-qemu
echo "GO_QEMU_CLIENT=$PWD/$OUT"
