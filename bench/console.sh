#!/usr/bin/env bash
# The web console at scale: a federation with 100 clusters and 10,000
# services, and a headless Chromium (WebDriver) opening the overview:
# page weight, API calls and bytes, time until every cluster's card is on screen.
#   bench/console.sh [--clusters 100] [--services 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in chromium chromedriver; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing: apt-get install chromium chromium-driver" >&2; exit 1; }
done
cargo build --release -q --bin gns-federation --bin gns-console-bench
echo "# $(date -u +%FT%TZ) $(nproc) cores; $(git rev-parse --short HEAD); $(chromium --version)"
target/release/gns-console-bench --bin-dir target/release "$@"
