//! The effective configuration of `start`: built-in defaults, then
//! `orderer.yaml` (`--config`, or `$FABRIC_CFG_PATH/orderer.yaml`), then
//! `ORDERER_*` variables, then the flags given on the command line (each
//! flag sets its key; see `consenter-host config show`). And the `config`
//! command that prints it.

use clap::ArgMatches;
use clap::parser::ValueSource;

use consenter_host::config::{Config, Source, Val};

use crate::*;

/// `consenter-host config`.
#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Print the effective configuration of `start` with these flags:
    /// every setting, its value and where it came from (default, file,
    /// env, flag), then the Fabric settings that are ignored and the
    /// unknown ones.
    Show(Box<StartArgs>),
}

/// Flags and the settings they set. A flag given on the command line
/// wins over the file and the variables.
const FLAG_KEYS: &[(&str, &str)] = &[
    ("data_dir", "FileLedger.Location"),
    ("tls_cert", "General.TLS.Certificate"),
    ("tls_key", "General.TLS.PrivateKey"),
    ("tls_root_cas", "General.TLS.RootCAs"),
    ("tls_client_root_cas", "General.TLS.ClientRootCAs"),
    ("cluster_tls_cert", "General.Cluster.ServerCertificate"),
    ("cluster_tls_key", "General.Cluster.ServerPrivateKey"),
    ("storage_mib", "ConsenterHost.StorageMiB"),
    ("admin_listen", "Admin.ListenAddress"),
    ("admin_tls_cert", "Admin.TLS.Certificate"),
    ("admin_tls_key", "Admin.TLS.PrivateKey"),
    ("admin_tls_client_cas", "Admin.TLS.ClientRootCAs"),
    ("admin_client_cns", "ConsenterHost.Admin.ClientCNs"),
    ("genesis_block", "General.BootstrapFile"),
    ("msp_dir", "General.LocalMSPDir"),
    ("mspid", "General.LocalMSPID"),
    ("dev_channel", "ConsenterHost.DevChannel.Name"),
    ("dev_batch_timeout", "ConsenterHost.DevChannel.BatchTimeout"),
    ("dev_max_message_count", "ConsenterHost.DevChannel.MaxMessageCount"),
    ("dev_absolute_max_bytes", "ConsenterHost.DevChannel.AbsoluteMaxBytes"),
    ("dev_consensus", "ConsenterHost.DevChannel.Consensus"),
    ("dev_consensus_metadata", "ConsenterHost.DevChannel.ConsensusMetadata"),
    ("plugins", "ConsenterHost.Plugins"),
    ("plugin_memory_mib", "ConsenterHost.PluginMemoryMiB"),
    ("plugin_call_deadline", "ConsenterHost.PluginCallDeadline"),
    ("plugin_trust_dir", "ConsenterHost.PluginTrustDir"),
    ("plugin_limits", "ConsenterHost.PluginLimits"),
    ("restart_policy", "ConsenterHost.RestartPolicy"),
    ("disk_reserve_mib", "ConsenterHost.DiskReserveMiB"),
    ("restart_backoff_initial", "ConsenterHost.RestartBackoffInitial"),
    ("restart_backoff_max", "ConsenterHost.RestartBackoffMax"),
    ("restart_max_crashes", "ConsenterHost.RestartMaxCrashes"),
    ("restart_crash_window", "ConsenterHost.RestartCrashWindow"),
    ("plugin_probation", "ConsenterHost.PluginProbation"),
    ("operations_listen", "Operations.ListenAddress"),
    ("operations_tls_cert", "Operations.TLS.Certificate"),
    ("operations_tls_key", "Operations.TLS.PrivateKey"),
    ("operations_tls_client_cas", "Operations.TLS.ClientRootCAs"),
    ("log_spec", "ConsenterHost.Logging.Spec"),
    ("log_format", "ConsenterHost.Logging.Format"),
];

/// Boolean flags and the setting each one sets to a fixed value.
const SWITCHES: &[(&str, &str, bool)] = &[
    ("no_admin", "ConsenterHost.Admin.Enabled", false),
    ("no_dev_channel", "ConsenterHost.DevChannel.Enabled", false),
    ("allow_unsigned_plugins", "ConsenterHost.AllowUnsignedPlugins", true),
    ("no_operations", "ConsenterHost.Operations.Enabled", false),
];

fn flag_name(id: &str) -> String {
    let long = match id {
        "admin_tls_client_cas" => "admin-tls-client-ca",
        "tls_root_cas" => "tls-root-ca",
        "tls_client_root_cas" => "tls-client-root-ca",
        "admin_client_cns" => "admin-client-cn",
        "plugins" => "plugin",
        "operations_tls_client_cas" => "operations-tls-client-ca",
        other => return format!("--{}", other.replace('_', "-")),
    };
    format!("--{long}")
}

fn given(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

fn raw(m: &ArgMatches, id: &str) -> Vec<String> {
    m.get_raw(id).map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// The configuration `start` runs with, given its flags.
pub(crate) fn effective_config(a: &StartArgs, m: &ArgMatches) -> Result<Config> {
    let fabric_cfg = std::env::var("FABRIC_CFG_PATH").ok();
    let file = Config::locate(a.config.as_deref(), fabric_cfg.as_deref());
    let mut cfg = Config::load(file.as_deref(), std::env::vars()).context("loading the configuration")?;
    for (id, key) in FLAG_KEYS {
        if !given(m, id) {
            continue;
        }
        let src = Source::Flag(flag_name(id));
        let values = raw(m, id);
        let list = matches!(
            *id,
            "admin_tls_client_cas"
                | "admin_client_cns"
                | "plugins"
                | "plugin_limits"
                | "restart_policy"
                | "operations_tls_client_cas"
                | "tls_root_cas"
                | "tls_client_root_cas"
        );
        if list {
            cfg.set(key, Val::List(values), src)?;
        } else {
            cfg.set_text(key, values.first().map_or("", String::as_str), src)?;
        }
        // A certificate flag turns its TLS section on; a genesis block
        // means Fabric's "file" bootstrap.
        let implied = match *id {
            "admin_tls_cert" => Some(("Admin.TLS.Enabled", Val::Bool(true))),
            "tls_cert" => Some(("General.TLS.Enabled", Val::Bool(true))),
            "tls_client_root_cas" => Some(("General.TLS.ClientAuthRequired", Val::Bool(true))),
            "operations_tls_cert" => Some(("Operations.TLS.Enabled", Val::Bool(true))),
            "operations_tls_client_cas" => Some(("Operations.TLS.ClientAuthRequired", Val::Bool(true))),
            "genesis_block" => Some(("General.BootstrapMethod", Val::Str("file".into()))),
            _ => None,
        };
        if let Some((k, v)) = implied {
            cfg.set(k, v, Source::Flag(flag_name(id)))?;
        }
    }
    if let (true, Some(at)) = (given(m, "cluster_listen"), a.cluster_listen) {
        let src = Source::Flag("--cluster-listen".into());
        cfg.set("General.Cluster.ListenAddress", Val::Str(at.ip().to_string()), src.clone())?;
        cfg.set("General.Cluster.ListenPort", Val::Num(u64::from(at.port())), src)?;
    }
    if given(m, "listen") {
        let src = Source::Flag("--listen".into());
        cfg.set("General.ListenAddress", Val::Str(a.listen.ip().to_string()), src.clone())?;
        cfg.set("General.ListenPort", Val::Num(u64::from(a.listen.port())), src)?;
    }
    for (id, key, value) in SWITCHES {
        if m.get_flag(id) {
            cfg.set(key, Val::Bool(*value), Source::Flag(flag_name(id)))?;
        }
    }
    Ok(cfg)
}

pub(crate) fn config_cmd(c: ConfigCmd, m: &ArgMatches) -> Result<()> {
    match c {
        ConfigCmd::Show(a) => {
            let m = m.subcommand_matches("show").unwrap_or(m);
            let cfg = effective_config(&a, m)?;
            print!("{}", cfg.show());
            consenter_host::config::settings::Settings::from_config(&cfg).context("the configuration")?;
            Ok(())
        }
    }
}
