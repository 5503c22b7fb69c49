#!/usr/bin/env bash
# Discovery convergence: 10 member clusters (Kubernetes API test servers),
# 10,000 services, 100,000 endpoints. Initial sync time to DNS, endpoint change
# -> DNS p50/p99 over 1,000 changes, federation RSS. Release build.
#   bench/convergence.sh [--database-url postgres://...] [--clusters N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin gns-federation --bin gns-convergence
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(git rev-parse --short HEAD)"
target/release/gns-convergence --bin-dir target/release "$@"
