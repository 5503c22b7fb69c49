//! What streams both ways: server-sent events cross from west to a client
//! of east's egress one by one, as the upstream sends them; a WebSocket
//! opened through east's egress talks to a server in west (the HTTP/1.1
//! upgrade tunnelled over the gateways' HTTP/2 connection).

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

const WS_HOST: &str = "chat.production.app.acme.com";

/// A real WebSocket client, through east's egress, to a real WebSocket
/// server in west: the handshake crosses, then messages go both ways.
pub(crate) async fn a_websocket_crosses_clusters(w: &World) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let east_gw = w.east_gw();
    w.east_config_has("chat", "west").await;
    let tcp = tokio::net::TcpStream::connect(east_gw.egress)
        .await
        .expect("connect to east's egress");
    let (mut ws, answer) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{WS_HOST}/room"), tcp),
    )
    .await
    .expect("the handshake in time")
    .expect("the WebSocket handshake through the gateways");
    assert_eq!(answer.status(), 101);
    for text in ["hello", "from", "east"] {
        ws.send(Message::text(text)).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply in time")
            .expect("a reply")
            .expect("a message");
        assert_eq!(reply, Message::text(format!("echo: {text}")));
    }
    ws.close(None).await.expect("close");
}
