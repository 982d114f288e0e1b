//! What a plugin's `wasi:*` imports do. A plugin gets no I/O capability:
//! every WASI function is linked to a function that traps naming the call,
//! except a small fixed set that answers without handing the plugin
//! anything of the outside world (toolchains such as componentize-py's
//! CPython, and Rust's std, call them on their ordinary paths):
//!
//! | interface | functions | answer |
//! |---|---|---|
//! | `wasi:random/random`, `insecure`, `insecure-seed` | all | the chain's seeded generator ([`PluginState::next_random`]) |
//! | `wasi:cli/environment` | `get-environment`, `get-arguments`, `initial-cwd` | empty, empty, none |
//! | `wasi:filesystem/preopens` | `get-directories` | no directories (every path operation then fails inside the plugin) |
//! | `wasi:cli/stdout`, `wasi:cli/stderr` | `get-stdout`, `get-stderr` | a stream into the chain's log |
//! | `wasi:io/streams` | `output-stream`'s `check-write`, `write`, `blocking-write-and-flush`, `flush`, `blocking-flush` | the bytes go to the chain's log, line by line, as `log` lines (truncated, rate-limited) |
//! | `wasi:io/streams`, `wasi:io/poll` | `output-stream`'s `subscribe`; `pollable`'s `ready`, `block` | always ready (the only pollables are those of the output streams, which never wait) |
//!
//! None of them reads anything the host has (no file, variable, argument,
//! clock or socket), and none depends on time, so a plugin stays a
//! deterministic function of its events and its chain's random seed.
//! Clocks are not served: a plugin's time is its timers. Every other
//! function (`wasi:filesystem/types`, sockets, clocks and their
//! pollables, `wasi:io/poll`'s `poll`, stdin, terminals, exit, ...) traps.
//! The writes take their bytes through a typed function, copied as bytes
//! (at most the plugin's memory) and capped at `max-call-bytes`.
//! (wasmtime's `define_unknown_imports_as_traps` would also stub the
//! resource aliases of our own interfaces, with the wrong resource type.)

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Resource, ResourceAny, ResourceType, Val};
use wasmtime::{Engine, StoreContextMut};

use crate::glue::PluginState;

/// The host's type of `wasi:io/streams`' `output-stream`: the only WASI
/// resource a plugin can be handed (by `get-stdout` and `get-stderr`).
/// Its rep is the stream: [`STDOUT`] or [`STDERR`].
pub struct OutputStream;

/// The host's type of `wasi:io/poll`'s `pollable`: only an output stream's
/// `subscribe` makes one (clocks' `subscribe-*` trap), and it is always
/// ready.
pub struct Pollable;

/// The rep of the stream `get-stdout` returns.
pub const STDOUT: u32 = 1;
/// The rep of the stream `get-stderr` returns.
pub const STDERR: u32 = 2;

/// `wasi:io/streams`' `stream-error`, for the typed `write` functions
/// (which never return it: the log always takes the bytes).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<()>),
    #[component(name = "closed")]
    Closed,
}

/// The longest write an output stream accepts at once (`check-write`'s
/// answer; WASI's `blocking-write-and-flush` is specified up to 4096).
const WRITE_PERMIT: u64 = 4096;

/// What a served WASI function answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the chain's seeded generator.
    Random,
    /// An empty list.
    EmptyList,
    /// `none`.
    Nothing,
    /// A new handle to output stream `rep`.
    Stream(u32),
    /// `check-write`: Ok([`WRITE_PERMIT`]).
    CheckWrite,
    /// `write`, `blocking-write-and-flush`: the bytes to the log, Ok.
    Write,
    /// `flush`, `blocking-flush`: Ok (lines are logged as they end).
    Flush,
    /// An output stream's `subscribe`: a new pollable, always ready.
    Subscribe,
    /// `pollable.ready`: true.
    Ready,
    /// `pollable.block`: returns at once.
    Block,
}

/// Whether function `func` of WASI interface `import` (any 0.2 version,
/// e.g. `wasi:cli/environment@0.2.9`) is served, and how; None: it traps.
pub fn served(import: &str, func: &str) -> Option<Served> {
    let iface = import.split_once('@').map_or(import, |(i, _)| i);
    let served = match (iface, func) {
        ("wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed", _) => Served::Random,
        ("wasi:cli/environment", "get-environment" | "get-arguments") => Served::EmptyList,
        ("wasi:cli/environment", "initial-cwd") => Served::Nothing,
        ("wasi:filesystem/preopens", "get-directories") => Served::EmptyList,
        ("wasi:cli/stdout", "get-stdout") => Served::Stream(STDOUT),
        ("wasi:cli/stderr", "get-stderr") => Served::Stream(STDERR),
        ("wasi:io/streams", "[method]output-stream.check-write") => Served::CheckWrite,
        ("wasi:io/streams", "[method]output-stream.write" | "[method]output-stream.blocking-write-and-flush") => {
            Served::Write
        }
        ("wasi:io/streams", "[method]output-stream.flush" | "[method]output-stream.blocking-flush") => Served::Flush,
        ("wasi:io/streams", "[method]output-stream.subscribe") => Served::Subscribe,
        ("wasi:io/poll", "[method]pollable.ready") => Served::Ready,
        ("wasi:io/poll", "[method]pollable.block") => Served::Block,
        _ => return None,
    };
    Some(served)
}

/// Links every `wasi:*` import of `component`: the [`served`] functions
/// answer, every other function traps naming the call. Resources are host
/// resources no function but `get-stdout`/`get-stderr` creates.
pub(crate) fn link(linker: &mut Linker<PluginState>, component: &Component, engine: &Engine) -> wasmtime::Result<()> {
    for (import, item) in component.component_type().imports(engine) {
        if !import.starts_with("wasi:") {
            continue;
        }
        let ComponentItem::ComponentInstance(inst) = item.ty else { continue };
        let mut li = linker.instance(import)?;
        for (export, item) in inst.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{import}#{export}");
                    match served(import, export) {
                        // Typed, so that the bytes are lifted as bytes: a
                        // dynamic `list<u8>` would cost the host a `Val`
                        // (tens of bytes) per byte before any cap is checked.
                        Some(Served::Write) => li.func_wrap(
                            export,
                            move |mut store: StoreContextMut<'_, PluginState>,
                                  (stream, bytes): (Resource<OutputStream>, Vec<u8>)| {
                                let s = store.data_mut();
                                s.check_bytes(&what, bytes.len())?;
                                s.stdio_write(stream.rep(), &bytes);
                                Ok((Ok::<(), StreamError>(()),))
                            },
                        )?,
                        // Likewise the random bytes, lowered as bytes.
                        Some(Served::Random) if export.ends_with("bytes") => {
                            li.func_wrap(export, move |mut store: StoreContextMut<'_, PluginState>, (len,): (u64,)| {
                                Ok((random_bytes(&what, store.data_mut(), len)?,))
                            })?
                        }
                        Some(how) => li.func_new(export, move |mut store, _, params, results| {
                            answer(how, &what, &mut store, params, results)
                        })?,
                        None => li.func_new(export, move |_, _, _, _| {
                            wasmtime::bail!("the plugin called {what}: plugins are granted no WASI capability")
                        })?,
                    }
                }
                // `output-stream` is named in `wasi:io/streams` and aliased
                // by `wasi:cli/stdout` and `stderr`: one host type for all.
                ComponentItem::Resource(_) if export == "output-stream" => {
                    li.resource(export, ResourceType::host::<OutputStream>(), |_, _| Ok(()))?;
                }
                ComponentItem::Resource(_) if export == "pollable" => {
                    li.resource(export, ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
                }
                ComponentItem::Resource(_) => {
                    li.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Answers a call of a served function.
fn answer(
    how: Served,
    what: &str,
    store: &mut StoreContextMut<'_, PluginState>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    if how == Served::Block {
        return pollable_of(what, store, params).map(|_| ());
    }
    let Some(out) = results.first_mut() else { wasmtime::bail!("{what}: no result slot") };
    *out = match how {
        Served::Block => unreachable!("answered above"),
        Served::Random => random(what, store.data_mut())?,
        Served::EmptyList => Val::List(vec![]),
        Served::Nothing => Val::Option(None),
        Served::Stream(rep) => {
            Val::Resource(ResourceAny::try_from_resource(Resource::<OutputStream>::new_own(rep), &mut *store)?)
        }
        Served::CheckWrite => {
            stream_of(what, store, params)?;
            Val::Result(Ok(Some(Box::new(Val::U64(WRITE_PERMIT)))))
        }
        Served::Write => unreachable!("linked as a typed function"),
        Served::Flush => {
            stream_of(what, store, params)?;
            Val::Result(Ok(None))
        }
        Served::Subscribe => {
            stream_of(what, store, params)?;
            Val::Resource(ResourceAny::try_from_resource(Resource::<Pollable>::new_own(0), &mut *store)?)
        }
        Served::Ready => {
            pollable_of(what, store, params)?;
            Val::Bool(true)
        }
    };
    Ok(())
}

/// The stream a method was called on (its `self` handle).
fn stream_of(what: &str, store: &mut StoreContextMut<'_, PluginState>, params: &[Val]) -> wasmtime::Result<u32> {
    match params.first() {
        Some(Val::Resource(r)) => Ok(r.try_into_resource::<OutputStream>(&mut *store)?.rep()),
        _ => wasmtime::bail!("{what}: expected an output-stream"),
    }
}

/// Checks a pollable method's `self` handle.
fn pollable_of(what: &str, store: &mut StoreContextMut<'_, PluginState>, params: &[Val]) -> wasmtime::Result<()> {
    match params.first() {
        Some(Val::Resource(r)) => r.try_into_resource::<Pollable>(&mut *store).map(|_| ()),
        _ => wasmtime::bail!("{what}: expected a pollable"),
    }
}

/// A `wasi:random` call (`get-random-u64`, `get-insecure-random-u64`,
/// `insecure-seed`) from the chain's generator.
fn random(what: &str, s: &mut PluginState) -> wasmtime::Result<Val> {
    if what.ends_with("insecure-seed") {
        Ok(Val::Tuple(vec![Val::U64(s.next_random()), Val::U64(s.next_random())]))
    } else {
        Ok(Val::U64(s.next_random()))
    }
}

/// `get-random-bytes` and `get-insecure-random-bytes`: `len` bytes of the
/// chain's generator, at most `max-call-bytes`.
fn random_bytes(what: &str, s: &mut PluginState, len: u64) -> wasmtime::Result<Vec<u8>> {
    let max = s.call_limits.max_call_bytes as u64;
    if len > max {
        wasmtime::bail!("{what}: {len} random bytes asked, over the cap of {max} (max-call-bytes)");
    }
    let mut v = Vec::with_capacity(len as usize);
    while (v.len() as u64) < len {
        let need = (len as usize - v.len()).min(8);
        v.extend_from_slice(&s.next_random().to_le_bytes()[..need]);
    }
    Ok(v)
}

/// The partial last lines written to the plugin's stdout and stderr.
#[derive(Debug, Default)]
pub struct StdioLines {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl StdioLines {
    /// Appends `bytes` to stream `rep` and returns the lines it completes
    /// (without their line ending); a line longer than `max` is cut into
    /// pieces of `max` bytes, so the buffer never holds more than `max`.
    pub fn push(&mut self, rep: u32, bytes: &[u8], max: usize) -> Vec<String> {
        let buf = if rep == STDOUT { &mut self.out } else { &mut self.err };
        let max = max.max(1);
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                lines.push(String::from_utf8_lossy(buf).into_owned());
                buf.clear();
            } else {
                buf.push(b);
                if buf.len() >= max {
                    lines.push(String::from_utf8_lossy(buf).into_owned());
                    buf.clear();
                }
            }
        }
        lines
    }
}

impl PluginState {
    /// Bytes the plugin wrote to stdout (`rep` [`STDOUT`]) or stderr: each
    /// line they complete goes to the host's log, tagged with the channel
    /// and the stream, within the `log` interface's rate limit and length
    /// cap (stderr at warn, stdout at info).
    pub(crate) fn stdio_write(&mut self, rep: u32, bytes: &[u8]) {
        let max = self.support.limits.max_log_bytes;
        for line in self.stdio.push(rep, bytes, max) {
            if !self.support.log_allowed() {
                continue;
            }
            let ch = &self.support.chain_id;
            if rep == STDOUT {
                tracing::info!(channel = %ch, plugin = true, stream = "stdout", "{line}");
            } else {
                tracing::warn!(channel = %ch, plugin = true, stream = "stderr", "{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_set_is_small_and_version_independent() {
        for v in ["0.2.0", "0.2.9"] {
            let i = |name: &str| format!("wasi:{name}@{v}");
            assert_eq!(served(&i("cli/environment"), "get-environment"), Some(Served::EmptyList));
            assert_eq!(served(&i("cli/environment"), "get-arguments"), Some(Served::EmptyList));
            assert_eq!(served(&i("cli/environment"), "initial-cwd"), Some(Served::Nothing));
            assert_eq!(served(&i("filesystem/preopens"), "get-directories"), Some(Served::EmptyList));
            assert_eq!(served(&i("cli/stderr"), "get-stderr"), Some(Served::Stream(STDERR)));
            assert_eq!(served(&i("cli/stdout"), "get-stdout"), Some(Served::Stream(STDOUT)));
            assert_eq!(served(&i("random/random"), "get-random-u64"), Some(Served::Random));
            assert_eq!(served(&i("io/streams"), "[method]output-stream.blocking-write-and-flush"), Some(Served::Write));
            assert_eq!(served(&i("io/poll"), "[method]pollable.block"), Some(Served::Block));
            // No I/O capability: files, sockets, clocks, stdin, exit and
            // polling trap.
            for (iface, func) in [
                ("filesystem/types", "[method]descriptor.read"),
                ("filesystem/types", "[method]descriptor.open-at"),
                ("sockets/tcp-create-socket", "create-tcp-socket"),
                ("sockets/ip-name-lookup", "resolve-addresses"),
                ("clocks/wall-clock", "now"),
                ("clocks/monotonic-clock", "now"),
                ("clocks/monotonic-clock", "subscribe-duration"),
                ("cli/stdin", "get-stdin"),
                ("cli/terminal-stderr", "get-terminal-stderr"),
                ("cli/exit", "exit"),
                ("io/streams", "[method]input-stream.read"),
                ("io/poll", "poll"),
                ("io/streams", "[method]output-stream.splice"),
            ] {
                assert_eq!(served(&i(iface), func), None, "{iface}#{func} must trap");
            }
        }
    }

    #[test]
    fn stdio_lines_split_cap_and_keep_streams_apart() {
        let mut s = StdioLines::default();
        assert!(s.push(STDERR, b"Traceback (most", 100).is_empty(), "a partial line waits");
        assert!(s.push(STDOUT, b"out ", 100).is_empty());
        assert_eq!(
            s.push(STDERR, b" recent call last):\r\n  File\n", 100),
            ["Traceback (most recent call last):", "  File"]
        );
        assert_eq!(s.push(STDOUT, b"line\n", 100), ["out line"], "streams do not mix");
        // A line without end is cut at the cap: the buffer stays bounded.
        let long = vec![b'x'; 25];
        assert_eq!(s.push(STDOUT, &long, 10), ["x".repeat(10), "x".repeat(10)]);
        assert_eq!(s.push(STDOUT, b"\n", 10), ["x".repeat(5)]);
        assert_eq!(s.push(STDOUT, b"\xff\n", 10), ["\u{fffd}"], "bytes that are not UTF-8 are replaced");
    }
}

/// The served calls as a real plugin makes them: the hostile test plugin
/// (Rust's std for wasm32-wasip2, through wasi-libc, as componentize-py's
/// CPython) calls std::env, std::fs, println!, sockets and clocks.
#[cfg(test)]
mod plugin_tests {
    use std::sync::{Arc, Mutex};

    use crate::channel::{ChannelConfig, ChannelTemplate};
    use crate::support::{BlockSink, ChainPosition, OnDurable, Support, SupportLimits, SystemClock};
    use crate::{Limits, Runtime};

    struct Discard;
    impl BlockSink for Discard {
        fn write(&mut self, _: u64, _: bytes::Bytes, _: Option<OnDurable>) -> Result<(), String> {
            Ok(())
        }
    }

    /// A chain's support on a channel whose ConsensusType metadata is `mode`.
    fn support(mode: &str) -> Support {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::signer::ensure_dev_identity(&dir.path().join("id")).unwrap();
        let signer = Arc::new(crate::signer::Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
        let mut t = ChannelTemplate::solo("wasi");
        t.consensus_type = "hostile".into();
        t.consensus_metadata = bytes::Bytes::copy_from_slice(mode.as_bytes());
        let genesis = t.genesis_block();
        let cfg = Arc::new(ChannelConfig::from_config_block(&genesis).unwrap());
        let hash = crate::block::header_hash(genesis.header.as_ref().unwrap());
        let pos = ChainPosition { height: 1, last_hash: hash, last_config: 0 };
        Support::new("wasi", cfg, signer, Box::new(Discard), Arc::new(SystemClock), pos, SupportLimits::default())
    }

    /// Runs the hostile plugin in `mode` (e.g. `wasi-env:enqueue`) on one
    /// envelope: Ok(the reason it gave `fail`), or Err(the trap).
    fn hostile(mode: &str) -> Result<String, String> {
        let bytes = std::fs::read(consenter_test_plugins::path("consenter_hostile.wasm")).unwrap();
        let rt = Runtime::new(Limits::default()).unwrap();
        let plugin = rt.load("hostile", &bytes).unwrap();
        let mut inst = plugin.instantiate(support(mode)).unwrap();
        inst.handle_chain(&[]).unwrap().unwrap();
        inst.start().unwrap();
        let env = crate::envelope::build(
            "wasi",
            crate::proto::common::HeaderType::Message,
            "tx1",
            bytes::Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        match inst.enqueue(vec![crate::envelope::Envelope::parse(env).unwrap()]) {
            Ok(_) => Ok(inst.support().and_then(|s| s.failure()).unwrap_or("(no failure)").to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn environment_is_empty() {
        let r = hostile("wasi-env:enqueue").expect("std::env returns");
        assert!(r.contains("std::env::var returned Err(NotPresent), std::env::args 0 arguments"), "{r}");
    }

    #[test]
    fn no_directory_is_preopened() {
        let r = hostile("wasi-fs:enqueue").expect("std::fs::read returns");
        assert!(r.contains("std::fs::read returned Err("), "{r}");
    }

    #[test]
    fn random_bytes_come_from_the_chain_generator_capped() {
        let mut s = crate::glue::PluginState::for_test(support(""));
        let mut twin = crate::glue::PluginState::for_test(support(""));
        twin.random = s.random;
        let what = "wasi:random/random@0.2.0#get-random-bytes";
        assert!(super::random_bytes(what, &mut s, 0).unwrap().is_empty());
        let got = super::random_bytes(what, &mut s, 13).unwrap();
        let mut want = twin.next_random().to_le_bytes().to_vec();
        want.extend_from_slice(&twin.next_random().to_le_bytes()[..5]);
        assert_eq!(got, want, "the generator's u64s, little-endian, cut to the length");
        let max = s.call_limits.max_call_bytes as u64;
        let e = super::random_bytes(what, &mut s, max + 1).unwrap_err();
        assert!(e.to_string().contains("max-call-bytes"), "{e}");
    }

    #[test]
    fn sockets_and_clocks_still_trap() {
        for (mode, import) in [("wasi-net:enqueue", "wasi:sockets/"), ("wasi-clock:enqueue", "wasi:clocks/wall-clock")]
        {
            let e = hostile(mode).expect_err("a trap");
            assert!(e.contains(import) && e.contains("no WASI capability"), "{mode}: {e}");
        }
    }

    /// Collects the message of every event logged on this thread.
    struct Collect(Arc<Mutex<Vec<String>>>);

    impl tracing::Subscriber for Collect {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
            let mut f = Fields(format!("{}", event.metadata().level()));
            event.record(&mut f);
            self.0.lock().unwrap().push(f.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn stdout_and_stderr_go_to_the_chain_log() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let r = tracing::subscriber::with_default(Collect(lines.clone()), || hostile("wasi-stdio:enqueue"));
        let r = r.expect("println! and eprintln! return");
        assert!(r.contains("println! and eprintln! returned"), "{r}");
        let lines = lines.lock().unwrap();
        let has = |want: &str| lines.iter().any(|l| l.contains(want));
        assert!(has("INFO message=hostile plugin on stdout channel=wasi plugin=true stream=\"stdout\""), "{lines:#?}");
        assert!(has("WARN message=hostile plugin on stderr channel=wasi plugin=true stream=\"stderr\""), "{lines:#?}");
    }
}
