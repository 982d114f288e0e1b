//! The typed view of a [`Config`]: what `consenter-host start` runs with.
//! Fabric's rules apply where they decide something: a TLS section's
//! files count only when its `Enabled` is true; `BootstrapMethod` is
//! `file` or `none`, and an empty `BootstrapFile` is Fabric's
//! `genesisblock` beside the configuration file; an unset listen address
//! or port takes the default.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{Config, Source};
use crate::logging::LogFormat;

/// What is wrong with the settings taken together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// An address that does not resolve.
    #[error("{key} = {value:?}: {reason}")]
    Address {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why it is not an address.
        reason: String,
    },
    /// A value outside what the key takes.
    #[error("{key} = {value:?}: {expected}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A setting that needs another one.
    #[error("{key} needs {needs}")]
    Needs {
        /// The key.
        key: &'static str,
        /// What it needs.
        needs: &'static str,
    },
}

/// A TLS section (Fabric's `TLS` struct), when enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// The certificate (PEM).
    pub certificate: PathBuf,
    /// Its key (PEM).
    pub private_key: PathBuf,
    /// Root CAs of servers this side dials.
    pub root_cas: Vec<PathBuf>,
    /// Whether client certificates are required.
    pub client_auth_required: bool,
    /// Root CAs of client certificates.
    pub client_root_cas: Vec<PathBuf>,
}

/// Fabric's `General.Cluster` settings, for the cluster code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Address of a separate cluster listener (None: the gRPC port).
    pub listen_address: Option<String>,
    /// Its port.
    pub listen_port: Option<u16>,
    /// TLS certificate of the separate listener.
    pub server_certificate: Option<PathBuf>,
    /// Its key.
    pub server_private_key: Option<PathBuf>,
    /// Client certificate for dialing other orderers (None: General.TLS's).
    pub client_certificate: Option<PathBuf>,
    /// Its key.
    pub client_private_key: Option<PathBuf>,
    /// Root CAs of other orderers.
    pub root_cas: Vec<PathBuf>,
    /// Dial timeout.
    pub dial_timeout: Duration,
    /// RPC timeout.
    pub rpc_timeout: Duration,
    /// Replication buffer in bytes.
    pub replication_buffer_size: u64,
    /// Replication pull timeout.
    pub replication_pull_timeout: Duration,
    /// Replication retry timeout.
    pub replication_retry_timeout: Duration,
    /// Replication background refresh interval.
    pub replication_background_refresh_interval: Duration,
    /// Replication attempts.
    pub replication_max_retries: u64,
    /// Messages buffered per stream.
    pub send_buffer_size: u64,
    /// Warn this long before a certificate expires.
    pub cert_expiration_warning_threshold: Duration,
    /// Accept expired certificates by this much.
    pub tls_handshake_time_shift: Duration,
}

/// An HTTP endpoint (admin or operations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it listens.
    pub listen: SocketAddr,
    /// TLS, when enabled.
    pub tls: Option<Tls>,
    /// Whether the address was configured (not the built-in default).
    pub explicit: bool,
}

/// The development channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevChannel {
    /// Its name.
    pub name: String,
    /// BatchTimeout.
    pub batch_timeout: Duration,
    /// MaxMessageCount.
    pub max_message_count: u32,
    /// AbsoluteMaxBytes.
    pub absolute_max_bytes: u32,
    /// Consensus type.
    pub consensus: String,
    /// ConsensusType metadata.
    pub consensus_metadata: String,
}

/// Everything `start` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gRPC service's address.
    pub listen: SocketAddr,
    /// Its TLS (General.TLS), when enabled.
    pub general_tls: Option<Tls>,
    /// General.Cluster.
    pub cluster: Cluster,
    /// The genesis block to bootstrap from (BootstrapMethod file).
    pub bootstrap_file: Option<PathBuf>,
    /// The node's MSP folder and id (None: the development identity).
    pub local_msp: Option<(PathBuf, String)>,
    /// The data directory (FileLedger.Location).
    pub data_dir: PathBuf,
    /// The operations endpoint, unless turned off.
    pub operations: Option<Endpoint>,
    /// Whether `/metrics` is served (Metrics.Provider prometheus).
    pub metrics: bool,
    /// The admin endpoint, unless turned off.
    pub admin: Option<Endpoint>,
    /// Admin client certificate CNs (empty: any).
    pub admin_client_cns: Vec<String>,
    /// Whether the participation API answers (else 503).
    pub participation: bool,
    /// The log spec (Fabric's syntax).
    pub log_spec: String,
    /// The log format.
    pub log_format: LogFormat,
    /// The development channel, if it is to be created.
    pub dev_channel: Option<DevChannel>,
    /// Plugin files: (consensus type, path).
    pub plugins: Vec<(String, PathBuf)>,
    /// Plugin memory cap, MiB.
    pub plugin_memory_mib: u64,
    /// Plugin call deadline.
    pub plugin_call_deadline: Duration,
    /// Trusted plugin keys (None: `<data>/trusted-keys`).
    pub plugin_trust_dir: Option<PathBuf>,
    /// Load unsigned plugins.
    pub allow_unsigned_plugins: bool,
    /// Per-type plugin limits, `TYPE:KEY=VALUE,...`.
    pub plugin_limits: Vec<String>,
    /// Restart policies, `channel:NAME=POLICY` / `plugin:TYPE=POLICY`.
    pub restart_policy: Vec<String>,
    /// Disk reserve, MiB.
    pub disk_reserve_mib: u64,
    /// Plugin storage per clustered chain, MiB.
    pub storage_mib: u64,
    /// First restart delay.
    pub restart_backoff_initial: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// Crash-loop cap.
    pub restart_max_crashes: u32,
    /// Crash-loop window.
    pub restart_crash_window: Duration,
    /// Probation of a plugin build installed live.
    pub plugin_probation: Duration,
    /// Things worth a warning (a setting that does not do what it says here).
    pub warnings: Vec<String>,
}

fn resolve(key: &'static str, value: &str) -> Result<SocketAddr, SettingsError> {
    let addr = |reason: String| SettingsError::Address { key, value: value.to_string(), reason };
    value
        .to_socket_addrs()
        .map_err(|e| addr(e.to_string()))?
        .next()
        .ok_or_else(|| addr("resolves to no address".into()))
}

fn paths(v: Vec<String>) -> Vec<PathBuf> {
    v.into_iter().map(PathBuf::from).collect()
}

impl Settings {
    /// The typed settings of `c`.
    pub fn from_config(c: &Config) -> Result<Settings, SettingsError> {
        let mut warnings = vec![];
        let dur = |k: &str, d: u64| c.duration(k).unwrap_or(Duration::from_millis(d));
        let tls = |prefix: &'static str| -> Result<Option<Tls>, SettingsError> {
            let k = |s: &str| format!("{prefix}.TLS.{s}");
            if !c.bool(&k("Enabled")) {
                return Ok(None);
            }
            let (Some(certificate), Some(private_key)) = (c.path(&k("Certificate")), c.path(&k("PrivateKey"))) else {
                return Err(SettingsError::Needs { key: tls_key(prefix), needs: "its Certificate and PrivateKey" });
            };
            Ok(Some(Tls {
                certificate,
                private_key,
                // Only General.TLS dials out (Fabric ignores the others' RootCAs).
                root_cas: if prefix == "General" { paths(c.list(&k("RootCAs"))) } else { vec![] },
                client_auth_required: c.bool(&k("ClientAuthRequired")),
                client_root_cas: paths(c.list(&k("ClientRootCAs"))),
            }))
        };
        let host = c.str("General.ListenAddress").filter(|s| !s.is_empty()).unwrap_or("127.0.0.1");
        let port = c.num("General.ListenPort").unwrap_or(7050);
        let listen_text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let listen = resolve("General.ListenAddress", &listen_text)?;
        let general_tls = tls("General")?;
        let bootstrap_file = match c.str("General.BootstrapMethod").unwrap_or("none") {
            "none" | "" => None,
            "file" => Some(c.path("General.BootstrapFile").unwrap_or_else(|| {
                // Fabric's default BootstrapFile, beside the file.
                let dir = c.file.as_ref().and_then(|f| f.parent()).map(PathBuf::from).unwrap_or_default();
                dir.join("genesisblock")
            })),
            other => {
                return Err(SettingsError::Invalid {
                    key: "General.BootstrapMethod",
                    value: other.into(),
                    expected: "file or none",
                });
            }
        };
        let local_msp = match (c.path("General.LocalMSPDir"), c.str("General.LocalMSPID")) {
            (Some(dir), Some(id)) if !id.is_empty() => Some((dir, id.to_string())),
            (Some(_), _) => {
                return Err(SettingsError::Needs { key: "General.LocalMSPDir", needs: "General.LocalMSPID" });
            }
            (None, _) => None,
        };
        let endpoint = |enabled_key: &str, key: &'static str, prefix: &'static str| -> Result<_, SettingsError> {
            if !c.bool(enabled_key) {
                return Ok(None);
            }
            let listen = resolve(key, c.str(key).unwrap_or_default())?;
            Ok(Some(Endpoint { listen, tls: tls(prefix)?, explicit: c.is_set(key) }))
        };
        let operations = endpoint("ConsenterHost.Operations.Enabled", "Operations.ListenAddress", "Operations")?;
        let admin = endpoint("ConsenterHost.Admin.Enabled", "Admin.ListenAddress", "Admin")?;
        if admin.as_ref().is_some_and(|a| a.tls.is_some()) && !c.bool("Admin.TLS.ClientAuthRequired") {
            warnings.push(
                "Admin.TLS.ClientAuthRequired is false, but the admin endpoint requires client certificates \
                 anyway (as Fabric's channel participation API does)"
                    .into(),
            );
        }
        let metrics = match c.str("Metrics.Provider").unwrap_or("prometheus") {
            "prometheus" => true,
            "disabled" | "" => false,
            other => {
                warnings.push(format!("Metrics.Provider {other:?} is not supported here; metrics disabled"));
                false
            }
        };
        let log_format = c.str("ConsenterHost.Logging.Format").unwrap_or("fabric");
        let log_format: LogFormat = if log_format.contains("%{") {
            // A flogging format string (FABRIC_LOGGING_FORMAT): its verbs are
            // not interpreted here; Fabric's default layout is used.
            warnings.push(format!(
                "log format {log_format:?}: custom flogging formats are not supported; using Fabric's default format"
            ));
            LogFormat::Fabric
        } else {
            log_format.parse().map_err(|_| SettingsError::Invalid {
                key: "ConsenterHost.Logging.Format",
                value: log_format.into(),
                expected: "fabric, json, or a flogging format string",
            })?
        };
        let dev_channel = c.bool("ConsenterHost.DevChannel.Enabled").then(|| DevChannel {
            name: c.str("ConsenterHost.DevChannel.Name").unwrap_or("devchannel").to_string(),
            batch_timeout: dur("ConsenterHost.DevChannel.BatchTimeout", 2000),
            max_message_count: c.num("ConsenterHost.DevChannel.MaxMessageCount").unwrap_or(500) as u32,
            absolute_max_bytes: c.num("ConsenterHost.DevChannel.AbsoluteMaxBytes").unwrap_or(10 << 20) as u32,
            consensus: c.str("ConsenterHost.DevChannel.Consensus").unwrap_or("solo").to_string(),
            consensus_metadata: c.str("ConsenterHost.DevChannel.ConsensusMetadata").unwrap_or("").to_string(),
        });
        let mut plugins = vec![];
        for p in c.list("ConsenterHost.Plugins") {
            let Some((ty, path)) = p.split_once('=') else {
                return Err(SettingsError::Invalid { key: "ConsenterHost.Plugins", value: p, expected: "TYPE=PATH" });
            };
            plugins.push((ty.to_string(), PathBuf::from(path)));
        }
        let cluster = Cluster {
            listen_address: c.str("General.Cluster.ListenAddress").filter(|s| !s.is_empty()).map(str::to_string),
            listen_port: c.num("General.Cluster.ListenPort").map(|p| p as u16),
            server_certificate: c.path("General.Cluster.ServerCertificate"),
            server_private_key: c.path("General.Cluster.ServerPrivateKey"),
            client_certificate: c.path("General.Cluster.ClientCertificate"),
            client_private_key: c.path("General.Cluster.ClientPrivateKey"),
            root_cas: paths(c.list("General.Cluster.RootCAs")),
            dial_timeout: dur("General.Cluster.DialTimeout", 5000),
            rpc_timeout: dur("General.Cluster.RPCTimeout", 7000),
            replication_buffer_size: c.num("General.Cluster.ReplicationBufferSize").unwrap_or(20_971_520),
            replication_pull_timeout: dur("General.Cluster.ReplicationPullTimeout", 5000),
            replication_retry_timeout: dur("General.Cluster.ReplicationRetryTimeout", 5000),
            replication_background_refresh_interval: dur(
                "General.Cluster.ReplicationBackgroundRefreshInterval",
                300_000,
            ),
            replication_max_retries: c.num("General.Cluster.ReplicationMaxRetries").unwrap_or(12),
            send_buffer_size: c.num("General.Cluster.SendBufferSize").unwrap_or(100),
            cert_expiration_warning_threshold: dur("General.Cluster.CertExpirationWarningThreshold", 604_800_000),
            tls_handshake_time_shift: dur("General.Cluster.TLSHandshakeTimeShift", 0),
        };
        Ok(Settings {
            listen,
            general_tls,
            cluster,
            bootstrap_file,
            local_msp,
            data_dir: c.path("FileLedger.Location").unwrap_or_else(|| PathBuf::from("consenter-data")),
            operations,
            metrics,
            admin,
            admin_client_cns: c.list("ConsenterHost.Admin.ClientCNs"),
            participation: c.bool("ChannelParticipation.Enabled"),
            log_spec: c.str("ConsenterHost.Logging.Spec").unwrap_or("info").to_string(),
            log_format,
            dev_channel,
            plugins,
            plugin_memory_mib: c.num("ConsenterHost.PluginMemoryMiB").unwrap_or(64),
            plugin_call_deadline: dur("ConsenterHost.PluginCallDeadline", 1000),
            plugin_trust_dir: c.path("ConsenterHost.PluginTrustDir"),
            allow_unsigned_plugins: c.bool("ConsenterHost.AllowUnsignedPlugins"),
            plugin_limits: c.list("ConsenterHost.PluginLimits"),
            restart_policy: c.list("ConsenterHost.RestartPolicy"),
            disk_reserve_mib: c.num("ConsenterHost.DiskReserveMiB").unwrap_or(128),
            storage_mib: c.num("ConsenterHost.StorageMiB").unwrap_or(1024),
            restart_backoff_initial: dur("ConsenterHost.RestartBackoffInitial", 100),
            restart_backoff_max: dur("ConsenterHost.RestartBackoffMax", 10_000),
            restart_max_crashes: c.num("ConsenterHost.RestartMaxCrashes").unwrap_or(5) as u32,
            restart_crash_window: dur("ConsenterHost.RestartCrashWindow", 60_000),
            plugin_probation: dur("ConsenterHost.PluginProbation", 60_000),
            warnings,
        })
    }

    /// Whether the log spec came from `RUST_LOG` rather than a setting:
    /// true when `RUST_LOG` is set and no setting names a spec.
    pub fn rust_log_wins(c: &Config) -> bool {
        std::env::var_os("RUST_LOG").is_some()
            && c.entry("ConsenterHost.Logging.Spec").is_none_or(|e| e.source == Source::Default)
    }
}

fn tls_key(prefix: &str) -> &'static str {
    match prefix {
        "General" => "General.TLS.Enabled",
        "Operations" => "Operations.TLS.Enabled",
        _ => "Admin.TLS.Enabled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_todays_start() {
        let s = Settings::from_config(&Config::defaults()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:7050".parse().unwrap());
        assert_eq!(s.admin.as_ref().unwrap().listen, "127.0.0.1:7053".parse().unwrap());
        assert_eq!(s.operations.as_ref().unwrap().listen, "127.0.0.1:8443".parse().unwrap());
        assert!(!s.operations.as_ref().unwrap().explicit);
        assert_eq!(s.data_dir, PathBuf::from("consenter-data"));
        assert_eq!(s.dev_channel.as_ref().unwrap().name, "devchannel");
        assert!(s.local_msp.is_none() && s.bootstrap_file.is_none() && s.general_tls.is_none());
        assert!(s.participation && s.metrics);
        assert_eq!(s.cluster.rpc_timeout, Duration::from_secs(7));
        assert_eq!(s.cluster.cert_expiration_warning_threshold, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn fabric_rules() {
        let mut c = Config::defaults();
        c.set_text("General.TLS.Certificate", "/x.crt", Source::Default).unwrap();
        assert!(Settings::from_config(&c).unwrap().general_tls.is_none(), "files count only when enabled");
        c.set_text("General.TLS.Enabled", "true", Source::Default).unwrap();
        let e = Settings::from_config(&c).unwrap_err().to_string();
        assert_eq!(e, "General.TLS.Enabled needs its Certificate and PrivateKey");
        for p in ["Admin", "Operations"] {
            let mut c = Config::defaults();
            c.set_text(&format!("{p}.TLS.Enabled"), "true", Source::Default).unwrap();
            c.set_text(&format!("{p}.TLS.Certificate"), "/c.crt", Source::Default).unwrap();
            c.set_text(&format!("{p}.TLS.PrivateKey"), "/c.key", Source::Default).unwrap();
            let s = Settings::from_config(&c).unwrap();
            let ep = if p == "Admin" { s.admin } else { s.operations };
            assert_eq!(ep.unwrap().tls.unwrap().certificate, PathBuf::from("/c.crt"));
        }
        let mut c = Config::defaults();
        c.set_text("General.BootstrapMethod", "kafka", Source::Default).unwrap();
        assert!(Settings::from_config(&c).unwrap_err().to_string().contains("file or none"));
        c.set_text("General.BootstrapMethod", "file", Source::Default).unwrap();
        assert_eq!(Settings::from_config(&c).unwrap().bootstrap_file, Some(PathBuf::from("genesisblock")));
        let mut c = Config::defaults();
        c.set_text("General.ListenAddress", "", Source::Default).unwrap();
        assert_eq!(Settings::from_config(&c).unwrap().listen, "127.0.0.1:7050".parse().unwrap());
        c.set_text("General.LocalMSPDir", "/msp", Source::Default).unwrap();
        assert!(Settings::from_config(&c).unwrap_err().to_string().contains("General.LocalMSPID"));
    }
}
