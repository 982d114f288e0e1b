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
    #[error("signature set did not satisfy policy {path}")]
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
