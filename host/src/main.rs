//! The `consenter-host` command line: run a node, check and inspect ledgers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use prost::Message;

use consenter_host::admin;
use consenter_host::block::{self, hex};
use consenter_host::chain::{RestartPolicies, RestartPolicy};
use consenter_host::channel::ChannelTemplate;
use consenter_host::envelope::Envelope;
use consenter_host::ledger;
use consenter_host::node::{self, Node, NodeConfig};
use consenter_host::package;
use consenter_host::proto::common::Block;
use consenter_host::runtime::{self, Limits};
use consenter_host::signer::{self, Signer};
use consenter_host::support::SupportLimits;

/// A Hyperledger Fabric ordering node that runs consensus algorithms as
/// sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "consenter-host", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. With no flags: data in ./consenter-data, a generated
    /// development identity (its client MSP is printed, for clients to sign
    /// with), and a development channel `devchannel` ordered by the solo
    /// plugin, served over gRPC (AtomicBroadcast) on 127.0.0.1:7050.
    Start(Box<StartArgs>),
    /// Check and read ledgers.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Load generator: sign envelopes ahead of time, send them over
    /// concurrent Broadcast streams to any AtomicBroadcast endpoint (Fabric's
    /// orderer included), follow Deliver until every one is in a block, and
    /// report acknowledged and committed tx/s and latency. With no flags it
    /// loads the development channel of `consenter-host start` run from the
    /// same directory.
    Bench(BenchArgs),
    /// Plugin packages: signing keys, signing, verifying and inspecting
    /// plugin files (a manifest and Ed25519 signatures in custom sections).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Channel participation (Fabric's `osnadmin channel`): join, list,
    /// show and remove channels of a running node through its admin
    /// endpoint.
    #[command(subcommand)]
    Channel(ChannelCmd),
}

#[derive(Subcommand)]
enum ChannelCmd {
    /// Join a channel from its genesis block (a file made by Fabric's
    /// configtxgen, for instance).
    Join {
        #[command(flatten)]
        admin: AdminArgs,
        /// The channel's config block.
        #[arg(long = "config-block", short = 'b')]
        config_block: PathBuf,
    },
    /// List the node's channels.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one channel: status, consensus relation, height.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// Channel id.
        #[arg(long = "channel-id", short = 'c')]
        channel: String,
    },
    /// Remove a channel: halt it and delete its ledger.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        /// Channel id.
        #[arg(long = "channel-id", short = 'c')]
        channel: String,
    },
}

#[derive(Args)]
struct AdminArgs {
    /// Admin endpoint of the node (host:port).
    #[arg(long = "orderer-address", short = 'o', default_value = "127.0.0.1:7053")]
    address: String,
    /// CA certificate (PEM) of the endpoint's TLS certificate; with it the
    /// command speaks TLS, the server name being the host of the address.
    #[arg(long = "ca-file", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "client-cert", value_name = "FILE", requires_all = ["client_key", "ca_file"])]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long = "client-key", value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl AdminArgs {
    fn tls(&self) -> Result<admin::ClientTls> {
        let Some(ca) = &self.ca_file else { return Ok(Default::default()) };
        let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
        Ok(admin::ClientTls {
            config: Some(admin::tls::client_config(ca, identity)?),
            has_client_cert: identity.is_some(),
        })
    }
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Generate an Ed25519 signing key: writes NAME.key (PKCS#8 PEM, mode
    /// 0600) and NAME.pub (hex; copy it into a node's trust directory).
    Keygen {
        /// DIR/NAME of the key files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a plugin's manifest and sign it (replaces any manifest and
    /// signatures the input has).
    Sign {
        /// Private key file (NAME.key).
        #[arg(long)]
        key: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Plugin version.
        #[arg(long)]
        version: String,
        /// The consensus type it implements (what `--plugin TYPE=...` and
        /// a channel's ConsensusType must say).
        #[arg(long)]
        consensus_type: String,
        /// A capability it asks for (cluster, storage). Repeatable.
        #[arg(long = "capability", value_name = "C")]
        capabilities: Vec<String>,
        /// The contract it targets (default: the version the component's
        /// own imports and exports name).
        #[arg(long)]
        wit: Option<String>,
        /// The component to sign.
        input: PathBuf,
        /// Where to write the signed plugin.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Check a plugin's signatures against a trust directory and its
    /// contract version against this host; exits non-zero unless it is
    /// signed by a trusted key and loadable.
    Verify {
        /// Directory of trusted public keys (*.pub).
        #[arg(long)]
        trust_dir: PathBuf,
        /// Also require the manifest to say this consensus type.
        #[arg(long)]
        consensus_type: Option<String>,
        /// The plugin file.
        file: PathBuf,
    },
    /// Print a plugin's manifest, signatures (key ids), size, SHA-256 and
    /// its WIT imports and exports.
    Inspect {
        /// The plugin file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// Orderer address (host:port).
    #[arg(long, default_value = "127.0.0.1:7050")]
    orderer: String,
    /// Channel to load.
    #[arg(long, default_value = "devchannel")]
    channel: String,
    /// MSP folder that signs the envelopes (default: the development client
    /// identity of the embedded default, if present; else unsigned).
    #[arg(long, requires = "mspid")]
    msp_dir: Option<PathBuf>,
    /// MSP id of --msp-dir.
    #[arg(long)]
    mspid: Option<String>,
    /// Concurrent Broadcast streams.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Envelopes to send in all.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload data bytes per envelope.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// How long to wait for blocks after the last acknowledgement.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    commit_timeout: Duration,
}

#[derive(Args)]
struct StartArgs {
    /// Data directory: ledgers under chains/<channel>/, the development
    /// identity under dev-identity/.
    #[arg(long, default_value = "consenter-data")]
    data_dir: PathBuf,
    /// Address of the AtomicBroadcast gRPC service.
    #[arg(long, default_value = "127.0.0.1:7050")]
    listen: SocketAddr,
    /// Address of the admin endpoint (channel participation API). Without
    /// TLS it must be a loopback address and serves loopback clients only.
    #[arg(long, default_value = "127.0.0.1:7053")]
    admin_listen: SocketAddr,
    /// TLS certificate (PEM) of the admin endpoint (Fabric's
    /// Admin.TLS.Certificate). Turns on mutual TLS: clients must present a
    /// certificate issued by a client root CA; any address may be used.
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --admin-tls-cert (Admin.TLS.PrivateKey).
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Root CA (PEM) of admin client certificates (Admin.TLS.ClientRootCAs).
    /// Repeatable. Default: the local MSP's tlscacerts/*.pem.
    #[arg(long = "admin-tls-client-ca", value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_client_cas: Vec<PathBuf>,
    /// Only client certificates with this subject CN are admins (others get
    /// 403). Repeatable. Default: any certificate from a client root CA.
    #[arg(long = "admin-client-cn", value_name = "CN", requires = "admin_tls_cert")]
    admin_client_cns: Vec<String>,
    /// Do not serve the admin endpoint.
    #[arg(long)]
    no_admin: bool,
    /// Bootstrap from this genesis block (e.g. an ordering system channel
    /// made by configtxgen) if the node does not have its channel yet.
    /// No development channel is created then.
    #[arg(long)]
    genesis_block: Option<PathBuf>,
    /// MSP folder of the node's signing identity (signcerts/, keystore/).
    /// Default: a development identity generated in the data directory.
    #[arg(long, requires = "mspid")]
    msp_dir: Option<PathBuf>,
    /// MSP id of --msp-dir.
    #[arg(long)]
    mspid: Option<String>,
    /// Development channel created on first start if the node has no
    /// channel yet (solo, Fabric's default batch settings).
    #[arg(long, default_value = "devchannel")]
    dev_channel: String,
    /// Do not create the development channel.
    #[arg(long)]
    no_dev_channel: bool,
    /// BatchTimeout of the development channel, e.g. 2s or 200ms.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    dev_batch_timeout: Duration,
    /// MaxMessageCount of the development channel.
    #[arg(long, default_value_t = 500)]
    dev_max_message_count: u32,
    /// AbsoluteMaxBytes of the development channel (PreferredMaxBytes is
    /// lowered to it if larger).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    dev_absolute_max_bytes: u32,
    /// Consensus type of the development channel (a loaded plugin).
    #[arg(long, default_value = "solo")]
    dev_consensus: String,
    /// ConsensusType.metadata of the development channel (text).
    #[arg(long, default_value = "")]
    dev_consensus_metadata: String,
    /// Load a plugin from a file: TYPE=PATH (the consensus type it serves).
    /// Repeatable; replaces an embedded plugin of the same type.
    #[arg(long = "plugin", value_name = "TYPE=PATH")]
    plugins: Vec<String>,
    /// Linear memory cap of each plugin instance, in MiB.
    #[arg(long, default_value_t = 64)]
    plugin_memory_mib: usize,
    /// Wall-clock deadline of one call into a plugin, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    plugin_call_deadline: Duration,
    /// Directory of trusted plugin signing keys (*.pub); a --plugin file
    /// must be signed by one of them. Default: <data-dir>/trusted-keys.
    #[arg(long)]
    plugin_trust_dir: Option<PathBuf>,
    /// Load --plugin files that are unsigned or signed by unknown keys
    /// (development only; logged as a warning). A signature by a trusted
    /// key that does not verify is still refused.
    #[arg(long)]
    allow_unsigned_plugins: bool,
    /// Limits of one plugin type, over the defaults above:
    /// TYPE:KEY=VALUE,... with keys memory-mib, table-elements, instances,
    /// tables, memories, call-deadline-ms, stack-kib, max-list-len,
    /// max-call-kib, max-handles, max-held-mib (host memory held for the
    /// plugin; default from the channel's batch settings, at least 64),
    /// max-metadata-kib (consenter metadata per block; default 16),
    /// disk-mib-per-minute (ledger bytes per channel; default 4096),
    /// disk-mib-total (default: no cap). Repeatable.
    #[arg(long = "plugin-limits", value_name = "TYPE:KEY=VALUE,...")]
    plugin_limits: Vec<String>,
    /// What a channel does when its plugin crashes:
    /// channel:NAME=reload|fail-closed for one channel, or
    /// plugin:TYPE=reload|fail-closed for every channel of a plugin type (a
    /// channel's own entry wins). Default: reload for the plugins shipped
    /// in the binary, fail-closed for plugins loaded with --plugin.
    /// Repeatable.
    #[arg(long = "restart-policy", value_name = "channel:NAME=POLICY|plugin:TYPE=POLICY")]
    restart_policy: Vec<String>,
    /// Free space, in MiB, that every ledger writer keeps on the ledger's
    /// disk: a channel whose next blocks would go below errs (nothing is
    /// written or torn) and the node keeps serving. 0 turns the check off.
    #[arg(long, default_value_t = 128)]
    disk_reserve_mib: u64,
    /// Delay before restarting a crashed plugin (doubled for each further
    /// crash within --restart-crash-window).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    restart_backoff_initial: Duration,
    /// Longest delay before a restart.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    restart_backoff_max: Duration,
    /// This many crashes within --restart-crash-window leave the chain
    /// errored (crash loop).
    #[arg(long, default_value_t = 5)]
    restart_max_crashes: u32,
    /// The crash-loop window.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    restart_crash_window: Duration,
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Verify ledgers: record checksums, block numbers, the hash chain,
    /// data hashes and every block signature; print each channel's height.
    /// Read-only.
    Verify {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this channel (default: every channel).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Print blocks readably: header, hashes, envelopes, signer, metadata.
    Inspect {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The channel.
        #[arg(long)]
        channel: String,
        /// Only this block (default: all).
        #[arg(long)]
        block: Option<u64>,
    },
}

/// What a `--restart-policy` entry names.
enum PolicyTarget {
    Channel,
    Plugin,
}

/// `channel:NAME=POLICY` or `plugin:TYPE=POLICY`.
fn parse_restart_policy(spec: &str) -> Result<(PolicyTarget, String, RestartPolicy)> {
    let usage = "expected channel:NAME=reload|fail-closed or plugin:TYPE=reload|fail-closed";
    let Some((target, policy)) = spec.split_once('=') else { bail!("--restart-policy {spec:?}: {usage}") };
    let (kind, name) = match target.split_once(':') {
        Some(("channel", n)) => (PolicyTarget::Channel, n),
        Some(("plugin", n)) => (PolicyTarget::Plugin, n),
        _ => bail!(
            "--restart-policy {spec:?}: say whether {target:?} is a channel or a plugin type ({usage}, e.g. \
             channel:{target}={policy})"
        ),
    };
    if name.is_empty() {
        bail!("--restart-policy {spec:?}: the name is empty ({usage})");
    }
    let policy: RestartPolicy = policy.parse().map_err(|e| anyhow::anyhow!("--restart-policy {spec:?}: {e}"))?;
    Ok((kind, name.to_string(), policy))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    consenter_host::channel::parse_go_duration(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 2s, 500ms)"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Start(a) => start(*a),
        Cmd::Ledger(LedgerCmd::Verify { data_dir, channel }) => verify(&data_dir, channel.as_deref()),
        Cmd::Ledger(LedgerCmd::Inspect { data_dir, channel, block }) => inspect(&data_dir, &channel, block),
        Cmd::Bench(a) => bench(a),
        Cmd::Plugin(c) => plugin_cmd(c),
        Cmd::Channel(c) => channel_cmd(c),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn start(a: StartArgs) -> Result<()> {
    init_tracing();
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating data directory {}", a.data_dir.display()))?;
    let (signer, dev) = match (&a.msp_dir, &a.mspid) {
        (Some(dir), Some(id)) => (Signer::from_msp_dir(dir, id)?, None),
        _ => {
            let dev = signer::ensure_dev_identity(&a.data_dir.join("dev-identity"))?;
            (Signer::from_msp_dir(&dev.orderer_msp, &dev.mspid)?, Some(dev))
        }
    };
    let mut extra = Vec::new();
    let trust_dir = a.plugin_trust_dir.clone().unwrap_or_else(|| a.data_dir.join("trusted-keys"));
    let policy = package::Policy {
        trust: if a.plugins.is_empty() {
            package::TrustStore::default()
        } else {
            package::TrustStore::load(&trust_dir)?
        },
        allow_unsigned: a.allow_unsigned_plugins,
    };
    for p in &a.plugins {
        let Some((name, path)) = p.split_once('=') else { bail!("--plugin {p:?}: expected TYPE=PATH") };
        let bytes = std::fs::read(path).with_context(|| format!("reading plugin {name} from {path}"))?;
        package::admit(&policy, name, Path::new(path), &bytes).with_context(|| format!("plugin {name} refused"))?;
        extra.push((name.to_string(), bytes));
    }
    let limits =
        Limits { memory_bytes: a.plugin_memory_mib << 20, call_deadline: a.plugin_call_deadline, ..Limits::default() };
    let admin_tls = match (&a.admin_tls_cert, &a.admin_tls_key) {
        (Some(cert), Some(key)) if !a.no_admin => {
            let client_cas = if a.admin_tls_client_cas.is_empty() {
                let msp = a.msp_dir.clone().or_else(|| dev.as_ref().map(|d| d.orderer_msp.clone()));
                match msp {
                    Some(msp) => admin::tls::msp_tls_cas(&msp)?,
                    None => bail!("the admin endpoint's TLS needs client root CAs: pass --admin-tls-client-ca"),
                }
            } else {
                a.admin_tls_client_cas.clone()
            };
            let files = admin::tls::ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_cas,
                admin_cns: a.admin_client_cns.clone(),
            };
            let tls = admin::tls::ServerTls::load(&files).context("admin endpoint TLS")?;
            tracing::info!(
                cert = %files.cert.display(),
                client_cas = ?files.client_cas,
                admin_cns = ?files.admin_cns,
                "admin endpoint: mutual TLS"
            );
            Some(tls)
        }
        _ => None,
    };
    if !a.no_admin && admin_tls.is_none() && !a.admin_listen.ip().is_loopback() {
        bail!(
            "--admin-listen {}: without TLS (--admin-tls-cert, --admin-tls-key) the admin endpoint may only listen \
             on a loopback address",
            a.admin_listen
        );
    }
    let mut plugin_limits = std::collections::BTreeMap::new();
    for spec in &a.plugin_limits {
        let Some((name, kv)) = spec.split_once(':') else {
            bail!("--plugin-limits {spec:?}: expected TYPE:KEY=VALUE,...")
        };
        let base = plugin_limits.get(name).unwrap_or(&limits);
        let l = base.with_overrides(kv)?;
        plugin_limits.insert(name.to_string(), l);
    }
    let mut restart = RestartPolicies::default();
    restart.backoff.initial_backoff = a.restart_backoff_initial;
    restart.backoff.max_backoff = a.restart_backoff_max;
    restart.backoff.max_crashes = a.restart_max_crashes.max(1);
    restart.backoff.crash_window = a.restart_crash_window;
    for spec in &a.restart_policy {
        let (kind, name, policy) = parse_restart_policy(spec)?;
        match kind {
            PolicyTarget::Channel => restart.by_channel.insert(name, policy),
            PolicyTarget::Plugin => restart.by_plugin.insert(name, policy),
        };
    }
    let node = Node::open(NodeConfig {
        data_dir: a.data_dir.clone(),
        signer: Arc::new(signer),
        limits,
        plugin_limits,
        restart,
        support_limits: SupportLimits::default(),
        disk_reserve: a.disk_reserve_mib.saturating_mul(1 << 20),
        extra_plugins: extra,
    })?;
    if let Some(path) = &a.genesis_block {
        let bytes =
            Bytes::from(std::fs::read(path).with_context(|| format!("reading genesis block {}", path.display()))?);
        let block =
            Block::decode(bytes.clone()).with_context(|| format!("{} is not a common.Block", path.display()))?;
        let cfg = consenter_host::channel::ChannelConfig::from_config_block(&block)
            .with_context(|| format!("genesis block {}", path.display()))?;
        if node.chain(&cfg.channel_id).is_none() && node.broken(&cfg.channel_id).is_none() {
            // The file's bytes become block 0 unchanged, as in Fabric.
            node.create_channel_from_bytes(bytes).with_context(|| format!("creating channel {}", cfg.channel_id))?;
        }
    }
    if !a.no_dev_channel
        && a.genesis_block.is_none()
        && node.system_channel().is_none()
        && node.chain(&a.dev_channel).is_none()
        && node.broken(&a.dev_channel).is_none()
    {
        let mut t = ChannelTemplate::solo(&a.dev_channel);
        t.consensus_type = a.dev_consensus.clone();
        t.consensus_metadata = Bytes::from(a.dev_consensus_metadata.clone().into_bytes());
        t.batch_timeout = a.dev_batch_timeout;
        t.batch_size.max_message_count = a.dev_max_message_count;
        t.batch_size.absolute_max_bytes = a.dev_absolute_max_bytes;
        t.batch_size.preferred_max_bytes = t.batch_size.preferred_max_bytes.min(a.dev_absolute_max_bytes);
        node.create_channel(&t.genesis_block()).with_context(|| format!("creating channel {}", a.dev_channel))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let admin = if a.no_admin { None } else { Some((a.admin_listen, admin_tls)) };
    rt.block_on(serve(node.clone(), a.listen, admin, dev))?;
    node.shutdown();
    tracing::info!("stopped");
    Ok(())
}

async fn serve(
    node: Arc<Node>,
    listen: SocketAddr,
    admin: Option<(SocketAddr, Option<admin::tls::ServerTls>)>,
    dev: Option<signer::DevIdentity>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("consenter-host listening on {addr} (orderer.AtomicBroadcast)");
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some((admin, tls)) = admin {
        let l = tokio::net::TcpListener::bind(admin).await.with_context(|| format!("admin endpoint on {admin}"))?;
        let (scheme, how) = if tls.is_some() { ("https", ", mutual TLS") } else { ("http", ", loopback clients") };
        println!("admin endpoint on {scheme}://{} (channel participation API{how})", l.local_addr()?);
        let n = node.clone();
        tokio::spawn(async move {
            let stop = async {
                let _ = admin_stop_rx.await;
            };
            if let Err(e) = admin::serve(l, n, tls, stop).await {
                tracing::error!(error = %e, "admin endpoint stopped");
            }
        });
    }
    println!("channels: {}", node.channels().join(", "));
    if let Some(d) = &dev {
        println!("client identity: --mspid {} --msp-dir {}", d.mspid, d.client_msp.display());
    }
    println!("point a Fabric client at grpc://{addr}; Ctrl-C or SIGTERM stops the node");
    // Small Broadcast acks must not wait for Nagle's algorithm.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(consenter_host::grpc::Service::server(node.clone()))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r.context("serving gRPC")?,
        signal = stop_signal() => {
            tracing::info!(signal, "shutting down: no new connections; halting chains");
            let _ = stop_tx.send(());
            let _ = admin_stop_tx.send(());
            // Halting makes queued blocks durable, answers in-flight
            // Broadcasts and ends waiting Deliver streams.
            let n = node.clone();
            tokio::task::spawn_blocking(move || n.shutdown()).await.context("halting chains")?;
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r.context("serving gRPC")?,
                Err(_) => tracing::warn!("streams still open after {SHUTDOWN_GRACE:?}; closing them"),
            }
        }
    }
    Ok(())
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what systemd and container
/// engines send): both stop the node cleanly. Returns the signal's name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    let signer = match (&a.msp_dir, &a.mspid) {
        (Some(dir), Some(id)) => Some(Signer::from_msp_dir(dir, id)?),
        _ => {
            let dev = Path::new("consenter-data/dev-identity/client/msp");
            if dev.join("signcerts").exists() {
                Some(Signer::from_msp_dir(dev, signer::DEV_MSPID)?)
            } else {
                eprintln!("no --msp-dir and no development identity here: sending unsigned envelopes");
                None
            }
        }
    };
    let spec = consenter_host::loadgen::LoadSpec {
        orderer: a.orderer,
        channel: a.channel,
        clients: a.clients.max(1),
        messages: a.messages,
        size: a.size,
        commit_timeout: a.commit_timeout,
    };
    println!(
        "bench: {} envelopes of {} bytes over {} streams to {} channel {}",
        spec.messages, spec.size, spec.clients, spec.orderer, spec.channel
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let r = rt.block_on(consenter_host::loadgen::run(&spec, signer.map(Arc::new), |acked, committed| {
        eprintln!("  acknowledged {acked}, committed {committed}");
    }))?;
    println!("acknowledged: {:.0} tx/s ({} in {:.2} s)", r.ack_rate(), r.acknowledged, r.ack_secs);
    println!("committed: {:.0} tx/s ({} in {:.2} s)", r.commit_rate(), r.committed, r.commit_secs);
    println!("latency: p50 {:.1} ms, p99 {:.1} ms (send to delivery)", ms(r.latency_p50), ms(r.latency_p99));
    println!("blocks: {}, envelopes seen: {}", r.blocks, r.envelopes_seen);
    for (status, info) in &r.refusals {
        println!("refused: {} ({status}): {info}", consenter_host::loadgen::status_name(*status));
    }
    if r.refused > 0 {
        bail!("{} envelopes were refused", r.refused);
    }
    if r.committed < r.acknowledged {
        bail!("only {} of {} acknowledged envelopes were delivered in blocks", r.committed, r.acknowledged);
    }
    Ok(())
}

fn channel_cmd(c: ChannelCmd) -> Result<()> {
    use admin::CHANNELS;
    let (ChannelCmd::Join { admin: a, .. }
    | ChannelCmd::List { admin: a }
    | ChannelCmd::Show { admin: a, .. }
    | ChannelCmd::Remove { admin: a, .. }) = &c;
    let tls = a.tls()?;
    let send = |method, path: &str, body| admin::request_with(&a.address, &tls, method, path, body);
    let answer = match &c {
        ChannelCmd::Join { config_block, .. } => {
            let bytes = std::fs::read(config_block).with_context(|| format!("reading {}", config_block.display()))?;
            let name = config_block.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (ct, body) = admin::multipart_body("config-block", &name, &bytes);
            send("POST", CHANNELS, Some((&ct, &body)))
        }
        ChannelCmd::List { .. } => send("GET", CHANNELS, None),
        ChannelCmd::Show { channel, .. } => send("GET", &format!("{CHANNELS}/{channel}"), None),
        ChannelCmd::Remove { channel, .. } => send("DELETE", &format!("{CHANNELS}/{channel}"), None),
    }?;
    // Print what osnadmin prints: the status code and the JSON body.
    println!("Status: {}", answer.status);
    if !answer.body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&answer.body) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => println!("{}", String::from_utf8_lossy(&answer.body)),
        }
    }
    if answer.status >= 300 {
        bail!("{}", answer.error_text());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How long Ctrl-C waits for open streams to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn channels_of(data_dir: &Path, only: Option<&str>) -> Result<Vec<String>> {
    if let Some(c) = only {
        return Ok(vec![c.to_string()]);
    }
    let dir = data_dir.join("chains");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

fn verify(data_dir: &Path, only: Option<&str>) -> Result<()> {
    let mut failed = false;
    for ch in channels_of(data_dir, only)? {
        let dir = node::channel_dir(data_dir, &ch);
        match verify_channel(&dir) {
            Ok((height, signers)) => {
                println!("{ch}: OK height {height} (hash chain, data hashes, signatures by {})", signers.join(", "))
            }
            Err(e) => {
                failed = true;
                println!("{ch}: FAILED: {e:#}");
            }
        }
    }
    if failed {
        bail!("ledger verification failed");
    }
    Ok(())
}

/// Verifies one ledger; returns its height and the MSP ids that signed.
fn verify_channel(dir: &Path) -> Result<(u64, Vec<String>)> {
    let height = ledger::verify_dir(dir)?;
    let mut signers = std::collections::BTreeSet::new();
    // verify_dir checked the hash chain; now check every block signature
    // (each against the certificate in its signature header).
    for (n, bytes) in read_blocks(dir)?.into_iter().enumerate() {
        let b = Block::decode(bytes).with_context(|| format!("block {n} does not decode"))?;
        let sigs = block::block_signatures(&b)?;
        if sigs.signatures.is_empty() {
            if n == 0 {
                continue; // a genesis block made by configtxgen is unsigned
            }
            bail!("block {n} has no signature");
        }
        for (sh, _) in &sigs.signatures {
            let (mspid, key) = signer::identity_key(&sh.creator).map_err(|e| anyhow::anyhow!("block {n}: {e}"))?;
            block::verify_block_signature(&b, &key)?;
            signers.insert(mspid);
        }
    }
    Ok((height, signers.into_iter().collect()))
}

/// Every block of a ledger, after a read-only check (a torn tail is
/// reported, not repaired: the node repairs it when it next opens).
fn read_blocks(dir: &Path) -> Result<Vec<Bytes>> {
    ledger::verify_dir(dir).with_context(|| format!("checking {}", dir.display()))?;
    let l = ledger::Ledger::open(dir).with_context(|| format!("opening {} (is a node using it?)", dir.display()))?;
    l.iter_from(0).map(|b| b.map_err(anyhow::Error::from)).collect()
}

fn inspect(data_dir: &Path, channel: &str, only: Option<u64>) -> Result<()> {
    let dir = node::channel_dir(data_dir, channel);
    for (n, bytes) in read_blocks(&dir)?.into_iter().enumerate() {
        let n = n as u64;
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let size = bytes.len();
        let b = Block::decode(bytes).with_context(|| format!("block {n} does not decode"))?;
        let h = b.header.clone().unwrap_or_default();
        let data = b.data.as_ref().map(|d| d.data.clone()).unwrap_or_default();
        println!("block {}  ({size} bytes)", h.number);
        println!("  header hash:   {}", hex(&block::header_hash(&h)));
        println!("  previous hash: {}", hex(&h.previous_hash));
        println!("  data hash:     {}", hex(&h.data_hash));
        println!("  envelopes:     {}", data.len());
        for (i, d) in data.iter().enumerate().take(5) {
            match Envelope::parse(d.clone()) {
                Ok(e) => println!(
                    "    [{i}] type {} channel {} tx {:?} {} bytes",
                    e.header_type, e.channel_id, e.tx_id, e.size
                ),
                Err(e) => println!("    [{i}] undecodable: {e}"),
            }
        }
        if data.len() > 5 {
            println!("    ... {} more", data.len() - 5);
        }
        let (last_config, consenter_md) = node::last_config_and_metadata(&b);
        println!("  last config:   {last_config}");
        println!("  consenter metadata: {} bytes", consenter_md.len());
        if let Ok(s) = block::block_signatures(&b) {
            for (sh, sig) in &s.signatures {
                let who = signer::identity_key(&sh.creator).map(|(m, _)| m).unwrap_or_else(|e| format!("? ({e})"));
                println!("  signed by:     {who} ({} byte signature)", sig.len());
            }
        }
    }
    Ok(())
}

fn plugin_cmd(c: PluginCmd) -> Result<()> {
    match c {
        PluginCmd::Keygen { out } => {
            let (key, public, id) = package::keygen(&out)?;
            println!("private key: {} (keep it secret)", key.display());
            println!("public key:  {} (key id {id}; copy it into a node's trust directory)", public.display());
            Ok(())
        }
        PluginCmd::Sign { key, name, version, consensus_type, capabilities, wit, input, out } => {
            let file = input.display().to_string();
            let key = package::SigningKey::read(&key)?;
            let bytes = std::fs::read(&input).with_context(|| format!("reading {file}"))?;
            let wit = match wit {
                Some(w) => w,
                None => package::component_wit(&package::Package::parse(&file, &bytes)?).with_context(|| {
                    format!("{file}: the component names no {} interface; pass --wit", package::WIT_NAMESPACE)
                })?,
            };
            let manifest = package::Manifest { name, version, wit, consensus_type, capabilities };
            let signed = package::sign(&file, &bytes, &manifest, &key)?;
            std::fs::write(&out, &signed).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "signed {} -> {}: consensus type {}, contract {}, key id {}, {} bytes",
                file,
                out.display(),
                manifest.consensus_type,
                manifest.wit,
                key.key_id,
                signed.len()
            );
            Ok(())
        }
        PluginCmd::Verify { trust_dir, consensus_type, file } => {
            let name = file.display().to_string();
            let bytes = std::fs::read(&file).with_context(|| format!("reading {name}"))?;
            let store = package::TrustStore::load(&trust_dir)?;
            let pkg = package::Package::parse(&name, &bytes)?;
            for c in package::check_signatures(&pkg, &store) {
                match c {
                    package::SignatureCheck::Trusted { key_id, signer } => {
                        println!("{name}: signed by {signer} (key id {key_id}): valid, trusted")
                    }
                    package::SignatureCheck::Unknown { key_id } => {
                        println!("{name}: signed by key id {key_id}: not in {}", trust_dir.display())
                    }
                    package::SignatureCheck::Invalid { key_id, signer } => {
                        println!("{name}: signed by {signer} (key id {key_id}): INVALID (modified after signing)")
                    }
                }
            }
            let result = package::verify(&name, &pkg, &store)
                .and_then(|k| package::check_contract(&name, &bytes, runtime::WIT_PACKAGE).map(|_| k))
                .and_then(|k| match (&consensus_type, &pkg.manifest) {
                    (Some(want), Some(m)) if &m.consensus_type != want => Err(package::PackageError::TypeMismatch {
                        file: name.clone(),
                        manifest: m.consensus_type.clone(),
                        wanted: want.clone(),
                    }),
                    _ => Ok(k),
                });
            match result {
                Ok(k) => {
                    let m =
                        pkg.manifest.as_ref().map(|m| (m.consensus_type.as_str(), m.wit.as_str())).unwrap_or_default();
                    println!(
                        "{name}: TRUSTED (signer {}, key id {}; consensus type {}, contract {})",
                        k.name, k.key_id, m.0, m.1
                    );
                    Ok(())
                }
                Err(e) => {
                    println!("{name}: NOT TRUSTED: {e}");
                    bail!("{name}: verification failed")
                }
            }
        }
        PluginCmd::Inspect { file } => {
            let name = file.display().to_string();
            let bytes = std::fs::read(&file).with_context(|| format!("reading {name}"))?;
            let pkg = package::Package::parse(&name, &bytes)?;
            println!("file:      {name}");
            println!("size:      {} bytes", pkg.size);
            println!("sha256:    {}", hex(&pkg.file_sha256));
            println!("signed:    first {} bytes, sha256 {}", pkg.signed_len, hex(&pkg.signed_digest));
            match &pkg.manifest {
                Some(m) => {
                    println!("manifest:");
                    println!("  name:           {}", m.name);
                    println!("  version:        {}", m.version);
                    println!("  wit:            {}", m.wit);
                    println!("  consensus-type: {}", m.consensus_type);
                    let caps = if m.capabilities.is_empty() { "(none)".to_string() } else { m.capabilities.join(", ") };
                    println!("  capabilities:   {caps}");
                }
                None => println!("manifest:  (none)"),
            }
            println!("signatures: {}", pkg.signatures.len());
            for s in &pkg.signatures {
                println!("  ed25519 key id {}", s.key_id);
            }
            println!("imports:");
            for i in &pkg.imports {
                println!("  {i}");
            }
            println!("exports:");
            for e in &pkg.exports {
                println!("  {e}");
            }
            match package::check_contract(&name, &bytes, runtime::WIT_PACKAGE) {
                Ok(_) => println!("contract:  compatible with this host ({})", runtime::WIT_PACKAGE),
                Err(e) => println!("contract:  NOT loadable by this host: {e}"),
            }
            Ok(())
        }
    }
}
