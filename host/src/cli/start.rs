//! Running a node: its flags, the embedded default, serving gRPC, the admin and operations endpoints, a clean stop on SIGINT or SIGTERM.
//! Every setting comes from the effective configuration (`cli/config.rs`): defaults < orderer.yaml < ORDERER_* < flags.

use crate::*;

#[derive(Args)]
pub(crate) struct StartArgs {
    /// Fabric's orderer.yaml (with an optional ConsenterHost section).
    /// Default: $FABRIC_CFG_PATH/orderer.yaml if it exists. ORDERER_*
    /// variables override it, flags override both (`config show`).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address of the operations endpoint (Fabric's
    /// Operations.ListenAddress): /healthz, /metrics, /logspec, /version
    /// and a status page at /.
    #[arg(long, default_value = "127.0.0.1:8443")]
    operations_listen: String,
    /// TLS certificate (PEM) of the operations endpoint
    /// (Operations.TLS.Certificate); /metrics, /logspec and the status page
    /// then need a client certificate.
    #[arg(long, value_name = "FILE", requires = "operations_tls_key")]
    operations_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --operations-tls-cert.
    #[arg(long, value_name = "FILE", requires = "operations_tls_cert")]
    operations_tls_key: Option<PathBuf>,
    /// Root CA (PEM) of operations client certificates; given, client
    /// certificates are required (Operations.TLS.ClientAuthRequired).
    /// Repeatable.
    #[arg(long = "operations-tls-client-ca", value_name = "FILE", requires = "operations_tls_cert")]
    operations_tls_client_cas: Vec<PathBuf>,
    /// Do not serve the operations endpoint.
    #[arg(long)]
    no_operations: bool,
    /// Log format: fabric (Fabric's console format) or json.
    #[arg(long, default_value = "fabric")]
    log_format: String,
    /// Log spec in Fabric's syntax, e.g. info:consenter_host::chain=debug
    /// (also FABRIC_LOGGING_SPEC; RUST_LOG's syntax when only RUST_LOG is
    /// set). Changeable at run time with PUT /logspec.
    #[arg(long, default_value = "info")]
    log_spec: String,
    /// Data directory: ledgers under chains/<channel>/, the development
    /// identity under dev-identity/.
    #[arg(long, default_value = "consenter-data")]
    data_dir: PathBuf,
    /// Address of the AtomicBroadcast gRPC service.
    #[arg(long, default_value = "127.0.0.1:7050")]
    pub(crate) listen: SocketAddr,
    /// TLS certificate (PEM) of the gRPC service (Fabric's
    /// General.TLS.Certificate). With --tls-key, the port speaks TLS only.
    /// Client certificates are asked for but not required (Fabric's
    /// ClientAuthRequired false); see --tls-client-root-ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert (General.TLS.PrivateKey).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Root CA (PEM) the node trusts as a TLS client: the servers of other
    /// orderers it connects to (cluster, block pulling). Repeatable
    /// (General.TLS.RootCAs).
    #[arg(long = "tls-root-ca", value_name = "FILE")]
    tls_root_cas: Vec<PathBuf>,
    /// Require a client certificate issued by this root CA (PEM) on the
    /// gRPC port (General.TLS.ClientAuthRequired with ClientRootCAs).
    /// Repeatable.
    #[arg(long = "tls-client-root-ca", value_name = "FILE", requires = "tls_cert")]
    tls_client_root_cas: Vec<PathBuf>,
    /// Serve the cluster service (orderer.Cluster) on this address instead
    /// of the gRPC port (Fabric's General.Cluster.ListenAddress), with
    /// client certificates required and checked against --tls-root-ca.
    #[arg(long, value_name = "ADDR", requires_all = ["cluster_tls_cert", "cluster_tls_key"])]
    pub(crate) cluster_listen: Option<SocketAddr>,
    /// TLS certificate (PEM) of --cluster-listen (General.Cluster.
    /// ServerCertificate); also the client certificate the node presents to
    /// other consenters. Default for the latter: --tls-cert.
    #[arg(long, value_name = "FILE", requires = "cluster_tls_key")]
    cluster_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --cluster-tls-cert.
    #[arg(long, value_name = "FILE", requires = "cluster_tls_cert")]
    cluster_tls_key: Option<PathBuf>,
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
    /// Plugin storage each clustered chain (e.g. etcdraft's raft log) may
    /// hold, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    storage_mib: u64,
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
    /// How long a plugin build installed live is on probation in each
    /// chain: a trap or failure within it rolls the chain back to the
    /// build before.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    plugin_probation: Duration,
}

/// What a `--restart-policy` entry names.
pub(crate) enum PolicyTarget {
    Channel,
    Plugin,
}

/// `channel:NAME=POLICY` or `plugin:TYPE=POLICY`.
pub(crate) fn parse_restart_policy(spec: &str) -> Result<(PolicyTarget, String, RestartPolicy)> {
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

pub(crate) fn start(a: StartArgs, m: &clap::ArgMatches) -> Result<()> {
    let cfg = cli::config::effective_config(&a, m)?;
    let s = Settings::from_config(&cfg).context("the configuration")?;
    let logs = init_logging(&s, &cfg)?;
    announce_config(&cfg, &s);
    let version = consenter_host::operations::Version::of_binary();
    // Before anything records: handles made earlier would stay no-ops.
    let exporter = if s.metrics { Some(consenter_host::metrics::install(&version.version)?) } else { None };
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
    let (signer, dev) = match &s.local_msp {
        Some((dir, id)) => (Signer::from_msp_dir(dir, id)?, None),
        None => {
            let dev = signer::ensure_dev_identity(&s.data_dir.join("dev-identity"))?;
            (Signer::from_msp_dir(&dev.orderer_msp, &dev.mspid)?, Some(dev))
        }
    };
    let mut extra = Vec::new();
    let trust_dir = s.plugin_trust_dir.clone().unwrap_or_else(|| s.data_dir.join("trusted-keys"));
    let policy = package::Policy {
        // Live installs are checked against it too: a trust directory that
        // exists is read even without --plugin files.
        trust: if s.plugins.is_empty() && !trust_dir.is_dir() {
            package::TrustStore::default()
        } else {
            package::TrustStore::load(&trust_dir)?
        },
        allow_unsigned: s.allow_unsigned_plugins,
    };
    for (name, path) in &s.plugins {
        let bytes = std::fs::read(path).with_context(|| format!("reading plugin {name} from {}", path.display()))?;
        package::admit(&policy, name, path, &bytes).with_context(|| format!("plugin {name} refused"))?;
        extra.push((name.to_string(), bytes));
    }
    let limits = Limits {
        memory_bytes: (s.plugin_memory_mib as usize) << 20,
        call_deadline: s.plugin_call_deadline,
        ..Limits::default()
    };
    let admin_tls = match &s.admin {
        Some(ep) => match &ep.tls {
            Some(t) => {
                let client_cas = if t.client_root_cas.is_empty() {
                    let msp = s
                        .local_msp
                        .as_ref()
                        .map(|m| m.0.clone())
                        .or_else(|| dev.as_ref().map(|d| d.orderer_msp.clone()));
                    match msp {
                        Some(msp) => admin::tls::msp_tls_cas(&msp)?,
                        None => bail!("the admin endpoint's TLS needs client root CAs: pass --admin-tls-client-ca"),
                    }
                } else {
                    t.client_root_cas.clone()
                };
                let files = admin::tls::ServerFiles {
                    cert: t.certificate.clone(),
                    key: t.private_key.clone(),
                    client_cas,
                    admin_cns: s.admin_client_cns.clone(),
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
            None => None,
        },
        None => None,
    };
    if let Some(ep) = &s.admin
        && admin_tls.is_none()
        && !ep.listen.ip().is_loopback()
    {
        bail!(
            "--admin-listen {}: without TLS (--admin-tls-cert, --admin-tls-key) the admin endpoint may only listen \
             on a loopback address",
            ep.listen
        );
    }
    let ops_tls = match s.operations.as_ref().and_then(|o| o.tls.as_ref()) {
        Some(t) => Some(consenter_host::operations::tls::server_config(t).context("operations endpoint TLS")?),
        None => None,
    };
    let mut plugin_limits = std::collections::BTreeMap::new();
    for spec in &s.plugin_limits {
        let Some((name, kv)) = spec.split_once(':') else {
            bail!("--plugin-limits {spec:?}: expected TYPE:KEY=VALUE,...")
        };
        let base = plugin_limits.get(name).unwrap_or(&limits);
        let l = base.with_overrides(kv)?;
        plugin_limits.insert(name.to_string(), l);
    }
    let mut restart = RestartPolicies::default();
    restart.backoff.initial_backoff = s.restart_backoff_initial;
    restart.backoff.max_backoff = s.restart_backoff_max;
    restart.backoff.max_crashes = s.restart_max_crashes.max(1);
    restart.backoff.crash_window = s.restart_crash_window;
    for spec in &s.restart_policy {
        let (kind, name, policy) = parse_restart_policy(spec)?;
        match kind {
            PolicyTarget::Channel => restart.by_channel.insert(name, policy),
            PolicyTarget::Plugin => restart.by_plugin.insert(name, policy),
        };
    }
    let disk_reserve = s.disk_reserve_mib.saturating_mul(1 << 20);
    // The gRPC port's TLS first: its errors name the flags and files.
    let (grpc_tls, client_roots) = general_tls(&s)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let mut cluster = {
        let _in_runtime = rt.enter();
        cluster_setup(&s)?
    };
    let node = Node::open(NodeConfig {
        data_dir: s.data_dir.clone(),
        signer: Arc::new(signer),
        limits,
        plugin_limits,
        restart,
        support_limits: SupportLimits::default(),
        disk_reserve,
        extra_plugins: extra,
        cluster: cluster.as_ref().map(|c| consenter_host::chain::cluster::NodeCluster {
            transport: c.transport.clone(),
            identity: c.identity.clone(),
            runtime: rt.handle().clone(),
        }),
        storage_quota: s.storage_mib.saturating_mul(1 << 20),
        plugin_policy: policy,
        probation: s.plugin_probation,
    })?;
    if let Some(c) = cluster.as_mut() {
        c.inbound = node.cluster_inbound();
    }
    if let Some(path) = &s.bootstrap_file {
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
    if let Some(d) = &s.dev_channel
        && s.bootstrap_file.is_none()
        && node.system_channel().is_none()
        && node.chain(&d.name).is_none()
        && node.broken(&d.name).is_none()
    {
        let mut t = ChannelTemplate::solo(&d.name);
        t.consensus_type = d.consensus.clone();
        t.consensus_metadata = Bytes::from(d.consensus_metadata.clone().into_bytes());
        t.batch_timeout = d.batch_timeout;
        t.batch_size.max_message_count = d.max_message_count;
        t.batch_size.absolute_max_bytes = d.absolute_max_bytes;
        t.batch_size.preferred_max_bytes = t.batch_size.preferred_max_bytes.min(d.absolute_max_bytes);
        node.create_channel(&t.genesis_block()).with_context(|| format!("creating channel {}", d.name))?;
    }
    let admin = s.admin.as_ref().map(|ep| (ep.listen, admin_tls));
    let extras = Extras {
        participation: s.participation,
        operations: s.operations.as_ref().map(|ep| OperationsServe {
            listen: ep.listen,
            explicit: ep.explicit,
            tls: ops_tls,
            ops: consenter_host::operations::Operations {
                node: node.clone(),
                exporter,
                logs: Some(logs),
                version,
                data_dir: s.data_dir.clone(),
                disk_reserve,
                history: Default::default(),
                started: std::time::Instant::now(),
            },
        }),
    };
    // Client certificates may also chain to the TLS CAs of the channels'
    // organizations, read whenever a client connects (Fabric updates its
    // listener's client CAs at every config change).
    let cluster_roots = cluster.as_ref().and_then(|c| c.listen.as_ref()).map(|(_, _, r)| r);
    for roots in client_roots.iter().chain(cluster_roots) {
        let weak = Arc::downgrade(&node);
        roots.set_source(Box::new(move || weak.upgrade().map(|n| n.channel_tls_cas()).unwrap_or_default()));
    }
    let mutual_tls = s.general_tls.as_ref().is_some_and(|t| t.client_auth_required);
    let listeners = Listeners { grpc: s.listen, tls: grpc_tls, mutual_tls, cluster };
    rt.block_on(serve(node.clone(), listeners, admin, dev, extras))?;
    node.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Logging from the settings: Fabric's format or JSON on stderr, the spec
/// from the settings (or `RUST_LOG`'s directives when only it is set).
fn init_logging(s: &Settings, cfg: &consenter_host::config::Config) -> Result<consenter_host::logging::LogControl> {
    use std::io::IsTerminal;
    let rust_log = Settings::rust_log_wins(cfg).then(|| std::env::var("RUST_LOG").unwrap_or_default());
    Ok(consenter_host::logging::init(s.log_format, &s.log_spec, rust_log.as_deref(), std::io::stderr().is_terminal())?)
}

/// Logs, once, which file was read, the Fabric settings that are ignored,
/// the unknown ones, and the settings that do not do what they say here.
fn announce_config(cfg: &consenter_host::config::Config, s: &Settings) {
    match &cfg.file {
        Some(f) => tracing::info!(file = %f.display(), "configuration file"),
        None => tracing::debug!("no configuration file: built-in defaults, ORDERER_* variables and flags"),
    }
    if !cfg.ignored.is_empty() {
        tracing::info!(keys = %cfg.ignored.join(", "), "Fabric settings this node does not use (ignored)");
    }
    for k in &cfg.unknown {
        tracing::warn!(key = %k, "unknown setting (ignored): {k}");
    }
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
}

/// The operations endpoint to serve.
pub(crate) struct OperationsServe {
    listen: SocketAddr,
    /// Configured (a bind failure stops the start) or the built-in default
    /// (a bind failure is a warning: another node may hold the port).
    explicit: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    ops: consenter_host::operations::Operations,
}

/// What `serve` serves besides gRPC and the admin endpoint.
pub(crate) struct Extras {
    /// Whether the participation API answers (Fabric's ChannelParticipation.Enabled).
    participation: bool,
    operations: Option<OperationsServe>,
}

/// The gRPC port's TLS (Fabric's General.TLS: --tls-cert, --tls-key,
/// --tls-client-root-ca), when enabled; with ClientAuthRequired, the
/// client-certificate verifier whose channel CAs the node then supplies.
#[allow(clippy::type_complexity)]
pub(crate) fn general_tls(
    s: &Settings,
) -> Result<(Option<Arc<rustls::ServerConfig>>, Option<Arc<consenter_host::tls::client_roots::ChannelClientRoots>>)> {
    use consenter_host::tls::{self, ClientAuth, client_roots::ChannelClientRoots};
    let Some(t) = &s.general_tls else { return Ok((None, None)) };
    let mut client_roots = None;
    let client_auth = if t.client_auth_required {
        let roots = ChannelClientRoots::from_files("TLS client root CA (--tls-client-root-ca)", &t.client_root_cas)?;
        client_roots = Some(roots.clone());
        ClientAuth::Verifier(roots)
    } else {
        ClientAuth::Request
    };
    let config = tls::server_config(
        &t.certificate,
        &t.private_key,
        ("TLS certificate (--tls-cert)", "TLS key (--tls-key)"),
        client_auth,
        tls::ALPN_H2,
    )?;
    // The client side (cluster, block pulling) is checked now too, so a bad
    // --tls-root-ca stops the start rather than the first connection.
    if !t.root_cas.is_empty() {
        tls::load_roots("TLS root CA (--tls-root-ca)", &t.root_cas)?;
    }
    tracing::info!(
        cert = %t.certificate.display(),
        client_root_cas = ?t.client_root_cas,
        "gRPC: TLS{}",
        if t.client_auth_required { ", client certificates required" } else { "" }
    );
    Ok((Some(config), client_roots))
}

/// The cluster service as the node serves it: the transport (which the
/// consensus plugins' chains will use), what receives its messages, and
/// where it listens when not on the gRPC port.
pub(crate) struct ClusterServing {
    pub(crate) transport: consenter_host::cluster::Transport,
    pub(crate) identity: consenter_host::cluster::ClientIdentity,
    pub(crate) inbound: Arc<dyn consenter_host::cluster::Inbound>,
    /// A port of its own (`--cluster-listen`): where, its TLS, and its
    /// client-certificate verifier (whose channel CAs the node supplies).
    pub(crate) listen:
        Option<(SocketAddr, Arc<rustls::ServerConfig>, Arc<consenter_host::tls::client_roots::ChannelClientRoots>)>,
}

/// Receives cluster messages until the node is open and takes them
/// ([`Node::cluster_inbound`]); anything arriving before is logged and
/// dropped.
struct Unconsumed;

impl consenter_host::cluster::Inbound for Unconsumed {
    fn consensus(&self, channel: &str, from: u64, payload: Bytes) {
        tracing::debug!(channel, from, len = payload.len(), "cluster: consensus message with no consumer");
    }
    fn submit(&self, channel: &str, from: u64, _seq: u64, envelope: Bytes) {
        tracing::debug!(channel, from, len = envelope.len(), "cluster: submit with no consumer");
    }
}

/// The cluster transport, when the node has a TLS identity (General.TLS
/// or General.Cluster's certificates): the cluster only speaks mutual TLS.
/// The node presents General.Cluster.ClientCertificate, else
/// ServerCertificate, else General.TLS.Certificate, and trusts
/// General.TLS.RootCAs and General.Cluster.RootCAs.
pub(crate) fn cluster_setup(s: &Settings) -> Result<Option<ClusterServing>> {
    use consenter_host::cluster::{ClientIdentity, Transport, TransportLimits};
    use consenter_host::tls::{self, ClientAuth, client_roots::ChannelClientRoots};
    let c = &s.cluster;
    let general = s.general_tls.as_ref();
    let identity = match (&c.client_certificate, &c.client_private_key, &c.server_certificate, &c.server_private_key) {
        (Some(cert), Some(key), _, _) | (None, _, Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => match general {
            Some(t) => (t.certificate.clone(), t.private_key.clone()),
            None => return Ok(None),
        },
    };
    let mut roots: Vec<PathBuf> = general.map(|t| t.root_cas.clone()).unwrap_or_default();
    roots.extend(c.root_cas.iter().cloned());
    if roots.is_empty() {
        tracing::info!(
            "the cluster transport trusts no root CA of its own (--tls-root-ca): it trusts the TLS CAs of each \
             channel's orderer organizations"
        );
    }
    let identity = ClientIdentity::from_files(&identity.0, &identity.1, &roots).context("the cluster's TLS client")?;
    let transport = Transport::new(identity.clone(), TransportLimits::default());
    let listen = match (&c.listen_address, c.listen_port, &c.server_certificate, &c.server_private_key) {
        (Some(host), Some(port), Some(cert), Some(key)) => {
            let text = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let at = std::net::ToSocketAddrs::to_socket_addrs(&text)
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("General.Cluster.ListenAddress {text:?} is not an address"))?;
            // As the gRPC port with client certificates required: the
            // given roots and the TLS CAs of the channels' organizations
            // (Fabric updates its cluster listener's client CAs too).
            let client_roots = ChannelClientRoots::from_files("TLS root CA (--tls-root-ca)", &roots)?;
            let config = tls::server_config(
                cert,
                key,
                ("cluster TLS certificate (--cluster-tls-cert)", "cluster TLS key (--cluster-tls-key)"),
                ClientAuth::Verifier(client_roots.clone()),
                tls::ALPN_H2,
            )?;
            Some((at, config, client_roots))
        }
        _ => None,
    };
    if listen.is_none() && general.is_none() {
        bail!(
            "--cluster-tls-cert without --cluster-listen: the cluster service is on the gRPC port, which needs --tls-cert"
        );
    }
    Ok(Some(ClusterServing { transport, identity, inbound: Arc::new(Unconsumed), listen }))
}

/// Where the node's gRPC services listen.
pub(crate) struct Listeners {
    pub(crate) grpc: SocketAddr,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Client certificates are required (General.TLS.ClientAuthRequired):
    /// Deliver requests must then be bound to them.
    pub(crate) mutual_tls: bool,
    pub(crate) cluster: Option<ClusterServing>,
}

pub(crate) async fn serve(
    node: Arc<Node>,
    listeners: Listeners,
    admin: Option<(SocketAddr, Option<admin::tls::ServerTls>)>,
    dev: Option<signer::DevIdentity>,
    extras: Extras,
) -> Result<()> {
    let Listeners { grpc: listen, tls, mutual_tls, cluster } = listeners;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let cluster_here = cluster.as_ref().is_some_and(|c| c.listen.is_none());
    let how = match (tls.is_some(), cluster_here) {
        (true, true) => ", orderer.Cluster, TLS",
        (true, false) => ", TLS",
        _ => "",
    };
    println!("consenter-host listening on {addr} (orderer.AtomicBroadcast{how})");
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some((admin, tls)) = admin {
        let l = tokio::net::TcpListener::bind(admin).await.with_context(|| format!("admin endpoint on {admin}"))?;
        let (scheme, how) = if tls.is_some() { ("https", ", mutual TLS") } else { ("http", ", loopback clients") };
        println!("admin endpoint on {scheme}://{} (channel participation API{how})", l.local_addr()?);
        let n = node.clone();
        let transport = cluster.as_ref().map(|c| c.transport.clone());
        tokio::spawn(async move {
            let stop = async {
                let _ = admin_stop_rx.await;
            };
            if let Err(e) = admin::serve_participation(l, n, transport, tls, extras.participation, stop).await {
                tracing::error!(error = %e, "admin endpoint stopped");
            }
        });
    }
    // After the admin line (scripts and tests read the first lines in order).
    let ops_stop_tx = serve_operations(extras.operations).await?;
    let (cluster_stop_tx, cluster_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut on_grpc_port = None;
    if let Some(c) = cluster {
        let svc = c.transport.server(c.inbound.clone());
        match c.listen {
            None => on_grpc_port = Some(svc),
            Some((at, config, _)) => {
                let l = tokio::net::TcpListener::bind(at).await.with_context(|| format!("cluster listener on {at}"))?;
                println!("cluster service on {} (orderer.Cluster, mutual TLS)", l.local_addr()?);
                let incoming = consenter_host::tls::TlsListener::new(
                    l,
                    config,
                    consenter_host::tls::HANDSHAKE_TIMEOUT,
                    "cluster",
                    true,
                )?;
                tokio::spawn(async move {
                    let stop = async {
                        let _ = cluster_stop_rx.await;
                    };
                    let r = tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, stop);
                    if let Err(e) = r.await {
                        tracing::error!(error = %e, "cluster listener stopped");
                    }
                });
            }
        }
    }
    println!("channels: {}", node.channels().join(", "));
    if let Some(d) = &dev {
        println!("client identity: --mspid {} --msp-dir {}", d.mspid, d.client_msp.display());
    }
    let scheme = if tls.is_some() { "grpcs" } else { "grpc" };
    println!("point a Fabric client at {scheme}://{addr}; Ctrl-C or SIGTERM stops the node");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    let router = tonic::transport::Server::builder()
        .add_service(consenter_host::grpc::Service::server(node.clone(), mutual_tls))
        .add_optional_service(on_grpc_port);
    // Small Broadcast acks must not wait for Nagle's algorithm.
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        Some(config) => {
            let incoming = consenter_host::tls::TlsListener::new(
                listener,
                config,
                consenter_host::tls::HANDSHAKE_TIMEOUT,
                "gRPC",
                true,
            )?;
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r.context("serving gRPC")?,
        signal = stop_signal() => {
            tracing::info!(signal, "shutting down: no new connections; halting chains");
            let _ = stop_tx.send(());
            let _ = admin_stop_tx.send(());
            let _ = cluster_stop_tx.send(());
            let _ = ops_stop_tx.send(());
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

/// Binds and serves the operations endpoint (its line follows the admin
/// endpoint's); returns what stops it. A bind failure of the
/// built-in default address is a warning, of a configured one an error.
async fn serve_operations(o: Option<OperationsServe>) -> Result<tokio::sync::oneshot::Sender<()>> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let Some(o) = o else { return Ok(stop_tx) };
    match tokio::net::TcpListener::bind(o.listen).await {
        Ok(l) => {
            let scheme = if o.tls.is_some() { "https" } else { "http" };
            println!(
                "operations endpoint on {scheme}://{} (/healthz, /metrics, /logspec, /version, status page /)",
                l.local_addr()?
            );
            tokio::spawn(async move {
                let stop = async {
                    let _ = stop_rx.await;
                };
                if let Err(e) = consenter_host::operations::serve(l, o.ops, o.tls, stop).await {
                    tracing::error!(error = %e, "operations endpoint stopped");
                }
            });
        }
        Err(e) if !o.explicit => tracing::warn!(
            addr = %o.listen,
            error = %e,
            "operations endpoint not served (the default address is taken; set Operations.ListenAddress or \
             --operations-listen)"
        ),
        Err(e) => return Err(e).with_context(|| format!("operations endpoint on {}", o.listen)),
    }
    Ok(stop_tx)
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what systemd and container
/// engines send): both stop the node cleanly. Returns the signal's name.
pub(crate) async fn stop_signal() -> &'static str {
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
/// How long Ctrl-C waits for open streams to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
