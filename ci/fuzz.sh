#!/usr/bin/env bash
# Fuzzes mock-qemu (see fuzz/README.md): writes the seed corpora from the
# conformance scenarios (fixtures/scenarios/**/*.qmp), then runs each
# cargo-fuzz target for SECONDS in a single process.
#
#   ci/fuzz.sh [SECONDS] [TARGET...]     default: 60 seconds, every target
#
# Targets: codec (JSON stream parser/writer), session (QMP sessions against
# the core), qcow2 (image header parsing and rewriting), blockops (stateful:
# block operations and jobs against the model). Inputs saved under
# fuzz/regressions/<target>/ (past findings) run before any fuzzing.
#
# Environment:
#   FUZZ_TOOLCHAIN   toolchain for cargo-fuzz (default: nightly)
#   FUZZ_SANITIZER   address | none (default: none; the fuzzed code is safe Rust,
#                    and without ASan it runs about 5 times faster)
#   FUZZ_MAX_LEN     libFuzzer -max_len (default: 8192; the longest seed is ~5.6 KB)
#   FUZZ_TIMEOUT     seconds one input may take before it counts as a hang (default: 30)
#   FUZZ_ALLOW_INTERNAL_ERRORS=1   session target: tolerate "mock-qemu: internal …" replies
#
# Exits non-zero if any target crashed (or hung); the input is saved under
# fuzz/artifacts/<target>/ and the full libFuzzer log is
# fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(codec session qcow2 blockops)
fi
case $secs in
  '' | *[!0-9]*) echo "usage: ci/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

toolchain=${FUZZ_TOOLCHAIN:-nightly}
sanitizer=${FUZZ_SANITIZER:-none}
max_len=${FUZZ_MAX_LEN:-8192}
timeout=${FUZZ_TIMEOUT:-30}

log() { echo "fuzz: $*" >&2; }

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
  log "installing the $toolchain toolchain"
  rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz
fi

log "writing seed corpora"
cargo "+$toolchain" run --quiet --manifest-path fuzz/Cargo.toml --example seed_corpus -- \
  fixtures/scenarios fuzz/corpus

cd fuzz
# Scratch files of the harness (qcow2 header rewrites): a private folder,
# in memory when /dev/shm exists, removed at the end.
shm=/dev/shm
[ -d "$shm" ] && [ -w "$shm" ] || shm=${TMPDIR:-/tmp}
MOCK_QEMU_FUZZ_SCRATCH=$(mktemp -d "$shm/mock-qemu-fuzz.XXXXXX")
export MOCK_QEMU_FUZZ_SCRATCH
trap 'rm -rf "$MOCK_QEMU_FUZZ_SCRATCH"' EXIT
failed=()
for target in "${targets[@]}"; do
  log "building $target"
  cargo "+$toolchain" fuzz build --debug-assertions --sanitizer "$sanitizer" "$target"
  mkdir -p "corpus/$target" target/fuzz-logs
  runlog=target/fuzz-logs/$target.log
  log "running $target for ${secs}s (log: fuzz/$runlog)"
  status=0
  # Saved reproducers of past findings are replayed first (read-only).
  extra=()
  [ -d "regressions/$target" ] && extra=("regressions/$target")
  cargo "+$toolchain" fuzz run --debug-assertions --sanitizer "$sanitizer" "$target" \
    "corpus/$target" ${extra[@]+"${extra[@]}"} -- \
    -max_len="$max_len" -timeout="$timeout" -max_total_time="$secs" \
    -print_final_stats=1 >"$runlog" 2>&1 || status=$?
  # Coverage and speed: the seed corpus replay, the last status line, final stats.
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::' "$runlog" >&2 || true
  if [ "$status" -ne 0 ]; then
    log "$target FAILED (exit $status):"
    grep -E -A2 "panicked at|==ERROR|ALARM: working on the last Unit|out-of-memory" "$runlog" |
      head -n 20 >&2 || true
    grep -E "Test unit written to|cargo fuzz run " "$runlog" | sort -u >&2 || true
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "crashed: ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
log "no crash in: ${targets[*]}"
