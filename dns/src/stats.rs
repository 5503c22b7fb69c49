//! Query counters for `/metrics`: lock-free atomics indexed by query type and
//! response code, bumped on the hot path and rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::answer::Outcome;
use crate::wire::rtype;

const TYPES: [(u16, &str); 10] = [
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::SRV, "SRV"),
    (rtype::TXT, "TXT"),
    (rtype::SOA, "SOA"),
    (rtype::NS, "NS"),
    (rtype::AXFR, "AXFR"),
    (rtype::IXFR, "IXFR"),
    (rtype::ANY, "ANY"),
    (0, "OTHER"),
];
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];

/// Counters of answered queries.
#[derive(Debug)]
pub struct Stats {
    counts: Vec<AtomicU64>,
    truncated: AtomicU64,
    dropped: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counts: (0..TYPES.len() * RCODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            truncated: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts one query.
    pub fn record(&self, o: &Outcome) {
        if o.rcode == 255 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let t = TYPES
            .iter()
            .position(|(code, _)| *code == o.qtype)
            .unwrap_or(TYPES.len() - 1);
        let r = match o.rcode {
            0..=5 => usize::from(o.rcode),
            16 => 6,
            _ => 7,
        };
        if let Some(c) = self.counts.get(t * RCODES.len() + r) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if o.truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Total queries answered.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Prometheus text of the counters.
    pub fn render(&self) -> String {
        let mut out = String::from("# TYPE gns_dns_queries_total counter\n");
        for (t, (_, tname)) in TYPES.iter().enumerate() {
            for (r, rname) in RCODES.iter().enumerate() {
                let n = self.counts[t * RCODES.len() + r].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "gns_dns_queries_total{{type=\"{tname}\",rcode=\"{rname}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# TYPE gns_dns_truncated_total counter\ngns_dns_truncated_total {}",
            self.truncated.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE gns_dns_dropped_total counter\ngns_dns_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        out
    }
}
