//! Helpers for end-to-end tests: start a real node process, talk to it over
//! real gRPC.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use consenter_host::envelope;
use consenter_host::proto::common::{Block, Envelope, HeaderType};
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::proto::orderer::seek_info::SeekBehavior;
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{SeekInfo, SeekPosition, SeekSpecified, deliver_response};
use prost::Message;
use tonic::transport::Channel;

/// A node process; killed (SIGKILL) when dropped.
pub struct NodeProc {
    pub child: Child,
    pub addr: String,
    /// The admin endpoint (host:port), unless started with --no-admin.
    pub admin: Option<String>,
    /// The operations endpoint (host:port), if it serves one.
    pub operations: Option<String>,
    /// Stdout lines up to the listening line, then the admin and
    /// operations endpoints' lines.
    pub banner: Vec<String>,
    /// Stdout lines after it.
    pub rest: std::sync::mpsc::Receiver<String>,
}

impl NodeProc {
    /// Starts `consenter-host start` on a free port with `args`, and waits
    /// for the line saying where it listens.
    pub fn start(data_dir: &Path, args: &[&str]) -> NodeProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_consenter-host"));
        cmd.arg("start").arg("--data-dir").arg(data_dir).args(args);
        Self::spawn(cmd)
    }

    /// Starts `consenter-host start --listen 127.0.0.1:0` in `cwd` with no
    /// other flag (the embedded default); returns it and its stdout lines
    /// up to the listening line.
    pub fn start_default(cwd: &Path) -> NodeProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_consenter-host"));
        cmd.current_dir(cwd).arg("start");
        Self::spawn(cmd)
    }

    /// As [`NodeProc::start`], with the node's log (stderr) written to `log`.
    pub fn start_logged(data_dir: &Path, args: &[&str], log: &Path) -> NodeProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_consenter-host"));
        cmd.arg("start").arg("--data-dir").arg(data_dir).args(args);
        Self::spawn_with(cmd, std::fs::File::create(log).expect("creating the node's log file").into())
    }

    fn spawn(cmd: Command) -> NodeProc {
        Self::spawn_with(cmd, Stdio::null())
    }

    fn spawn_with(mut cmd: Command, stderr: Stdio) -> NodeProc {
        let given: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        if !given.iter().any(|a| a == "--no-admin" || a == "--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        if !given.iter().any(|a| a == "--no-operations" || a == "--operations-listen") {
            cmd.args(["--operations-listen", "127.0.0.1:0"]);
        }
        if !given.iter().any(|a| a == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        Self::spawn_as_is(cmd, stderr, given.iter().any(|a| a == "--no-admin"))
    }

    /// Starts `cmd` as it is (no flag added: its addresses come from its
    /// configuration, port 0 for free ports) and waits for the listening
    /// line; `no_admin` if it serves no admin endpoint.
    pub fn spawn_as_is(mut cmd: Command, stderr: Stdio, no_admin: bool) -> NodeProc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("starting consenter-host");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = vec![];
        let addr = loop {
            let line = lines.next().expect("node exited before listening").expect("reading node stdout");
            banner.push(line.clone());
            if let Some(rest) = line.strip_prefix("consenter-host listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // The rest of the banner, then keep draining stdout so the node
        // never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut admin = None;
        if !no_admin {
            let line = lines.next().expect("node exited before the admin line").expect("reading node stdout");
            banner.push(line.clone());
            let a = line
                .strip_prefix("admin endpoint on http://")
                .or_else(|| line.strip_prefix("admin endpoint on https://"))
                .expect("the admin endpoint line");
            admin = Some(a.split_whitespace().next().unwrap().to_string());
        }
        // The operations endpoint's line follows, when it serves one (a
        // node whose default address was taken has none).
        let line = lines.next().expect("node exited after its first lines").expect("reading node stdout");
        let operations = match line
            .strip_prefix("operations endpoint on http://")
            .or_else(|| line.strip_prefix("operations endpoint on https://"))
        {
            Some(a) => {
                banner.push(line.clone());
                a.split_whitespace().next().map(str::to_string)
            }
            None => {
                let _ = tx.send(line);
                None
            }
        };
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        NodeProc { child, addr, admin, operations, banner, rest: rx }
    }

    /// A one-shot HTTP request to the operations endpoint.
    pub fn ops(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> consenter_host::admin::HttpAnswer {
        let addr = self.operations.as_deref().expect("the node serves an operations endpoint");
        consenter_host::admin::request(addr, method, path, body).expect("talking to the operations endpoint")
    }

    /// The value of the Prometheus sample `name{labels}` (labels as
    /// rendered, in the order the node gives them, e.g.
    /// `channel="x",type="MESSAGE",status="SUCCESS"`), or
    /// None if the node does not show it.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = String::from_utf8(self.ops("GET", "/metrics", None).body).unwrap();
        metric_in(&text, sample)
    }

    /// The next stdout line (waits up to 10 s).
    pub fn next_line(&self) -> String {
        self.rest.recv_timeout(Duration::from_secs(10)).expect("no more output from the node")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub async fn client(&self) -> AtomicBroadcastClient<Channel> {
        let url = format!("http://{}", self.addr);
        for _ in 0..100 {
            if let Ok(c) = AtomicBroadcastClient::connect(url.clone()).await {
                return c.max_decoding_message_size(64 << 20);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot connect to {url}");
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of sample `name{labels}` in Prometheus text.
pub fn metric_in(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the `consenter-host` binary with `args`; returns whether it
/// succeeded and its stdout followed by its stderr.
pub fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running consenter-host");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn message(channel: &str, tx: &str, size: usize) -> Envelope {
    signed_message(channel, tx, size, None)
}

pub fn signed_message(
    channel: &str,
    tx: &str,
    size: usize,
    signer: Option<&consenter_host::signer::Signer>,
) -> Envelope {
    let b = envelope::build(channel, HeaderType::Message, tx, Bytes::from(vec![0x5a; size]), signer).unwrap();
    Envelope::decode(b).unwrap()
}

pub fn seek_envelope(channel: &str, start: u64, stop: u64, behavior: SeekBehavior) -> Envelope {
    let pos = |n| SeekPosition { r#type: Some(Pos::Specified(SeekSpecified { number: n })) };
    let seek =
        SeekInfo { start: Some(pos(start)), stop: Some(pos(stop)), behavior: behavior as i32, error_response: 0 };
    let b = envelope::build(channel, HeaderType::DeliverSeekInfo, "", seek.encode_to_vec().into(), None).unwrap();
    Envelope::decode(b).unwrap()
}

/// Reads blocks start..=stop with Deliver (waiting for them).
pub async fn deliver(client: &mut AtomicBroadcastClient<Channel>, channel: &str, start: u64, stop: u64) -> Vec<Block> {
    let req = tokio_stream::iter(vec![seek_envelope(channel, start, stop, SeekBehavior::BlockUntilReady)]);
    let mut s = client.deliver(req).await.unwrap().into_inner();
    let mut out = vec![];
    while let Some(r) = s.message().await.unwrap() {
        match r.r#type {
            Some(deliver_response::Type::Block(b)) => out.push(b),
            Some(deliver_response::Type::Status(st)) => {
                assert_eq!(st, 200, "deliver status");
                break;
            }
            None => panic!("empty deliver response"),
        }
    }
    out
}

/// A Deliver request from explicit positions.
pub fn seek_request(channel: &str, start: Pos, stop: Pos, behavior: SeekBehavior, best_effort: bool) -> Envelope {
    let seek = SeekInfo {
        start: Some(SeekPosition { r#type: Some(start) }),
        stop: Some(SeekPosition { r#type: Some(stop) }),
        behavior: behavior as i32,
        error_response: best_effort as i32,
    };
    let b = envelope::build(channel, HeaderType::DeliverSeekInfo, "", seek.encode_to_vec().into(), None).unwrap();
    Envelope::decode(b).unwrap()
}

/// Sends one Deliver request; returns the block numbers received and the
/// final status (None if the stream ended without one).
pub async fn deliver_raw(client: &mut AtomicBroadcastClient<Channel>, req: Envelope) -> (Vec<u64>, Option<i32>) {
    let mut s = client.deliver(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let mut blocks = vec![];
    while let Some(r) = s.message().await.unwrap() {
        match r.r#type {
            Some(deliver_response::Type::Block(b)) => blocks.push(b.header.unwrap().number),
            Some(deliver_response::Type::Status(st)) => return (blocks, Some(st)),
            None => break,
        }
    }
    (blocks, None)
}

/// Broadcasts envelopes on one stream; returns (status, info) for each.
pub async fn broadcast_all(client: &mut AtomicBroadcastClient<Channel>, envs: Vec<Envelope>) -> Vec<(i32, String)> {
    let n = envs.len();
    let mut acks = client.broadcast(tokio_stream::iter(envs)).await.unwrap().into_inner();
    let mut out = vec![];
    while out.len() < n {
        let r = acks.message().await.unwrap().expect("one response per envelope");
        out.push((r.status, r.info));
    }
    out
}

/// The Node.js interop folder.
pub fn node_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node")
}

/// Installs the npm packages of tests/node (once; `npm ci` from the
/// committed lock). Node.js and npm must be on the machine.
pub fn npm_ci() {
    let dir = node_dir();
    if dir.join("node_modules/fabric-common").exists() && dir.join("node_modules/fabric-protos").exists() {
        return;
    }
    let st = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .status()
        .expect("running npm: Node.js and npm are needed for the Fabric interop tests");
    assert!(st.success(), "npm ci in {} failed", dir.display());
}

/// A ConfigUpdate of `channel` that sets the orderer value `key` (e.g.
/// "BatchTimeout") of `current` to `value`: its version + 1, read set at the
/// current group versions.
pub fn orderer_value_update(
    channel: &str,
    current: &consenter_host::proto::common::Config,
    key: &str,
    value: Vec<u8>,
) -> consenter_host::proto::common::ConfigUpdate {
    use consenter_host::proto::common::{ConfigGroup, ConfigUpdate};
    let root = current.channel_group.as_ref().expect("a channel group");
    let orderer = &root.groups["Orderer"];
    let mut v = orderer.values[key].clone();
    v.value = value.into();
    v.version += 1;
    let stub = |v: u64| ConfigGroup { version: v, ..Default::default() };
    let mut read = stub(root.version);
    read.groups.insert("Orderer".into(), stub(orderer.version));
    let mut write = read.clone();
    write.groups.get_mut("Orderer").expect("the Orderer group").values.insert(key.into(), v);
    ConfigUpdate { channel_id: channel.into(), read_set: Some(read), write_set: Some(write), ..Default::default() }
}

/// [`orderer_value_update`] as an unsigned CONFIG_UPDATE envelope (enough
/// for the org-less channels of `ChannelTemplate`, whose policies need no
/// signature).
pub fn orderer_update(
    channel: &str,
    current: &consenter_host::proto::common::Config,
    key: &str,
    value: Vec<u8>,
) -> Envelope {
    use consenter_host::proto::common::ConfigUpdateEnvelope;
    let update = orderer_value_update(channel, current, key, value);
    let cue = ConfigUpdateEnvelope { config_update: update.encode_to_vec().into(), signatures: vec![] };
    let b = envelope::build(channel, HeaderType::ConfigUpdate, "", cue.encode_to_vec().into(), None).unwrap();
    Envelope::decode(b).unwrap()
}

/// The `Config` inside a config block.
pub fn config_in(block: &Block) -> consenter_host::proto::common::Config {
    use consenter_host::proto::common::{ConfigEnvelope, Payload};
    let env = Envelope::decode(block.data.as_ref().expect("block data").data[0].clone()).unwrap();
    ConfigEnvelope::decode(Payload::decode(env.payload).unwrap().data).unwrap().config.expect("a config")
}

/// Resident memory of process `pid`, in bytes (Linux /proc).
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Load on its own Broadcast stream: `rounds` rounds of 100 envelopes of
/// 512 bytes (tx ids `l{round}-{k}`), each answered SUCCESS (asserted);
/// the task's result is the acknowledged tx ids, in order.
#[allow(dead_code)]
pub async fn spawn_load(node: &NodeProc, channel: &str, rounds: usize) -> tokio::task::JoinHandle<Vec<String>> {
    let mut client = node.client().await;
    let channel = channel.to_string();
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for round in 0..rounds {
            let envs: Vec<_> = (0..100).map(|k| message(&channel, &format!("l{round}-{k}"), 512)).collect();
            for (k, (st, info)) in broadcast_all(&mut client, envs).await.into_iter().enumerate() {
                assert_eq!(st, 200, "l{round}-{k}: {info}");
                acked.push(format!("l{round}-{k}"));
            }
        }
        acked
    })
}

/// The `consenter` object of `channel` as `channel show` prints it.
#[allow(dead_code)]
pub fn consenter_view(node: &NodeProc, channel: &str) -> serde_json::Value {
    let admin = node.admin.as_deref().expect("the admin endpoint");
    let (ok, out) = cli(&["channel", "show", "-o", admin, "-c", channel]);
    assert!(ok && out.starts_with("Status: 200"), "{out}");
    let json = out.split_once('\n').map(|(_, j)| j).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(json).unwrap()["consenter"].clone()
}
