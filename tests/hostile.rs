//! The hostile suite: real node processes serving hostile plugins (the
//! `plugins/hostile` modes, chosen by each channel's consensus metadata)
//! next to a healthy solo channel, which must keep ordering (Broadcast and
//! Deliver) through every attack; at the end `consenter-host ledger verify`
//! must pass on every ledger. The README's "Security: hostile plugins"
//! table lists what each test shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use consenter_host::channel::ChannelTemplate;
use consenter_host::ledger::Ledger;
use consenter_host::node::{channel_dir, last_config_and_metadata};
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::proto::orderer::seek_info::SeekBehavior::{BlockUntilReady, FailIfNotReady};
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{SeekNewest, SeekSpecified};
use prost::Message;
use tonic::transport::Channel;

use common::*;

const SUCCESS: i32 = 200;
const SERVICE_UNAVAILABLE: i32 = 503;
const NOT_FOUND: i32 = 404;
const HEALTHY: &str = "healthy";
/// Envelopes per healthy block (MaxMessageCount).
const PER_BLOCK: usize = 5;

fn plugin_path(file: &str) -> PathBuf {
    consenter_test_plugins::path(file)
}

/// Writes the genesis block of each channel (name, consensus type, mode)
/// and of the healthy solo channel into a fresh data directory.
fn prepare(data: &Path, channels: &[(&str, &str, &str)]) {
    let mut all = vec![(HEALTHY, "solo", "")];
    all.extend_from_slice(channels);
    for (name, consensus, mode) in all {
        let mut t = ChannelTemplate::solo(name);
        t.consensus_type = consensus.into();
        t.consensus_metadata = Bytes::from(mode.as_bytes().to_vec());
        t.batch_size.max_message_count = PER_BLOCK as u32;
        t.batch_timeout = Duration::from_secs(30);
        let l = Ledger::open(&channel_dir(data, name)).unwrap();
        l.append(&[t.genesis_block().encode_to_vec().into()]).unwrap();
    }
}

/// A node serving the prepared channels, the hostile plugin loaded as
/// `hostile` (call deadline 300 ms) plus `extra` arguments; its log goes to
/// `<dir>/node.log`.
fn start(dir: &Path, extra: &[&str]) -> NodeProc {
    let hostile = format!("hostile={}", plugin_path("consenter_hostile.wasm").display());
    let mut args = vec![
        "--no-dev-channel",
        "--allow-unsigned-plugins",
        "--plugin",
        &hostile,
        "--plugin-limits",
        "hostile:call-deadline-ms=300",
    ];
    args.extend_from_slice(extra);
    NodeProc::start_logged(&dir.join("data"), &args, &dir.join("node.log"))
}

/// The healthy channel: one more block of PER_BLOCK envelopes, each
/// acknowledged SUCCESS, then read back with Deliver.
struct Healthy {
    blocks: u64,
}

impl Healthy {
    async fn round(&mut self, c: &mut AtomicBroadcastClient<Channel>) {
        let n = self.blocks;
        let envs = (0..PER_BLOCK).map(|i| message(HEALTHY, &format!("h{n}-{i}"), 100)).collect();
        for (st, info) in broadcast_all(c, envs).await {
            assert_eq!(st, SUCCESS, "healthy channel refused an envelope: {info}");
        }
        self.blocks += 1;
        let blocks = tokio::time::timeout(Duration::from_secs(10), deliver(c, HEALTHY, self.blocks, self.blocks))
            .await
            .expect("the healthy channel wrote its block");
        assert_eq!(blocks[0].data.as_ref().unwrap().data.len(), PER_BLOCK);
    }
}

/// Broadcasts one envelope and returns its (status, info).
async fn send(c: &mut AtomicBroadcastClient<Channel>, channel: &str, tx: &str) -> (i32, String) {
    broadcast_all(c, vec![message(channel, tx, 50)]).await.remove(0)
}

/// Waits (up to 10 s) until `channel` errs: a strict Deliver of the blocks
/// to come ends with SERVICE_UNAVAILABLE.
async fn wait_errored(c: &mut AtomicBroadcastClient<Channel>, channel: &str) {
    let req = seek_request(channel, Pos::Newest(SeekNewest {}), spec(u64::MAX), BlockUntilReady, false);
    let r = tokio::time::timeout(Duration::from_secs(10), deliver_raw(c, req)).await.expect("the chain errs");
    assert_eq!(r.1, Some(SERVICE_UNAVAILABLE), "{channel}: {r:?}");
}

fn spec(n: u64) -> Pos {
    Pos::Specified(SeekSpecified { number: n })
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
}

/// Waits (up to 10 s) for a log line containing every one of `needles`.
fn wait_log(dir: &Path, needles: &[&str]) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = log_of(dir).lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_string();
        }
        assert!(Instant::now() < end, "no log line with {needles:?} in:\n{}", log_of(dir));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the node with SIGINT (halting every chain), waits for it to exit,
/// then checks every ledger with `consenter-host ledger verify`; returns
/// the verify output.
fn stop_and_verify(node: NodeProc, dir: &Path) -> String {
    stop_with(node, dir, "-INT")
}

/// As [`stop_and_verify`], stopping the node with `signal` (e.g. "-TERM").
fn stop_with(mut node: NodeProc, dir: &Path, signal: &str) -> String {
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the node did not stop on {signal}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "node exit: {status}\n{}", log_of(dir));
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .args(["ledger", "verify", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ledger verify failed:\n{text}");
    text
}

fn height_line(verify: &str, channel: &str) -> String {
    verify.lines().find(|l| l.starts_with(&format!("{channel}: "))).unwrap_or_default().to_string()
}

/// An infinite loop in each export, unbounded memory, deep recursion, a
/// panic and `unreachable`: each errs its own chain only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_every_export_err_only_their_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let enqueue_faults = [
        ("loop-enqueue", "loop:enqueue", "trapped in enqueue: call deadline exceeded"),
        ("oom", "oom:enqueue", "memory cap"),
        ("recurse", "recurse:enqueue", "trapped in enqueue"),
        ("panic", "panic:enqueue", "unreachable"),
        ("trap", "trap:enqueue", "unreachable"),
    ];
    let mut channels: Vec<(&str, &str, &str)> = enqueue_faults.iter().map(|(c, m, _)| (*c, "hostile", *m)).collect();
    channels.extend([
        ("loop-handle-chain", "hostile", "loop:handle-chain"),
        ("loop-start", "hostile", "loop:start"),
        ("loop-timer", "hostile", "loop:timer"),
        ("loop-halt", "hostile", "loop:halt"),
    ]);
    prepare(&d.join("data"), &channels);
    let node = start(d, &[]);
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };
    healthy.round(&mut c).await;

    // handle-chain and start: the channel is refused when the node starts.
    for (ch, call) in [("loop-handle-chain", "handle-chain"), ("loop-start", "start")] {
        let (st, info) = send(&mut c, ch, "x").await;
        assert_eq!(st, SERVICE_UNAVAILABLE, "{ch}: {info}");
        assert!(info.contains("not running") && info.contains(&format!("trapped in {call}: call deadline")), "{info}");
        healthy.round(&mut c).await;
    }
    // on-timer: the timer armed by start fires 10 ms later.
    wait_errored(&mut c, "loop-timer").await;
    let (st, info) = send(&mut c, "loop-timer", "x").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("trapped in on-timer: call deadline exceeded"), "{info}");
    healthy.round(&mut c).await;

    // enqueue: the envelope that triggers the fault gets SERVICE_UNAVAILABLE
    // with the reason; the chain stays errored.
    for (ch, _, expect) in &enqueue_faults {
        let (st, info) = send(&mut c, ch, "boom").await;
        assert_eq!(st, SERVICE_UNAVAILABLE, "{ch}: {info}");
        assert!(info.contains(expect), "{ch}: {info:?} should say {expect:?}");
        let (st, info) = send(&mut c, ch, "again").await;
        assert_eq!(st, SERVICE_UNAVAILABLE);
        assert!(info.contains("errored"), "{ch}: {info}");
        healthy.round(&mut c).await;
    }
    // halt: loop-halt orders normally until the node stops; its halt is cut
    // off by the deadline and the node still exits cleanly.
    assert_eq!(send(&mut c, "loop-halt", "fine").await.0, SUCCESS);
    healthy.round(&mut c).await;
    let verify = stop_and_verify(node, d);
    wait_log(d, &["loop-halt", "trapped in halt: call deadline exceeded"]);
    assert!(height_line(&verify, HEALTHY).contains("OK height 11"), "{verify}");
    assert!(height_line(&verify, "loop-halt").contains("OK height 2"), "{verify}");
    for (ch, _, _) in &enqueue_faults {
        assert!(height_line(&verify, ch).contains("OK height 1"), "{ch}: only genesis: {verify}");
    }
}

/// WASI sockets and clocks: every call traps, naming the WASI function.
/// Filesystem, environment, random and stdio are answered without I/O (no
/// preopened directory, an empty environment, the chain's seeded
/// generator, stdout and stderr into the log): the call returns and the
/// plugin reports what it got (`fail`), which the next Broadcast names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_calls_trap_naming_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (channel, what a trap names, or what the plugin reports when served)
    let cases = [
        ("wasi-fs", Err("std::fs::read returned Err(")),
        ("wasi-net", Ok("wasi:sockets/")),
        ("wasi-env", Err("std::env::var returned Err(NotPresent), std::env::args 0 arguments")),
        ("wasi-clock", Ok("wasi:clocks/wall-clock")),
        ("wasi-random", Err("wasi:random/random#get-random-u64 returned")),
        ("wasi-stdio", Err("println! and eprintln! returned")),
    ];
    let modes: Vec<String> = cases.iter().map(|(c, _)| format!("{c}:enqueue")).collect();
    let channels: Vec<(&str, &str, &str)> =
        cases.iter().zip(&modes).map(|((c, _), m)| (*c, "hostile", m.as_str())).collect();
    prepare(&d.join("data"), &channels);
    let node = start(d, &[]);
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };
    for (ch, outcome) in cases {
        let (st, info) = send(&mut c, ch, "peek").await;
        assert_eq!(st, SERVICE_UNAVAILABLE, "{ch}: {info}");
        match outcome {
            Ok(import) => assert!(
                info.contains(import) && info.contains("no WASI capability"),
                "{ch}: {info:?} should name {import}"
            ),
            Err(reported) => {
                let (st, info) = send(&mut c, ch, "again").await;
                assert_eq!(st, SERVICE_UNAVAILABLE, "{ch}: {info}");
                assert!(info.contains(reported), "{ch}: {info:?} should say {reported:?}");
            }
        }
        healthy.round(&mut c).await;
    }
    let verify = stop_and_verify(node, d);
    assert!(height_line(&verify, HEALTHY).contains("OK height 7"), "{verify}");
    wait_log(d, &["wasi-stdio", "hostile plugin on stderr"]);
}

/// Forged, out-of-order and double block writes, oversized metadata and
/// signing requests, absurd and too many timers are refused with an error
/// the plugin sees; handle reuse, forged handles, oversized lists and text,
/// handle hoarding trap; a timer flood trips the refusal cap; a log flood
/// is rate-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_abuse_is_refused_or_traps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(
        &d.join("data"),
        &[
            ("abuse", "hostile", "abuse:enqueue"),
            ("reuse-handle", "hostile", "reuse-handle:enqueue"),
            ("forge-handle", "hostile", "forge-handle:enqueue"),
            ("huge-log", "hostile", "huge-log:enqueue"),
            ("timer-flood", "hostile", "timer-flood:enqueue"),
            ("log-flood", "hostile", "log-flood:enqueue"),
            ("hoard", "hostile-tight", "hoard:enqueue"),
            ("handle-flood", "hostile-tight", "handle-flood:enqueue"),
        ],
    );
    let tight = format!("hostile-tight={}", plugin_path("consenter_hostile.wasm").display());
    let node = start(d, &["--plugin", &tight, "--plugin-limits", "hostile-tight:max-list-len=4,max-handles=1000"]);
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };

    // Every refused call, three times: the plugin saw each refusal (else it
    // fails its chain) and wrote exactly one block per envelope.
    for i in 0..3 {
        let (st, info) = send(&mut c, "abuse", &format!("a{i}")).await;
        assert_eq!(st, SUCCESS, "{info}");
    }
    let blocks = deliver(&mut c, "abuse", 1, 3).await;
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.data.as_ref().unwrap().data.len(), 1);
        assert_eq!(last_config_and_metadata(b).1, b"abuse");
        assert_eq!(b.header.as_ref().unwrap().number, i as u64 + 1);
    }
    let r = deliver_raw(&mut c, seek_request("abuse", spec(4), spec(4), FailIfNotReady, false)).await;
    assert_eq!(r, (vec![], Some(NOT_FOUND)), "no block beyond the three real ones");
    healthy.round(&mut c).await;

    for (ch, expect) in [
        ("reuse-handle", "unknown handle index"),
        ("forge-handle", "unknown handle index"),
        ("huge-log", "bytes to log, over the cap"),
        ("timer-flood", "1000 refused calls"),
    ] {
        let (st, info) = send(&mut c, ch, "x").await;
        assert_eq!(st, SERVICE_UNAVAILABLE, "{ch}: {info}");
        assert!(info.contains(expect), "{ch}: {info:?} should say {expect:?}");
        healthy.round(&mut c).await;
    }
    // Hoarding: four envelopes accepted and kept; the fifth makes a list of
    // 5 handles, over max-list-len=4: a trap, and four envelopes lost.
    for i in 0..4 {
        assert_eq!(send(&mut c, "hoard", &format!("k{i}")).await.0, SUCCESS);
    }
    let (st, info) = send(&mut c, "hoard", "k4").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("passed 5 handles to ordered-many, over the cap of 4"), "{info}");
    wait_log(d, &["channel=hoard", "plugin instance crashed", "lost_envelopes=4"]);
    let (st, info) = send(&mut c, "handle-flood", "x").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("1000 envelope, batch and block handles"), "{info}");
    healthy.round(&mut c).await;

    // A log flood: 100,000 lines asked for, a few hundred written.
    for i in 0..2 {
        assert_eq!(send(&mut c, "log-flood", &format!("f{i}")).await.0, SUCCESS);
    }
    healthy.round(&mut c).await;
    let verify = stop_and_verify(node, d);
    let flood = log_of(d).lines().filter(|l| l.contains("hostile log flood line")).count();
    assert!(flood > 0 && flood < 1_000, "{flood} flood lines reached the log");
    assert!(height_line(&verify, HEALTHY).contains("OK height 8"), "{verify}");
    assert!(height_line(&verify, "abuse").contains("OK height 4"), "{verify}");
    assert!(height_line(&verify, "log-flood").contains("OK height 3"), "{verify}");
}

/// `reload`: a crashed instance is replaced by one started from the last
/// written block (its consenter metadata), Broadcast answers
/// SERVICE_UNAVAILABLE meanwhile; a plugin that crashes after every start
/// is restarted with doubling delays until the crash-loop cap, then its
/// chain stays errored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_from_the_last_block_and_caps_crash_loops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(&d.join("data"), &[("poison", "hostile", "poison:boom"), ("crashloop", "hostile", "trap:timer")]);
    let node = start(
        d,
        &[
            "--restart-policy",
            "channel:poison=reload",
            "--restart-policy",
            "channel:crashloop=reload",
            "--restart-backoff-initial",
            "300ms",
            "--restart-max-crashes",
            "4",
        ],
    );
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };

    for tx in ["a", "b"] {
        assert_eq!(send(&mut c, "poison", tx).await.0, SUCCESS);
    }
    let (st, info) = send(&mut c, "poison", "boom").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("unreachable"), "{info}");
    let (st, info) = send(&mut c, "poison", "during").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("restarting"), "while restarting: {info}");
    healthy.round(&mut c).await;
    // Back after the backoff (polled with a deadline).
    let end = Instant::now() + Duration::from_secs(10);
    while send(&mut c, "poison", "c").await.0 != SUCCESS {
        assert!(Instant::now() < end, "the poison channel did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_log(d, &["channel=poison", "restarted from the last written block", "restarts=1"]);
    // The new instance got the last written block's consenter metadata.
    wait_log(d, &["poison:boom) started with consenter metadata \"b\""]);
    let blocks = deliver(&mut c, "poison", 1, 3).await;
    let md: Vec<Vec<u8>> = blocks.iter().map(|b| last_config_and_metadata(b).1).collect();
    assert_eq!(md, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    healthy.round(&mut c).await;

    // The crash loop: crashes 1..3 are restarted after 300, 600, 1200 ms;
    // the 4th leaves the chain errored.
    let line = wait_log(d, &["channel=crashloop", "crash loop: the chain stays errored"]);
    assert!(line.contains("crashes=4"), "{line}");
    let delays: Vec<u64> = log_of(d)
        .lines()
        .filter(|l| l.contains("channel=crashloop") && l.contains("restart scheduled"))
        .filter_map(|l| l.split("delay_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(delays, vec![300, 600, 1200], "growing delays");
    let restarts =
        log_of(d).lines().filter(|l| l.contains("channel=crashloop") && l.contains("restarted from")).count();
    assert_eq!(restarts, 3);
    let (st, info) = send(&mut c, "crashloop", "x").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("crash loop"), "{info}");
    healthy.round(&mut c).await;
    // It stays errored: no restart is scheduled after the cap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (st, info) = send(&mut c, "crashloop", "y").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("crash loop"), "{info}");
    // The counters, as the participation API shows them.
    let poison = consenter_view(&node, "poison");
    assert_eq!(
        (&poison["state"], &poison["restartPolicy"], &poison["crashes"], &poison["restarts"]),
        (&"running".into(), &"reload".into(), &1.into(), &1.into()),
        "{poison}"
    );
    assert!(poison["lastCrash"].as_str().is_some_and(|r| r.contains("unreachable")), "{poison}");
    let looped = consenter_view(&node, "crashloop");
    assert_eq!((&looped["state"], &looped["crashes"], &looped["restarts"]), (&"errored".into(), &4.into(), &3.into()));
    let fine = consenter_view(&node, HEALTHY);
    assert_eq!((&fine["state"], &fine["crashes"], &fine["plugin"]), (&"running".into(), &0.into(), &"solo".into()));
    let verify = stop_and_verify(node, d);
    assert!(height_line(&verify, HEALTHY).contains("OK height 4"), "{verify}");
    assert!(height_line(&verify, "poison").contains("OK height 4"), "{verify}");
}

/// The `consenter` object of `channel show` (the participation API).
fn consenter_view(node: &NodeProc, channel: &str) -> serde_json::Value {
    let admin = node.admin.as_deref().expect("the admin endpoint");
    let (ok, out) = common::cli(&["channel", "show", "-o", admin, "-c", channel]);
    assert!(ok && out.starts_with("Status: 200"), "{out}");
    let json = out.split_once('\n').map(|(_, j)| j).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["consenter"].clone()
}

/// A plugin importing an interface the host does not provide is refused at
/// load, naming the import; the node then runs without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_import_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(&d.join("data"), &[]);
    let sneaky = format!("sneaky={}", plugin_path("consenter_hostile_import.wasm").display());
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .args(["start", "--no-dev-channel", "--allow-unsigned-plugins", "--listen", "127.0.0.1:0", "--plugin", &sneaky])
        .arg("--data-dir")
        .arg(d.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plugin sneaky: imports evil:exfil/net@0.1.0, which this host does not provide"),
        "stderr: {err}"
    );
    let node = start(d, &[]);
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };
    healthy.round(&mut c).await;
    let verify = stop_and_verify(node, d);
    assert!(height_line(&verify, HEALTHY).contains("OK height 2"), "{verify}");
}

/// The channel's config in force, read from its ledger (node stopped).
fn ledger_config(dir: &Path, channel: &str) -> consenter_host::channel::ChannelConfig {
    let l = Ledger::open(&channel_dir(&dir.join("data"), channel)).unwrap();
    let rp = consenter_host::chain::ResumePoint::read(channel, &l).unwrap();
    (*rp.config).clone()
}

fn template_config(channel: &str) -> consenter_host::proto::common::Config {
    let mut t = ChannelTemplate::solo(channel);
    t.batch_size.max_message_count = PER_BLOCK as u32;
    t.batch_timeout = Duration::from_secs(30);
    config_in(&t.genesis_block())
}

fn timeout_update(channel: &str, timeout: &str) -> consenter_host::proto::common::Envelope {
    use consenter_host::proto::orderer::BatchTimeout;
    let v = BatchTimeout { timeout: timeout.into() }.encode_to_vec();
    orderer_update(channel, &template_config(channel), "BatchTimeout", v)
}

fn count_update(channel: &str, max: u32) -> consenter_host::proto::common::Envelope {
    use consenter_host::proto::orderer::BatchSize;
    let bs = BatchSize { max_message_count: max, absolute_max_bytes: 10 << 20, preferred_max_bytes: 2 << 20 };
    orderer_update(channel, &template_config(channel), "BatchSize", bs.encode_to_vec())
}

async fn send_env(
    c: &mut AtomicBroadcastClient<Channel>,
    env: consenter_host::proto::common::Envelope,
) -> (i32, String) {
    broadcast_all(c, vec![env]).await.remove(0)
}

/// Fabric's block writer and message processor checks, made by the host on
/// every plugin write: a config kept from an older config (a replay) is
/// refused; config messages never go in normal blocks, nor normal messages
/// in config blocks; an envelope validated under an older config sequence
/// is refused until revalidated; bloated metadata and empty blocks are
/// refused (an empty-block flood reaches the refusal cap and errs its
/// channel). Config updates that would brick a channel (an unknown or
/// clustered consensus type, an absurd BatchTimeout) are refused at
/// Broadcast. The config sequence and values change only by the updates
/// the host validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_invariants_are_the_hosts() {
    const BAD_REQUEST: i32 = 400;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(
        &d.join("data"),
        &[
            ("replay", "hostile", "replay-config:enqueue"),
            ("classes", "hostile", "config-in-normal:enqueue"),
            ("stale", "hostile", "stale:enqueue"),
            ("bloat", "hostile", "bloat:enqueue"),
            ("empty", "hostile", "empty-blocks:enqueue"),
        ],
    );
    let node = start(d, &[]);
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };
    healthy.round(&mut c).await;

    // Replay: the first update is kept, the second written, then the kept
    // one (made from sequence 0) is written after sequence 1: refused.
    assert_eq!(send_env(&mut c, timeout_update("replay", "5s")).await.0, SUCCESS);
    assert_eq!(send_env(&mut c, count_update("replay", 7)).await.0, SUCCESS);
    assert_eq!(send(&mut c, "replay", "after").await.0, SUCCESS, "the plugin saw the refusal and goes on");
    // Message classes: nothing is written.
    assert_eq!(send_env(&mut c, timeout_update("classes", "5s")).await.0, SUCCESS);
    assert_eq!(send(&mut c, "classes", "normal").await.0, SUCCESS);
    // Stale: two envelopes kept, a config written, the first kept one
    // refused (not revalidated), the second written after revalidation.
    for tx in ["s0", "s1"] {
        assert_eq!(send(&mut c, "stale", tx).await.0, SUCCESS);
    }
    assert_eq!(send_env(&mut c, timeout_update("stale", "5s")).await.0, SUCCESS);
    assert_eq!(send(&mut c, "stale", "s2").await.0, SUCCESS);
    // Bloated metadata: refused twice, then a proper write.
    for tx in ["b-huge", "b-ratio", "b-ok"] {
        assert_eq!(send(&mut c, "bloat", tx).await.0, SUCCESS, "{tx}");
    }
    healthy.round(&mut c).await;
    // Empty blocks: 100 refused per envelope; the 1,000th refusal errs.
    for i in 0..9 {
        assert_eq!(send(&mut c, "empty", &format!("e{i}")).await.0, SUCCESS);
    }
    let (st, info) = send(&mut c, "empty", "e9").await;
    assert_eq!(st, SERVICE_UNAVAILABLE, "{info}");
    assert!(info.contains("1000 refused calls"), "{info}");
    healthy.round(&mut c).await;

    // Config updates that would brick a channel are refused up front.
    use consenter_host::proto::orderer::ConsensusType;
    let cfg = template_config(HEALTHY);
    for (ty, expect) in [
        ("kafka", "ConsensusType.type \"kafka\" has no plugin on this node (available: etcdraft, hostile, solo)"),
        // A live swap to a single-node type is allowed (tests/swap.rs); to a
        // clustered one it is not yet.
        ("etcdraft", "\"etcdraft\" replicates across nodes and needs the cluster: this node runs without TLS"),
    ] {
        let v = ConsensusType { r#type: ty.into(), metadata: Default::default(), state: 0 }.encode_to_vec();
        let (st, info) = send_env(&mut c, orderer_update(HEALTHY, &cfg, "ConsensusType", v)).await;
        assert_eq!(st, BAD_REQUEST, "{info}");
        assert!(info.contains(expect), "{info:?} should say {expect:?}");
    }
    for (t, expect) in [
        (
            "99999999999999999999h",
            "BatchTimeout \"99999999999999999999h\" is not a valid timeout: time: invalid duration",
        ),
        ("25h", "over the longest this host supports (24h)"),
        ("-1s", "it must be positive"),
    ] {
        let (st, info) = send_env(&mut c, timeout_update(HEALTHY, t)).await;
        assert_eq!(st, BAD_REQUEST, "{t}: {info}");
        assert!(info.contains(expect), "{t}: {info:?} should say {expect:?}");
    }
    healthy.round(&mut c).await;
    for ch in ["replay", "classes", "stale", "bloat"] {
        let v = consenter_view(&node, ch);
        assert_eq!((&v["state"], &v["crashes"]), (&"running".into(), &0.into()), "{ch}: {v}");
    }
    let empty = consenter_view(&node, "empty");
    assert_eq!((&empty["state"], &empty["crashes"]), (&"errored".into(), &1.into()), "{empty}");

    let verify = stop_and_verify(node, d);
    assert!(height_line(&verify, HEALTHY).contains("OK height 5"), "{verify}");
    // replay: genesis, the second update's config block, "after".
    assert!(height_line(&verify, "replay").contains("OK height 3"), "{verify}");
    let replay = ledger_config(d, "replay");
    assert_eq!(replay.sequence, 1, "only the update the host validated last applied");
    assert_eq!(replay.batch_size.max_message_count, 7);
    assert_eq!(replay.batch_timeout, Duration::from_secs(30), "the replayed update did not apply");
    assert!(height_line(&verify, "classes").contains("OK height 1"), "{verify}");
    assert_eq!(ledger_config(d, "classes").sequence, 0);
    // stale: genesis, config, s1 (revalidated), s2.
    assert!(height_line(&verify, "stale").contains("OK height 4"), "{verify}");
    let stale = Ledger::open(&channel_dir(&d.join("data"), "stale")).unwrap();
    let b2 = stale.block(2).unwrap().unwrap();
    assert_eq!(last_config_and_metadata(&b2), (1, b"revalidated".to_vec()));
    drop(stale);
    assert_eq!(ledger_config(d, "stale").batch_timeout, Duration::from_secs(5));
    let bloat = Ledger::open(&channel_dir(&d.join("data"), "bloat")).unwrap();
    assert_eq!(bloat.height(), 2);
    assert_eq!(last_config_and_metadata(&bloat.block(1).unwrap().unwrap()).1, b"b-ok");
    drop(bloat);
    assert!(height_line(&verify, "empty").contains("OK height 11"), "{verify}");
    assert_eq!(ledger_config(d, HEALTHY).sequence, 0, "no refused update applied");
}

/// Host memory held for a plugin is budgeted in bytes (envelopes kept, or
/// blocks created and never written, past `max-held-mib` err the channel
/// while the node's memory stays bounded), and so is the disk a channel
/// writes (per minute and in total).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_and_disk_are_budgeted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(
        &d.join("data"),
        &[
            ("hoard-bytes", "hostile-small", "hoard-bytes:enqueue"),
            ("hoard-blocks", "hostile-small", "hoard-blocks:enqueue"),
            ("disk-rate", "hostile-rate", ""),
            ("disk-total", "hostile-total", ""),
        ],
    );
    let file = plugin_path("consenter_hostile.wasm").display().to_string();
    let (small, rate, total) =
        (format!("hostile-small={file}"), format!("hostile-rate={file}"), format!("hostile-total={file}"));
    let node = start(
        d,
        &[
            "--plugin",
            &small,
            "--plugin-limits",
            "hostile-small:max-held-mib=4",
            "--plugin",
            &rate,
            "--plugin-limits",
            "hostile-rate:disk-mib-per-minute=1",
            "--plugin",
            &total,
            "--plugin-limits",
            "hostile-total:disk-mib-total=1",
        ],
    );
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };
    healthy.round(&mut c).await;
    let before = rss_bytes(node.child.id());

    for ch in ["hoard-bytes", "hoard-blocks"] {
        let mut accepted = 0;
        let info = loop {
            let (st, info) =
                broadcast_all(&mut c, vec![message(ch, &format!("k{accepted}"), 512 << 10)]).await.remove(0);
            if st != SUCCESS {
                break info;
            }
            accepted += 1;
            assert!(accepted <= 8, "{ch}: 8 x 512 KiB held and no budget reached");
        };
        assert!(info.contains("max-held-mib"), "{ch}: {info}");
        assert!(accepted >= 6, "{ch}: only {accepted} envelopes before the budget");
        healthy.round(&mut c).await;
    }
    // 200 MiB more offered to the errored channels: refused, not held.
    for i in 0..100 {
        let envs =
            vec![message("hoard-bytes", &format!("m{i}"), 1 << 20), message("hoard-blocks", &format!("m{i}"), 1 << 20)];
        for (st, _) in broadcast_all(&mut c, envs).await {
            assert_eq!(st, SERVICE_UNAVAILABLE);
        }
    }
    let after = rss_bytes(node.child.id());
    assert!(before > 0 && after < before + (96 << 20), "the node's memory grew from {before} to {after} bytes");
    healthy.round(&mut c).await;

    // Disk: 1 MiB per minute, then 1 MiB in all.
    for (ch, expect) in [("disk-rate", "disk-mib-per-minute"), ("disk-total", "disk-mib-total")] {
        let mut answers = Vec::new();
        for i in 0..4 {
            answers.push(broadcast_all(&mut c, vec![message(ch, &format!("w{i}"), 400 << 10)]).await.remove(0));
        }
        assert_eq!(answers[0].0, SUCCESS, "{ch}: {answers:?}");
        assert!(answers.iter().any(|(st, _)| *st == SERVICE_UNAVAILABLE), "{ch}: {answers:?}");
        let v = consenter_view(&node, ch);
        assert_eq!(v["state"], "errored", "{ch}: {v}");
        assert!(v["lastCrash"].as_str().is_some_and(|r| r.contains(expect)), "{ch}: {v}");
        healthy.round(&mut c).await;
    }
    let verify = stop_and_verify(node, d);
    assert!(height_line(&verify, HEALTHY).contains("OK height 7"), "{verify}");
    assert!(height_line(&verify, "disk-rate").contains("OK height 3"), "{verify}");
    assert!(height_line(&verify, "disk-total").contains("OK height 3"), "{verify}");
}

/// A ledger disk that is nearly full (here: a reserve larger than the free
/// space) errs the channels that write, with the reason; the node keeps
/// serving what is written, the participation API's status and consenter
/// object agree, SIGTERM stops the node cleanly, and every ledger verifies.
/// A `--restart-policy` entry must say whether it names a channel or a
/// plugin type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_errs_the_writing_channels_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(&d.join("data"), &[]);
    let (ok, out) = common::cli(&[
        "start",
        "--data-dir",
        d.join("data").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--restart-policy",
        "healthy=reload",
    ]);
    assert!(!ok && out.contains("say whether \"healthy\" is a channel or a plugin type"), "{out}");

    let node = start(d, &["--disk-reserve-mib", "1000000000000"]);
    let mut c = node.client().await;
    let envs = (0..PER_BLOCK).map(|i| message(HEALTHY, &format!("f{i}"), 100)).collect();
    for (st, info) in broadcast_all(&mut c, envs).await {
        assert_eq!(st, SUCCESS, "{info}");
    }
    wait_errored(&mut c, HEALTHY).await;
    let (st, info) = send(&mut c, HEALTHY, "more").await;
    assert_eq!(st, SERVICE_UNAVAILABLE);
    assert!(info.contains("under the reserve"), "{info}");
    // Still serving: Broadcast and Deliver answer (SERVICE_UNAVAILABLE for
    // the errored chain, as Fabric's), and so does the participation API.
    let admin = node.admin.clone().unwrap();
    let (ok, out) = common::cli(&["channel", "show", "-o", &admin, "-c", HEALTHY]);
    assert!(ok && out.contains("\"status\": \"failed\""), "{out}");
    let v = consenter_view(&node, HEALTHY);
    assert_eq!((&v["state"], &v["crashes"]), (&"errored".into(), &1.into()), "{v}");
    assert!(v["lastCrash"].as_str().is_some_and(|r| r.contains("--disk-reserve-mib")), "{v}");
    let verify = stop_with(node, d, "-TERM");
    assert!(height_line(&verify, HEALTHY).contains("OK height 1"), "{verify}");
}

/// The consenter metadata of block `n` of `channel`, as text.
async fn block_metadata(c: &mut AtomicBroadcastClient<Channel>, channel: &str, n: u64) -> String {
    let blocks = tokio::time::timeout(Duration::from_secs(10), deliver(c, channel, n, n))
        .await
        .unwrap_or_else(|_| panic!("{channel}: block {n} did not come"));
    String::from_utf8_lossy(&last_config_and_metadata(&blocks[0]).1).into_owned()
}

/// A live upgrade between two builds of a hostile plugin that exports
/// `handover`: a state over the per-call byte cap is dropped (the new build
/// starts without it, a small one is handed over), a new build that traps
/// in `import-state` is rolled back to the old one, an old one that traps
/// in `export-state` is replaced from the ledger. Every channel keeps
/// ordering, and so does the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_handover_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let modes = [
        ("ho-small", "small-state:export-state"),
        ("ho-huge", "huge-state:export-state"),
        ("ho-import", "trap:import-state"),
        ("ho-export", "trap:export-state"),
    ];
    let channels: Vec<(&str, &str, &str)> = modes.iter().map(|(c, m)| (*c, "hostile", *m)).collect();
    prepare(&d.join("data"), &channels);
    let hostile = format!("hostile={}", plugin_path("hostile_handover.wasm").display());
    let node = NodeProc::start_logged(
        &d.join("data"),
        &["--no-dev-channel", "--allow-unsigned-plugins", "--plugin", &hostile, "--plugin-probation", "1h"],
        &d.join("node.log"),
    );
    let mut c = node.client().await;
    let mut healthy = Healthy { blocks: 0 };
    healthy.round(&mut c).await;
    let build_a = consenter_view(&node, "ho-small")["sha256"].as_str().unwrap().to_string();
    for (ch, _) in modes {
        assert_eq!(send(&mut c, ch, "before").await.0, SUCCESS, "{ch}");
        assert_eq!(block_metadata(&mut c, ch, 1).await, "before imported none", "{ch}");
    }

    // Build b of the same type, installed live: every hostile channel
    // switches at its next block boundary.
    let admin = node.admin.as_deref().expect("the admin endpoint");
    let b = plugin_path("hostile_handover_b.wasm");
    let (ok, out) = cli(&["plugin", "install", "-o", admin, b.to_str().unwrap(), "--consensus-type", "hostile"]);
    assert!(ok && out.starts_with("Status: 201"), "{out}");
    let settled = |v: &serde_json::Value| v["upgrades"] == 1 || v["rollbacks"] == 1;
    let end = Instant::now() + Duration::from_secs(20);
    for (ch, _) in modes {
        while !settled(&consenter_view(&node, ch)) {
            assert!(Instant::now() < end, "{ch} did not switch: {}", consenter_view(&node, ch));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    healthy.round(&mut c).await;

    // What each channel's next block says the new instance imported.
    for (ch, want) in [
        ("ho-small", "after imported 1024"),
        ("ho-huge", "after imported none"),
        ("ho-import", "after imported none"),
        ("ho-export", "after imported none"),
    ] {
        let (st, info) = send(&mut c, ch, "after").await;
        assert_eq!(st, SUCCESS, "{ch}: {info}");
        assert_eq!(block_metadata(&mut c, ch, 2).await, want, "{ch}");
        let v = consenter_view(&node, ch);
        assert_eq!(v["state"], "running", "{ch}: {v}");
    }
    wait_log(d, &["channel=ho-huge", "state_bytes=8388608", "over the per-call byte cap"]);
    // The new build runs where its start succeeded ...
    for ch in ["ho-small", "ho-huge", "ho-export"] {
        let v = consenter_view(&node, ch);
        assert!(v["sha256"] != build_a.as_str() && v["upgrades"] == 1 && v["rollbacks"] == 0, "{ch}: {v}");
    }
    // ... and the channel whose new build trapped in import-state is back
    // on build a, with the reason.
    let v = consenter_view(&node, "ho-import");
    assert_eq!((&v["sha256"], &v["rollbacks"]), (&build_a.clone().into(), &1.into()), "{v}");
    let reason = v["lastRollback"].as_str().unwrap_or_default();
    assert!(reason.contains("did not start") && reason.contains("import-state"), "{reason}");
    wait_log(d, &["channel=ho-export", "trapped in export-state"]);
    healthy.round(&mut c).await;

    let verify = stop_and_verify(node, d);
    assert!(height_line(&verify, HEALTHY).contains("OK height 4"), "{verify}");
    for (ch, _) in modes {
        assert!(height_line(&verify, ch).contains("OK height 3"), "{ch}: {verify}");
    }
}
