//! The settings the node reads from `orderer.yaml`: every key, its type,
//! its built-in default (the node's own defaults, which are what
//! `consenter-host start` does with no file, no variable and no flag),
//! and Fabric's keys that the node knows but does not use.

/// The type of a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Str,
    /// A file or directory; relative paths in a file (or a variable, when a
    /// file is in use) are relative to the file's directory, as Fabric's.
    Path,
    /// true or false (Go's strconv.ParseBool forms in variables).
    Bool,
    /// A non-negative integer at most this large.
    Num(u64),
    /// A Go duration (`2s`, `500ms`, `1h30m`).
    Duration,
    /// A list of text (`[a, b]` or `a,b` in variables).
    List,
    /// A list of paths.
    PathList,
    /// A list of `TYPE=PATH` (a plugin file per consensus type); the path
    /// is relative as [`Kind::Path`].
    PluginList,
    /// A byte size (`1 MB`, `512 KB`, or a number of bytes).
    Size,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Its key, as Fabric spells it (matched without regard to case).
    pub key: &'static str,
    /// Its type.
    pub kind: Kind,
    /// The built-in default, as it would be written in the file (None:
    /// unset).
    pub default: Option<&'static str>,
    /// What it does here.
    pub doc: &'static str,
}

const fn s(key: &'static str, kind: Kind, default: Option<&'static str>, doc: &'static str) -> Spec {
    Spec { key, kind, default, doc }
}

use Kind::*;

const PORT: Kind = Num(u16::MAX as u64);
const U32: Kind = Num(u32::MAX as u64);
const U64: Kind = Num(u64::MAX);

/// Every setting the node reads.
pub const SETTINGS: &[Spec] = &[
    s("General.ListenAddress", Str, Some("127.0.0.1"), "address of the AtomicBroadcast gRPC service (--listen)"),
    s("General.ListenPort", PORT, Some("7050"), "its port (--listen)"),
    s("General.TLS.Enabled", Bool, Some("false"), "TLS on the gRPC port"),
    s("General.TLS.PrivateKey", Path, None, "its key (--tls-key)"),
    s("General.TLS.Certificate", Path, None, "its certificate (--tls-cert)"),
    s("General.TLS.RootCAs", PathList, None, "root CAs of the servers this node dials (--tls-root-ca)"),
    s("General.TLS.ClientAuthRequired", Bool, Some("false"), "require client certificates on the gRPC port"),
    s("General.TLS.ClientRootCAs", PathList, None, "their root CAs (--tls-client-root-ca)"),
    s("General.Cluster.ListenAddress", Str, None, "cluster (Step) service address; empty: the gRPC port"),
    s("General.Cluster.ListenPort", PORT, None, "its port"),
    s("General.Cluster.ServerCertificate", Path, None, "cluster service TLS certificate"),
    s("General.Cluster.ServerPrivateKey", Path, None, "its key"),
    s("General.Cluster.ClientCertificate", Path, None, "client certificate for dialing other orderers"),
    s("General.Cluster.ClientPrivateKey", Path, None, "its key"),
    s("General.Cluster.RootCAs", PathList, None, "root CAs of other orderers"),
    s("General.Cluster.DialTimeout", Duration, Some("5s"), "cluster dial timeout"),
    s("General.Cluster.RPCTimeout", Duration, Some("7s"), "cluster RPC timeout"),
    s("General.Cluster.ReplicationBufferSize", U64, Some("20971520"), "replication buffer (bytes)"),
    s("General.Cluster.ReplicationPullTimeout", Duration, Some("5s"), "replication pull timeout"),
    s("General.Cluster.ReplicationRetryTimeout", Duration, Some("5s"), "replication retry timeout"),
    s("General.Cluster.ReplicationBackgroundRefreshInterval", Duration, Some("5m"), "replication refresh interval"),
    s("General.Cluster.ReplicationMaxRetries", U64, Some("12"), "replication attempts"),
    s("General.Cluster.SendBufferSize", U64, Some("100"), "messages buffered per cluster stream"),
    s("General.Cluster.CertExpirationWarningThreshold", Duration, Some("168h"), "warn before a certificate expires"),
    s(
        "General.Cluster.TLSHandshakeTimeShift",
        Duration,
        Some("0s"),
        "accept expired cluster certificates by this much",
    ),
    s(
        "General.BootstrapMethod",
        Str,
        Some("none"),
        "file: bootstrap from General.BootstrapFile; none (--genesis-block)",
    ),
    s("General.BootstrapFile", Path, None, "genesis block to bootstrap from (--genesis-block)"),
    s(
        "General.LocalMSPDir",
        Path,
        None,
        "MSP folder of the node's identity; unset: a development identity (--msp-dir)",
    ),
    s("General.LocalMSPID", Str, None, "its MSP id (--mspid)"),
    s(
        "FileLedger.Location",
        Path,
        Some("consenter-data"),
        "data directory: ledgers, plugin cache, trust store (--data-dir)",
    ),
    s("Operations.ListenAddress", Str, Some("127.0.0.1:8443"), "operations endpoint (--operations-listen)"),
    s("Operations.TLS.Enabled", Bool, Some("false"), "TLS on the operations endpoint"),
    s("Operations.TLS.Certificate", Path, None, "its certificate (--operations-tls-cert)"),
    s("Operations.TLS.PrivateKey", Path, None, "its key (--operations-tls-key)"),
    s(
        "Operations.TLS.ClientAuthRequired",
        Bool,
        Some("false"),
        "require client certificates (else only /metrics and /logspec need one)",
    ),
    s("Operations.TLS.ClientRootCAs", PathList, None, "root CAs of client certificates (--operations-tls-client-ca)"),
    s("Metrics.Provider", Str, Some("prometheus"), "prometheus: /metrics on the operations endpoint; disabled"),
    s("Admin.ListenAddress", Str, Some("127.0.0.1:7053"), "admin endpoint, channel participation API (--admin-listen)"),
    s("Admin.TLS.Enabled", Bool, Some("false"), "mutual TLS on the admin endpoint"),
    s("Admin.TLS.Certificate", Path, None, "its certificate (--admin-tls-cert)"),
    s("Admin.TLS.PrivateKey", Path, None, "its key (--admin-tls-key)"),
    s(
        "Admin.TLS.ClientAuthRequired",
        Bool,
        Some("true"),
        "client certificates are always required, as Fabric's participation API does",
    ),
    s(
        "Admin.TLS.ClientRootCAs",
        PathList,
        None,
        "root CAs of admin client certificates; unset: the MSP's tlscacerts (--admin-tls-client-ca)",
    ),
    s("ChannelParticipation.Enabled", Bool, Some("true"), "serve the channel participation API (else 503, as Fabric)"),
    s("ConsenterHost.Admin.Enabled", Bool, Some("true"), "serve the admin endpoint at all (--no-admin)"),
    s("ConsenterHost.Admin.ClientCNs", List, None, "only these client certificate CNs are admins (--admin-client-cn)"),
    s("ConsenterHost.Operations.Enabled", Bool, Some("true"), "serve the operations endpoint (--no-operations)"),
    s("ConsenterHost.Logging.Spec", Str, Some("info"), "log spec, Fabric's syntax (--log-spec, FABRIC_LOGGING_SPEC)"),
    s("ConsenterHost.Logging.Format", Str, Some("fabric"), "fabric or json (--log-format, FABRIC_LOGGING_FORMAT)"),
    s(
        "ConsenterHost.DevChannel.Enabled",
        Bool,
        Some("true"),
        "create the development channel on a node with none (--no-dev-channel; off when a file is in use)",
    ),
    s("ConsenterHost.DevChannel.Name", Str, Some("devchannel"), "its name (--dev-channel)"),
    s("ConsenterHost.DevChannel.BatchTimeout", Duration, Some("2s"), "its BatchTimeout (--dev-batch-timeout)"),
    s("ConsenterHost.DevChannel.MaxMessageCount", U32, Some("500"), "its MaxMessageCount (--dev-max-message-count)"),
    s(
        "ConsenterHost.DevChannel.AbsoluteMaxBytes",
        U32,
        Some("10485760"),
        "its AbsoluteMaxBytes (--dev-absolute-max-bytes)",
    ),
    s("ConsenterHost.DevChannel.Consensus", Str, Some("solo"), "its consensus type (--dev-consensus)"),
    s(
        "ConsenterHost.DevChannel.ConsensusMetadata",
        Str,
        Some(""),
        "its ConsensusType metadata (--dev-consensus-metadata)",
    ),
    s("ConsenterHost.Plugins", PluginList, None, "plugin files, TYPE=PATH (--plugin)"),
    s("ConsenterHost.PluginMemoryMiB", U64, Some("64"), "memory cap of a plugin instance (--plugin-memory-mib)"),
    s("ConsenterHost.PluginCallDeadline", Duration, Some("1s"), "deadline of one plugin call (--plugin-call-deadline)"),
    s(
        "ConsenterHost.PluginTrustDir",
        Path,
        None,
        "trusted plugin keys; unset: <data>/trusted-keys (--plugin-trust-dir)",
    ),
    s("ConsenterHost.AllowUnsignedPlugins", Bool, Some("false"), "load unsigned plugins (--allow-unsigned-plugins)"),
    s("ConsenterHost.PluginLimits", List, None, "TYPE:KEY=VALUE,... limits of a plugin type (--plugin-limits)"),
    s("ConsenterHost.RestartPolicy", List, None, "channel:NAME=POLICY or plugin:TYPE=POLICY (--restart-policy)"),
    s("ConsenterHost.DiskReserveMiB", U64, Some("128"), "free space kept on the ledger disk (--disk-reserve-mib)"),
    s(
        "ConsenterHost.StorageMiB",
        U64,
        Some("1024"),
        "plugin storage per clustered chain, e.g. a raft log (--storage-mib)",
    ),
    s(
        "ConsenterHost.RestartBackoffInitial",
        Duration,
        Some("100ms"),
        "first restart delay (--restart-backoff-initial)",
    ),
    s("ConsenterHost.RestartBackoffMax", Duration, Some("10s"), "longest restart delay (--restart-backoff-max)"),
    s(
        "ConsenterHost.RestartMaxCrashes",
        U32,
        Some("5"),
        "crashes in the window that stop restarts (--restart-max-crashes)",
    ),
    s("ConsenterHost.RestartCrashWindow", Duration, Some("60s"), "the crash-loop window (--restart-crash-window)"),
    s(
        "ConsenterHost.PluginProbation",
        Duration,
        Some("60s"),
        "probation of a plugin build installed live: a failure within it rolls back (--plugin-probation)",
    ),
];

/// Fabric's keys that the node knows and does not use: a key at or under
/// one of these is listed as ignored, never as unknown.
pub const IGNORED: &[&str] = &[
    "General.Keepalive",
    "General.MaxRecvMsgSize",
    "General.MaxSendMsgSize",
    "General.ConnectionTimeout",
    "General.GenesisMethod",
    "General.GenesisFile",
    "General.GenesisProfile",
    "General.Profile",
    "General.BCCSP",
    "General.Authentication",
    "General.TLS.TLSHandshakeTimeShift",
    "General.Cluster.ReplicationPolicy",
    "FileLedger.Prefix",
    "Kafka",
    "Debug",
    "Consensus",
    "Operations.TLS.RootCAs",
    "Operations.TLS.TLSHandshakeTimeShift",
    "Admin.TLS.RootCAs",
    "Admin.TLS.TLSHandshakeTimeShift",
    "Metrics.Statsd",
    "ChannelParticipation.MaxRequestBodySize",
];

/// The setting of `key` (any case).
pub fn find(key: &str) -> Option<&'static Spec> {
    SETTINGS.iter().find(|s| s.key.eq_ignore_ascii_case(key))
}

/// Whether `key` (any case) is at or under an ignored key.
pub fn ignored(key: &str) -> bool {
    IGNORED.iter().any(|p| {
        key.len() >= p.len()
            && key[..p.len()].eq_ignore_ascii_case(p)
            && (key.len() == p.len() || key.as_bytes()[p.len()] == b'.')
    })
}

/// Whether `key` (any case) is a section holding settings (e.g. `General`
/// or `General.TLS`).
pub fn is_section(key: &str) -> bool {
    SETTINGS.iter().any(|s| {
        s.key.len() > key.len() && s.key[..key.len()].eq_ignore_ascii_case(key) && s.key.as_bytes()[key.len()] == b'.'
    })
}

/// The environment variable of a key, as Fabric's viper derives it:
/// `ORDERER_` and the key in capitals with `_` for `.`.
pub fn env_name(key: &str) -> String {
    format!("ORDERER_{}", key.to_ascii_uppercase().replace('.', "_"))
}
