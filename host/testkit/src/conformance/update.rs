//! CONFIG_UPDATE envelopes the checks submit to their test channels (which
//! have no organizations, so Fabric's zero-children rule lets anyone sign
//! an update): new batch sizes, a Writers policy nobody satisfies, a
//! new etcdraft consenter set, another consensus type.

use bytes::Bytes;
use prost::Message;

use crate::channel::ChannelConfig;
use crate::envelope;
use crate::proto::common::{
    ConfigGroup, ConfigPolicy, ConfigUpdate, ConfigUpdateEnvelope, ConfigValue, HeaderType, Policy, SignaturePolicy,
    SignaturePolicyEnvelope, signature_policy,
};
use crate::proto::msp::{MspPrincipal, MspRole};
use crate::proto::orderer::BatchSize;

fn stub(version: u64) -> ConfigGroup {
    ConfigGroup { version, ..Default::default() }
}

fn wrap(cfg: &ChannelConfig, read: ConfigGroup, write: ConfigGroup) -> Bytes {
    let update = ConfigUpdate {
        channel_id: cfg.channel_id.clone(),
        read_set: Some(read),
        write_set: Some(write),
        ..Default::default()
    };
    let cue = ConfigUpdateEnvelope { config_update: update.encode_to_vec().into(), signatures: vec![] };
    envelope::build(&cfg.channel_id, HeaderType::ConfigUpdate, "", cue.encode_to_vec().into(), None).unwrap_or_default()
}

/// An update setting `/Channel/Orderer/<key>` to `value` (the next version).
pub fn orderer_value(cfg: &ChannelConfig, key: &str, value: Bytes) -> Bytes {
    let root = cfg.config.channel_group.clone().unwrap_or_default();
    let orderer = root.groups.get("Orderer").cloned().unwrap_or_default();
    let mut v: ConfigValue = orderer.values.get(key).cloned().unwrap_or_default();
    v.value = value;
    v.version += 1;
    if v.mod_policy.is_empty() {
        v.mod_policy = "Admins".into();
    }
    let mut read = stub(root.version);
    read.groups.insert("Orderer".into(), stub(orderer.version));
    let mut write = read.clone();
    if let Some(g) = write.groups.get_mut("Orderer") {
        g.values.insert(key.into(), v);
    }
    wrap(cfg, read, write)
}

/// An update of `BatchSize.MaxMessageCount` and `PreferredMaxBytes`
/// (AbsoluteMaxBytes kept).
pub fn batch_size(cfg: &ChannelConfig, max_message_count: u32, preferred_max_bytes: u32) -> Bytes {
    let bs =
        BatchSize { max_message_count, absolute_max_bytes: cfg.batch_size.absolute_max_bytes, preferred_max_bytes };
    orderer_value(cfg, "BatchSize", bs.encode_to_vec().into())
}

/// An update replacing `/Channel/Writers` with a signature policy only a
/// member of an MSP the channel does not have satisfies: every normal
/// message validated before it fails revalidation after it.
pub fn writers_nobody(cfg: &ChannelConfig) -> Bytes {
    let root = cfg.config.channel_group.clone().unwrap_or_default();
    let mut p: ConfigPolicy = root.policies.get("Writers").cloned().unwrap_or_default();
    let principal = MspRole { msp_identifier: "NoSuchMSP".into(), role: 0 };
    let env = SignaturePolicyEnvelope {
        version: 0,
        rule: Some(SignaturePolicy { r#type: Some(signature_policy::Type::SignedBy(0)) }),
        identities: vec![MspPrincipal { principal_classification: 0, principal: principal.encode_to_vec().into() }],
    };
    p.policy = Some(Policy { r#type: 1, value: env.encode_to_vec().into() });
    p.version += 1;
    if p.mod_policy.is_empty() {
        p.mod_policy = "Admins".into();
    }
    let read = stub(root.version);
    let mut write = read.clone();
    write.policies.insert("Writers".into(), p);
    wrap(cfg, read, write)
}

/// An update setting the etcdraft consenter set of the channel.
pub fn consenters(cfg: &ChannelConfig, consenters: Vec<crate::proto::etcdraft::Consenter>) -> Bytes {
    use crate::proto::etcdraft::ConfigMetadata;
    use crate::proto::orderer::ConsensusType;
    let root = cfg.config.channel_group.clone().unwrap_or_default();
    let orderer = root.groups.get("Orderer").cloned().unwrap_or_default();
    let v = orderer.values.get("ConsensusType").cloned().unwrap_or_default();
    let mut ct = ConsensusType::decode(v.value.clone()).unwrap_or_default();
    let mut md = ConfigMetadata::decode(ct.metadata.clone()).unwrap_or_default();
    md.consenters = consenters;
    ct.metadata = md.encode_to_vec().into();
    orderer_value(cfg, "ConsensusType", ct.encode_to_vec().into())
}

/// An update changing the channel's consensus type to `to` (its metadata
/// and state kept): a live swap to the plugin of that type.
pub fn consensus_type(cfg: &ChannelConfig, to: &str) -> Bytes {
    use crate::proto::orderer::ConsensusType;
    let root = cfg.config.channel_group.clone().unwrap_or_default();
    let orderer = root.groups.get("Orderer").cloned().unwrap_or_default();
    let v = orderer.values.get("ConsensusType").cloned().unwrap_or_default();
    let mut ct = ConsensusType::decode(v.value.clone()).unwrap_or_default();
    ct.r#type = to.to_string();
    orderer_value(cfg, "ConsensusType", ct.encode_to_vec().into())
}
