//! `consenter-host bench` against a real node: every envelope acknowledged
//! and seen in a block, the summary lines printed; a refusal makes the exit
//! code non-zero and says why.

mod common;

use std::process::Command;

use common::*;

fn bench(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host")).arg("bench").args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn bench_commits_every_envelope_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = NodeProc::start(&data, &["--dev-batch-timeout", "50ms"]);
    let msp = data.join("dev-identity/client/msp");
    let (ok, out) = bench(&[
        "--orderer",
        &node.addr,
        "--messages",
        "3000",
        "--clients",
        "4",
        "--size",
        "200",
        "--msp-dir",
        msp.to_str().unwrap(),
        "--mspid",
        "DevMSP",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("acknowledged: ") && out.contains("(3000 in"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("committed: ") && l.contains("tx/s (3000 in")), "{out}");
    assert!(out.contains("latency: p50 "), "{out}");
    assert!(out.contains("envelopes seen: 3000"), "{out}");
    // 3000 envelopes with MaxMessageCount 500: at least 6 blocks.
    let blocks: u64 = out.split("blocks: ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(blocks >= 6, "{out}");

    // A second run on the same channel starts after the first run's blocks.
    let (ok, out) = bench(&["--orderer", &node.addr, "--messages", "500", "--clients", "2", "--size", "100"]);
    assert!(ok, "{out}");
    assert!(out.contains("envelopes seen: 500"), "only its own blocks are counted: {out}");
}

#[test]
fn bench_reports_an_unknown_channel() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &[]);
    let (ok, out) = bench(&["--orderer", &node.addr, "--channel", "nope", "--messages", "10"]);
    assert!(!ok, "{out}");
    assert!(out.contains("NOT_FOUND"), "{out}");
}

/// Every envelope over the channel's AbsoluteMaxBytes: each is refused,
/// the refusals are reported once per answer with their count, and the
/// exit code says how many.
#[test]
fn bench_counts_refusals_by_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &["--dev-absolute-max-bytes", "1024"]);
    let (ok, out) = bench(&["--orderer", &node.addr, "--messages", "300", "--clients", "3", "--size", "2048"]);
    assert!(!ok, "{out}");
    // The answers name each envelope's size (its tx id's length varies):
    // one line per size, not one per envelope.
    let refused: Vec<&str> = out.lines().filter(|l| l.starts_with("refused: ")).collect();
    assert!(!refused.is_empty() && refused.len() <= 3, "one line per answer: {out}");
    let mut total = 0;
    for l in &refused {
        let (n, rest) = l.strip_prefix("refused: ").unwrap().split_once(" x ").expect("a count");
        total += n.parse::<u64>().unwrap();
        assert!(rest.starts_with("BAD_REQUEST (400): message payload is "), "{out}");
        assert!(rest.ends_with("bytes and exceeds maximum allowed 1024 bytes"), "{out}");
    }
    assert_eq!(total, 300, "{out}");
    assert!(out.contains("300 envelopes were refused"), "{out}");
}

/// An AtomicBroadcast server that behaves like grpc-go (so Fabric's
/// orderer) about response headers: a call's headers go out only with its
/// first message. In tonic the headers leave when the handler returns, so
/// each handler returns only once it has its first message. Blocks are cut
/// every `CUT` envelopes and when a Broadcast stream ends, but only once a
/// Deliver call asking for a block that does not exist yet has arrived:
/// so that call's headers are always held back, however the client's tasks
/// are scheduled, and a client that waits for them before broadcasting
/// waits forever.
mod headerless {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use consenter_host::block;
    use consenter_host::proto::common::{self, Block};
    use consenter_host::proto::orderer::atomic_broadcast_server::AtomicBroadcast;
    use consenter_host::proto::orderer::seek_position::Type as Pos;
    use consenter_host::proto::orderer::{BroadcastResponse, DeliverResponse, deliver_response};
    use prost::Message;
    use tokio::sync::{mpsc, watch};
    use tokio_stream::Stream;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    const CUT: usize = 100;

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[derive(Default)]
    struct Ledger {
        blocks: Vec<Block>,
        pending: Vec<Bytes>,
        /// A Deliver call for a future block has arrived; blocks may be cut.
        follower: bool,
    }

    pub struct Server {
        ledger: Arc<Mutex<Ledger>>,
        height: watch::Sender<u64>,
        /// Deliver calls whose headers were held back until a block existed.
        pub held_back: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Server {
        pub fn new() -> Server {
            let genesis = block::new_block(0, &[], vec![Bytes::from_static(b"genesis")]);
            let ledger = Ledger { blocks: vec![genesis], pending: vec![], follower: false };
            Server { ledger: Arc::new(Mutex::new(ledger)), height: watch::channel(1).0, held_back: Default::default() }
        }
    }

    fn cut(ledger: &Mutex<Ledger>, height: &watch::Sender<u64>) {
        let mut l = ledger.lock().unwrap();
        if l.pending.is_empty() || !l.follower {
            return;
        }
        let prev = block::header_hash(l.blocks.last().unwrap().header.as_ref().unwrap());
        let data = std::mem::take(&mut l.pending);
        let b = block::new_block(l.blocks.len() as u64, &prev, data);
        l.blocks.push(b);
        height.send_replace(l.blocks.len() as u64);
    }

    fn accept(ledger: &Mutex<Ledger>, height: &watch::Sender<u64>, env: common::Envelope) -> BroadcastResponse {
        let full = {
            let mut l = ledger.lock().unwrap();
            l.pending.push(Bytes::from(env.encode_to_vec()));
            l.pending.len() >= CUT
        };
        if full {
            cut(ledger, height);
        }
        BroadcastResponse { status: common::Status::Success as i32, info: String::new() }
    }

    #[tonic::async_trait]
    impl AtomicBroadcast for Server {
        type BroadcastStream = BoxStream<BroadcastResponse>;
        type DeliverStream = BoxStream<DeliverResponse>;

        async fn broadcast(
            &self,
            req: Request<Streaming<common::Envelope>>,
        ) -> Result<Response<Self::BroadcastStream>, Status> {
            let mut input = req.into_inner();
            let (tx, rx) = mpsc::channel(1024);
            // No headers before the first answer, which needs an envelope.
            if let Some(first) = input.message().await? {
                tx.send(Ok(accept(&self.ledger, &self.height, first))).await.unwrap();
            }
            let (ledger, height) = (self.ledger.clone(), self.height.clone());
            tokio::spawn(async move {
                while let Ok(Some(env)) = input.message().await {
                    if tx.send(Ok(accept(&ledger, &height, env))).await.is_err() {
                        break;
                    }
                }
                cut(&ledger, &height);
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn deliver(
            &self,
            req: Request<Streaming<common::Envelope>>,
        ) -> Result<Response<Self::DeliverStream>, Status> {
            let mut input = req.into_inner();
            let env = input.message().await?.ok_or_else(|| Status::invalid_argument("no seek request"))?;
            let (_, seek) =
                consenter_host::grpc::parse_seek(&env).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let height = *self.height.borrow();
            let pos = |p: &Option<consenter_host::proto::orderer::SeekPosition>| match p.as_ref().unwrap().r#type {
                Some(Pos::Newest(_)) => height - 1,
                Some(Pos::Specified(ref s)) => s.number,
                _ => 0,
            };
            let (start, stop) = (pos(&seek.start), pos(&seek.stop));
            // Hold the headers back until the first block exists.
            let mut rx = self.height.subscribe();
            let now = *rx.borrow();
            if start >= now {
                self.held_back.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.ledger.lock().unwrap().follower = true;
                cut(&self.ledger, &self.height);
            }
            rx.wait_for(|h| *h > start).await.map_err(|_| Status::internal("server gone"))?;
            let (tx, out) = mpsc::channel(16);
            let ledger = self.ledger.clone();
            tokio::spawn(async move {
                let mut n = start;
                loop {
                    if rx.wait_for(|h| *h > n).await.is_err() {
                        return;
                    }
                    let b = ledger.lock().unwrap().blocks[n as usize].clone();
                    let r = DeliverResponse { r#type: Some(deliver_response::Type::Block(b)) };
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                    if n == stop {
                        let st = DeliverResponse {
                            r#type: Some(deliver_response::Type::Status(common::Status::Success as i32)),
                        };
                        let _ = tx.send(Ok(st)).await;
                        return;
                    }
                    n += 1;
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(out))))
        }
    }
}

/// Fabric's orderer (grpc-go) sends a Deliver stream's response headers
/// only with its first block. The bench must broadcast without waiting
/// for them: against such a server it commits every envelope.
#[test]
fn bench_does_not_wait_for_deliver_headers() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = headerless::Server::new();
    let held_back = server.held_back.clone();
    rt.spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tonic::transport::Server::builder()
            .add_service(consenter_host::proto::orderer::atomic_broadcast_server::AtomicBroadcastServer::new(server))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    // The bench as a process, with a deadline: waiting for the follow
    // stream's headers before broadcasting would never end here.
    let mut child = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .args(["bench", "--orderer", &addr, "--channel", "anychannel", "--messages", "1000", "--clients", "3"])
        .args(["--size", "50", "--commit-timeout", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut out).unwrap();
        std::io::Read::read_to_string(&mut { stderr }, &mut err).unwrap();
        let _ = tx.send(format!("{out}{err}"));
    });
    let out = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill();
            panic!("bench did not finish within 120 s against a server that holds back response headers");
        }
    };
    let status = child.wait().unwrap();
    assert!(status.success(), "{out}");
    assert!(out.lines().any(|l| l.starts_with("committed: ") && l.contains("(1000 in")), "{out}");
    assert!(out.contains("envelopes seen: 1000"), "{out}");
    assert!(
        held_back.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the follow stream's headers were held back until its first block"
    );
}
