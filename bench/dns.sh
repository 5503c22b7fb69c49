#!/usr/bin/env bash
# DNS benchmark: gns-dns against Knot DNS on the same zone (bench.acme.com,
# 10,000 services with 3 A + 1 AAAA + 1 SRV each, TTL 5) and the same dnsperf
# load (A/AAAA/SRV for random services, 10% NXDOMAIN), one UDP worker each,
# one server at a time. Release build.
#
# gns-dns serves the generated snapshot from its cache dir, its federation
# unreachable (http://127.0.0.1:9), exactly as a replica does when the
# federation is down. On 2+ cores the server is pinned to CPU 0 and dnsperf to
# CPU 1 (taskset), so the server's single UDP worker is the bottleneck.
#
# Per server:
#   throughput  dnsperf for --seconds, --clients/--threads/--outstanding:
#               QPS, dnsperf's average latency, server CPU seconds (utime+stime
#               from /proc/<pid>/stat), QPS per core = answered / CPU seconds;
#   latency     dnsperf 2.10 has no percentiles, so two --latency-seconds runs
#               with -v (one line per query, with its latency) give p50/p99:
#               the same closed-loop load (saturated: -v costs dnsperf ~10%
#               throughput) and a fixed --latency-qps rate both servers sustain;
#   memory      VmRSS with the zone loaded (after the runs).
#
#   bench/dns.sh [--seconds 20] [--services 10000] [--clients 8] [--threads 2]
#                [--outstanding 200] [--latency-seconds 10] [--latency-qps 20000]
#
# Honours CARGO_TARGET_DIR. Needs knotd (apt-get install knot), dnsperf
# (apt-get install dnsperf), kdig (apt-get install knot-dnsutils) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=20 SERVICES=10000 CLIENTS=8 THREADS=2 OUTSTANDING=200 LAT_SECS=10 LAT_QPS=20000
GNS_PORT=${GNS_DNS_BENCH_PORT:-15353}
KNOT_PORT=${KNOT_BENCH_PORT:-15354}
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECS=$2 ;;
        --services) SERVICES=$2 ;;
        --clients) CLIENTS=$2 ;;
        --threads) THREADS=$2 ;;
        --outstanding) OUTSTANDING=$2 ;;
        --latency-seconds) LAT_SECS=$2 ;;
        --latency-qps) LAT_QPS=$2 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift 2
done

missing=()
command -v knotd >/dev/null || missing+=(knot)
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v kdig >/dev/null || missing+=(knot-dnsutils)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/dns.sh: missing tools; install them with: apt-get install ${missing[*]}" >&2
    exit 1
fi

SERVER_PIN=() CLIENT_PIN=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_PIN=(taskset -c 0) CLIENT_PIN=(taskset -c 1)
fi

cargo build --release -p gns-dns -q
BIN="${CARGO_TARGET_DIR:-target}/release/gns-dns"

WORK=$(mktemp -d)
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 bench/gen_dns_zone.py "$WORK" --services "$SERVICES"
ORIGIN=bench.acme.com
SERIAL=1000
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # utime + stime of a process, in clock ticks
    local s
    s=$(<"/proc/$1/stat")
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

wait_serial() { # port log
    for _ in $(seq 1 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench/dns.sh: the server exited; its log:" >&2
            cat "$2" >&2
            exit 1
        fi
        local soa
        soa=$(kdig @127.0.0.1 -p "$1" +short +time=1 +retry=0 "$ORIGIN" SOA 2>/dev/null || true)
        [ "$(awk '{ print $3 }' <<<"$soa")" = "$SERIAL" ] && return 0
        sleep 0.1
    done
    echo "bench/dns.sh: port $1 does not serve serial $SERIAL after 30 s; log:" >&2
    cat "$2" >&2
    exit 1
}

sample_answers() { # port -> the answers to a few questions, for the equivalence check
    local q
    for q in "svc-00000.$ORIGIN A" "svc-00042.$ORIGIN AAAA" "_http._tcp.svc-$(printf %05d $((SERVICES - 1))).$ORIGIN SRV" \
        "$ORIGIN NS" "ns1.$ORIGIN A" "nx-1.$ORIGIN A"; do
        # shellcheck disable=SC2086
        echo "$q: $(kdig @127.0.0.1 -p "$1" +noall +header +answer +additional +authority $q |
            grep -E 'status:|IN' | sed 's/id: [0-9]*//' | sort | tr -s ' \t' ' ' | tr '\n' '|')"
    done
}

dnsperf_run() { # port duration extra-args...
    local port=$1 secs=$2
    shift 2
    "${CLIENT_PIN[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -l "$secs" \
        -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" "$@"
}

field() { # file label -> the first number after "label:" in dnsperf's statistics
    awk -v k="$2:" 'i = index($0, k) { $0 = substr($0, i + length(k)); print $1 + 0; exit }' "$1"
}

percentiles() { # dnsperf -v output -> "avg_ms p50_ms p99_ms"
    awk '/^> / { print $NF }' "$1" | sort -g |
        awk '{ v[NR] = $1; s += $1 } END {
            if (NR == 0) { print "- - -"; exit }
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%.3f %.3f %.3f\n", s / NR * 1000, v[i50] * 1000, v[i99] * 1000 }'
}

measure() { # label port log
    local label=$1 port=$2
    wait_serial "$port" "$3"
    sample_answers "$port" >"$WORK/$label.answers"
    local t0 t1
    t0=$(cpu_ticks "$SERVER_PID")
    dnsperf_run "$port" "$SECS" >"$WORK/$label.tput" 2>&1
    t1=$(cpu_ticks "$SERVER_PID")
    dnsperf_run "$port" "$LAT_SECS" -v >"$WORK/$label.sat" 2>&1
    dnsperf_run "$port" "$LAT_SECS" -Q "$LAT_QPS" -v >"$WORK/$label.fixed" 2>&1
    local f=$WORK/$label.tput
    local answered lost qps avg cpu
    answered=$(field "$f" "Queries completed")
    lost=$(field "$f" "Queries lost")
    qps=$(field "$f" "Queries per second")
    avg=$(field "$f" "Average Latency (s)")
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    read -r _ sat50 sat99 < <(percentiles "$WORK/$label.sat")
    read -r favg _ f99 < <(percentiles "$WORK/$label.fixed")
    # label qps avg_ms p50sat p99sat favg f99 cpu qps/core rss_mib lost
    awk -v l="$label" -v qps="$qps" -v avg="$avg" -v s50="$sat50" -v s99="$sat99" \
        -v favg="$favg" -v f99="$f99" -v cpu="$cpu" -v n="$answered" -v rss="$(rss_kb "$SERVER_PID")" \
        -v lost="$lost" 'BEGIN {
            printf "%s %.0f %.3f %s %s %s %s %s %.0f %.1f %s\n",
                l, qps, avg * 1000, s50, s99, favg, f99, cpu, (cpu > 0 ? n / cpu : 0), rss / 1024, lost }' \
        >>"$WORK/results"
    grep -E "Response codes" "$f" | sed "s/^ */$label: /" >>"$WORK/rcodes"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r); gns-dns $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
    "$(knotd -V | head -1), dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')"
echo "# zone $ORIGIN: $SERVICES services ($(grep -c ' IN ' "$WORK/$ORIGIN.zone") records); dnsperf -c $CLIENTS -T $THREADS -q $OUTSTANDING," \
    "${SECS}s throughput + 2x ${LAT_SECS}s latency (-v) per server; server pinned: ${SERVER_PIN[*]:-no}"

# gns-dns: one UDP worker, the snapshot from the cache, the federation unreachable.
GNS_LOG=warn "${SERVER_PIN[@]}" "$BIN" --token bench --federation http://127.0.0.1:9 \
    --cache-dir "$WORK/cache" --listen "127.0.0.1:$GNS_PORT" --admin-listen 127.0.0.1:0 \
    --udp-workers 1 >"$WORK/gns-dns.log" 2>&1 &
SERVER_PID=$!
measure gns-dns "$GNS_PORT" "$WORK/gns-dns.log"
stop_server

# knotd: one UDP, TCP and background worker, the zone from the zone file.
mkdir -p "$WORK/knot/run" "$WORK/knot/db"
cat >"$WORK/knot/knot.conf" <<EOF
server:
    rundir: "$WORK/knot/run"
    listen: 127.0.0.1@$KNOT_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: notice
database:
    storage: "$WORK/knot/db"
template:
  - id: default
    storage: "$WORK"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: $ORIGIN
    file: "$WORK/$ORIGIN.zone"
EOF
"${SERVER_PIN[@]}" knotd -c "$WORK/knot/knot.conf" >"$WORK/knotd.log" 2>&1 &
SERVER_PID=$!
measure knotd "$KNOT_PORT" "$WORK/knotd.log"
stop_server

if ! grep -q "status: NXDOMAIN" "$WORK/gns-dns.answers" || ! grep -q " IN SRV " "$WORK/gns-dns.answers" ||
    ! diff -u "$WORK/gns-dns.answers" "$WORK/knotd.answers" >"$WORK/answers.diff"; then
    echo "bench/dns.sh: the two servers do not answer alike; the comparison is void:" >&2
    cat "$WORK/answers.diff" >&2
    exit 1
fi

echo
awk -v lq="$LAT_QPS" 'BEGIN {
        printf "%-8s %9s %8s %17s %17s %7s %9s %8s %6s\n", "server", "QPS", "avg ms", "sat p50/p99 ms",
            sprintf("@%dk avg/p99 ms", lq / 1000), "CPU s", "QPS/core", "RSS MiB", "lost"
    }
    { printf "%-8s %9d %8.3f %17s %17s %7.2f %9d %8.1f %6d\n", $1, $2, $3, $4 "/" $5, $6 "/" $7, $8, $9, $10, $11
      q[NR] = $2; c[NR] = $9; r[NR] = $10 }
    END { if (NR == 2 && q[2] > 0 && c[2] > 0)
        printf "%-8s %9.2f %8s %17s %17s %7s %9.2f %8.2f\n", "gns/knot", q[1] / q[2], "", "", "", "", c[1] / c[2], r[1] / r[2] }' \
    "$WORK/results"
echo
cat "$WORK/rcodes"
