//! Fabric's channel policies: every policy of a channel config tree, built
//! once per config and addressed by absolute path (`/Channel/Writers`,
//! `/Channel/Application/Org1MSP/Writers`, …), evaluated against signed data
//! or against identities already validated by the [`MspManager`].
//!
//! Signature policies follow Fabric's cauthdsl: the signed data is
//! deduplicated by identity, invalid identities and signatures are dropped,
//! then the NOutOf/SignedBy tree is evaluated greedily with one "used" flag
//! per identity (an identity satisfies at most one SignedBy; no
//! backtracking). ImplicitMeta policies count the children groups' policy of
//! the same name (ANY 1, ALL n, MAJORITY n/2+1, and 0 when there are no
//! children). May touch nothing: pure, no I/O.
//!
//! The Broadcast/Deliver hot path verifies the envelope signature once and
//! hands the identity over, with no allocation when the policy holds:
//!
//! ```ignore
//! let id = msps.identity(&signature_header.creator)?; // cache hit: one hash lookup
//! id.verify(&envelope.payload, &envelope.signature)?;
//! policies.evaluate_identities("/Channel/Writers", std::slice::from_ref(&id))?;
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::msp::{Identity, MspManager, Roles};
use crate::proto::common::implicit_meta_policy::Rule as MetaRule;
use crate::proto::common::policy::PolicyType;
use crate::proto::common::signature_policy::Type as RuleType;
use crate::proto::common::{ConfigGroup, ImplicitMetaPolicy, SignaturePolicy, SignaturePolicyEnvelope};
use crate::proto::msp::msp_principal::Classification;
use crate::proto::msp::msp_role::MspRoleType;
use crate::proto::msp::{MspPrincipal, MspRole, SerializedIdentity};

/// Root group name of a channel config.
pub const ROOT_GROUP: &str = "Channel";

/// One signature over some data by a serialized identity (Fabric's
/// `protoutil.SignedData`).
#[derive(Debug, Clone, Copy)]
pub struct SignedData<'a> {
    /// The signed bytes.
    pub data: &'a [u8],
    /// The signer: a marshalled `SerializedIdentity` (the creator).
    pub identity: &'a [u8],
    /// The DER ECDSA signature.
    pub signature: &'a [u8],
}

/// Errors building or evaluating policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("no such policy: '{0}'")]
    NotFound(String),
    #[error(
        "implicit policy evaluation failed - {satisfied} sub-policies were satisfied, but this policy requires {threshold} of the '{sub_policy}' sub-policies to be satisfied"
    )]
    ImplicitMeta { satisfied: usize, threshold: usize, sub_policy: String },
    /// Fabric's exact text (operators' scripts match it); `path` is the
    /// policy's, for callers and logs.
    #[error("signature set did not satisfy policy")]
    Signature { path: String },
    #[error("policy {path}: {reason}")]
    Build { path: String, reason: String },
}

/// What a policy needs of an identity. Implemented by [`Identity`] (and by
/// test doubles).
pub trait PolicyIdentity {
    /// The MSP id.
    fn mspid(&self) -> &str;
    /// The roles in the MSP.
    fn roles(&self) -> Roles;
    /// The certificate (DER), for IDENTITY principals.
    fn cert_der(&self) -> &[u8];
    /// Whether two identities are the same signer (for deduplication).
    fn same(&self, other: &Self) -> bool;
}

impl PolicyIdentity for Identity {
    fn mspid(&self) -> &str {
        Identity::mspid(self)
    }
    fn roles(&self) -> Roles {
        Identity::roles(self)
    }
    fn cert_der(&self) -> &[u8] {
        Identity::cert_der(self)
    }
    fn same(&self, other: &Self) -> bool {
        self.same_as(other)
    }
}

impl<T: PolicyIdentity> PolicyIdentity for Arc<T> {
    fn mspid(&self) -> &str {
        (**self).mspid()
    }
    fn roles(&self) -> Roles {
        (**self).roles()
    }
    fn cert_der(&self) -> &[u8] {
        (**self).cert_der()
    }
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other) || (**self).same(other)
    }
}

/// An MSP role of a ROLE principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Member,
    Admin,
    Client,
    Peer,
    Orderer,
}

/// A compiled `MSPPrincipal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// ROLE: a valid identity of the MSP with that role.
    Role { mspid: String, role: Role },
    /// IDENTITY: exactly that certificate in that MSP.
    Identity { mspid: String, cert_der: Vec<u8> },
    /// A principal this evaluator does not support (ORGANIZATION_UNIT,
    /// ANONYMITY, COMBINED, an unknown role, a malformed principal): never
    /// satisfied, as Fabric's SatisfiesPrincipal errors on what it cannot
    /// check.
    Unsupported { reason: String },
}

impl Principal {
    /// Whether `id` satisfies the principal.
    #[inline]
    pub fn satisfied_by<I: PolicyIdentity + ?Sized>(&self, id: &I) -> bool {
        match self {
            Principal::Role { mspid, role } => {
                if id.mspid() != mspid {
                    return false;
                }
                let r = id.roles();
                match role {
                    Role::Member => true,
                    Role::Admin => r.is_admin,
                    Role::Client => r.client,
                    Role::Peer => r.peer,
                    Role::Orderer => r.orderer,
                }
            }
            Principal::Identity { mspid, cert_der } => id.mspid() == mspid && id.cert_der() == &cert_der[..],
            Principal::Unsupported { .. } => false,
        }
    }

    /// Compiles an `MSPPrincipal`.
    pub fn compile(p: &MspPrincipal) -> Principal {
        let unsupported = |reason: String| Principal::Unsupported { reason };
        match Classification::try_from(p.principal_classification) {
            Ok(Classification::Role) => {
                let Ok(role) = MspRole::decode(p.principal.clone()) else {
                    return unsupported("ROLE principal is not an MSPRole".into());
                };
                let r = match MspRoleType::try_from(role.role) {
                    Ok(MspRoleType::Member) => Role::Member,
                    Ok(MspRoleType::Admin) => Role::Admin,
                    Ok(MspRoleType::Client) => Role::Client,
                    Ok(MspRoleType::Peer) => Role::Peer,
                    Ok(MspRoleType::Orderer) => Role::Orderer,
                    Err(_) => return unsupported(format!("invalid MSP role type {}", role.role)),
                };
                Principal::Role { mspid: role.msp_identifier, role: r }
            }
            Ok(Classification::Identity) => {
                let Ok(sid) = SerializedIdentity::decode(p.principal.clone()) else {
                    return unsupported("IDENTITY principal is not a SerializedIdentity".into());
                };
                match crate::msp::cert_der_of_pem(&sid.id_bytes) {
                    Ok(cert_der) => Principal::Identity { mspid: sid.mspid, cert_der },
                    Err(e) => unsupported(format!("invalid identity principal, not a certificate: {e}")),
                }
            }
            Ok(c) => unsupported(format!("principal classification {} is not supported", c.as_str_name())),
            Err(_) => unsupported(format!("invalid principal type {}", p.principal_classification)),
        }
    }
}

/// A compiled NOutOf/SignedBy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    SignedBy(usize),
    NOutOf { n: i32, rules: Vec<Rule> },
}

/// A compiled `SignaturePolicyEnvelope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicyRule {
    rule: Rule,
    principals: Vec<Principal>,
}

impl SignaturePolicyRule {
    /// Compiles an envelope (errors use Fabric's texts).
    pub fn compile(env: &SignaturePolicyEnvelope) -> Result<SignaturePolicyRule, String> {
        if env.version != 0 {
            return Err(format!(
                "This evaluator only understands messages of version 0, but version was {}",
                env.version
            ));
        }
        let principals: Vec<Principal> = env.identities.iter().map(Principal::compile).collect();
        let rule = compile_rule(env.rule.as_ref(), principals.len())?;
        Ok(SignaturePolicyRule { rule, principals })
    }

    /// The principals, in envelope order.
    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }

    /// Whether the (deduplicated) identities satisfy the rule, with Fabric's
    /// greedy "used" semantics. Identities that are the same signer as an
    /// earlier one in `ids` are ignored.
    pub fn satisfied_by<I: PolicyIdentity>(&self, ids: &[I]) -> bool {
        if ids.len() <= 64 {
            let mut used = 0u64;
            for i in 1..ids.len() {
                if ids[..i].iter().any(|e| e.same(&ids[i])) {
                    used.set(i);
                }
            }
            self.eval_root(ids, used)
        } else {
            let mut used = vec![false; ids.len()];
            for i in 1..ids.len() {
                if ids[..i].iter().any(|e| e.same(&ids[i])) {
                    used.set(i);
                }
            }
            self.eval_root(ids, used)
        }
    }

    fn eval_root<I: PolicyIdentity, U: Used>(&self, ids: &[I], mut used: U) -> bool {
        // At the root, stopping once `n` gates are satisfied cannot change
        // the result (the used flags are discarded afterwards).
        match &self.rule {
            Rule::NOutOf { n, rules } => {
                let mut verified = 0i32;
                if verified >= *n {
                    return true;
                }
                for r in rules {
                    let mut tmp = used.clone();
                    if self.eval(r, ids, &mut tmp) {
                        verified += 1;
                        if verified >= *n {
                            return true;
                        }
                        used = tmp;
                    }
                }
                false
            }
            r => self.eval(r, ids, &mut used),
        }
    }

    fn eval<I: PolicyIdentity, U: Used>(&self, rule: &Rule, ids: &[I], used: &mut U) -> bool {
        match rule {
            Rule::SignedBy(p) => {
                let principal = &self.principals[*p];
                for (i, id) in ids.iter().enumerate() {
                    if !used.get(i) && principal.satisfied_by(id) {
                        used.set(i);
                        return true;
                    }
                }
                false
            }
            Rule::NOutOf { n, rules } => {
                // Fabric: every sub-rule is evaluated on a copy of the used
                // flags; a satisfied one commits its copy.
                let mut verified = 0i32;
                for r in rules {
                    let mut tmp = used.clone();
                    if self.eval(r, ids, &mut tmp) {
                        verified += 1;
                        *used = tmp;
                    }
                }
                verified >= *n
            }
        }
    }
}

fn compile_rule(rule: Option<&SignaturePolicy>, n_principals: usize) -> Result<Rule, String> {
    let rule = rule.ok_or("Empty policy element")?;
    match &rule.r#type {
        Some(RuleType::SignedBy(i)) => {
            if *i < 0 || *i as usize >= n_principals {
                return Err(format!(
                    "identity index out of range, requested {i}, but identities length is {n_principals}"
                ));
            }
            Ok(Rule::SignedBy(*i as usize))
        }
        Some(RuleType::NOutOf(n)) => Ok(Rule::NOutOf {
            n: n.n,
            rules: n.rules.iter().map(|r| compile_rule(Some(r), n_principals)).collect::<Result<_, _>>()?,
        }),
        None => Err("Empty policy element".into()),
    }
}

/// Used flags of the identities.
trait Used: Clone {
    fn get(&self, i: usize) -> bool;
    fn set(&mut self, i: usize);
}

impl Used for u64 {
    #[inline]
    fn get(&self, i: usize) -> bool {
        *self & (1 << i) != 0
    }
    #[inline]
    fn set(&mut self, i: usize) {
        *self |= 1 << i;
    }
}

impl Used for Vec<bool> {
    fn get(&self, i: usize) -> bool {
        self[i]
    }
    fn set(&mut self, i: usize) {
        self[i] = true;
    }
}

/// ImplicitMeta rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImplicitRule {
    Any,
    All,
    Majority,
}

impl ImplicitRule {
    /// Fabric's threshold for `children` sub-policies (0 with no children).
    pub fn threshold(self, children: usize) -> usize {
        if children == 0 {
            return 0;
        }
        match self {
            ImplicitRule::Any => 1,
            ImplicitRule::All => children,
            ImplicitRule::Majority => children / 2 + 1,
        }
    }
}

#[derive(Debug)]
struct ImplicitMeta {
    sub_policy: String,
    threshold: usize,
    /// The children groups' policy of that name (None: the child has no
    /// such policy, which Fabric counts as a child that rejects).
    children: Vec<Option<usize>>,
}

#[derive(Debug)]
enum Node {
    Signature(SignaturePolicyRule),
    ImplicitMeta(ImplicitMeta),
}

/// Every policy of a channel config, by absolute path.
#[derive(Debug)]
pub struct PolicyManager {
    nodes: Vec<Node>,
    paths: Vec<String>,
    index: HashMap<String, usize>,
    msps: Arc<MspManager>,
}

/// One policy of a [`PolicyManager`].
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    manager: &'a PolicyManager,
    index: usize,
}

impl PolicyRef<'_> {
    /// The policy's absolute path.
    pub fn path(&self) -> &str {
        &self.manager.paths[self.index]
    }
    /// Whether it is an ImplicitMeta policy (else a signature policy).
    pub fn is_implicit_meta(&self) -> bool {
        matches!(self.manager.nodes[self.index], Node::ImplicitMeta(_))
    }
    /// Verifies the signatures, then evaluates (see [`PolicyManager::evaluate`]).
    pub fn evaluate(&self, signed: &[SignedData]) -> Result<(), PolicyError> {
        let ids = self.manager.valid_identities(signed);
        self.evaluate_identities(&ids)
    }
    /// Evaluates already-verified identities.
    pub fn evaluate_identities<I: PolicyIdentity>(&self, ids: &[I]) -> Result<(), PolicyError> {
        self.manager.eval_top(self.index, ids)
    }
}

impl PolicyManager {
    /// Builds every policy of the tree rooted at `root` (the `Channel`
    /// group), addressed as `/Channel/...`.
    pub fn from_channel_group(root: &ConfigGroup, msps: Arc<MspManager>) -> Result<PolicyManager, PolicyError> {
        let mut pm = PolicyManager { nodes: Vec::new(), paths: Vec::new(), index: HashMap::new(), msps };
        pm.build_group(root, &format!("/{ROOT_GROUP}"))?;
        Ok(pm)
    }

    fn build_group(&mut self, group: &ConfigGroup, path: &str) -> Result<(), PolicyError> {
        for (name, child) in &group.groups {
            self.build_group(child, &format!("{path}/{name}"))?;
        }
        for (name, cp) in &group.policies {
            let full = format!("{path}/{name}");
            let err = |reason: String| PolicyError::Build { path: full.clone(), reason };
            let policy = cp.policy.as_ref().ok_or_else(|| err("the policy is nil".into()))?;
            let node = match PolicyType::try_from(policy.r#type) {
                Ok(PolicyType::Signature) => {
                    let env = SignaturePolicyEnvelope::decode(policy.value.clone())
                        .map_err(|e| err(format!("Error unmarshalling to SignaturePolicy: {e}")))?;
                    let rule = SignaturePolicyRule::compile(&env).map_err(err)?;
                    for p in &rule.principals {
                        if let Principal::Unsupported { reason } = p {
                            tracing::warn!(policy = %full, "principal never satisfied: {reason}");
                        }
                    }
                    Node::Signature(rule)
                }
                Ok(PolicyType::ImplicitMeta) => {
                    let imp = ImplicitMetaPolicy::decode(policy.value.clone())
                        .map_err(|e| err(format!("Error unmarshaling to ImplicitMetaPolicy: {e}")))?;
                    let rule = match MetaRule::try_from(imp.rule) {
                        Ok(MetaRule::Any) => ImplicitRule::Any,
                        Ok(MetaRule::All) => ImplicitRule::All,
                        Ok(MetaRule::Majority) => ImplicitRule::Majority,
                        Err(_) => return Err(err(format!("unknown ImplicitMeta rule {}", imp.rule))),
                    };
                    let children: Vec<Option<usize>> = group
                        .groups
                        .keys()
                        .map(|c| self.index.get(&format!("{path}/{c}/{}", imp.sub_policy)).copied())
                        .collect();
                    Node::ImplicitMeta(ImplicitMeta {
                        threshold: rule.threshold(children.len()),
                        sub_policy: imp.sub_policy,
                        children,
                    })
                }
                _ => return Err(err(format!("unknown policy type: {}", policy.r#type))),
            };
            self.index.insert(full.clone(), self.nodes.len());
            self.paths.push(full);
            self.nodes.push(node);
        }
        Ok(())
    }

    /// The MSPs the policies refer to.
    pub fn msps(&self) -> &Arc<MspManager> {
        &self.msps
    }

    /// Every policy path, sorted.
    pub fn paths(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.paths.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The policy at an absolute path.
    pub fn get(&self, path: &str) -> Option<PolicyRef<'_>> {
        self.index.get(path).map(|&index| PolicyRef { manager: self, index })
    }

    /// Fabric's `EvaluateSignedData`: deserializes and validates each signer
    /// (through the MSP manager's cache), drops duplicates, invalid identities
    /// and bad signatures (debug log), then evaluates the policy at `path`.
    pub fn evaluate(&self, path: &str, signed: &[SignedData]) -> Result<(), PolicyError> {
        let p = self.get(path).ok_or_else(|| PolicyError::NotFound(path.to_string()))?;
        p.evaluate(signed)
    }

    /// Evaluates the policy at `path` against identities whose signatures
    /// the caller already verified (duplicates are ignored). The hot path of
    /// Broadcast/Deliver: no allocation when the policy is satisfied.
    pub fn evaluate_identities<I: PolicyIdentity>(&self, path: &str, ids: &[I]) -> Result<(), PolicyError> {
        let p = self.get(path).ok_or_else(|| PolicyError::NotFound(path.to_string()))?;
        p.evaluate_identities(ids)
    }

    /// The valid identities of a signature set, deduplicated (Fabric's
    /// `SignatureSetToValidIdentities`).
    pub fn valid_identities(&self, signed: &[SignedData]) -> Vec<Arc<Identity>> {
        let mut out: Vec<Arc<Identity>> = Vec::with_capacity(signed.len());
        for (i, sd) in signed.iter().enumerate() {
            let id = match self.msps.identity(sd.identity) {
                Ok(id) => id,
                Err(e) => {
                    tracing::debug!(index = i, "invalid identity in signature set: {e}");
                    continue;
                }
            };
            if out.iter().any(|o| o.same_as(&id)) {
                tracing::debug!(index = i, mspid = id.mspid(), "de-duplicating identity in signature set");
                continue;
            }
            if let Err(e) = id.verify(sd.data, sd.signature) {
                tracing::debug!(index = i, "invalid signature in signature set: {e}");
                continue;
            }
            out.push(id);
        }
        out
    }

    fn eval_top<I: PolicyIdentity>(&self, index: usize, ids: &[I]) -> Result<(), PolicyError> {
        match &self.nodes[index] {
            Node::Signature(rule) => {
                if rule.satisfied_by(ids) {
                    Ok(())
                } else {
                    Err(PolicyError::Signature { path: self.paths[index].clone() })
                }
            }
            Node::ImplicitMeta(imp) => {
                let satisfied = self.count_children(imp, ids);
                if satisfied >= imp.threshold {
                    Ok(())
                } else {
                    Err(PolicyError::ImplicitMeta {
                        satisfied,
                        threshold: imp.threshold,
                        sub_policy: imp.sub_policy.clone(),
                    })
                }
            }
        }
    }

    /// Number of satisfied children, stopping at the threshold (as Fabric).
    fn count_children<I: PolicyIdentity>(&self, imp: &ImplicitMeta, ids: &[I]) -> usize {
        let mut satisfied = 0;
        if imp.threshold == 0 {
            return 0;
        }
        for c in imp.children.iter().flatten() {
            if self.eval_node(*c, ids) {
                satisfied += 1;
                if satisfied >= imp.threshold {
                    break;
                }
            }
        }
        satisfied
    }

    fn eval_node<I: PolicyIdentity>(&self, index: usize, ids: &[I]) -> bool {
        match &self.nodes[index] {
            Node::Signature(rule) => rule.satisfied_by(ids),
            Node::ImplicitMeta(imp) => self.count_children(imp, ids) >= imp.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::proto::common::signature_policy::NOutOf;
    use crate::proto::common::{ConfigPolicy, Policy};

    /// A test identity: an MSP, NodeOU roles, a certificate, a signer id.
    #[derive(Debug, Clone)]
    struct Fake {
        mspid: String,
        roles: Roles,
        cert: Vec<u8>,
        uid: u8,
    }

    impl PolicyIdentity for Fake {
        fn mspid(&self) -> &str {
            &self.mspid
        }
        fn roles(&self) -> Roles {
            self.roles
        }
        fn cert_der(&self) -> &[u8] {
            &self.cert
        }
        fn same(&self, other: &Self) -> bool {
            self.uid == other.uid
        }
    }

    const MSPS: [&str; 2] = ["OrgA", "OrgB"];

    /// Identity `uid`: its MSP, role and certificate derive from the uid, so
    /// two entries with one uid are the same signer.
    fn fake(uid: u8) -> Fake {
        let mut roles = Roles::default();
        match uid % 4 {
            0 => roles.client = true,
            1 => roles.peer = true,
            2 => {
                roles.admin = true;
                roles.is_admin = true;
            }
            _ => roles.orderer = true,
        }
        Fake { mspid: MSPS[(uid / 4 % 2) as usize].into(), roles, cert: vec![uid; 4], uid }
    }

    /// Test principals: ROLE of each MSP and role, IDENTITY of uid 0..8,
    /// and an unsupported classification.
    #[derive(Debug, Clone)]
    enum P {
        Role(usize, i32),
        Ident(u8),
        Unsupported,
    }

    fn to_proto(p: &P) -> MspPrincipal {
        match p {
            P::Role(m, r) => MspPrincipal {
                principal_classification: Classification::Role as i32,
                principal: MspRole { msp_identifier: MSPS[*m].into(), role: *r }.encode_to_vec().into(),
            },
            P::Ident(uid) => {
                // The IDENTITY principal carries a PEM certificate; the test
                // identities' "certificates" are not X.509, so map them by
                // a real certificate per uid.
                let f = fake(*uid);
                MspPrincipal {
                    principal_classification: Classification::Identity as i32,
                    principal: SerializedIdentity { mspid: f.mspid.clone(), id_bytes: Bytes::from(pem_of(*uid)) }
                        .encode_to_vec()
                        .into(),
                }
            }
            P::Unsupported => MspPrincipal {
                principal_classification: Classification::OrganizationUnit as i32,
                principal: Bytes::new(),
            },
        }
    }

    /// A real certificate per uid (generated once), so IDENTITY principals
    /// compile; the fake identity of that uid carries its DER.
    fn pem_of(uid: u8) -> String {
        gen_certs_cached()[uid as usize].0.clone()
    }

    fn der_of(uid: u8) -> Vec<u8> {
        gen_certs_cached()[uid as usize].1.clone()
    }

    fn gen_certs_cached() -> &'static Vec<(String, Vec<u8>)> {
        use std::sync::OnceLock;
        static CERTS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
        CERTS.get_or_init(gen_certs)
    }

    fn gen_certs() -> Vec<(String, Vec<u8>)> {
        (0..8u8)
            .map(|i| {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let cert = rcgen::CertificateParams::new(vec![format!("id{i}")]).unwrap().self_signed(&key).unwrap();
                (cert.pem(), cert.der().to_vec())
            })
            .collect()
    }

    /// Fabric's semantics of a principal, written from mspimpl.go.
    fn ref_satisfies(p: &P, id: &Fake) -> bool {
        match p {
            P::Role(m, r) => {
                id.mspid == MSPS[*m]
                    && match r {
                        0 => true,
                        1 => id.roles.is_admin,
                        2 => id.roles.client,
                        3 => id.roles.peer,
                        4 => id.roles.orderer,
                        _ => false,
                    }
            }
            P::Ident(uid) => id.uid == *uid,
            P::Unsupported => false,
        }
    }

    /// A rule over principal indexes.
    #[derive(Debug, Clone)]
    enum R {
        By(usize),
        Gate(i32, Vec<R>),
    }

    fn to_rule(r: &R) -> SignaturePolicy {
        SignaturePolicy {
            r#type: Some(match r {
                R::By(i) => RuleType::SignedBy(*i as i32),
                R::Gate(n, rs) => RuleType::NOutOf(NOutOf { n: *n, rules: rs.iter().map(to_rule).collect() }),
            }),
        }
    }

    /// Fabric's cauthdsl, transcribed: dedup, then greedy evaluation with a
    /// copied `used` slice per gate child.
    fn ref_fabric(rule: &R, ps: &[P], ids: &[Fake]) -> bool {
        let mut dedup: Vec<Fake> = Vec::new();
        for id in ids {
            if !dedup.iter().any(|d| d.uid == id.uid) {
                dedup.push(id.clone());
            }
        }
        fn go(rule: &R, ps: &[P], ids: &[Fake], used: &mut Vec<bool>) -> bool {
            match rule {
                R::By(p) => {
                    for (i, id) in ids.iter().enumerate() {
                        if used[i] {
                            continue;
                        }
                        if ref_satisfies(&ps[*p], id) {
                            used[i] = true;
                            return true;
                        }
                    }
                    false
                }
                R::Gate(n, rules) => {
                    let mut verified = 0;
                    let mut copy = vec![false; used.len()];
                    for r in rules {
                        copy.clone_from(used);
                        if go(r, ps, ids, &mut copy) {
                            verified += 1;
                            used.clone_from(&copy);
                        }
                    }
                    verified >= *n
                }
            }
        }
        let mut used = vec![false; dedup.len()];
        go(rule, ps, &dedup, &mut used)
    }

    fn leaves(r: &R, out: &mut Vec<usize>) {
        match r {
            R::By(p) => out.push(*p),
            R::Gate(_, rs) => rs.iter().for_each(|x| leaves(x, out)),
        }
    }

    /// Exhaustive search: is there an assignment of distinct signers to
    /// SignedBy leaves under which the tree holds?
    fn ref_exhaustive(rule: &R, ps: &[P], ids: &[Fake]) -> bool {
        let mut signers: Vec<Fake> = Vec::new();
        for id in ids {
            if !signers.iter().any(|d| d.uid == id.uid) {
                signers.push(id.clone());
            }
        }
        let mut ls = Vec::new();
        leaves(rule, &mut ls);
        // assignment[k] = Some(signer) for leaf k.
        fn holds(r: &R, sat: &[bool], next: &mut usize) -> bool {
            match r {
                R::By(_) => {
                    let v = sat[*next];
                    *next += 1;
                    v
                }
                R::Gate(n, rs) => {
                    let mut c = 0;
                    for x in rs {
                        if holds(x, sat, next) {
                            c += 1;
                        }
                    }
                    c >= *n
                }
            }
        }
        fn search(
            k: usize,
            ls: &[usize],
            ps: &[P],
            s: &[Fake],
            taken: &mut Vec<bool>,
            sat: &mut Vec<bool>,
            r: &R,
        ) -> bool {
            if k == ls.len() {
                return holds(r, sat, &mut 0);
            }
            sat[k] = false;
            if search(k + 1, ls, ps, s, taken, sat, r) {
                return true;
            }
            for i in 0..s.len() {
                if !taken[i] && ref_satisfies(&ps[ls[k]], &s[i]) {
                    taken[i] = true;
                    sat[k] = true;
                    let ok = search(k + 1, ls, ps, s, taken, sat, r);
                    taken[i] = false;
                    sat[k] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        search(0, &ls, ps, &signers, &mut vec![false; signers.len()], &mut vec![false; ls.len()], rule)
    }

    fn principal_strategy() -> impl Strategy<Value = P> {
        prop_oneof![
            4 => (0..2usize).prop_map(|m| P::Role(m, 0)),
            4 => (0..2usize, 0..5i32).prop_map(|(m, r)| P::Role(m, r)),
            2 => (0..8u8).prop_map(P::Ident),
            1 => Just(P::Unsupported),
        ]
    }

    fn rule_strategy(n_principals: usize) -> impl Strategy<Value = R> {
        let leaf = (0..n_principals).prop_map(R::By);
        leaf.prop_recursive(3, 12, 4, |inner| {
            (prop::collection::vec(inner, 0..4), -1..4i32).prop_map(|(rs, n)| R::Gate(n, rs))
        })
    }

    fn case() -> impl Strategy<Value = (Vec<P>, R, Vec<u8>)> {
        prop::collection::vec(principal_strategy(), 1..5).prop_flat_map(|ps| {
            let n = ps.len();
            (Just(ps), rule_strategy(n), prop::collection::vec(0..8u8, 0..7))
        })
    }

    fn fakes(uids: &[u8]) -> Vec<Fake> {
        uids.iter()
            .map(|u| {
                let mut f = fake(*u);
                f.cert = der_of(*u);
                f
            })
            .collect()
    }

    fn compile(ps: &[P], rule: &R) -> SignaturePolicyRule {
        let env = SignaturePolicyEnvelope {
            version: 0,
            rule: Some(to_rule(rule)),
            identities: ps.iter().map(to_proto).collect(),
        };
        SignaturePolicyRule::compile(&env).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The compiled evaluator is Fabric's greedy cauthdsl, and whatever
        /// it accepts has a real assignment of distinct signers.
        #[test]
        fn signature_policy_matches_fabric((ps, rule, uids) in case()) {
            let ids = fakes(&uids);
            let ours = compile(&ps, &rule).satisfied_by(&ids);
            prop_assert_eq!(ours, ref_fabric(&rule, &ps, &ids));
            if ours {
                prop_assert!(ref_exhaustive(&rule, &ps, &ids));
            }
        }

        /// On one gate over SignedBy leaves whose principals are pairwise
        /// identical or disjoint (NodeOU roles and IDENTITY, no MEMBER),
        /// Fabric's greedy choice is exact: it equals exhaustive search.
        #[test]
        fn flat_disjoint_gates_are_exact(
            ps in prop::collection::vec((0..2usize, 1..5i32).prop_map(|(m, r)| P::Role(m, r)), 1..5),
            picks in prop::collection::vec(0..4usize, 0..6),
            n in -1..6i32,
            uids in prop::collection::vec(0..8u8, 0..6),
        ) {
            let rule = R::Gate(n, picks.iter().map(|p| R::By(p % ps.len())).collect());
            let ids = fakes(&uids);
            let ours = compile(&ps, &rule).satisfied_by(&ids);
            prop_assert_eq!(ours, ref_exhaustive(&rule, &ps, &ids));
        }

        /// ImplicitMeta: k children, some without the sub-policy; satisfied
        /// iff at least the threshold (ANY 1, ALL k, MAJORITY k/2+1, 0 for
        /// no children) of children policies hold; Fabric's error text.
        #[test]
        fn implicit_meta_thresholds(
            children in prop::collection::vec((any::<bool>(), any::<bool>()), 0..6),
            rule in 0..3i32,
        ) {
            // Child i has policy "P" (when has) = OR(M{i}.member); it holds
            // when an identity of M{i} signs (when signs).
            let mut root = ConfigGroup::default();
            let mut ids = Vec::new();
            let mut expect_sat = 0usize;
            for (i, (has, signs)) in children.iter().enumerate() {
                let mspid = format!("M{i}");
                let mut g = ConfigGroup::default();
                if *has {
                    let env = SignaturePolicyEnvelope {
                        version: 0,
                        rule: Some(SignaturePolicy { r#type: Some(RuleType::SignedBy(0)) }),
                        identities: vec![MspPrincipal {
                            principal_classification: Classification::Role as i32,
                            principal: MspRole { msp_identifier: mspid.clone(), role: 0 }.encode_to_vec().into(),
                        }],
                    };
                    g.policies.insert("P".into(), sig_policy(env));
                }
                if *signs {
                    ids.push(Fake { mspid, roles: Roles::default(), cert: vec![], uid: i as u8 });
                    if *has {
                        expect_sat += 1;
                    }
                }
                root.groups.insert(format!("g{i}"), g);
            }
            root.policies.insert("Meta".into(), meta_policy("P", rule));
            let pm = PolicyManager::from_channel_group(&root, Arc::new(MspManager::new(vec![]).unwrap())).unwrap();
            let k = children.len();
            let threshold = match rule { 0 => 1, 1 => k, _ => k / 2 + 1 };
            let threshold = if k == 0 { 0 } else { threshold };
            let r = pm.evaluate_identities("/Channel/Meta", &ids);
            if expect_sat >= threshold {
                prop_assert!(r.is_ok(), "{:?}", r);
            } else {
                prop_assert_eq!(
                    r.unwrap_err().to_string(),
                    format!("implicit policy evaluation failed - {expect_sat} sub-policies were satisfied, but this policy requires {threshold} of the 'P' sub-policies to be satisfied")
                );
            }
        }
    }

    fn sig_policy(env: SignaturePolicyEnvelope) -> ConfigPolicy {
        ConfigPolicy {
            version: 0,
            policy: Some(Policy { r#type: PolicyType::Signature as i32, value: env.encode_to_vec().into() }),
            mod_policy: String::new(),
        }
    }

    fn meta_policy(sub: &str, rule: i32) -> ConfigPolicy {
        let imp = ImplicitMetaPolicy { sub_policy: sub.into(), rule };
        ConfigPolicy {
            version: 0,
            policy: Some(Policy { r#type: PolicyType::ImplicitMeta as i32, value: imp.encode_to_vec().into() }),
            mod_policy: String::new(),
        }
    }

    fn role(m: usize, r: i32) -> P {
        P::Role(m, r)
    }

    /// Where Fabric's greedy evaluation is not exhaustive search, we follow
    /// Fabric: AND(A.member, A.admin) signed by [admin, client] fails,
    /// because the admin is taken by the member leaf first.
    #[test]
    fn greedy_is_fabrics_not_exhaustive() {
        let ps = [role(0, 0), role(0, 1)];
        let rule = R::Gate(2, vec![R::By(0), R::By(1)]);
        let admin_then_client = fakes(&[2, 0]);
        assert!(!compile(&ps, &rule).satisfied_by(&admin_then_client));
        assert!(!ref_fabric(&rule, &ps, &admin_then_client));
        assert!(ref_exhaustive(&rule, &ps, &admin_then_client));
        // In the other order the member leaf takes the client: satisfied.
        let client_then_admin = fakes(&[0, 2]);
        assert!(compile(&ps, &rule).satisfied_by(&client_then_admin));
        // A nested gate keeps consuming after it is satisfied:
        // AND(OR(A.client, A.client), A.client) with two clients fails.
        let ps = [role(0, 2)];
        let rule = R::Gate(2, vec![R::Gate(1, vec![R::By(0), R::By(0)]), R::By(0)]);
        let clients = vec![fake_client("OrgA", 100), fake_client("OrgA", 101)];
        assert!(!compile(&ps, &rule).satisfied_by(&clients));
        assert!(!ref_fabric(&rule, &ps, &clients));
        assert!(ref_exhaustive(&rule, &ps, &clients));
    }

    fn fake_client(mspid: &str, uid: u8) -> Fake {
        Fake { mspid: mspid.into(), roles: Roles { client: true, ..Roles::default() }, cert: vec![], uid }
    }

    #[test]
    fn duplicates_are_one_signer() {
        let ps = [role(0, 2)];
        let rule = compile(&ps, &R::Gate(2, vec![R::By(0), R::By(0)]));
        let c = fake_client("OrgA", 1);
        assert!(!rule.satisfied_by(&[c.clone(), c.clone()]));
        assert!(rule.satisfied_by(&[c, fake_client("OrgA", 2)]));
    }

    #[test]
    fn compile_errors_use_fabrics_texts() {
        let env = |rule, version| SignaturePolicyEnvelope { version, rule, identities: vec![to_proto(&role(0, 0))] };
        let by = |i| Some(SignaturePolicy { r#type: Some(RuleType::SignedBy(i)) });
        assert_eq!(
            SignaturePolicyRule::compile(&env(by(1), 0)).unwrap_err(),
            "identity index out of range, requested 1, but identities length is 1"
        );
        assert_eq!(
            SignaturePolicyRule::compile(&env(by(0), 1)).unwrap_err(),
            "This evaluator only understands messages of version 0, but version was 1"
        );
        assert_eq!(SignaturePolicyRule::compile(&env(None, 0)).unwrap_err(), "Empty policy element");
        // An unknown policy type and an unknown ImplicitMeta rule refuse the config.
        let mut root = ConfigGroup::default();
        root.policies.insert(
            "X".into(),
            ConfigPolicy {
                version: 0,
                policy: Some(Policy { r#type: 2, value: Bytes::new() }),
                mod_policy: String::new(),
            },
        );
        let msps = Arc::new(MspManager::new(vec![]).unwrap());
        let e = PolicyManager::from_channel_group(&root, msps.clone()).unwrap_err();
        assert_eq!(e.to_string(), "policy /Channel/X: unknown policy type: 2");
        let mut root = ConfigGroup::default();
        root.policies.insert("Y".into(), meta_policy("P", 7));
        let e = PolicyManager::from_channel_group(&root, msps).unwrap_err();
        assert_eq!(e.to_string(), "policy /Channel/Y: unknown ImplicitMeta rule 7");
    }
}
