#!/usr/bin/env bash
# A profile-guided (PGO) build of the sluice binary.
#
#   sudo ./scripts/build-pgo.sh [--secs N]
#
# 1. builds the workspace's tools (plain release) and an instrumented sluice;
# 2. trains it: `sluice-bench pgo-train` sends the L7 benchmark's traffic
#    (HTTP/1.1 keep-alive with wrk, h2c with h2load, HTTP/2 and HTTP/1.1 to
#    the backend) through it, N seconds each (default 5), in a test cgroup;
# 3. builds sluice again, optimised with that profile:
#    target/pgo/<host>/release/sluice.
#
# The profile tells the compiler which code is hot (inlining, block layout,
# what to keep together): the same source, laid out for the request path.
# Root is needed for step 2 (eBPF programs on a test cgroup); wrk and h2load
# come with ./scripts/install-deps.sh --bench. The build of `cargo build
# --release` (demo.sh, docker/) stays the plain one.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=5
case "${1:-}" in
  --secs) secs="${2:?--secs needs a number of seconds}" ;;
  "") ;;
  *) echo "usage: sudo $0 [--secs N]" >&2; exit 2 ;;
esac
die() { echo "build-pgo: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root: training attaches Sluice's eBPF programs to a test cgroup"
for t in wrk h2load; do
  command -v "$t" >/dev/null || die "$t not found: run ./scripts/install-deps.sh --bench"
done
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
# llvm-profdata must be the one of rustc's LLVM (its profile format).
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  command -v rustup >/dev/null || die "$profdata not found, and no rustup to install it (the llvm-tools component)"
  rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed (it is needed for llvm-profdata)"
  [ -x "$profdata" ] || die "llvm-tools installed, but $profdata is still missing"
fi
data="$PWD/target/pgo-profiles"
rm -rf "$data"
mkdir -p "$data"

echo "build-pgo: 1/3 tools and an instrumented sluice" >&2
cargo build --release --locked --workspace --bins
# --target: the flags apply to sluice's code, not to build scripts.
RUSTFLAGS="-Cprofile-generate=$data" \
  cargo build --release --locked --bin sluice --target "$host" --target-dir target/pgo-gen

echo "build-pgo: 2/3 training (${secs}s per load)" >&2
SLUICE_SLUICE_BIN="$PWD/target/pgo-gen/$host/release/sluice" target/release/sluice-bench pgo-train --secs "$secs"
shopt -s nullglob
raw=("$data"/*.profraw)
[ ${#raw[@]} -gt 0 ] || die "training wrote no profile into $data"
"$profdata" merge -o "$data/sluice.profdata" "${raw[@]}"

echo "build-pgo: 3/3 sluice optimised with the profile" >&2
RUSTFLAGS="-Cprofile-use=$data/sluice.profdata" \
  cargo build --release --locked --bin sluice --target "$host" --target-dir target/pgo
out="target/pgo/$host/release/sluice"
echo "build-pgo: built $out"
echo "build-pgo: compare it with the plain build: sudo target/release/sluice-bench l7 --pgo $out"
