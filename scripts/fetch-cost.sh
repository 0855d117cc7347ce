#!/usr/bin/env bash
# What one fetch costs kshift on a broker whose fetch costs microseconds: kshift as its own
# process in front of one librdkafka mock broker (held by `benches/fetch_shape.rs
# --haproxy --hold-broker`, 20,000 records of 100 B in ~16 KB batches), read with raw 16 KB
# fetches, 1 in flight (`kshift bench --mode fetch --fetch-from-bootstrap`), direct and
# through kshift in turns. Prints the bench's report and kshift's CPU time (user and
# system) per fetch; with `callgrind`, also its instructions per fetch, from runs of ROUNDS
# and 2 × ROUNDS rounds so that start-up and shutdown cancel out (Tansu's fetch takes
# milliseconds and grows with its log, which hides a proxy's cost: BENCHMARKS.md).
#
# Usage: scripts/fetch-cost.sh [plain|callgrind] [ROUNDS]   (default plain, 20)
# Needs: a release build (cargo build --release, cargo bench --bench fetch_shape --no-run)
# and, for callgrind, valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-plain}"
rounds="${2:-20}"
. scripts/lib.sh
holder=$(ls -t "$target_dir"/release/deps/fetch_shape-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -n "$holder" ] || { echo "no fetch_shape bench binary: run cargo bench --bench fetch_shape --no-run" >&2; exit 1; }
[ "$mode" = plain ] || require valgrind

"$holder" --bench --haproxy --hold-broker 3600 >"$work/holder.out" 2>&1 &
pids+=($!)
for _ in $(seq 300); do grep -q "^mock broker" "$work/holder.out" && break; sleep 0.1; done
broker=$(awk '/^mock broker/ { print $3 }' "$work/holder.out")
[ -n "$broker" ] || { echo "the mock broker did not start: $(cat "$work/holder.out")" >&2; exit 1; }
port=19531
passthrough_config "$work/kshift.toml" "$port" "$broker"

# One kshift, possibly under a wrapper; sets $proxy_pid.
start_kshift() { # wrapper...
  RUST_LOG=warn "$@" "$kshift" serve --config "$work/kshift.toml" >"$work/kshift.log" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  wait_for_port "$port" "$work/kshift.log"
}
stop_kshift() { kill -TERM "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; }
# kshift bench reading the held topic through TARGETS (name=address) for N rounds.
read_rounds() { # rounds targets...
  local n="$1"
  shift
  local targets=()
  for target in "$@"; do targets+=(--target "$target"); done
  "$kshift" bench --mode fetch --fetch-from-bootstrap --skip-fill --interval 0 \
    --topic fetch-l4-bench --size 100 --fetch-max-bytes 16384 --messages 20000 \
    --rounds "$n" "${targets[@]}" 2>"$work/bench.err" \
    || { echo "kshift bench failed: $(cat "$work/bench.err")" >&2; exit 1; }
}
# Fetches the last read_rounds made through TARGET (any, when not given).
fetches() { # [target]
  grep -E "^round .* ${1:-}" "$work/bench.err" | grep -o '([0-9]* fetches)' | tr -d '(' \
    | awk '{ n += $1 } END { print n }'
}
ticks() { awk -v field="$2" '{ print $field }' "/proc/$1/stat"; }

start_kshift
read_rounds 1 "kshift=127.0.0.1:$port" >/dev/null # warm-up: connections, metadata
user=$(ticks "$proxy_pid" 14) system=$(ticks "$proxy_pid" 15)
read_rounds "$rounds" "direct=$broker" "kshift=127.0.0.1:$port"
n=$(fetches kshift)
awk -v u=$(($(ticks "$proxy_pid" 14) - user)) -v s=$(($(ticks "$proxy_pid" 15) - system)) \
  -v hz="$(getconf CLK_TCK)" -v n="$n" \
  'BEGIN { printf "kshift cpu per fetch: %.1f us (user %.1f, system %.1f), %d fetches\n", (u + s) / hz * 1e6 / n, u / hz * 1e6 / n, s / hz * 1e6 / n, n }'
stop_kshift

if [ "$mode" = callgrind ]; then
  irs=() counts=()
  for n in "$rounds" $((rounds * 2)); do
    start_kshift valgrind --tool=callgrind --callgrind-out-file="$work/callgrind-$n.out"
    read_rounds 1 "kshift=127.0.0.1:$port" >/dev/null
    read_rounds "$n" "kshift=127.0.0.1:$port" >/dev/null
    counts+=("$(fetches)")
    stop_kshift
    irs+=("$(awk '/^summary:/ { print $2 }' "$work/callgrind-$n.out")")
  done
  awk -v a="${irs[0]}" -v b="${irs[1]}" -v m="${counts[0]}" -v n="${counts[1]}" \
    'BEGIN { printf "kshift instructions per fetch: %.0f\n", (b - a) / (n - m) }'
fi
