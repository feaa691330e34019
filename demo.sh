#!/usr/bin/env bash
# The main job: installs what is missing, builds Sluice, and runs the guided
# demo on this machine. Usage: sudo ./demo.sh [--keep-running]
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo build --release --locked --bin sluice
exec target/release/sluice demo "$@"
