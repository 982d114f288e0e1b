//! Fabric's config transactions (common/configtx): a CONFIG_UPDATE is
//! checked against the current config (read set versions, the modification
//! policy of every element it changes, satisfied by the signatures it
//! carries) and turned into the next full config; and the system channel's
//! template that makes a new channel's config from a channel-creation
//! update (Fabric's DefaultTemplator). Pure: policies are evaluated through
//! the caller's [`Authorize`] function. May touch nothing.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use crate::proto::common::{
    ChannelHeader, Config, ConfigEnvelope, ConfigGroup, ConfigPolicy, ConfigUpdate, ConfigUpdateEnvelope, ConfigValue,
    Consortium, Envelope, HeaderType, Payload, Policy, SignatureHeader,
};

/// Root group key of every channel config.
pub const ROOT: &str = "Channel";

/// Errors of config transactions; the texts follow Fabric's.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigTxError {
    #[error("malformed config update: {0}")]
    Malformed(String),
    #[error("ConfigUpdate for channel '{update}' but envelope for channel '{envelope}'")]
    WrongChannel { update: String, envelope: String },
    #[error("error validating ReadSet: {0}")]
    ReadSet(String),
    #[error("error validating DeltaSet: {0}")]
    DeltaSet(String),
    /// Fabric's `illegal characters in key: [Value]  : config ID 'a_b'
    /// contains illegal characters` (Fabric names only the kind of element
    /// there; `path` is where it is, for the log).
    #[error("illegal characters in key: {kind}: {reason}")]
    IllegalKey { kind: &'static str, path: String, reason: String },
    #[error("proposed config is incomplete: {0}")]
    Incomplete(String),
    #[error("new channel config: {0}")]
    Template(String),
}

/// One signature over a config update (Fabric's SignedData): `data` is
/// the signature header bytes followed by the ConfigUpdate bytes.
#[derive(Debug, Clone)]
pub struct SignedData {
    pub data: Vec<u8>,
    pub identity: Bytes,
    pub signature: Bytes,
}

/// Evaluates the policy at an absolute path (`/Channel/Orderer/Admins`)
/// against signatures; the error says why it is not satisfied.
pub type Authorize<'a> = &'a dyn Fn(&str, &[SignedData]) -> Result<(), String>;

#[derive(Debug, Clone, PartialEq)]
enum Elem {
    Group(ConfigGroup),
    Value(ConfigValue),
    Policy(ConfigPolicy),
}

/// One element of a config, with where it is.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// Path of the group holding it (for a group: of its parent).
    path: Vec<String>,
    key: String,
    elem: Elem,
}

impl Entry {
    fn version(&self) -> u64 {
        match &self.elem {
            Elem::Group(g) => g.version,
            Elem::Value(v) => v.version,
            Elem::Policy(p) => p.version,
        }
    }

    fn mod_policy(&self) -> &str {
        match &self.elem {
            Elem::Group(g) => &g.mod_policy,
            Elem::Value(v) => &v.mod_policy,
            Elem::Policy(p) => &p.mod_policy,
        }
    }

    /// The absolute path of this element's modification policy (Fabric's
    /// policyForItem: a relative mod_policy names a policy of the group
    /// holding the element, or of the group itself for a group).
    fn policy_path(&self) -> String {
        let m = self.mod_policy();
        if m.starts_with('/') {
            return m.to_string();
        }
        let mut p = String::new();
        for seg in &self.path {
            p.push('/');
            p.push_str(seg);
        }
        if matches!(self.elem, Elem::Group(_)) {
            p.push('/');
            p.push_str(&self.key);
        }
        p.push('/');
        p.push_str(m);
        p
    }
}

type ConfigMap = BTreeMap<String, Entry>;

/// Fabric's prefixes of a config element's key in its config map (and so
/// in its refusal texts: `policy for [Value]  /Channel/Orderer/BatchTimeout
/// not satisfied`; two spaces after `[Group]` and `[Value]`).
const GROUP_PREFIX: &str = "[Group]  ";
const VALUE_PREFIX: &str = "[Value]  ";
const POLICY_PREFIX: &str = "[Policy] ";

fn fq_key(kind: &str, path: &[String], key: &str) -> String {
    let mut s = String::from(kind);
    for seg in path {
        s.push('/');
        s.push_str(seg);
    }
    s.push('/');
    s.push_str(key);
    s
}

/// Longest channel or config element name Fabric accepts (its MaxLength).
pub const MAX_NAME_LEN: usize = 249;

/// Fabric's validateConfigID (config element keys and mod_policy path
/// elements: ASCII letters, digits, '.' and '-'; not "." or ".."; at most
/// 249 bytes), with Fabric's texts.
fn check_config_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("config ID illegal, cannot be empty".into());
    }
    if id.len() > MAX_NAME_LEN {
        return Err(format!("config ID illegal, cannot be longer than {MAX_NAME_LEN}"));
    }
    if id == "." || id == ".." {
        return Err(format!("name '{id}' for config ID is not allowed"));
    }
    if !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-') {
        return Err(format!("config ID '{id}' contains illegal characters"));
    }
    Ok(())
}

/// Why a channel name is not one Fabric accepts (its ValidateChannelID);
/// the texts are Fabric's. Callers add Fabric's context: the participation
/// API says `invalid channel ID: …`, channel creation `bad channel ID: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelIdError {
    #[error("channel ID illegal, cannot be empty")]
    Empty,
    #[error("channel ID illegal, cannot be longer than {MAX_NAME_LEN}")]
    TooLong,
    #[error("'{0}' contains illegal characters")]
    IllegalCharacters(String),
}

/// Fabric's channel name rule: lower-case ASCII letters, digits, '.' and
/// '-', starting with a letter, at most 249 bytes.
pub fn validate_channel_id(name: &str) -> Result<(), ChannelIdError> {
    if name.is_empty() {
        return Err(ChannelIdError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ChannelIdError::TooLong);
    }
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    if !ok {
        return Err(ChannelIdError::IllegalCharacters(name.to_string()));
    }
    Ok(())
}

fn map_config(root: &ConfigGroup) -> Result<ConfigMap, ConfigTxError> {
    let mut out = ConfigMap::new();
    recurse(&mut out, vec![ROOT.to_string()], root)?;
    Ok(out)
}

fn recurse(out: &mut ConfigMap, path: Vec<String>, group: &ConfigGroup) -> Result<(), ConfigTxError> {
    let (key, parent) = path.split_last().map(|(k, p)| (k.clone(), p.to_vec())).unwrap_or_default();
    add(out, GROUP_PREFIX, parent, key, Elem::Group(group.clone()))?;
    for (k, g) in &group.groups {
        let mut next = path.clone();
        next.push(k.clone());
        recurse(out, next, g)?;
    }
    for (k, v) in &group.values {
        add(out, VALUE_PREFIX, path.clone(), k.clone(), Elem::Value(v.clone()))?;
    }
    for (k, p) in &group.policies {
        add(out, POLICY_PREFIX, path.clone(), k.clone(), Elem::Policy(p.clone()))?;
    }
    Ok(())
}

fn add(
    out: &mut ConfigMap,
    kind: &'static str,
    path: Vec<String>,
    key: String,
    elem: Elem,
) -> Result<(), ConfigTxError> {
    if let Err(reason) = check_config_id(&key) {
        return Err(ConfigTxError::IllegalKey { kind, path: format!("/{}", path.join("/")), reason });
    }
    out.insert(fq_key(kind, &path, &key), Entry { path, key, elem });
    Ok(())
}

/// Rebuilds the group tree from a config map: each group keeps the
/// children it lists itself, each child taken from the map.
fn group_from_map(path: &[String], map: &ConfigMap) -> Result<ConfigGroup, ConfigTxError> {
    let (key, parent) = path.split_last().ok_or_else(|| ConfigTxError::Incomplete("empty group path".into()))?;
    let gk = fq_key(GROUP_PREFIX, parent, key);
    let Some(Entry { elem: Elem::Group(g), .. }) = map.get(&gk) else {
        return Err(ConfigTxError::Incomplete(format!("missing group at path: {gk}")));
    };
    let mut g = g.clone();
    for (k, child) in g.groups.iter_mut() {
        let mut p = path.to_vec();
        p.push(k.clone());
        *child = group_from_map(&p, map)?;
    }
    for (k, v) in g.values.iter_mut() {
        let vk = fq_key(VALUE_PREFIX, path, k);
        match map.get(&vk) {
            Some(Entry { elem: Elem::Value(x), .. }) => *v = x.clone(),
            _ => return Err(ConfigTxError::Incomplete(format!("missing value at path: {vk}"))),
        }
    }
    for (k, v) in g.policies.iter_mut() {
        let pk = fq_key(POLICY_PREFIX, path, k);
        match map.get(&pk) {
            Some(Entry { elem: Elem::Policy(x), .. }) => *v = x.clone(),
            _ => return Err(ConfigTxError::Incomplete(format!("missing policy at path: {pk}"))),
        }
    }
    Ok(g)
}

fn validate_mod_policy(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Err("mod_policy not set".into());
    }
    let trimmed = m.strip_prefix('/').unwrap_or(m);
    for (i, seg) in trimmed.split('/').enumerate() {
        if let Err(e) = check_config_id(seg) {
            return Err(format!("path element at {i} is invalid: {e}"));
        }
    }
    Ok(())
}

/// A CONFIG_UPDATE envelope taken apart.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    /// Channel id of the envelope's channel header.
    pub channel_id: String,
    pub envelope: ConfigUpdateEnvelope,
    pub update: ConfigUpdate,
}

/// Reads a CONFIG_UPDATE envelope (Fabric's EnvelopeToConfigUpdate).
pub fn parse_update(env: &Envelope) -> Result<UpdateRequest, ConfigTxError> {
    let bad = |s: String| ConfigTxError::Malformed(s);
    let payload = Payload::decode(env.payload.clone()).map_err(|e| bad(format!("payload: {e}")))?;
    let header = payload.header.ok_or_else(|| bad("payload has no header".into()))?;
    let ch = ChannelHeader::decode(header.channel_header).map_err(|e| bad(format!("channel header: {e}")))?;
    if ch.r#type != HeaderType::ConfigUpdate as i32 {
        return Err(bad(format!("channel header type is {}, not CONFIG_UPDATE", ch.r#type)));
    }
    let envelope = ConfigUpdateEnvelope::decode(payload.data).map_err(|e| bad(format!("ConfigUpdateEnvelope: {e}")))?;
    let update = ConfigUpdate::decode(envelope.config_update.clone()).map_err(|e| bad(format!("ConfigUpdate: {e}")))?;
    if update.channel_id != ch.channel_id {
        return Err(ConfigTxError::WrongChannel { update: update.channel_id, envelope: ch.channel_id });
    }
    Ok(UpdateRequest { channel_id: ch.channel_id, envelope, update })
}

/// The signatures of a config update (Fabric's
/// ConfigUpdateEnvelopeAsSignedData).
pub fn signed_data(env: &ConfigUpdateEnvelope) -> Result<Vec<SignedData>, ConfigTxError> {
    env.signatures
        .iter()
        .map(|s| {
            let sh = SignatureHeader::decode(s.signature_header.clone())
                .map_err(|e| ConfigTxError::Malformed(format!("config signature header: {e}")))?;
            let mut data = Vec::with_capacity(s.signature_header.len() + env.config_update.len());
            data.extend_from_slice(&s.signature_header);
            data.extend_from_slice(&env.config_update);
            Ok(SignedData { data, identity: sh.creator, signature: s.signature.clone() })
        })
        .collect()
}

/// Fabric's ProposeConfigUpdate: checks `req` against `current` (read set
/// versions, then for every changed element its version and modification
/// policy) and returns the next config (sequence + 1) with the update as
/// its last update. `last_update` is the CONFIG_UPDATE envelope itself.
pub fn propose_update(
    current: &Config,
    req: &UpdateRequest,
    last_update: &Envelope,
    authorize: Authorize<'_>,
) -> Result<ConfigEnvelope, ConfigTxError> {
    let root = current.channel_group.as_ref().ok_or_else(|| ConfigTxError::Incomplete("no channel group".into()))?;
    let config_map = map_config(root)?;
    let read_set = match &req.update.read_set {
        Some(g) => map_config(g)?,
        None => ConfigMap::new(),
    };
    for (k, v) in &read_set {
        let Some(existing) = config_map.get(k) else {
            return Err(ConfigTxError::ReadSet(format!(
                "existing config does not contain element for {k} but was in the read set"
            )));
        };
        if existing.version() != v.version() {
            return Err(ConfigTxError::ReadSet(format!(
                "proposed update requires that key {k} be at version {}, but it is currently at version {}",
                v.version(),
                existing.version()
            )));
        }
    }
    let write_set = match &req.update.write_set {
        Some(g) => map_config(g)?,
        None => ConfigMap::new(),
    };
    let delta: ConfigMap = write_set
        .iter()
        .filter(|(k, v)| read_set.get(*k).is_none_or(|r| r.version() != v.version()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if delta.is_empty() {
        return Err(ConfigTxError::DeltaSet("delta set was empty -- update would have no effect".into()));
    }
    let signed = signed_data(&req.envelope)?;
    for (k, v) in &delta {
        validate_mod_policy(v.mod_policy())
            .map_err(|e| ConfigTxError::DeltaSet(format!("invalid mod_policy for element {k}: {e}")))?;
        let Some(existing) = config_map.get(k) else {
            if v.version() != 0 {
                return Err(ConfigTxError::DeltaSet(format!(
                    "attempted to set key {k} to version {}, but key does not exist",
                    v.version()
                )));
            }
            continue;
        };
        if v.version() != existing.version() + 1 {
            return Err(ConfigTxError::DeltaSet(format!(
                "attempt to set key {k} to version {}, but key is at version {}",
                v.version(),
                existing.version()
            )));
        }
        let path = existing.policy_path();
        authorize(&path, &signed).map_err(|e| ConfigTxError::DeltaSet(format!("policy for {k} not satisfied: {e}")))?;
    }
    let mut full = config_map;
    for (k, v) in delta {
        full.insert(k, v);
    }
    for k in write_set.keys() {
        if !full.contains_key(k) {
            return Err(ConfigTxError::Incomplete(format!(
                "writeset contained key {k} which did not appear in proposed config"
            )));
        }
    }
    let group = group_from_map(&[ROOT.to_string()], &full)?;
    Ok(ConfigEnvelope {
        config: Some(Config { sequence: current.sequence + 1, channel_group: Some(group) }),
        last_update: Some(last_update.clone()),
    })
}

/// Fabric's DefaultTemplator.NewChannelConfig: the config (sequence 0) a
/// new channel starts from, made from the system channel's config and a
/// channel-creation update naming a consortium and its member orgs. The
/// update is then applied to it with [`propose_update`] (its Application
/// group is modified under the consortium's ChannelCreationPolicy).
pub fn new_channel_template(system: &Config, update: &ConfigUpdate) -> Result<Config, ConfigTxError> {
    let t = |s: String| ConfigTxError::Template(s);
    let sys = system.channel_group.as_ref().ok_or_else(|| t("system channel config has no channel group".into()))?;
    let ws = update.write_set.as_ref().ok_or_else(|| t("config update has no write set".into()))?;
    let app_ws =
        ws.groups.get("Application").ok_or_else(|| t("Config update has an empty application group".into()))?;
    let cv = ws.values.get("Consortium").ok_or_else(|| t("Consortium config value missing".into()))?;
    let consortium =
        Consortium::decode(cv.value.clone()).map_err(|e| t(format!("Consortium value does not decode: {e}")))?;
    let consortiums = sys
        .groups
        .get("Consortiums")
        .filter(|g| !g.groups.is_empty())
        .ok_or_else(|| t("the ordering system channel has no consortiums: it cannot create channels".into()))?;
    let cons = consortiums
        .groups
        .get(&consortium.name)
        .ok_or_else(|| t(format!("Unknown consortium name: {}", consortium.name)))?;
    let ccp = cons
        .values
        .get("ChannelCreationPolicy")
        .ok_or_else(|| t(format!("consortium {} has no ChannelCreationPolicy", consortium.name)))?;
    let ccp = Policy::decode(ccp.value.clone())
        .map_err(|e| t(format!("ChannelCreationPolicy of {} does not decode: {e}", consortium.name)))?;
    let mut app = ConfigGroup { mod_policy: "ChannelCreationPolicy".into(), ..Default::default() };
    app.policies.insert(
        "ChannelCreationPolicy".into(),
        ConfigPolicy { version: 0, policy: Some(ccp), mod_policy: String::new() },
    );
    if !cons.groups.is_empty() && app_ws.groups.is_empty() {
        return Err(t(
            "Proposed configuration has no application group members, but consortium contains members".into()
        ));
    }
    if !cons.groups.is_empty() {
        for org in app_ws.groups.keys() {
            let g = cons
                .groups
                .get(org)
                .ok_or_else(|| t(format!("Attempted to include a member which is not in the consortium: {org}")))?;
            app.groups.insert(org.clone(), g.clone());
        }
    }
    let mut root = ConfigGroup { mod_policy: sys.mod_policy.clone(), ..Default::default() };
    for (k, v) in &sys.values {
        root.values.insert(k.clone(), v.clone());
    }
    for (k, p) in &sys.policies {
        root.policies.insert(k.clone(), p.clone());
    }
    let orderer = sys.groups.get("Orderer").ok_or_else(|| t("system channel config has no Orderer group".into()))?;
    root.groups.insert("Orderer".into(), orderer.clone());
    root.groups.insert("Application".into(), app);
    root.values.insert(
        "Consortium".into(),
        ConfigValue {
            version: 0,
            value: Consortium { name: consortium.name.clone() }.encode_to_vec().into(),
            mod_policy: "Admins".into(),
        },
    );
    zero_versions(&mut root);
    Ok(Config { sequence: 0, channel_group: Some(root) })
}

fn zero_versions(g: &mut ConfigGroup) {
    g.version = 0;
    for v in g.values.values_mut() {
        v.version = 0;
    }
    for p in g.policies.values_mut() {
        p.version = 0;
    }
    for c in g.groups.values_mut() {
        zero_versions(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Bytes {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fabric");
        std::fs::read(dir.join(name)).unwrap().into()
    }

    fn config_of_block(b: &Bytes) -> (Config, Option<Envelope>) {
        let b = crate::proto::common::Block::decode(b.clone()).unwrap();
        let env = Envelope::decode(b.data.unwrap().data[0].clone()).unwrap();
        let p = Payload::decode(env.payload).unwrap();
        let ch = ChannelHeader::decode(p.header.unwrap().channel_header).unwrap();
        if ch.r#type == HeaderType::OrdererTransaction as i32 {
            let inner = Envelope::decode(p.data).unwrap();
            let p = Payload::decode(inner.payload).unwrap();
            let ce = ConfigEnvelope::decode(p.data).unwrap();
            return (ce.config.unwrap(), ce.last_update);
        }
        let ce = ConfigEnvelope::decode(p.data).unwrap();
        (ce.config.unwrap(), ce.last_update)
    }

    fn allow(_: &str, _: &[SignedData]) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn channel_creation_gives_fabrics_config() {
        let (system, _) = config_of_block(&fixture("blocks/system-channel.genesis.block"));
        let (want, last_update) = config_of_block(&fixture("ledger/appchannel/0.block"));
        // The update Fabric applied is the one it recorded as last update.
        let last_update = last_update.unwrap();
        let req = parse_update(&last_update).unwrap();
        assert_eq!(req.channel_id, "appchannel");
        let template = new_channel_template(&system, &req.update).unwrap();
        let seen = std::cell::RefCell::new(Vec::new());
        let auth = |p: &str, s: &[SignedData]| {
            seen.borrow_mut().push((p.to_string(), s.len()));
            Ok(())
        };
        let ce = propose_update(&template, &req, &last_update, &auth).unwrap();
        let got = ce.config.unwrap();
        assert_eq!(got.sequence, 1);
        assert_eq!(got, want, "the new channel's config equals Fabric's");
        // Only the Application group existed before and changed: it is
        // authorized by the consortium's channel creation policy.
        assert_eq!(*seen.borrow(), vec![("/Channel/Application/ChannelCreationPolicy".to_string(), 1)]);
    }

    #[test]
    fn unsigned_create_tx_is_checked_against_the_creation_policy() {
        let (system, _) = config_of_block(&fixture("blocks/system-channel.genesis.block"));
        let pb = Envelope::decode(fixture("blocks/appchannel.create.tx")).unwrap();
        let req = parse_update(&pb).unwrap();
        assert!(req.envelope.signatures.is_empty());
        let template = new_channel_template(&system, &req.update).unwrap();
        let deny = |p: &str, s: &[SignedData]| Err(format!("{p} needs a signature, got {}", s.len()));
        let e = propose_update(&template, &req, &pb, &deny).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error validating DeltaSet: policy for [Group]  /Channel/Application not satisfied: \
             /Channel/Application/ChannelCreationPolicy needs a signature, got 0"
        );
    }

    fn update(current: &Config, read: ConfigGroup, write: ConfigGroup) -> Result<ConfigEnvelope, ConfigTxError> {
        let cu =
            ConfigUpdate { channel_id: "c".into(), read_set: Some(read), write_set: Some(write), ..Default::default() };
        let req = UpdateRequest {
            channel_id: "c".into(),
            envelope: ConfigUpdateEnvelope { config_update: cu.encode_to_vec().into(), signatures: vec![] },
            update: cu,
        };
        propose_update(current, &req, &Envelope::default(), &allow)
    }

    fn sample() -> Config {
        let (c, _) = config_of_block(&fixture("blocks/solochannel.genesis.block"));
        c
    }

    /// The read and write sets of an update setting the orderer value
    /// `key` to `value`, read at the current group versions.
    fn orderer_value_sets(cur: &Config, key: &str, value: ConfigValue) -> (ConfigGroup, ConfigGroup) {
        let root = cur.channel_group.as_ref().unwrap();
        let stub = |v: u64| ConfigGroup { version: v, ..Default::default() };
        let mut read = stub(root.version);
        read.groups.insert("Orderer".into(), stub(root.groups["Orderer"].version));
        let mut write = read.clone();
        write.groups.get_mut("Orderer").unwrap().values.insert(key.into(), value);
        (read, write)
    }

    #[test]
    fn value_update_bumps_version_and_sequence() {
        let cur = sample();
        let root = cur.channel_group.as_ref().unwrap();
        let orderer = &root.groups["Orderer"];
        let mut bs = orderer.values["BatchSize"].clone();
        bs.version += 1;
        bs.value = Bytes::from_static(b"\x08\x0a");
        let (read, write) = orderer_value_sets(&cur, "BatchSize", bs.clone());
        let ce = update(&cur, read.clone(), write.clone()).unwrap();
        let next = ce.config.unwrap();
        assert_eq!(next.sequence, cur.sequence + 1);
        let g = next.channel_group.unwrap();
        assert_eq!(g.groups["Orderer"].values["BatchSize"], bs);
        // Everything else is untouched.
        assert_eq!(g.groups["Orderer"].values.len(), orderer.values.len());
        assert_eq!(g.groups["Application"], root.groups["Application"]);

        // A stale read set is refused.
        let mut stale = read.clone();
        stale.groups.get_mut("Orderer").unwrap().version += 1;
        let e = update(&cur, stale, write.clone()).unwrap_err();
        assert!(e.to_string().contains("be at version 1, but it is currently at version 0"), "{e}");
        // Skipping a version is refused.
        let mut skip = write.clone();
        skip.groups.get_mut("Orderer").unwrap().values.get_mut("BatchSize").unwrap().version += 1;
        let e = update(&cur, read.clone(), skip).unwrap_err();
        assert!(e.to_string().contains("to version 2, but key is at version 0"), "{e}");
        // No change at all is refused.
        let e = update(&cur, read.clone(), read.clone()).unwrap_err();
        assert!(e.to_string().contains("delta set was empty"), "{e}");
        // Without mod_policy.
        let mut nomod = write.clone();
        nomod.groups.get_mut("Orderer").unwrap().values.get_mut("BatchSize").unwrap().mod_policy.clear();
        let e = update(&cur, read.clone(), nomod).unwrap_err();
        assert!(e.to_string().contains("mod_policy not set"), "{e}");
        // A new value that does not exist must start at version 0.
        let mut new = write.clone();
        new.groups
            .get_mut("Orderer")
            .unwrap()
            .values
            .insert("Nope".into(), ConfigValue { version: 3, value: Bytes::new(), mod_policy: "Admins".into() });
        let e = update(&cur, read, new).unwrap_err();
        assert!(e.to_string().contains("Nope to version 3, but key does not exist"), "{e}");
    }

    #[test]
    fn mod_policy_paths() {
        let e = |path: &[&str], key: &str, elem: Elem| Entry {
            path: path.iter().map(|s| s.to_string()).collect(),
            key: key.into(),
            elem,
        };
        let v = ConfigValue { mod_policy: "Admins".into(), ..Default::default() };
        assert_eq!(e(&["Channel", "Orderer"], "BatchSize", Elem::Value(v)).policy_path(), "/Channel/Orderer/Admins");
        let g = ConfigGroup { mod_policy: "Admins".into(), ..Default::default() };
        assert_eq!(e(&["Channel"], "Orderer", Elem::Group(g.clone())).policy_path(), "/Channel/Orderer/Admins");
        assert_eq!(e(&[], "Channel", Elem::Group(g)).policy_path(), "/Channel/Admins");
        let p = ConfigPolicy { mod_policy: "/Channel/Orderer/Admins".into(), ..Default::default() };
        assert_eq!(e(&["Channel"], "Writers", Elem::Policy(p)).policy_path(), "/Channel/Orderer/Admins");
    }

    #[test]
    fn third_party_updates_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fabric-sdk-py");
        for f in ["e2e_cli__channel.tx", "e2e_raft__channel.tx", "e2e_cli__Org1MSPanchors.tx"] {
            let pb = Envelope::decode(Bytes::from(std::fs::read(dir.join(f)).unwrap())).unwrap();
            let req = parse_update(&pb).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!req.channel_id.is_empty(), "{f}");
            assert!(req.update.write_set.is_some(), "{f}");
        }
    }

    #[test]
    fn channel_names_follow_fabrics_rule_and_texts() {
        for ok in ["a", "solochannel", "app-channel.1", &"a".repeat(249)] {
            assert_eq!(validate_channel_id(ok), Ok(()), "{ok}");
        }
        let text = |n: &str| validate_channel_id(n).unwrap_err().to_string();
        assert_eq!(text(""), "channel ID illegal, cannot be empty");
        assert_eq!(text(&"a".repeat(250)), "channel ID illegal, cannot be longer than 249");
        for bad in ["BAD_Name", "1abc", ".a", "-a", "a_b", "aB", "a b", "caf\u{e9}"] {
            assert_eq!(text(bad), format!("'{bad}' contains illegal characters"), "{bad}");
        }
    }

    #[test]
    fn config_keys_follow_fabrics_rule_and_texts() {
        assert_eq!(check_config_id("Org1MSP.x-y"), Ok(()));
        assert_eq!(check_config_id("a_b").unwrap_err(), "config ID 'a_b' contains illegal characters");
        assert_eq!(check_config_id("..").unwrap_err(), "name '..' for config ID is not allowed");
        assert_eq!(check_config_id("").unwrap_err(), "config ID illegal, cannot be empty");
        // In a config: Fabric's wording, with the kind of element.
        let mut cur = sample();
        let g = cur.channel_group.as_mut().unwrap();
        g.groups.get_mut("Orderer").unwrap().values.insert("Bad_Key".into(), ConfigValue::default());
        let e = map_config(g).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal characters in key: [Value]  : config ID 'Bad_Key' contains illegal characters"
        );
        assert_eq!(
            validate_mod_policy("/Channel/a_b").unwrap_err(),
            "path element at 1 is invalid: config ID 'a_b' contains illegal characters"
        );
    }

    #[test]
    fn policy_refusal_names_the_element_as_fabric_does() {
        let cur = sample();
        let root = cur.channel_group.as_ref().unwrap();
        let orderer = &root.groups["Orderer"];
        let mut bt = orderer.values["BatchTimeout"].clone();
        bt.version += 1;
        let (read, write) = orderer_value_sets(&cur, "BatchTimeout", bt);
        let cu =
            ConfigUpdate { channel_id: "c".into(), read_set: Some(read), write_set: Some(write), ..Default::default() };
        let req = UpdateRequest {
            channel_id: "c".into(),
            envelope: ConfigUpdateEnvelope { config_update: cu.encode_to_vec().into(), signatures: vec![] },
            update: cu,
        };
        let deny = |_: &str, _: &[SignedData]| Err("implicit policy evaluation failed".to_string());
        let e = propose_update(&cur, &req, &Envelope::default(), &deny).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error validating DeltaSet: policy for [Value]  /Channel/Orderer/BatchTimeout not satisfied: implicit \
             policy evaluation failed"
        );
    }
}
