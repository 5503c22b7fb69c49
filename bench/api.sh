#!/usr/bin/env bash
# API benchmark: 1,000 global namespaces and 10,000 routing/workload objects,
# then GET, PUT and external-workload heartbeat throughput and latency at 32
# concurrent clients, over TLS (the default) on the embedded SQLite store and
# on Postgres, and in plain HTTP/2 (--insecure-http, h2c) on SQLite for the
# cost of TLS alone (clients speak HTTP/2 either way), in one run, and whether the heartbeats moved the SOA serial or the
# gateway config version (they must not). Release build. For 10,000
# workloads: --objects 20000.
#
#   bench/api.sh [--seconds 15] [--concurrency 32] ...   (extra flags go to gns-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
BIN=target/release
PG_ADMIN="${GNS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
TOKEN=bench-admin-token
PORT=18480
WORK=$(mktemp -d)
FED_PID=""
cleanup() {
    [ -n "$FED_PID" ] && kill "$FED_PID" 2>/dev/null || true
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS gns_bench WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

run() {
    local label=$1; shift
    local scheme=https
    [[ " $* " == *" --insecure-http "* ]] && scheme=http
    rm -rf "$WORK/data"
    "$BIN/gns-federation" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --admin-token "$TOKEN" "$@" \
        >"$WORK/$label.log" 2>&1 &
    FED_PID=$!
    for _ in $(seq 1 100); do
        curl -sf --cacert "$WORK/data/ca.pem" "$scheme://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$BIN/gns-bench" --server "$scheme://127.0.0.1:$PORT" --ca-file "$WORK/data/ca.pem" --token "$TOKEN" \
        --label "$label" "${BENCH_ARGS[@]}"
    kill "$FED_PID"; wait "$FED_PID" 2>/dev/null || true; FED_PID=""
}

BENCH_ARGS=("$@")
echo "# $(date -u +%FT%TZ) $(nproc) cores; gns-federation $(git rev-parse --short HEAD)"
run sqlite-tls
BENCH_ARGS=("$@" --h2c)
run sqlite-plain-h2c --insecure-http
BENCH_ARGS=("$@")
psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS gns_bench WITH (FORCE)" >/dev/null
psql "$PG_ADMIN" -qc "CREATE DATABASE gns_bench" >/dev/null
PG_URL="${PG_ADMIN%/*}/gns_bench"
run postgres-tls --database-url "$PG_URL"
