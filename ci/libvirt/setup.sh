#!/usr/bin/env bash
# Installs what the libvirt end-to-end test needs, on a fresh Debian machine:
# libvirt 9.0's QEMU driver, virsh and python3-libvirt (no daemon is started:
# the test uses the embedded driver, qemu:///embed?root=DIR), and the
# libvirt-qemu user the QEMU driver looks up at start-up. Installing these
# removes nothing (no qemu-system-* package is pulled in: the emulator is
# mock-qemu or an unpacked QEMU, see ci/fetch-qemu.sh). Idempotent and quick
# when everything is there.
set -euo pipefail
pkgs=(libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon python3-libvirt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "libvirt-setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
fi
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd -r -M -g libvirt-qemu -s /usr/sbin/nologin libvirt-qemu
echo "libvirt-setup: $(virsh --version) with python3-libvirt $(/usr/bin/python3 -c 'import libvirt; print(libvirt.getVersion())')" >&2
