//! Bulk transfers: a 1 GiB upload and a 1 GiB download between a client of
//! east's egress and an upstream in west, through both gateways (HTTP/1.1,
//! then HTTP/2 over mTLS), checked byte for byte, with both gateways'
//! resident memory sampled all along: the bodies stream, so it stays flat.

use super::*;

const BULK_HOST: &str = "bulk.production.app.acme.com";
/// The size of each transfer.
const GIB: u64 = 1 << 30;
/// The transfers are made of blocks of this size.
const BLOCK: usize = 256 * 1024;
/// How much more resident memory a gateway may take during the transfers
/// than before them: far below the 1 GiB a buffered body would take (the
/// HTTP/2 windows alone are 16 MiB per connection).
const MAX_GROWTH_MIB: f64 = 96.0;

/// Block `k` of a transfer: a fixed pattern with `k` in its first 8 bytes
/// (a block lost, repeated or out of order does not match).
fn block(k: u64) -> Vec<u8> {
    let mut block: Vec<u8> = (0..BLOCK)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    block[..8].copy_from_slice(&k.to_le_bytes());
    block
}

/// Checks a transfer as it arrives, in pieces of any size.
pub(crate) struct Verifier {
    position: u64,
    expected: Vec<u8>,
    /// Where the first wrong byte was, if any.
    pub(crate) mismatch: Option<u64>,
}

impl Verifier {
    pub(crate) fn new() -> Self {
        Self {
            position: 0,
            expected: block(0),
            mismatch: None,
        }
    }

    pub(crate) fn take(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let offset = (self.position % BLOCK as u64) as usize;
            let n = data.len().min(BLOCK - offset);
            if self.mismatch.is_none() && data[..n] != self.expected[offset..offset + n] {
                self.mismatch = Some(self.position);
            }
            self.position += n as u64;
            data = &data[n..];
            if self.position.is_multiple_of(BLOCK as u64) {
                self.expected[..8].copy_from_slice(&(self.position / BLOCK as u64).to_le_bytes());
            }
        }
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }
}

/// An HTTP/1.1 upstream: `POST /sink` reads the body as it comes, checks
/// it and answers `<bytes> ok` (or where it went wrong); `GET /source`
/// streams [`GIB`] bytes of blocks.
pub(crate) async fn bulk() -> u16 {
    serve_http1("bulk upstream", |req| async move {
        if req.method() == hyper::Method::POST {
            let answer = sink(req.into_body()).await;
            return hyper::Response::new(boxed(http_body_util::Full::new(Bytes::from(answer))));
        }
        let blocks = futures::stream::unfold(0u64, |k| async move {
            if k * BLOCK as u64 >= GIB {
                return None;
            }
            let frame = hyper::body::Frame::data(Bytes::from(block(k)));
            Some((Ok::<_, std::convert::Infallible>(frame), k + 1))
        });
        hyper::Response::builder()
            .header("content-length", GIB.to_string())
            .body(boxed(http_body_util::StreamBody::new(blocks)))
            .expect("response")
    })
    .await
}

/// Reads an upload to its end, checking it as it comes: `<bytes> ok`, or
/// where it went wrong.
async fn sink(mut body: hyper::body::Incoming) -> String {
    let mut check = Verifier::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    check.take(data);
                }
            }
            Err(e) => return format!("{} broken: {e}", check.position()),
        }
    }
    match check.mismatch {
        Some(at) => format!("{} mismatch at {at}", check.position()),
        None => format!("{} ok", check.position()),
    }
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Samples the largest resident memory of `pids` every 50 ms until `done`.
/// (the peaks, and how many samples were taken).
fn sample_peak(
    pids: Vec<u32>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<f64>, usize)> {
    tokio::spawn(async move {
        let mut peak = vec![0.0f64; pids.len()];
        let mut samples = 0;
        while !done.load(Ordering::Relaxed) {
            for (p, pid) in peak.iter_mut().zip(&pids) {
                *p = p.max(rss_mib(*pid));
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (peak, samples)
    })
}

/// 1 GiB up and 1 GiB down through east's egress to west, each byte
/// checked, each gateway's memory flat.
pub(crate) async fn a_gibibyte_crosses_clusters_each_way_in_flat_gateway_memory(w: &World) {
    w.east_config_has("bulk", "west").await;
    let pids: Vec<u32> = [w.east_gw(), w.west_gw()]
        .iter()
        .map(|gw| gw.process.pid().expect("gateway running"))
        .collect();
    let before: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_peak(pids, Arc::clone(&done));

    // Up: the head, then 1 GiB in blocks, written while the answer is awaited.
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(w.east_gw().egress)
        .await
        .expect("connect egress");
    let (mut reading, mut writing) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /sink HTTP/1.1\r\nhost: {BULK_HOST}\r\ncontent-length: {GIB}\r\nconnection: close\r\n\r\n"
        );
        writing.write_all(head.as_bytes()).await.expect("head");
        for k in 0..GIB / BLOCK as u64 {
            writing.write_all(&block(k)).await.expect("upload block");
        }
        writing
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(300), reading.read_to_end(&mut answer))
        .await
        .expect("the upload answered within 300 s")
        .expect("read the answer");
    let _writing = writer.await.expect("writer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let up = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(&format!("{GIB} ok")),
        "west's upstream got every byte in order: {answer}"
    );

    // Down: 1 GiB streamed back, checked as it arrives.
    let started = Instant::now();
    let mut response = gns_tests::client()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
        .get(format!("http://{}/source", w.east_gw().egress))
        .header("host", BULK_HOST)
        .send()
        .await
        .expect("the download");
    assert_eq!(response.status(), 200);
    let mut check = Verifier::new();
    while let Some(chunk) = response.chunk().await.expect("a chunk") {
        check.take(&chunk);
    }
    let down = started.elapsed();
    assert_eq!(check.mismatch, None, "the download arrived as sent");
    assert_eq!(check.position(), GIB, "the whole download arrived");

    done.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler.await.expect("sampler");
    assert!(
        samples >= 10,
        "memory was sampled all along ({samples} samples)"
    );
    let mib_s = |d: Duration| GIB as f64 / (1 << 20) as f64 / d.as_secs_f64();
    eprintln!(
        "1 GiB up in {up:?} ({:.0} MiB/s), down in {down:?} ({:.0} MiB/s); gateway RSS east {:.1} → peak {:.1} MiB, west {:.1} → peak {:.1} MiB ({samples} samples)",
        mib_s(up),
        mib_s(down),
        before[0],
        peak[0],
        before[1],
        peak[1]
    );
    for ((name, before), peak) in ["east", "west"].iter().zip(&before).zip(&peak) {
        assert!(
            peak - before < MAX_GROWTH_MIB,
            "{name}'s gateway grew from {before:.1} to {peak:.1} MiB while 1 GiB passed: bodies must stream"
        );
    }
}
