//! Bounded fuzzing of the query path in CI: arbitrary bytes, and valid
//! queries with random bytes flipped, never panic `answer`, and every
//! response it produces parses as DNS.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use gns_dns::answer::{Client, Transport, answer};
use gns_dns::snapshot::{ClusterView, Service, ServicePort, Transport as Proto, Zone};
use gns_dns::{Prepared, ZoneSnapshot};
use proptest::prelude::*;

fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| {
        let snapshot = ZoneSnapshot {
            version: 3,
            answer_ttl: 5,
            views: vec![ClusterView {
                cluster: "east".into(),
                networks: vec!["10.8.0.0/16".parse().expect("net")],
            }],
            zones: vec![Zone {
                serial: 0,
                origin: "a.example".into(),
                nameservers: vec![],
                txt: vec!["t".into()],
                services: vec![Arc::new(Service {
                    name: "web".into(),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        port: 80,
                        protocol: Proto::Tcp,
                    }],
                    external: vec!["192.0.2.1".parse().expect("ip")],
                    views: [("east".to_owned(), vec!["10.8.0.1".parse().expect("ip")])]
                        .into_iter()
                        .collect(),
                    txt: vec![],
                })]
                .into(),
            }],
        };
        Prepared::build(Arc::new(snapshot), None)
    })
}

const VALID: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03web\x01a\x07example\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";

fn check(bytes: &[u8], source: IpAddr, transport: Transport) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    // A trusted source: the client subnet option is read too.
    let client = Client {
        source,
        trusted_subnet: true,
        transport,
    };
    let _ = answer(prepared(), bytes, client, None, &mut out);
    if !out.is_empty() {
        prop_assert!(
            hickory_proto::op::Message::from_vec(&out).is_ok(),
            "unparseable response to {bytes:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600), tcp in any::<bool>()) {
        check(&bytes, "10.8.0.9".parse().expect("ip"), if tcp { Transport::Tcp } else { Transport::Udp })?;
    }

    #[test]
    fn mutated_queries(flips in prop::collection::vec((0usize..VALID.len(), any::<u8>()), 1..6), cut in 12usize..=VALID.len()) {
        let mut q = VALID.to_vec();
        for (at, b) in flips {
            q[at] = b;
        }
        q.truncate(cut);
        check(&q, "192.0.2.200".parse().expect("ip"), Transport::Udp)?;
    }
}

#[test]
fn the_seed_query_is_answered() {
    let mut out = Vec::new();
    let client = Client {
        source: "10.8.0.9".parse().expect("ip"),
        trusted_subnet: false,
        transport: Transport::Udp,
    };
    let o = answer(prepared(), VALID, client, None, &mut out);
    assert_eq!(o.rcode, 0);
    let m = hickory_proto::op::Message::from_vec(&out).expect("parses");
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].data.to_string(),
        "10.8.0.1",
        "the east view, by source address"
    );
}
