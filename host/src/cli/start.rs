//! Running a node: its flags, the embedded default, serving gRPC and the admin endpoint, a clean stop on SIGINT or SIGTERM.

use crate::*;

#[derive(Args)]
pub(crate) struct StartArgs {
    /// Data directory: ledgers under chains/<channel>/, the development
    /// identity under dev-identity/.
    #[arg(long, default_value = "consenter-data")]
    data_dir: PathBuf,
    /// Address of the AtomicBroadcast gRPC service.
    #[arg(long, default_value = "127.0.0.1:7050")]
    listen: SocketAddr,
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
    cluster_listen: Option<SocketAddr>,
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

pub(crate) fn start(a: StartArgs) -> Result<()> {
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
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let mut cluster = {
        let _in_runtime = rt.enter();
        cluster_setup(&a)?
    };
    let node = Node::open(NodeConfig {
        data_dir: a.data_dir.clone(),
        signer: Arc::new(signer),
        limits,
        plugin_limits,
        restart,
        support_limits: SupportLimits::default(),
        disk_reserve: a.disk_reserve_mib.saturating_mul(1 << 20),
        extra_plugins: extra,
        cluster: cluster.as_ref().map(|c| consenter_host::chain::cluster::NodeCluster {
            transport: c.transport.clone(),
            identity: c.identity.clone(),
            runtime: rt.handle().clone(),
        }),
        storage_quota: a.storage_mib.saturating_mul(1 << 20),
    })?;
    if let Some(c) = cluster.as_mut() {
        c.inbound = node.cluster_inbound();
    }
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
    let grpc_tls = general_tls(&a)?;
    let admin = if a.no_admin { None } else { Some((a.admin_listen, admin_tls)) };
    rt.block_on(serve(node.clone(), Listeners { grpc: a.listen, tls: grpc_tls, cluster }, admin, dev))?;
    node.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC port's TLS (Fabric's General.TLS), if --tls-cert is given.
pub(crate) fn general_tls(a: &StartArgs) -> Result<Option<Arc<rustls::ServerConfig>>> {
    use consenter_host::tls::{self, ClientAuth};
    let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) else { return Ok(None) };
    let client_auth = if a.tls_client_root_cas.is_empty() {
        ClientAuth::Request
    } else {
        ClientAuth::Require(Arc::new(tls::load_roots(
            "TLS client root CA (--tls-client-root-ca)",
            &a.tls_client_root_cas,
        )?))
    };
    let config = tls::server_config(
        cert,
        key,
        ("TLS certificate (--tls-cert)", "TLS key (--tls-key)"),
        client_auth,
        tls::ALPN_H2,
    )?;
    // The client side (cluster, block pulling) is checked now too, so a bad
    // --tls-root-ca stops the start rather than the first connection.
    if !a.tls_root_cas.is_empty() {
        tls::load_roots("TLS root CA (--tls-root-ca)", &a.tls_root_cas)?;
    }
    tracing::info!(
        cert = %cert.display(),
        client_root_cas = ?a.tls_client_root_cas,
        "gRPC: TLS{}",
        if a.tls_client_root_cas.is_empty() { "" } else { ", client certificates required" }
    );
    Ok(Some(config))
}

/// The cluster service as the node serves it: the transport (which the
/// consensus plugins' chains will use), what receives its messages, and
/// where it listens when not on the gRPC port.
pub(crate) struct ClusterServing {
    pub(crate) transport: consenter_host::cluster::Transport,
    pub(crate) identity: consenter_host::cluster::ClientIdentity,
    pub(crate) inbound: Arc<dyn consenter_host::cluster::Inbound>,
    pub(crate) listen: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
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

/// The cluster transport, when the node has a TLS identity (--tls-cert or
/// --cluster-tls-cert): the cluster only speaks mutual TLS.
pub(crate) fn cluster_setup(a: &StartArgs) -> Result<Option<ClusterServing>> {
    use consenter_host::cluster::{ClientIdentity, Transport, TransportLimits};
    use consenter_host::tls::{self, ClientAuth};
    let identity = match (&a.cluster_tls_cert, &a.cluster_tls_key, &a.tls_cert, &a.tls_key) {
        (Some(c), Some(k), _, _) | (None, None, Some(c), Some(k)) => (c, k),
        _ => return Ok(None),
    };
    if a.tls_root_cas.is_empty() {
        tracing::warn!("the cluster transport trusts no root CA: pass --tls-root-ca to reach other consenters");
    }
    let identity =
        ClientIdentity::from_files(identity.0, identity.1, &a.tls_root_cas).context("the cluster's TLS client")?;
    let transport = Transport::new(identity.clone(), TransportLimits::default());
    let listen = match (&a.cluster_listen, &a.cluster_tls_cert, &a.cluster_tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            if a.tls_root_cas.is_empty() {
                bail!("--cluster-listen requires client certificates: pass --tls-root-ca (the consenters' TLS CA)");
            }
            let roots = tls::load_roots("TLS root CA (--tls-root-ca)", &a.tls_root_cas)?;
            let config = tls::server_config(
                cert,
                key,
                ("cluster TLS certificate (--cluster-tls-cert)", "cluster TLS key (--cluster-tls-key)"),
                ClientAuth::Require(Arc::new(roots)),
                tls::ALPN_H2,
            )?;
            Some((*addr, config))
        }
        _ => None,
    };
    if listen.is_none() && a.tls_cert.is_none() {
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
    pub(crate) cluster: Option<ClusterServing>,
}

pub(crate) async fn serve(
    node: Arc<Node>,
    listeners: Listeners,
    admin: Option<(SocketAddr, Option<admin::tls::ServerTls>)>,
    dev: Option<signer::DevIdentity>,
) -> Result<()> {
    let Listeners { grpc: listen, tls, cluster } = listeners;
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
            if let Err(e) = admin::serve(l, n, transport, tls, stop).await {
                tracing::error!(error = %e, "admin endpoint stopped");
            }
        });
    }
    let (cluster_stop_tx, cluster_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut on_grpc_port = None;
    if let Some(c) = cluster {
        let svc = c.transport.server(c.inbound.clone());
        match c.listen {
            None => on_grpc_port = Some(svc),
            Some((at, config)) => {
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
        .add_service(consenter_host::grpc::Service::server(node.clone()))
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
