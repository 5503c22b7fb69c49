#!/usr/bin/env bash
# Write → visible-in-DNS latency: 200 REST writes, each timed until the
# federation's in-process DNS and a gns-dns replica answer with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
BIN=target/release
TOKEN=bench-latency-token
WORK=$(mktemp -d)
API=18580; DNS=18553; RDNS=18554; RADMIN=18555
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN/gns-federation" --listen 127.0.0.1:$API --dns-listen 127.0.0.1:$DNS --data-dir "$WORK/data" --admin-token $TOKEN >"$WORK/fed.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$API/readyz >/dev/null && break; sleep 0.1; done
"$BIN/gns-dns" --federation http://127.0.0.1:$API --token $TOKEN --listen 127.0.0.1:$RDNS --admin-listen 127.0.0.1:$RADMIN --cache-dir "$WORK/cache" >"$WORK/dns.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$RADMIN/readyz >/dev/null && break; sleep 0.1; done
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(git rev-parse --short HEAD)"
"$BIN/gns-dns-latency" --server http://127.0.0.1:$API --token $TOKEN --writes "${1:-200}" \
    --dns in-process=127.0.0.1:$DNS --dns replica=127.0.0.1:$RDNS
