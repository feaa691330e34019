#!/usr/bin/env bash
# Runs every test of Sluice: formatting, lints, unit tests, and (as root) the
# privileged BPF and end-to-end tests. Usage: sudo ./test.sh
# As root, or with CI=true, a skipped privileged test fails the run.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh

if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = "true" ]; then
  export SLUICE_REQUIRE_PRIVILEGED=1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the end-to-end tests run the sluice binary)"
cargo build --workspace --bins --locked
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

skipped=$(grep -c "SLUICE-PRIVILEGED-TEST-SKIPPED" "$log" || true)
if [ "$skipped" -gt 0 ]; then
  if [ "${SLUICE_REQUIRE_PRIVILEGED:-}" = "1" ]; then
    echo "FAIL: $skipped privileged tests were skipped, and this run requires them" >&2
    status=1
  else
    echo "WARNING: $skipped privileged tests were SKIPPED (not root): run sudo ./test.sh to run them" >&2
  fi
fi

# Tests must leave nothing behind: no pins, cgroups, namespaces or programs.
if [ "$(id -u)" -eq 0 ]; then
  left=""
  [ -n "$(ls -A /sys/fs/bpf/sluice 2>/dev/null | grep '^t[0-9]' || true)" ] && left="$left pins:$(ls /sys/fs/bpf/sluice | tr '\n' ' ')"
  cg2=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
  cgs=$(find "$cg2" -maxdepth 1 -type d -name 'sluice-t*' 2>/dev/null | tr '\n' ' ')
  [ -n "$cgs" ] && left="$left cgroups:$cgs"
  runf=$(ls /run/sluice 2>/dev/null | grep -E '^(t[0-9]|demo-)' | tr '\n' ' ' || true)
  [ -n "$runf" ] && left="$left run-files:$runf"
  ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^sluice-t' | tr '\n' ' ' || true)
  [ -n "$ns" ] && left="$left netns:$ns"
  if [ -z "$(ls -A /sys/fs/bpf/sluice 2>/dev/null)" ]; then
    progs=$(bpftool prog show 2>/dev/null | grep -c ' name sl_' || true)
    [ "$progs" -gt 0 ] && left="$left programs:$progs"
  fi
  if [ -n "$left" ]; then
    echo "FAIL: the tests left things behind:$left" >&2
    status=1
  else
    echo "== no leftovers: no test pins, cgroups, namespaces or programs remain"
  fi
fi
exit "$status"
