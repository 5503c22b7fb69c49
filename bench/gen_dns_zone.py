#!/usr/bin/env python3
"""Generates the inputs of bench/dns.sh (Python 3 standard library only).

In OUT_DIR:
  cache/dns-snapshot.json   a gns ZoneSnapshot (dns/src/snapshot.rs): zone
                            bench.acme.com with N services, each with 3 IPv4 and
                            1 IPv6 addresses and one SRV port (_http._tcp);
  bench.acme.com.zone       the same zone as a Knot zone file (SOA, NS, glue,
                            A/AAAA/SRV; answer TTL 5, NS TTL 300, SOA timers as
                            gns-dns renders them in dns/src/prepared.rs);
  queries.txt               dnsperf input: A, AAAA and SRV questions for random
                            services, plus 10% for names that do not exist.

    bench/gen_dns_zone.py OUT_DIR [--services 10000] [--queries 200000] [--seed 1]
"""

import argparse
import json
import os
import random

ORIGIN = "bench.acme.com"
VERSION = 1000
TTL = 5
NS_TTL = 300
# SOA refresh, retry, expire: the constants of dns/src/prepared.rs.
SOA_TIMERS = (60, 10, 7 * 24 * 3600)


def service_name(i):
    return f"svc-{i:05d}"


def addresses(i):
    """3 IPv4 and 1 IPv6 address, unique per service."""
    hi, lo = divmod(i, 250)
    v4 = [f"10.{hi}.{lo + 1}.{k}" for k in (1, 2, 3)]
    v6 = [f"2001:db8:{hi:x}:{lo + 1:x}::1"]
    return v4, v6


def snapshot(n):
    services = []
    for i in range(n):
        v4, v6 = addresses(i)
        services.append(
            {
                "name": service_name(i),
                "ports": [{"name": "http", "port": 8080, "protocol": "tcp"}],
                "external": v4 + v6,
                "views": {},
                "txt": [],
            }
        )
    return {
        "version": VERSION,
        "answerTtl": TTL,
        "views": [],
        "zones": [
            {
                "origin": ORIGIN,
                "nameservers": [{"name": f"ns1.{ORIGIN}", "addresses": ["127.0.0.1"]}],
                "txt": [],
                "services": services,
            }
        ],
    }


def zone_file(n, out):
    refresh, retry, expire = SOA_TIMERS
    out.write(f"$ORIGIN {ORIGIN}.\n")
    out.write(
        f"@ {TTL} IN SOA ns1.{ORIGIN}. hostmaster.{ORIGIN}. "
        f"{VERSION} {refresh} {retry} {expire} {TTL}\n"
    )
    out.write(f"@ {NS_TTL} IN NS ns1.{ORIGIN}.\n")
    out.write(f"ns1 {NS_TTL} IN A 127.0.0.1\n")
    for i in range(n):
        name = service_name(i)
        v4, v6 = addresses(i)
        for a in v4:
            out.write(f"{name} {TTL} IN A {a}\n")
        for a in v6:
            out.write(f"{name} {TTL} IN AAAA {a}\n")
        out.write(f"_http._tcp.{name} {TTL} IN SRV 0 0 8080 {name}.{ORIGIN}.\n")


def queries(n, count, rng, out):
    for _ in range(count):
        r = rng.random()
        svc = service_name(rng.randrange(n))
        if r < 0.10:
            out.write(f"nx-{rng.randrange(10**9):09d}.{ORIGIN} A\n")
        elif r < 0.50:
            out.write(f"{svc}.{ORIGIN} A\n")
        elif r < 0.75:
            out.write(f"{svc}.{ORIGIN} AAAA\n")
        else:
            out.write(f"_http._tcp.{svc}.{ORIGIN} SRV\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.services <= 250 * 250:
        parser.error("--services must be between 1 and 62500")
    rng = random.Random(args.seed)
    os.makedirs(os.path.join(args.out_dir, "cache"), exist_ok=True)
    with open(os.path.join(args.out_dir, "cache", "dns-snapshot.json"), "w") as f:
        json.dump(snapshot(args.services), f)
    with open(os.path.join(args.out_dir, f"{ORIGIN}.zone"), "w") as f:
        zone_file(args.services, f)
    with open(os.path.join(args.out_dir, "queries.txt"), "w") as f:
        queries(args.services, args.queries, rng, f)


if __name__ == "__main__":
    main()
