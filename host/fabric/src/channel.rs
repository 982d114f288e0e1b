//! A channel's configuration bundle: the typed, immutable view of a CONFIG
//! block's `Config` that the node works from. Orderer values
//! (ConsensusType, BatchSize, BatchTimeout, capabilities), the
//! organizations and their MSPs, the policy tree, and whether the channel
//! is an ordering system channel (it has Consortiums). A config block makes
//! a new bundle. Also the genesis block of the development channel. May
//! touch nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::msp::MspManager;
use crate::policy::PolicyManager;
use crate::proto::common::{
    Block, Capabilities, Config, ConfigEnvelope, ConfigGroup, ConfigValue, Consortium, Envelope, HeaderType, Payload,
};
use crate::proto::orderer::{BatchSize, BatchTimeout, ConsensusType};

/// Errors reading a channel configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("block {block} is not a config block: {reason}")]
    NotConfig { block: u64, reason: String },
    #[error("config has no {0}")]
    Missing(&'static str),
    #[error("config value {name} does not decode: {reason}")]
    Value { name: &'static str, reason: String },
    #[error("BatchTimeout {value:?} is not a valid timeout: {reason}")]
    Timeout { value: String, reason: String },
    #[error("BatchSize {0}")]
    BatchSize(String),
    #[error("MSP: {0}")]
    Msp(String),
    #[error("policy: {0}")]
    Policy(String),
    #[error("ConsensusType {kind}: metadata is not a valid {kind} ConfigMetadata: {reason}")]
    ConsensusMetadata { kind: String, reason: String },
}

/// A consenter of a channel (Fabric's etcdraft `Consenter`): where it
/// listens and the TLS certificates (PEM) that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consenter {
    /// Host name or address of its cluster endpoint.
    pub host: String,
    /// Port of its cluster endpoint.
    pub port: u32,
    /// Its TLS client certificate, PEM.
    pub client_tls_cert: Vec<u8>,
    /// Its TLS server certificate, PEM.
    pub server_tls_cert: Vec<u8>,
}

/// The consenter set a config names: for ConsensusType `etcdraft`, the
/// consenters of its `etcdraft.ConfigMetadata`, in order; for any other
/// type, those of the Orderer group's `Orderers` value (Fabric 3's
/// consenter mapping, where BFT reads them; so a clustered plugin of
/// another type gets its members), if the config has one; none otherwise
/// (solo).
pub fn consenters_of(
    consensus_type: &str,
    metadata: &[u8],
    orderer: Option<&ConfigGroup>,
) -> Result<Vec<Consenter>, ConfigError> {
    if consensus_type != "etcdraft" {
        let Some(v) = orderer.and_then(|g| g.values.get("Orderers")) else { return Ok(Vec::new()) };
        let m = crate::proto::common::Orderers::decode(v.value.clone())
            .map_err(|e| ConfigError::Value { name: "Orderers", reason: e.to_string() })?;
        return Ok(m
            .consenter_mapping
            .into_iter()
            .map(|c| Consenter::of(c.host, c.port, &c.client_tls_cert, &c.server_tls_cert))
            .collect());
    }
    let m = crate::proto::etcdraft::ConfigMetadata::decode(metadata)
        .map_err(|e| ConfigError::ConsensusMetadata { kind: consensus_type.into(), reason: e.to_string() })?;
    Ok(m.consenters
        .into_iter()
        .map(|c| Consenter::of(c.host, c.port, &c.client_tls_cert, &c.server_tls_cert))
        .collect())
}

impl Consenter {
    fn of(host: String, port: u32, client_tls_cert: &[u8], server_tls_cert: &[u8]) -> Consenter {
        Consenter { host, port, client_tls_cert: client_tls_cert.to_vec(), server_tls_cert: server_tls_cert.to_vec() }
    }
}

/// The configuration bundle of a channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Channel id, from the config block's channel header.
    pub channel_id: String,
    /// Config sequence (Config.sequence).
    pub sequence: u64,
    /// Fabric's BatchSize.
    pub batch_size: BatchSize,
    /// Fabric's BatchTimeout.
    pub batch_timeout: Duration,
    /// ConsensusType.type: which plugin orders the channel.
    pub consensus_type: String,
    /// ConsensusType.metadata.
    pub consensus_metadata: Bytes,
    /// ConsensusType.state (0 normal, 1 maintenance).
    pub consensus_state: i32,
    /// The channel's consenters (from the etcdraft metadata; empty for solo).
    pub consenters: Vec<Consenter>,
    /// The TLS CA certificates (DER) of the orderer organizations' MSPs:
    /// what a consenter's TLS certificate may chain to (Fabric's cluster
    /// trusts them besides the node's own RootCAs).
    pub orderer_tls_cas: Vec<Vec<u8>>,
    /// The TLS CA certificates (DER) of every MSP of the config (orderer,
    /// application and consortium organizations), each once: whom a
    /// client's TLS certificate may chain to when the node requires client
    /// certificates (Fabric adds them to its listener's client CAs).
    pub tls_cas: Vec<Vec<u8>>,
    /// Capabilities named at the Channel, Orderer and Application levels.
    pub capabilities: ChannelCapabilities,
    /// The channel's Consortium value (application channels made through
    /// a system channel).
    pub consortium: Option<String>,
    /// An ordering system channel: its config has a Consortiums group.
    pub system: bool,
    /// MSP ids of the orderer organizations.
    pub orderer_orgs: Vec<String>,
    /// MSP ids of the application organizations.
    pub application_orgs: Vec<String>,
    /// The whole config this bundle was read from.
    pub config: Arc<Config>,
    /// The MSPs of every organization in the config.
    pub msps: Arc<MspManager>,
    /// Every policy of the config, by path.
    pub policies: Arc<PolicyManager>,
    /// `/Channel/Writers` is satisfied without any signature (an org-less
    /// channel): Broadcast need not verify signatures.
    pub open_writers: bool,
    /// Same for `/Channel/Readers` and Deliver.
    pub open_readers: bool,
}

/// Policy every Broadcast envelope must satisfy.
pub const WRITERS: &str = "/Channel/Writers";
/// Policy every Deliver request (and each block sent) must satisfy.
pub const READERS: &str = "/Channel/Readers";

/// Capability names per config level (e.g. `V2_0`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelCapabilities {
    pub channel: Vec<String>,
    pub orderer: Vec<String>,
    pub application: Vec<String>,
}

fn capabilities(g: Option<&ConfigGroup>) -> Result<Vec<String>, ConfigError> {
    let Some(v) = g.and_then(|g| g.values.get("Capabilities")) else {
        return Ok(Vec::new());
    };
    let c = Capabilities::decode(v.value.clone())
        .map_err(|e| ConfigError::Value { name: "Capabilities", reason: e.to_string() })?;
    Ok(c.capabilities.into_keys().collect())
}

/// The TLS CA certificates (DER) of the MSPs of the orderer group's
/// organizations, each once, in organization order.
fn orderer_tls_cas(orderer: &ConfigGroup, msps: &MspManager) -> Vec<Vec<u8>> {
    let mut orgs: Vec<(&String, &ConfigGroup)> = orderer.groups.iter().collect();
    orgs.sort_by(|a, b| a.0.cmp(b.0));
    unique_tls_cas(orgs.into_iter().filter_map(|(_, org)| crate::msp::msp_id_of(org).and_then(|id| msps.msp(&id))))
}

/// The TLS CA certificates (DER) of `msps`, each once, in order.
fn unique_tls_cas<'a>(msps: impl Iterator<Item = &'a crate::msp::Msp>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for der in msps.flat_map(|m| m.tls_cas()) {
        if !out.contains(der) {
            out.push(der.clone());
        }
    }
    out
}

fn org_ids(g: Option<&ConfigGroup>) -> Vec<String> {
    g.map(|g| g.groups.keys().cloned().collect()).unwrap_or_default()
}

impl ChannelConfig {
    /// Reads the config from a CONFIG block (one envelope whose payload is a
    /// ConfigEnvelope).
    pub fn from_config_block(block: &Block) -> Result<ChannelConfig, ConfigError> {
        let number = block.header.as_ref().map(|h| h.number).unwrap_or_default();
        let not = |reason: String| ConfigError::NotConfig { block: number, reason };
        let data = block.data.as_ref().and_then(|d| d.data.first()).ok_or_else(|| not("no envelope".into()))?;
        let env = Envelope::decode(data.clone()).map_err(|e| not(format!("envelope: {e}")))?;
        let payload = Payload::decode(env.payload).map_err(|e| not(format!("payload: {e}")))?;
        let header = payload.header.ok_or_else(|| not("payload has no header".into()))?;
        let ch = crate::proto::common::ChannelHeader::decode(header.channel_header)
            .map_err(|e| not(format!("channel header: {e}")))?;
        if ch.r#type != HeaderType::Config as i32 {
            return Err(not(format!("channel header type is {}, not CONFIG", ch.r#type)));
        }
        let ce = ConfigEnvelope::decode(payload.data).map_err(|e| not(format!("ConfigEnvelope: {e}")))?;
        let config = ce.config.ok_or(ConfigError::Missing("Config"))?;
        Self::from_config(&ch.channel_id, &config)
    }

    /// Reads the Orderer values of a Config.
    pub fn from_config(channel_id: &str, config: &Config) -> Result<ChannelConfig, ConfigError> {
        let root = config.channel_group.as_ref().ok_or(ConfigError::Missing("channel group"))?;
        let orderer = root.groups.get("Orderer").ok_or(ConfigError::Missing("Orderer group"))?;
        let value = |name: &'static str| orderer.values.get(name).ok_or(ConfigError::Missing(name));
        let ct = ConsensusType::decode(value("ConsensusType")?.value.clone())
            .map_err(|e| ConfigError::Value { name: "ConsensusType", reason: e.to_string() })?;
        let bs = BatchSize::decode(value("BatchSize")?.value.clone())
            .map_err(|e| ConfigError::Value { name: "BatchSize", reason: e.to_string() })?;
        if bs.max_message_count == 0 {
            return Err(ConfigError::BatchSize("MaxMessageCount must be greater than 0".into()));
        }
        if bs.absolute_max_bytes == 0 || bs.preferred_max_bytes > bs.absolute_max_bytes {
            return Err(ConfigError::BatchSize(format!(
                "PreferredMaxBytes ({}) must be at most AbsoluteMaxBytes ({}), which must be greater than 0",
                bs.preferred_max_bytes, bs.absolute_max_bytes
            )));
        }
        let bt = BatchTimeout::decode(value("BatchTimeout")?.value.clone())
            .map_err(|e| ConfigError::Value { name: "BatchTimeout", reason: e.to_string() })?;
        let batch_timeout = parse_batch_timeout(&bt.timeout)?;
        let consortium = match root.values.get("Consortium") {
            Some(v) => Some(
                Consortium::decode(v.value.clone())
                    .map_err(|e| ConfigError::Value { name: "Consortium", reason: e.to_string() })?
                    .name,
            ),
            None => None,
        };
        let application = root.groups.get("Application");
        let msps = Arc::new(MspManager::from_channel_group(root).map_err(|e| ConfigError::Msp(e.to_string()))?);
        let policies = Arc::new(
            PolicyManager::from_channel_group(root, msps.clone()).map_err(|e| ConfigError::Policy(e.to_string()))?,
        );
        let open = |path: &str| {
            policies.get(path).is_some_and(|p| p.evaluate_identities::<Arc<crate::msp::Identity>>(&[]).is_ok())
        };
        let (open_writers, open_readers) = (open(WRITERS), open(READERS));
        let consenters = consenters_of(&ct.r#type, &ct.metadata, Some(orderer))?;
        let orderer_tls_cas = orderer_tls_cas(orderer, &msps);
        let tls_cas = unique_tls_cas(msps.mspids().into_iter().filter_map(|id| msps.msp(id)));
        Ok(ChannelConfig {
            channel_id: channel_id.to_string(),
            sequence: config.sequence,
            batch_size: bs,
            batch_timeout,
            consenters,
            orderer_tls_cas,
            tls_cas,
            consensus_type: ct.r#type,
            consensus_metadata: ct.metadata,
            consensus_state: ct.state,
            capabilities: ChannelCapabilities {
                channel: capabilities(Some(root))?,
                orderer: capabilities(Some(orderer))?,
                application: capabilities(application)?,
            },
            consortium,
            system: root.groups.contains_key("Consortiums"),
            orderer_orgs: org_ids(Some(orderer)),
            application_orgs: org_ids(application),
            config: Arc::new(config.clone()),
            msps,
            policies,
            open_writers,
            open_readers,
        })
    }
}

use crate::proto::common::implicit_meta_policy::Rule;

fn implicit(sub_policy: &str, rule: Rule) -> crate::proto::common::ConfigPolicy {
    use crate::proto::common::{ConfigPolicy, ImplicitMetaPolicy, Policy, policy::PolicyType};
    let value = ImplicitMetaPolicy { sub_policy: sub_policy.into(), rule: rule as i32 }.encode_to_vec();
    ConfigPolicy {
        version: 0,
        policy: Some(Policy { r#type: PolicyType::ImplicitMeta as i32, value: value.into() }),
        mod_policy: "Admins".into(),
    }
}

/// Fabric's default policies of a group: Readers and Writers ANY, Admins
/// MAJORITY of the children's policies of the same name.
fn implicit_policies(g: &mut ConfigGroup) {
    g.policies.insert("Readers".into(), implicit("Readers", Rule::Any));
    g.policies.insert("Writers".into(), implicit("Writers", Rule::Any));
    g.policies.insert("Admins".into(), implicit("Admins", Rule::Majority));
}

/// Parses Go's `time.Duration` text exactly as Go's `time.ParseDuration`
/// does ("2s", "500ms", "1m30s", "1.5h", "-1s", "0"): the value in
/// nanoseconds, which may be negative or zero; Go's error text otherwise
/// (unknown unit, missing unit, overflow past 2^63-1 ns). Integer
/// arithmetic, as Go's: no input can make it panic.
pub fn parse_go_duration_nanos(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    const LIMIT: u64 = 1 << 63;
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        if !rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        // [0-9]*
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let mut v: u64 = 0;
        for d in rest[..int_len].bytes() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(d - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let pre = int_len > 0;
        rest = &rest[int_len..];
        // (\.[0-9]*)?: digits past what fits are ignored, as in Go.
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            let mut overflow = false;
            for d in r[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(d - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = frac_len > 0;
            rest = &r[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {s:?}"));
        }
        let unit: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // As Go: float64 keeps fractions of hours nanosecond-exact.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Parses a Go duration that must be positive (a flag, a timeout): None
/// for text Go refuses and for zero or negative values.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let ns = parse_go_duration_nanos(s).ok()?;
    (ns > 0).then(|| Duration::from_nanos(ns as u64))
}

/// The longest BatchTimeout a channel may have: the longest timer the host
/// arms for a plugin (the default of the runtime's `max_timer_delay`), so a
/// config cannot leave a plugin unable to arm its batch timer.
pub const MAX_BATCH_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Fabric's BatchTimeout check (`validateBatchTimeout`): Go's
/// ParseDuration, a positive value, and (ours) at most
/// [`MAX_BATCH_TIMEOUT`].
pub fn parse_batch_timeout(s: &str) -> Result<Duration, ConfigError> {
    let timeout = |reason: String| ConfigError::Timeout { value: s.to_string(), reason };
    let ns = parse_go_duration_nanos(s).map_err(timeout)?;
    if ns <= 0 {
        return Err(timeout("it must be positive".into()));
    }
    let d = Duration::from_nanos(ns as u64);
    if d > MAX_BATCH_TIMEOUT {
        return Err(timeout(format!(
            "it is over the longest this host supports ({}h)",
            MAX_BATCH_TIMEOUT.as_secs() / 3600
        )));
    }
    Ok(d)
}

/// Settings of a channel created by the node itself (the dev channel).
#[derive(Debug, Clone)]
pub struct ChannelTemplate {
    pub channel_id: String,
    pub consensus_type: String,
    pub consensus_metadata: Bytes,
    pub batch_size: BatchSize,
    pub batch_timeout: Duration,
    /// The Orderer group's `Orderers` value (Fabric 3's consenter
    /// mapping); none when empty.
    pub orderers: Vec<crate::proto::common::Consenter>,
}

impl ChannelTemplate {
    /// Fabric v2's defaults (500 messages, 10 MB absolute, 2 MB preferred,
    /// 2s) on a solo channel.
    pub fn solo(channel_id: &str) -> ChannelTemplate {
        ChannelTemplate {
            channel_id: channel_id.to_string(),
            consensus_type: "solo".into(),
            consensus_metadata: Bytes::new(),
            batch_size: BatchSize {
                max_message_count: 500,
                absolute_max_bytes: 10 * 1024 * 1024,
                preferred_max_bytes: 2 * 1024 * 1024,
            },
            batch_timeout: Duration::from_secs(2),
            orderers: Vec::new(),
        }
    }

    /// The CONFIG envelope of this channel's genesis config (Channel →
    /// Orderer group with ConsensusType, BatchSize, BatchTimeout), with
    /// Fabric's implicit policies (Readers, Writers: ANY; Admins:
    /// MAJORITY) and no organizations: by Fabric's zero-children rule these
    /// policies are satisfied by anyone (an open development channel).
    pub fn config_envelope(&self) -> Bytes {
        self.config_envelope_at(0)
    }

    /// As [`ChannelTemplate::config_envelope`], for a config of `sequence`
    /// (1 for the first config block after the genesis block: the host
    /// writes a config block only if its config is the next one).
    pub fn config_envelope_at(&self, sequence: u64) -> Bytes {
        let v = |value: Vec<u8>| ConfigValue { version: 0, value: value.into(), mod_policy: "Admins".into() };
        let mut orderer = ConfigGroup { mod_policy: "Admins".into(), ..Default::default() };
        orderer.values.insert(
            "ConsensusType".into(),
            v(ConsensusType {
                r#type: self.consensus_type.clone(),
                metadata: self.consensus_metadata.clone(),
                state: 0,
            }
            .encode_to_vec()),
        );
        orderer.values.insert("BatchSize".into(), v(self.batch_size.encode_to_vec()));
        if !self.orderers.is_empty() {
            let o = crate::proto::common::Orderers { consenter_mapping: self.orderers.clone() };
            orderer.values.insert("Orderers".into(), v(o.encode_to_vec()));
        }
        orderer.values.insert(
            "BatchTimeout".into(),
            v(BatchTimeout { timeout: format!("{}ms", self.batch_timeout.as_millis()) }.encode_to_vec()),
        );
        let mut root = ConfigGroup { mod_policy: "Admins".into(), ..Default::default() };
        implicit_policies(&mut orderer);
        orderer.policies.insert("BlockValidation".into(), implicit("Writers", Rule::Any));
        implicit_policies(&mut root);
        root.groups.insert("Orderer".into(), orderer);
        let ce = ConfigEnvelope { config: Some(Config { sequence, channel_group: Some(root) }), last_update: None };
        // Infallible without a signer.
        crate::envelope::build(&self.channel_id, HeaderType::Config, "", ce.encode_to_vec().into(), None)
            .unwrap_or_default()
    }

    /// The unsigned genesis block (block 0 with the config envelope).
    pub fn genesis_block(&self) -> Block {
        crate::block::new_block(0, &[], vec![self.config_envelope()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("2x"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("0"), None, "a flag or timeout must be positive");
        assert_eq!(parse_go_duration("-1s"), None);
    }

    #[test]
    fn go_duration_rules_and_texts() {
        // Go's own results (time.ParseDuration).
        assert_eq!(parse_go_duration_nanos("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(parse_go_duration_nanos("-1.5h"), Ok(-5_400_000_000_000));
        assert_eq!(parse_go_duration_nanos("+.5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration_nanos("1\u{b5}s"), Ok(1_000));
        assert_eq!(parse_go_duration_nanos("2562047h47m16.854775807s"), Ok(i64::MAX));
        assert_eq!(parse_go_duration_nanos("-2562047h47m16.854775808s"), Ok(i64::MIN));
        assert_eq!(parse_go_duration_nanos("0.000000000000000000000001s"), Ok(0));
        for (bad, text) in [
            ("99999999999999999999h", "time: invalid duration \"99999999999999999999h\""),
            ("2562047h47m16.854775808s", "time: invalid duration"),
            ("9223372036854775807000ns", "time: invalid duration"),
            ("1", "time: missing unit in duration \"1\""),
            ("1d", "time: unknown unit \"d\" in duration \"1d\""),
            (".s", "time: invalid duration"),
            ("-", "time: invalid duration"),
            ("1s ", "time: unknown unit \"s \""),
            ("", "time: invalid duration"),
        ] {
            let e = parse_go_duration_nanos(bad).unwrap_err();
            assert!(e.contains(text), "{bad:?}: {e}");
        }
        assert!(parse_batch_timeout("2s").is_ok());
        let e = parse_batch_timeout("99999999999999999999h").unwrap_err().to_string();
        assert!(e.contains("99999999999999999999h") && e.contains("invalid duration"), "{e}");
        let e = parse_batch_timeout("-1s").unwrap_err().to_string();
        assert!(e.contains("must be positive"), "{e}");
        let e = parse_batch_timeout("25h").unwrap_err().to_string();
        assert!(e.contains("over the longest this host supports (24h)"), "{e}");
    }

    #[test]
    fn another_clustered_type_reads_its_consenters_from_the_orderers_value() {
        let mut t = ChannelTemplate::solo("ch");
        t.consensus_type = "raft2".into();
        assert!(ChannelConfig::from_config_block(&t.genesis_block()).unwrap().consenters.is_empty());
        let c = |i: u32| crate::proto::common::Consenter {
            id: i,
            host: format!("node{i}"),
            port: 7050 + i,
            msp_id: "OrdererMSP".into(),
            identity: Bytes::new(),
            client_tls_cert: Bytes::from(format!("client {i}")),
            server_tls_cert: Bytes::from(format!("server {i}")),
        };
        t.orderers = vec![c(1), c(2)];
        let got = ChannelConfig::from_config_block(&t.genesis_block()).unwrap().consenters;
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].host.as_str(), got[1].port, &got[1].server_tls_cert[..]), ("node2", 7052, &b"server 2"[..]));
        // etcdraft reads its own metadata, not the Orderers value.
        t.consensus_type = "etcdraft".into();
        assert!(ChannelConfig::from_config_block(&t.genesis_block()).unwrap().consenters.is_empty());
    }

    #[test]
    fn template_round_trips() {
        let t = ChannelTemplate::solo("dev");
        let c = ChannelConfig::from_config_block(&t.genesis_block()).unwrap();
        assert_eq!(c.channel_id, "dev");
        assert_eq!(c.consensus_type, "solo");
        assert_eq!(c.batch_size, t.batch_size);
        assert_eq!(c.batch_timeout, Duration::from_secs(2));
    }

    #[test]
    fn fabric_genesis_blocks_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fabric/blocks");
        let b = Block::decode(Bytes::from(std::fs::read(dir.join("solochannel.genesis.block")).unwrap())).unwrap();
        let c = ChannelConfig::from_config_block(&b).unwrap();
        assert_eq!(c.channel_id, "solochannel");
        assert_eq!(c.consensus_type, "solo");
        assert_eq!(c.batch_size.max_message_count, 500);
        assert_eq!(c.batch_size.absolute_max_bytes, 10 * 1024 * 1024);
        assert_eq!(c.batch_size.preferred_max_bytes, 2 * 1024 * 1024);
        assert_eq!(c.batch_timeout, Duration::from_secs(2));
        assert_eq!(c.orderer_orgs, ["OrdererOrg"]);
        assert_eq!(c.application_orgs, ["Org1MSP", "Org2MSP"]);
        assert_eq!(c.capabilities.channel, ["V2_0"]);
        assert!(!c.system);
        let b = Block::decode(Bytes::from(std::fs::read(dir.join("raftchannel.genesis.block")).unwrap())).unwrap();
        let c = ChannelConfig::from_config_block(&b).unwrap();
        assert_eq!(c.consensus_type, "etcdraft");
        // The orderer org's MSP names its TLS CA (cryptogen's tlsca).
        let tlsca = dir.join("../crypto/ordererOrganizations/example.com/tlsca/tlsca.example.com-cert.pem");
        let (_, der) = x509_cert::der::pem::decode_vec(&std::fs::read(tlsca).unwrap()).unwrap();
        assert_eq!(c.orderer_tls_cas, vec![der.clone()]);
        // And every organization's, the orderer org's among them.
        assert_eq!(c.tls_cas.len(), 3, "OrdererMSP, Org1MSP, Org2MSP");
        assert!(c.tls_cas.contains(&der));
        let b = Block::decode(Bytes::from(std::fs::read(dir.join("system-channel.genesis.block")).unwrap())).unwrap();
        let c = ChannelConfig::from_config_block(&b).unwrap();
        assert!(c.system);
        assert_eq!(c.channel_id, "system-channel");
        assert!(c.application_orgs.is_empty());
    }

    /// Genesis blocks made by older Fabric releases (fabric-sdk-py's test
    /// fixtures) parse: consensus type, batch settings, organizations.
    #[test]
    fn third_party_genesis_blocks_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fabric-sdk-py");
        let cases = [
            ("e2e_cli__orderer.genesis.block", "solo", true),
            ("e2e_raft__orderer.genesis.block", "etcdraft", true),
            ("lifecycle_2_0__orderer.genesis.block", "", true),
            ("lifecycle_2_0__orderer_2_0.genesis.block", "etcdraft", true),
        ];
        for (file, consensus, system) in cases {
            let b = Block::decode(Bytes::from(std::fs::read(dir.join(file)).unwrap())).unwrap();
            let c = ChannelConfig::from_config_block(&b).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !consensus.is_empty() {
                assert_eq!(c.consensus_type, consensus, "{file}");
            }
            assert_eq!(c.system, system, "{file}");
            assert!(c.batch_size.max_message_count > 0, "{file}");
            assert!(!c.batch_timeout.is_zero(), "{file}");
            assert!(!c.orderer_orgs.is_empty(), "{file}: orderer orgs");
        }
    }
}
