//! A hostile consenter for the fault-containment tests; never shipped. It
//! behaves like a tiny solo (every envelope its own block, its tx id as the
//! block's consenter metadata) until the event named by its mode, read from
//! ConsensusType.metadata as text, e.g. `loop:enqueue`:
//! - `trap:<event>`: executes `unreachable`;
//! - `panic:<event>`: panics;
//! - `loop:<event>`: spins forever (the epoch deadline must stop it);
//! - `oom:<event>`: grows memory without bound (the memory cap must stop it);
//! - `recurse:<event>`: unbounded recursion (the stack limit must stop it);
//! - `wasi-fs`, `wasi-net`, `wasi-env`, `wasi-clock`, `wasi-random`,
//!   `wasi-stdio` `:<event>`: std::fs, std::net, std::env::var and
//!   std::env::args, SystemTime::now, a raw `wasi:random` import, println!
//!   and eprintln! (sockets and clocks must trap; the host answers the
//!   rest without I/O: no preopened directory, an empty environment, the
//!   chain's seeded generator, stdout and stderr into its log; if a call
//!   returns, the plugin reports what it got with `fail`);
//! - `huge-log:<event>`: an 8 MiB log line (over the per-call byte cap);
//! - `reuse-handle:<event>`: passes a batch handle again after
//!   `create-next-block` consumed it;
//! - `forge-handle:<event>`: passes a made-up block handle;
//! - `hoard:<event>`: keeps every envelope, and offers them all to
//!   `ordered-many` once it holds 5 (over a `max-list-len` of 4);
//! - `handle-flood:<event>`: keeps empty batches from `cut` without end
//!   (the `max-handles` cap must stop it);
//! - `timer-flood:<event>`: arms timers without end (the timer cap refuses
//!   them; the refusal cap must fail the chain);
//! - `log-flood:<event>`: 50,000 log lines, then orders the envelope.
//!
//! `abuse:enqueue` tries every refused import call once per envelope
//! (out-of-order, double and oversized-metadata block writes, an oversized
//! `sign`, absurd and too many timers), checks that each was refused with
//! the right error, then writes the envelope properly; if the host accepted
//! any of them it calls `fail` saying which.
//! `poison:<tx-id>` traps on the envelope with that tx id (for restart
//! tests) and logs the consenter metadata it was started with.
//! `refuse:enqueue` answers false to every envelope (not a fault).
//!
//! Ordering invariants (each mode answers every envelope true and calls
//! `fail` saying what the host wrongly accepted):
//! - `replay-config:enqueue`: keeps the first config envelope, writes the
//!   second, then writes the kept one (a config made from an older config:
//!   must be refused);
//! - `config-in-normal:enqueue`: writes a config envelope with
//!   `write-block` and every normal envelope with `write-config-block`
//!   (both must be refused; nothing is written);
//! - `stale:enqueue`: keeps the first two normal envelopes; on a config
//!   envelope writes the config block, then the first kept envelope without
//!   revalidating it (must be refused), then the second after `revalidate`;
//! - `hoard-bytes:enqueue`: keeps every envelope (the held-bytes budget
//!   must stop it);
//! - `hoard-blocks:enqueue`: makes a block of every envelope and keeps it
//!   unwritten (likewise);
//! - `bloat:enqueue`: writes an envelope whose tx id ends in `-huge` with
//!   1 MiB of consenter metadata, one ending in `-ratio` with its own size
//!   plus 2 KiB (both must be refused), others with their tx id;
//! - `empty-blocks:enqueue`: writes 100 empty blocks after each envelope
//!   (each must be refused; the refusal cap then errs the chain);
//! - `revalidate-storm:enqueue`: revalidates each envelope 2,000 times
//!   (host work, not counted against the call deadline), then writes it.
//!
//! Built with the feature `handover` (`hostile_handover.wasm`; with
//! `second-build` too, `hostile_handover_b.wasm`, another build of the same
//! type) it also exports `handover`; every block's consenter metadata is
//! then `<tx id> imported <bytes|none>`, the size of the state its
//! `import-state` got. There:
//! - `huge-state:export-state` exports an 8 MiB state (over the host's
//!   `max-call-kib` cap: the new build must start without it);
//! - `small-state:export-state` exports a 1 KiB state (handed over);
//! - `trap:export-state`, `trap:import-state` trap there.
//!
//! `<event>` is one of `handle-chain`, `start`, `enqueue`, `timer`, `halt`,
//! `export-state`, `import-state`.

use consenter_sdk::{
    Batch, Block, Consenter, Envelope, EnvelopeInfo, Level, MessageClass, SupportError, host_log, support, timers,
};

struct Hostile {
    mode: String,
    hoard: Vec<Envelope>,
    batches: Vec<Batch>,
    blocks: Vec<Block>,
    /// The size of the state `import-state` got (builds with `handover`).
    #[cfg(feature = "handover")]
    imported: Option<usize>,
}

/// Which build this is (two builds of one type differ by it).
const BUILD: &str = if cfg!(feature = "second-build") { "build b" } else { "build a" };

impl Hostile {
    /// The consenter metadata of the block of envelope `tx`.
    fn metadata(&self, tx: &str) -> String {
        #[cfg(feature = "handover")]
        return format!("{tx} imported {}", self.imported.map_or("none".to_string(), |n| n.to_string()));
        #[cfg(not(feature = "handover"))]
        tx.to_string()
    }
}

/// Writes `env` alone in a block with `metadata`; false (after `fail`) if
/// the host refused.
fn write_alone(env: Envelope, metadata: &[u8], config: bool) -> bool {
    let r = support::create_next_block(Batch::new(vec![env])).and_then(|b| {
        if config { support::write_config_block(b, metadata) } else { support::write_block(b, metadata) }
    });
    match r {
        Ok(()) => true,
        Err(e) => {
            support::fail(&format!("writing block: {e}"));
            false
        }
    }
}

/// Expects the host to refuse `r` as invalid; Err(what it accepted).
fn refused(what: &str, r: Result<(), SupportError>) -> Result<(), String> {
    match r {
        Err(SupportError::Invalid(_)) | Err(SupportError::LimitExceeded(_)) => Ok(()),
        other => Err(format!("{what}: expected a refusal, got {other:?}")),
    }
}

fn write_refused(what: &str, env: Envelope, metadata: &[u8], config: bool) -> Result<(), String> {
    let b = support::create_next_block(Batch::new(vec![env])).map_err(|e| format!("{what}: creating: {e:?}"))?;
    let r = if config { support::write_config_block(b, metadata) } else { support::write_block(b, metadata) };
    refused(what, r)
}

/// The invariant modes: Ok(accepted) or Err(what the host wrongly allowed).
fn invariants(s: &mut Hostile, env: Envelope, info: EnvelopeInfo) -> Result<bool, String> {
    let config = info.class == MessageClass::Config;
    let tx = env.tx_id();
    match s.mode.as_str() {
        "replay-config:enqueue" if config => {
            if s.hoard.is_empty() {
                s.hoard.push(env);
                return Ok(true);
            }
            if !write_alone(env, &[], true) {
                return Ok(false);
            }
            let old = s.hoard.remove(0);
            write_refused("a config envelope made from an older config, written after a newer one", old, &[], true)?;
            Ok(true)
        }
        "config-in-normal:enqueue" => {
            if config {
                write_refused("a config envelope in a normal block", env, &[], false)?;
                return Ok(true);
            }
            // A normal envelope as a config block.
            let b = support::create_next_block(Batch::new(vec![env])).map_err(|e| format!("{e:?}"))?;
            refused("a normal envelope in a config block", support::write_config_block(b, &[]))?;
            Ok(true)
        }
        "stale:enqueue" => {
            if !config {
                if s.hoard.len() < 2 && support::sequence() == 0 {
                    s.hoard.push(env);
                    return Ok(true);
                }
                return Ok(write_alone(env, tx.as_bytes(), false));
            }
            if !write_alone(env, &[], true) {
                return Ok(false);
            }
            let second = s.hoard.pop().ok_or("no kept envelope")?;
            let first = s.hoard.pop().ok_or("no kept envelope")?;
            write_refused("an envelope validated under an older config, not revalidated", first, &[], false)?;
            support::revalidate(&second).map_err(|e| format!("revalidating: {e}"))?;
            Ok(write_alone(second, b"revalidated", false))
        }
        "hoard-bytes:enqueue" => {
            s.hoard.push(env);
            Ok(true)
        }
        "hoard-blocks:enqueue" => {
            let b = support::create_next_block(Batch::new(vec![env])).map_err(|e| format!("{e:?}"))?;
            s.blocks.push(b);
            Ok(true)
        }
        "empty-blocks:enqueue" => {
            if !write_alone(env, tx.as_bytes(), false) {
                return Ok(false);
            }
            for i in 0..100 {
                let b = support::create_next_block(support::cut()).map_err(|e| format!("{e:?}"))?;
                refused(&format!("empty block {i}"), support::write_block(b, &[]))?;
            }
            Ok(true)
        }
        "revalidate-storm:enqueue" => {
            for _ in 0..2000 {
                let _ = support::revalidate(&env);
            }
            Ok(write_alone(env, tx.as_bytes(), false))
        }
        _ => Ok(write_alone(env, tx.as_bytes(), config)),
    }
}

const INVARIANT_MODES: &[&str] = &[
    "replay-config:enqueue",
    "config-in-normal:enqueue",
    "stale:enqueue",
    "hoard-bytes:enqueue",
    "hoard-blocks:enqueue",
    "empty-blocks:enqueue",
    "revalidate-storm:enqueue",
];

#[link(wasm_import_module = "wasi:random/random@0.2.0")]
unsafe extern "C" {
    #[link_name = "get-random-u64"]
    fn wasi_get_random_u64() -> i64;
}

fn misbehave(mode: &str, event: &str, state: Option<&mut Hostile>) {
    let Some((what, when)) = mode.split_once(':') else { return };
    if when != event {
        return;
    }
    match what {
        "trap" => core::arch::wasm32::unreachable(),
        "panic" => panic!("hostile plugin panics in {event}"),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = core::hint::black_box(x.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                core::hint::black_box(&hoard);
            }
        }
        "recurse" => {
            core::hint::black_box(recurse(core::hint::black_box(1)));
        }
        "wasi-fs" => {
            let r = std::fs::read("/etc/passwd");
            support::fail(&format!("std::fs::read returned {:?}", r.map(|b| b.len())));
        }
        "wasi-net" => {
            let r = std::net::TcpStream::connect("127.0.0.1:7050");
            support::fail(&format!("std::net::TcpStream::connect returned {:?}", r.map(|_| ())));
        }
        "wasi-env" => {
            let r = std::env::var("HOME");
            let args = std::env::args().count();
            support::fail(&format!("std::env::var returned {r:?}, std::env::args {args} arguments"));
        }
        "wasi-stdio" => {
            println!("hostile plugin on stdout");
            eprintln!("hostile plugin on stderr");
            support::fail("println! and eprintln! returned");
        }
        "wasi-clock" => {
            let r = std::time::SystemTime::now();
            support::fail(&format!("SystemTime::now returned {r:?}"));
        }
        "wasi-random" => {
            // SAFETY: a plain import taking no arguments.
            let r = unsafe { wasi_get_random_u64() };
            support::fail(&format!("wasi:random/random#get-random-u64 returned {r}"));
        }
        "huge-log" => {
            host_log::log(Level::Info, &"x".repeat(8 << 20));
            support::fail("an 8 MiB log line was accepted");
        }
        "reuse-handle" => {
            let b = support::cut();
            let raw = b.handle();
            let _ = support::create_next_block(b);
            // SAFETY (for the guest): the handle is stale on purpose; the
            // host must trap rather than act on it.
            let again = unsafe { Batch::from_handle(raw) };
            let r = support::create_next_block(again);
            support::fail(&format!("a consumed batch handle was accepted again: {:?}", r.map(|b| b.number())));
        }
        "forge-handle" => {
            let forged = unsafe { Block::from_handle(4242) };
            let r = support::write_block(forged, &[]);
            support::fail(&format!("a made-up block handle was accepted: {r:?}"));
        }
        "handle-flood" => {
            if let Some(s) = state {
                loop {
                    s.batches.push(support::cut());
                }
            }
        }
        "timer-flood" => {
            let mut refused = 0u32;
            for id in 0..u32::MAX {
                match timers::set(id, 3_600_000) {
                    Ok(()) => {}
                    Err(SupportError::LimitExceeded(_)) => refused += 1,
                    Err(e) => support::fail(&format!("timer {id} refused with the wrong error: {e:?}")),
                }
                if refused > 100_000 {
                    support::fail("100000 refused timers and the chain still runs");
                    return;
                }
            }
        }
        "log-flood" => {
            for i in 0..50_000 {
                host_log::log(Level::Info, &format!("hostile log flood line {i}"));
            }
        }
        _ => {}
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = core::hint::black_box([n; 64]);
    recurse(buf[3] + 1) + buf[7]
}

/// Every refused import call once; Err(what the host wrongly accepted).
fn abuse(env: Envelope) -> Result<(), String> {
    let expect = |what: &str, r: Result<(), SupportError>, ok: fn(&SupportError) -> bool| match r {
        Err(e) if ok(&e) => Ok(()),
        other => Err(format!("{what}: expected a refusal, got {other:?}")),
    };
    let out_of_order = |e: &SupportError| matches!(e, SupportError::OutOfOrder(_));
    let limit = |e: &SupportError| matches!(e, SupportError::LimitExceeded(_));
    let h = support::height();
    // Out of order: block h+1 before block h.
    let a = support::create_next_block(support::cut()).map_err(|e| format!("{e:?}"))?;
    let b = support::create_next_block(support::cut()).map_err(|e| format!("{e:?}"))?;
    if a.number() != h || b.number() != h + 1 {
        return Err(format!("created blocks {} and {} at height {h}", a.number(), b.number()));
    }
    expect("writing block h+1 before h", support::write_block(b, &[]), out_of_order)?;
    // Oversized consenter metadata (the host's cap is 1 MiB).
    expect("2 MiB of consenter metadata", support::write_block(a, &vec![0u8; 2 << 20]), limit)?;
    // Double write: two blocks numbered h; the second must be refused.
    let first = support::create_next_block(Batch::new(vec![env])).map_err(|e| format!("{e:?}"))?;
    let stale = support::create_next_block(support::cut()).map_err(|e| format!("{e:?}"))?;
    expect("writing h+1 first", support::write_block(stale, &[]), out_of_order)?;
    let twin = support::create_next_block(support::cut()).map_err(|e| format!("{e:?}"))?;
    if first.number() != h || twin.number() != h {
        return Err(format!("expected two blocks numbered {h}, got {} and {}", first.number(), twin.number()));
    }
    support::write_block(first, b"abuse").map_err(|e| format!("writing the real block: {e:?}"))?;
    expect("writing a second block numbered h", support::write_block(twin, &[]), out_of_order)?;
    // A message over the per-call byte cap to sign.
    match support::sign(&vec![1u8; 8 << 20]) {
        Err(SupportError::LimitExceeded(_)) => {}
        other => return Err(format!("an 8 MiB sign: expected limit-exceeded, got {:?}", other.map(|s| s.len()))),
    }
    // Absurd timers: a delay of 584 million years, and more than the cap.
    expect("a timer of u64::MAX ms", timers::set(7, u64::MAX), limit)?;
    let mut refused = None;
    for id in 1000..1100 {
        if let Err(e) = timers::set(id, 3_600_000) {
            refused = Some(e);
            break;
        }
    }
    for id in 1000..1100 {
        timers::cancel(id);
    }
    expect("100 armed timers", refused.map_or(Ok(()), Err), limit)?;
    Ok(())
}

impl Consenter for Hostile {
    fn handle_chain(metadata: Vec<u8>) -> Result<Self, String> {
        let cfg = support::shared_config();
        let mode = String::from_utf8_lossy(&cfg.consensus_metadata).into_owned();
        host_log::log(
            Level::Info,
            &format!(
                "hostile plugin {BUILD} ({mode}) started with consenter metadata {:?}",
                String::from_utf8_lossy(&metadata)
            ),
        );
        misbehave(&mode, "handle-chain", None);
        Ok(Hostile {
            mode,
            hoard: Vec::new(),
            batches: Vec::new(),
            blocks: Vec::new(),
            #[cfg(feature = "handover")]
            imported: None,
        })
    }
    fn start(&mut self) {
        let mode = self.mode.clone();
        misbehave(&mode, "start", Some(self));
        let _ = timers::set(1, 10);
    }
    fn enqueue(&mut self, env: Envelope, info: EnvelopeInfo) -> bool {
        let mode = self.mode.clone();
        if mode == "refuse:enqueue" {
            return false;
        }
        if INVARIANT_MODES.contains(&mode.as_str()) {
            return match invariants(self, env, info) {
                Ok(accepted) => accepted,
                Err(what) => {
                    support::fail(&format!("the host accepted an invalid write: {what}"));
                    false
                }
            };
        }
        if mode == "bloat:enqueue" {
            // A refused write consumes the envelope's block, so the test
            // names the attempt in the tx id.
            let tx = env.tx_id();
            let size = env.to_bytes().len();
            let r = if tx.ends_with("-huge") {
                write_refused("1 MiB of consenter metadata", env, &vec![7u8; 1 << 20], false)
            } else if tx.ends_with("-ratio") {
                write_refused("metadata of the envelope's size plus 2 KiB", env, &vec![7u8; size + 2048], false)
            } else {
                return write_alone(env, tx.as_bytes(), false);
            };
            return match r {
                Ok(()) => true,
                Err(what) => {
                    support::fail(&format!("the host accepted an invalid write: {what}"));
                    false
                }
            };
        }
        if mode == "abuse:enqueue" {
            return match abuse(env) {
                Ok(()) => true,
                Err(what) => {
                    support::fail(&format!("the host accepted an abusive call: {what}"));
                    false
                }
            };
        }
        if mode == "hoard:enqueue" {
            self.hoard.push(env);
            if self.hoard.len() >= 5 {
                let r = support::ordered_many(std::mem::take(&mut self.hoard));
                support::fail(&format!("ordered-many took {} envelopes past the list cap", r.pending.len()));
            }
            return true;
        }
        let tx = env.tx_id();
        if let Some(poison) = mode.strip_prefix("poison:")
            && tx == poison
        {
            core::arch::wasm32::unreachable();
        }
        misbehave(&mode, "enqueue", Some(self));
        let md = self.metadata(&tx);
        let r = support::create_next_block(Batch::new(vec![env])).and_then(|b| support::write_block(b, md.as_bytes()));
        match r {
            Ok(()) => true,
            Err(e) => {
                support::fail(&format!("writing block: {e}"));
                false
            }
        }
    }
    fn on_timer(&mut self, _id: u32) {
        let mode = self.mode.clone();
        misbehave(&mode, "timer", Some(self));
    }
    fn halt(&mut self) {
        let mode = self.mode.clone();
        misbehave(&mode, "halt", Some(self));
    }
    #[cfg(feature = "handover")]
    fn export_state(&mut self) -> consenter_sdk::Handed {
        let mode = self.mode.clone();
        misbehave(&mode, "export-state", Some(self));
        let state = match mode.as_str() {
            "huge-state:export-state" => vec![7u8; 8 << 20],
            "small-state:export-state" => vec![7u8; 1024],
            _ => Vec::new(),
        };
        consenter_sdk::Handed { state, batches: Vec::new(), envelopes: Vec::new() }
    }
    #[cfg(feature = "handover")]
    fn import_state(&mut self, state: Vec<u8>) -> Result<(), String> {
        let mode = self.mode.clone();
        misbehave(&mode, "import-state", Some(self));
        self.imported = Some(state.len());
        Ok(())
    }
}

consenter_sdk::export_consenter!(Hostile);
