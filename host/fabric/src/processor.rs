//! Fabric's msgprocessor: what an envelope must pass against its channel's
//! config bundle before it reaches a chain, and what a Deliver request must
//! pass before blocks are sent. Normal messages: the `/Channel/Writers`
//! policy. CONFIG_UPDATE: Writers, then the update is checked against the
//! modification policies (`configtx`) and becomes the CONFIG envelope to
//! order; on a system channel, an update for an unknown channel becomes an
//! ORDERER_TRANSACTION that creates it. Signature checks are CPU work
//! (ECDSA verify): callers run them on the async workers, never on a
//! chain's thread. May touch nothing but the bundle and the signer.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::channel::{ChannelConfig, READERS, WRITERS};
use crate::configtx::{self, SignedData as TxSigned};
use crate::envelope::{self, Envelope};
use crate::msp::Identity;
use crate::policy::SignedData;
use crate::proto::common::{ConfigEnvelope, Envelope as PbEnvelope, HeaderType, Payload};
use crate::signer::Signer;

/// Why a message is refused, with the Broadcast status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

/// Fabric's suffix of policy refusals (ErrPermissionDenied).
const DENIED: &str = "permission denied";

/// Checks a signed message against the policy at `path` of `cfg`, as
/// Fabric's SigFilter: the creator is validated against its MSP and its
/// signature verified (an invalid one counts as no signature, as Fabric's
/// policy evaluation drops it), then the policy is evaluated. The error is
/// Fabric's text, ending in ": permission denied".
pub fn authorize(cfg: &ChannelConfig, path: &str, data: &[u8], creator: &[u8], signature: &[u8]) -> Result<(), String> {
    let open = match path {
        WRITERS => cfg.open_writers,
        READERS => cfg.open_readers,
        _ => false,
    };
    if open {
        return Ok(());
    }
    let Some(policy) = cfg.policies.get(path) else {
        return Err(format!("no such policy: '{path}': {DENIED}"));
    };
    let verified: Option<Arc<Identity>> = match cfg.msps.identity(creator) {
        Ok(id) => match id.verify(data, signature) {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(channel = %cfg.channel_id, policy = path, error = %e, "signature does not verify");
                None
            }
        },
        Err(e) => {
            tracing::debug!(channel = %cfg.channel_id, policy = path, error = %e, "creator is not a valid identity");
            None
        }
    };
    let ids: &[Arc<Identity>] = match &verified {
        Some(id) => std::slice::from_ref(id),
        None => &[],
    };
    policy.evaluate_identities(ids).map_err(|e| format!("{e}: {DENIED}"))
}

/// `ConsensusType.state` of a channel in maintenance mode.
pub const STATE_MAINTENANCE: i32 = 1;

/// Fabric's refusal of a normal message while the channel is in
/// maintenance mode (`ErrMaintenanceMode`; Broadcast answers
/// SERVICE_UNAVAILABLE).
pub const MAINTENANCE_REFUSAL: &str = "normal transactions are rejected: maintenance mode";

/// The policy a message's signature must satisfy (Fabric's SigFilter):
/// `/Channel/Writers`, or `/Channel/Orderer/Writers` while the channel is
/// in maintenance mode.
pub fn writers_path(cfg: &ChannelConfig) -> &'static str {
    if cfg.consensus_state == STATE_MAINTENANCE { ORDERER_WRITERS } else { WRITERS }
}

/// `/Channel/Orderer/Writers`: who may send anything while a channel is in
/// maintenance mode.
pub const ORDERER_WRITERS: &str = "/Channel/Orderer/Writers";

/// Broadcast's signature check of a message: `/Channel/Writers`
/// (`/Channel/Orderer/Writers` in maintenance mode).
pub fn check_writers(cfg: &ChannelConfig, env: &Envelope) -> Result<(), Refusal> {
    authorize(cfg, writers_path(cfg), &env.payload, &env.creator, &env.signature).map_err(Refusal::Forbidden)
}

/// Evaluates a policy path against config-update signatures (for
/// `configtx`).
fn authorize_signed(cfg: &ChannelConfig, path: &str, signed: &[TxSigned]) -> Result<(), String> {
    let sd: Vec<SignedData> =
        signed.iter().map(|s| SignedData { data: &s.data, identity: &s.identity, signature: &s.signature }).collect();
    cfg.policies.evaluate(path, &sd).map_err(|e| e.to_string())
}

/// A CONFIG_UPDATE for an existing channel (Fabric's
/// ProcessConfigUpdateMsg): the CONFIG envelope to order, signed by this
/// node, validated under the channel's current sequence.
///
/// `types` are the consensus types this node has plugins for: an update
/// that changes `ConsensusType.type` to a type without one is refused
/// (naming the type and them): the channel would be unable to start.
pub fn config_update(
    cfg: &ChannelConfig,
    signer: &Signer,
    pb: &PbEnvelope,
    env: &Envelope,
    types: &[String],
) -> Result<Envelope, Refusal> {
    config_update_with_config(cfg, signer, pb, env, types).map(|(e, _)| e)
}

/// [`config_update`], also returning the channel's config as the update
/// makes it (a live swap checks the new plugin against it).
pub fn config_update_with_config(
    cfg: &ChannelConfig,
    signer: &Signer,
    pb: &PbEnvelope,
    env: &Envelope,
    types: &[String],
) -> Result<(Envelope, ChannelConfig), Refusal> {
    check_writers(cfg, env)?;
    let channel = &cfg.channel_id;
    let applying =
        |e: String| Refusal::BadRequest(format!("error applying config update to existing channel '{channel}': {e}"));
    let req = configtx::parse_update(pb).map_err(|e| applying(e.to_string()))?;
    let auth = |path: &str, s: &[TxSigned]| authorize_signed(cfg, path, s);
    let ce = configtx::propose_update(&cfg.config, &req, pb, &auth)
        .map_err(|e| applying(format!("error authorizing update: {e}")))?;
    let next = ce.config.as_ref().ok_or_else(|| applying("the update gives no config".into()))?;
    let new =
        ChannelConfig::from_config(channel, next).map_err(|e| applying(format!("the new config is not valid: {e}")))?;
    check_consensus_type(&cfg.consensus_type, &new.consensus_type, types).map_err(applying)?;
    check_maintenance(cfg, &new).map_err(applying)?;
    let bytes = envelope::build(channel, HeaderType::Config, "", ce.encode_to_vec().into(), Some(signer))
        .map_err(|e| Refusal::Internal(format!("signing the config envelope: {e}")))?;
    let mut out = Envelope::parse(bytes).map_err(|e| Refusal::Internal(e.to_string()))?;
    out.config_seq = cfg.sequence;
    Ok((out, new))
}

/// Refuses a change of the consensus type to a type with no plugin here
/// (the channel would not start again). A change to a type that has one is
/// a live swap: the node checks the new plugin (its canary with the new
/// config) before it orders the update, and the chain swaps plugins at the
/// config block.
pub fn check_consensus_type(current: &str, new: &str, types: &[String]) -> Result<(), String> {
    if current == new {
        return Ok(());
    }
    has_plugin(new, types).map_err(|e| format!("{e}; the channel keeps {current:?}"))
}

/// Fabric's maintenance filter, in part: entering or leaving maintenance
/// mode must not change the consensus type in the same update. (Fabric
/// also allows a type change only in maintenance mode; this host swaps
/// plugins live, so it does not require it.)
fn check_maintenance(cfg: &ChannelConfig, new: &ChannelConfig) -> Result<(), String> {
    if cfg.consensus_state != new.consensus_state && cfg.consensus_type != new.consensus_type {
        return Err(format!(
            "attempted to change ConsensusType.State ({} to {}) and ConsensusType.Type ({:?} to {:?}) at the same \
             time: change one, then the other",
            cfg.consensus_state, new.consensus_state, cfg.consensus_type, new.consensus_type
        ));
    }
    if new.consensus_state != 0 && new.consensus_state != STATE_MAINTENANCE {
        return Err(format!(
            "ConsensusType.State {} is neither STATE_NORMAL (0) nor STATE_MAINTENANCE (1)",
            new.consensus_state
        ));
    }
    Ok(())
}

/// Err (naming the plugins available) unless `types` has a plugin for `ty`.
fn has_plugin(ty: &str, types: &[String]) -> Result<(), String> {
    if types.iter().any(|t| t == ty) {
        return Ok(());
    }
    Err(format!("ConsensusType.type {ty:?} has no plugin on this node (available: {})", types.join(", ")))
}

/// A CONFIG_UPDATE creating a channel, sent to an ordering system channel
/// (Fabric's SystemChannel.ProcessConfigUpdateMsg): the new channel's
/// config is made from the system channel's template and the update,
/// authorized by the consortium's channel creation policy; the result is
/// an ORDERER_TRANSACTION on the system channel that carries the new
/// channel's CONFIG envelope.
///
/// The new channel's consensus type must have a plugin among `types`.
pub fn channel_creation(
    sys: &ChannelConfig,
    signer: &Signer,
    pb: &PbEnvelope,
    env: &Envelope,
    types: &[String],
) -> Result<Envelope, Refusal> {
    let channel = &env.channel_id;
    let creating = |e: String| {
        Refusal::BadRequest(format!("error validating channel creation transaction for new channel '{channel}': {e}"))
    };
    let req = configtx::parse_update(pb).map_err(|e| creating(e.to_string()))?;
    let template = configtx::new_channel_template(&sys.config, &req.update).map_err(|e| creating(e.to_string()))?;
    let tcfg = ChannelConfig::from_config(channel, &template)
        .map_err(|e| creating(format!("the template config is not valid: {e}")))?;
    let auth = |path: &str, s: &[TxSigned]| authorize_signed(&tcfg, path, s);
    // Fabric's text: a comma, then the reason.
    let ce = configtx::propose_update(&template, &req, pb, &auth).map_err(|e| {
        Refusal::BadRequest(format!(
            "error validating channel creation transaction for new channel '{channel}', could not successfully \
             apply update to template configuration: error authorizing update: {e}"
        ))
    })?;
    let next = ce.config.as_ref().ok_or_else(|| creating("the update gives no config".into()))?;
    let new =
        ChannelConfig::from_config(channel, next).map_err(|e| creating(format!("the new config is not valid: {e}")))?;
    has_plugin(&new.consensus_type, types).map_err(creating)?;
    let sign_err = |e: crate::signer::SignerError| Refusal::Internal(format!("signing: {e}"));
    let inner =
        envelope::build(channel, HeaderType::Config, "", ce.encode_to_vec().into(), Some(signer)).map_err(sign_err)?;
    let outer =
        envelope::build(&sys.channel_id, HeaderType::OrdererTransaction, "", inner, Some(signer)).map_err(sign_err)?;
    let mut out = Envelope::parse(outer).map_err(|e| Refusal::Internal(e.to_string()))?;
    out.config_seq = sys.sequence;
    Ok(out)
}

/// Re-checks a message validated under an older config sequence (what a
/// plugin asks through `support.revalidate`), as Fabric's consenters do.
/// Normal messages are checked against the current Writers policy. A
/// config message made from an older config is recomputed, as Fabric's
/// `ProcessConfigMsg`: the CONFIG_UPDATE it carries (its `last_update`) is
/// applied again to the current config, and the result is the CONFIG
/// envelope to order instead (`Ok(Some)`, signed by this node); an update
/// that no longer applies (a conflicting change was ordered first) is
/// refused with the reason. An ORDERER_TRANSACTION is recomputed the same
/// way from the system channel's current config.
pub fn revalidate(
    cfg: &ChannelConfig,
    signer: &Signer,
    env: &Envelope,
    types: &[String],
) -> Result<Option<Envelope>, String> {
    if env.channel_id != cfg.channel_id {
        return Err(format!("envelope is for channel {}, not {}", env.channel_id, cfg.channel_id));
    }
    if env.header_type == HeaderType::Config as i32 {
        let ce = config_envelope(&env.payload)?;
        if ce.config.as_ref().map(|c| c.sequence).unwrap_or_default() == cfg.sequence + 1 {
            return Ok(None);
        }
        let (pb, update) = last_update(ce)?;
        return config_update(cfg, signer, &pb, &update, types).map(Some).map_err(|e| e.to_string());
    }
    if env.header_type == HeaderType::OrdererTransaction as i32 {
        let inner = Payload::decode(env.payload.clone()).map_err(|e| format!("payload: {e}"))?;
        let inner = PbEnvelope::decode(inner.data).map_err(|e| format!("ORDERER_TRANSACTION's envelope: {e}"))?;
        let (pb, update) = last_update(config_envelope(&inner.payload)?)?;
        return channel_creation(cfg, signer, &pb, &update, types).map(Some).map_err(|e| e.to_string());
    }
    if cfg.consensus_state == STATE_MAINTENANCE {
        return Err(MAINTENANCE_REFUSAL.into());
    }
    authorize(cfg, WRITERS, &env.payload, &env.creator, &env.signature).map(|()| None)
}

/// Fabric's `Validate` of a CONFIG envelope another consenter ordered (a
/// follower writing the leader's config block): its config must be exactly
/// what its last update gives when applied to `cfg`, authorized by `cfg`'s
/// policies, and a valid config of a type this node has a plugin for.
pub fn verify_config(cfg: &ChannelConfig, env: &Envelope, types: &[String]) -> Result<(), String> {
    if env.channel_id != cfg.channel_id {
        return Err(format!("the config envelope is for channel {}, not {}", env.channel_id, cfg.channel_id));
    }
    let ce = config_envelope(&env.payload)?;
    let included = ce.config.clone().ok_or("the config envelope carries no config")?;
    let (pb, update) = last_update(ce)?;
    check_writers(cfg, &update).map_err(|e| format!("its last update: {e}"))?;
    let req = configtx::parse_update(&pb).map_err(|e| format!("its last update: {e}"))?;
    let auth = |path: &str, s: &[TxSigned]| authorize_signed(cfg, path, s);
    let proposed = configtx::propose_update(&cfg.config, &req, &pb, &auth)
        .map_err(|e| format!("its last update does not apply to the current config: {e}"))?;
    if proposed.config.as_ref() != Some(&included) {
        return Err("its config is not what its last update gives when applied to the current config".into());
    }
    let new = ChannelConfig::from_config(&cfg.channel_id, &included).map_err(|e| format!("the new config: {e}"))?;
    check_consensus_type(&cfg.consensus_type, &new.consensus_type, types)
}

fn config_envelope(payload: &Bytes) -> Result<ConfigEnvelope, String> {
    let p = Payload::decode(payload.clone()).map_err(|e| format!("payload: {e}"))?;
    ConfigEnvelope::decode(p.data).map_err(|e| format!("ConfigEnvelope: {e}"))
}

/// The CONFIG_UPDATE envelope a config was made from.
fn last_update(ce: ConfigEnvelope) -> Result<(PbEnvelope, Envelope), String> {
    let pb = ce.last_update.ok_or("the config envelope carries no last_update (CONFIG_UPDATE) to apply again")?;
    let env = Envelope::from_message(pb.clone()).map_err(|e| format!("its last_update: {e}"))?;
    Ok((pb, env))
}
