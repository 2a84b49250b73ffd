#!/usr/bin/env bash
# Fetch real QEMU builds from Debian packages without installing them.
#
#   ci/fetch-qemu.sh            fetch (or reuse) all versions, print "NAME=PATH" lines
#   ci/fetch-qemu.sh --print    print the paths only if already fetched
#
# Each version is unpacked with `dpkg -x` into $QEMU_CACHE (default: .cache/qemu
# under the repository root). apt uses a private source list and a private list
# folder, so the system's apt configuration is never touched and nothing is
# installed: `apt-get install qemu-system-*` would remove qemu-utils 10.0.
#
# Output (stdout), one per line, usable with `eval` or `source`:
#   QEMU_QSD_10_0=…/qemu-storage-daemon   (the system's /usr/bin one, 10.0.2)
#   QEMU_QSD_7_2=…   QEMU_SYS_7_2=…   QEMU_QSD_5_2=…   QEMU_SYS_10_0=…
#   QEMU_LD_5_2=…    (LD_LIBRARY_PATH needed by the 5.2 binary)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${QEMU_CACHE:-$root/.cache/qemu}
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE 'https?://[^ ]*debian\.org/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror=${mirror%/}

log() { echo "fetch-qemu: $*" >&2; }

lists=$cache/apt-lists
etc=$cache/apt-etc
mkdir -p "$lists/partial" "$cache/debs" "$etc/sources.list.d"
cat > "$etc/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-backports main
deb $mirror bullseye main
SRC
APT=(-o "Dir::Etc::sourcelist=$etc/sources.list" -o "Dir::Etc::sourceparts=$etc/sources.list.d" -o "Dir::State::Lists=$lists"
     -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1
     -o Acquire::Retries=3)

updated=0
apt_update() {
  if [ "$updated" = 0 ]; then
    log "apt-get update (private lists in $lists)"
    apt-get "${APT[@]}" update -qq >&2
    updated=1
  fi
}

# candidate VERSION of PACKAGE whose version matches a glob pattern, from the private lists
pick() { # pkg pattern
  apt-cache "${APT[@]}" madison "$1" | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -E "$2" | head -n1
}

unpack() { # dest pkg=version...
  local dest=$1; shift
  local dl=$cache/debs/$(basename "$dest")
  mkdir -p "$dl"
  (cd "$dl" && apt-get "${APT[@]}" download "$@" >&2)
  mkdir -p "$dest"
  for f in "$dl"/*.deb; do dpkg -x "$f" "$dest"; done
}

fetch_72() {
  local dest=$cache/7.2
  [ -x "$dest/usr/bin/qemu-storage-daemon" ] && [ -x "$dest/usr/bin/qemu-system-x86_64" ] && return 0
  apt_update
  local v vd
  v=$(pick qemu-system-common '^1:7\.2\+dfsg')
  vd=$(pick qemu-system-data '^1:7\.2\+dfsg')
  log "QEMU 7.2: $v"
  unpack "$dest" "qemu-system-common=$v" "qemu-system-x86=$v" "qemu-system-data=$vd" "qemu-utils=$v"
}

fetch_52() {
  local dest=$cache/5.2
  [ -x "$dest/usr/bin/qemu-storage-daemon" ] && return 0
  apt_update
  local v lu
  v=$(pick qemu-system-common '^1:5\.2\+dfsg')
  lu=$(pick liburing1 '.')
  log "QEMU 5.2: $v"
  unpack "$dest" "qemu-system-common=$v" "qemu-utils=$v" "liburing1=$lu"
}

fetch_100sys() {
  local dest=$cache/10.0
  [ -x "$dest/usr/bin/qemu-system-x86_64" ] && return 0
  apt_update
  local v vd
  v=$(pick qemu-system-x86 '^1:10\.0\.2')
  vd=$(pick qemu-system-data '^1:10\.0\.2')
  log "QEMU 10.0 system emulator: $v"
  unpack "$dest" "qemu-system-x86=$v" "qemu-system-common=$v" "qemu-system-data=$vd"
}

# Runtime libraries the unpacked 7.2/10.0 system emulators need; installing them adds
# packages and removes nothing. Only when a binary reports missing libraries.
ensure_sys_libs() {
  local bin=$1
  if ldd "$bin" 2>/dev/null | grep -q 'not found'; then
    log "installing runtime libraries for $(basename "$(dirname "$(dirname "$(dirname "$bin")")")")"
    if [ ! -s /var/lib/apt/lists/lock ] && ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then apt-get update -qq >&2; fi
    local missing
    missing=$(ldd "$bin" | awk '/not found/{print $1}')
    local pkgs=()
    for lib in $missing; do
      case $lib in
        libcapstone.so.4) pkgs+=(libcapstone4);;
        libfdt.so.1) pkgs+=(libfdt1);;
        libpmem.so.1) pkgs+=(libpmem1);;
        librdmacm.so.1) pkgs+=(librdmacm1);;
        libibverbs.so.1) pkgs+=(libibverbs1);;
        libslirp.so.0) pkgs+=(libslirp0);;
        libvdeplug.so.2) pkgs+=(libvdeplug2);;
        *) log "note: $lib missing, no package mapping";;
      esac
    done
    if [ ${#pkgs[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 \
        || { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2; }
    fi
  fi
}

# SeaBIOS for machines with firmware (`-M pc`, scenarios with `# args: -M pc`):
# the unpacked emulators are launched with `-L /usr/share/seabios`
# (conformance/src/target.rs). Installing it adds one package, removes nothing.
ensure_seabios() {
  [ -f /usr/share/seabios/bios-256k.bin ] && return 0
  log "installing seabios (bios-256k.bin for -M pc)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends seabios >&2 \
    || { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends seabios >&2; }
}

if [ "${1:-}" != "--print" ]; then
  fetch_72
  fetch_52
  fetch_100sys
  ensure_sys_libs "$cache/7.2/usr/bin/qemu-system-x86_64"
  ensure_sys_libs "$cache/10.0/usr/bin/qemu-system-x86_64"
  ensure_seabios
fi

echo "QEMU_QSD_10_0=/usr/bin/qemu-storage-daemon"
echo "QEMU_SYS_10_0=$cache/10.0/usr/bin/qemu-system-x86_64"
echo "QEMU_QSD_7_2=$cache/7.2/usr/bin/qemu-storage-daemon"
echo "QEMU_SYS_7_2=$cache/7.2/usr/bin/qemu-system-x86_64"
echo "QEMU_QSD_5_2=$cache/5.2/usr/bin/qemu-storage-daemon"
echo "QEMU_LD_5_2=$cache/5.2/usr/lib/x86_64-linux-gnu"
