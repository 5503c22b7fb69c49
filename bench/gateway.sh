#!/usr/bin/env bash
# Gateway throughput vs haproxy 2.6, same topology in the same run:
# wrk -> proxy A (plain HTTP) -> HTTP/2 over mTLS -> proxy B -> nginx;
# gRPC unary calls with h2load (h2c -> A -> h2 over mTLS -> B -> tonic, h2c);
# TCP passthrough and streaming uploads/downloads against the direct path.
#   bench/gateway.sh [--connections 50] [--duration 10] [--threads 1]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk haproxy nginx h2load; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing: apt-get install wrk haproxy nginx nghttp2-client" >&2; exit 1; }
done
cargo build --release -q --bin gns-federation --bin gns-gateway --bin gns-gateway-bench
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(git rev-parse --short HEAD); $(haproxy -v | head -1)"
target/release/gns-gateway-bench --bin-dir target/release "$@"
