//! Responses that stream: server-sent events cross from west to a client
//! of east's egress one by one, as the upstream sends them, not when the
//! response ends.

use super::*;

const SSE_HOST: &str = "events.production.app.acme.com";

/// Each event reaches the client about when the upstream sent it: the
/// first long before the last (the upstream sends them [`SSE_GAP`] apart).
pub(crate) async fn server_sent_events_arrive_one_by_one_across_clusters(w: &World) {
    let east_gw = w.east_gw();
    w.east_config_has("events", "west").await;
    let client = gns_tests::client()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut response = client
        .get(format!("http://{}/feed", east_gw.egress))
        .header("host", SSE_HOST)
        .send()
        .await
        .expect("the feed");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let mut text = String::new();
    let mut arrived = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("a chunk") {
        text.push_str(&String::from_utf8_lossy(&chunk));
        while arrived.len() < text.matches("\n\n").count() {
            arrived.push(started.elapsed());
        }
    }
    assert_eq!(
        text, "data: event-0\n\ndata: event-1\n\ndata: event-2\n\n",
        "every event, in order"
    );
    eprintln!("server-sent events arrived at {arrived:?}");
    // Buffered until the end, all three would arrive together.
    assert!(
        arrived[2].saturating_sub(arrived[0]) >= SSE_GAP,
        "events arrived as they were sent: {arrived:?}"
    );
}
