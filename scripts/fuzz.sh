#!/bin/sh
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of everything kshift parses from the network:
# request frames and bodies, backend response bodies, record batches. Runs each target for
# SECONDS (default 60) from the committed seeds in fuzz/corpus/ and stops at the first crash
# (its input is saved under fuzz/artifacts/<target>/; add it as a regression test).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Only the stable toolchain is required:
# RUSTC_BOOTSTRAP=1 lets stable rustc accept the nightly flags cargo-fuzz passes. The build
# uses its own target dir (KSHIFT_FUZZ_TARGET_DIR, default /root/.cache/kshift/fuzz-target).
set -eu
SECONDS_PER_TARGET="${1:-60}"
cd "$(dirname "$0")/../fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: run \`cargo install cargo-fuzz\`" >&2
    exit 1
fi
# Seeds: real frames encoded with kafka-protocol (committed; regenerated here, with the
# project's own build, in your CARGO_TARGET_DIR).
(cd .. && cargo test --quiet --test fuzz_seeds -- --ignored)
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${KSHIFT_FUZZ_TARGET_DIR:-/root/.cache/kshift/fuzz-target}"
# Plain libFuzzer (no sanitizer): kshift forbids unsafe code, so panics, overflows (debug
# assertions are on) and unbounded allocations (-rss_limit_mb) are what there is to find.
for target in request_frame response_body record_batches; do
    echo "== $target for ${SECONDS_PER_TARGET}s"
    # A scratch corpus dir keeps the committed seeds small; new inputs land there.
    mkdir -p "corpus-run/$target"
    cargo fuzz run -s none "$target" "corpus-run/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1
done
