//! What a clustered plugin's `cluster` and `replication` calls reach
//! outside its instance: the [`ClusterSink`] (in a node, the cluster
//! transport and the block puller; in the testkit, the simulated network),
//! and the membership the host keeps per chain: the consenters from the
//! channel config, the ids the plugin bound them to, this node's index.
//! Knows nothing of wasmtime, gRPC or TLS.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::Consenter;
use crate::support::SupportError;

/// Where a clustered chain's messages, forwards and catch-up requests go.
/// Every call returns at once: the sink queues, the node's transport sends.
pub trait ClusterSink: Send {
    /// The plugin bound member ids: this node's id (if it is a consenter)
    /// and every member's id with its consenter entry.
    fn set_members(&mut self, self_id: Option<u64>, members: &[(u64, Consenter)]);
    /// Queue a consensus message for member `to`. Err: it was dropped.
    fn send(&mut self, to: u64, payload: Bytes) -> Result<(), String>;
    /// Queue an envelope (validated under `config_seq`) for member `to`.
    fn forward(&mut self, to: u64, config_seq: u64, envelope: Bytes) -> Result<(), String>;
    /// Start (or retarget) pulling blocks `from..target` from the other
    /// consenters; the pulled blocks come back through
    /// `ChainCore::write_pulled` and the end through `ChainCore::caught_up`.
    fn catch_up(&mut self, from: u64, target: u64) -> Result<(), String>;
    /// A member claimed a greater height `target` in a message of another
    /// consensus type (the host's own catch-up after a live swap this node
    /// missed). The claim is unproven: a sink may ignore it (a node rate
    /// limits it and pulls only blocks that exist). Default: as
    /// [`ClusterSink::catch_up`].
    fn catch_up_claimed(&mut self, from: u64, target: u64) -> Result<(), String> {
        self.catch_up(from, target)
    }
    /// The chain's ledger height now (told at the start and after every
    /// block written): the consensus messages sent say it, so that a member
    /// left on an older consensus type after a live swap can catch up.
    fn set_height(&mut self, _height: u64) {}
}

/// This node's id (if it is a consenter) and every member's id with its
/// consenter entry.
pub type Binding = (Option<u64>, Vec<(u64, Consenter)>);

/// How long members that left the consenter set stay bound if the plugin
/// does not bind the new set: long enough for an honest plugin to finish
/// their removal (raft's RemoveNode commits in a few round trips), short
/// enough that a plugin cannot keep a removed consenter in the channel.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(30);

/// The membership of a clustered chain as the host knows it.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    /// This node's TLS certificate (DER), which finds it among the consenters.
    pub(crate) self_cert: Option<Vec<u8>>,
    /// The plugin's last binding: this node's id and each member's id with
    /// the consenter entry it was bound to.
    bound: Option<Binding>,
    /// Set when the consenter set changed and some bound member left it:
    /// when those members stop being reachable if the plugin has not bound
    /// the new set by then.
    departed_until: Option<Instant>,
}

/// The DER bytes of a PEM certificate (None if it is not PEM).
pub fn pem_to_der(pem_bytes: &[u8]) -> Option<Vec<u8>> {
    pem::parse(pem_bytes).ok().map(|p| p.into_contents())
}

impl Membership {
    /// Membership of a node identified by the TLS certificate `self_cert`
    /// (DER; None: this node is no consenter).
    pub fn new(self_cert: Option<Vec<u8>>) -> Membership {
        Membership { self_cert, bound: None, departed_until: None }
    }

    /// This node's index among `consenters`: the entry whose server or
    /// client TLS certificate is this node's (Fabric's self-detection).
    pub fn self_index(&self, consenters: &[Consenter]) -> Option<u32> {
        let me = self.self_cert.as_ref()?;
        consenters
            .iter()
            .position(|c| {
                pem_to_der(&c.server_tls_cert).as_ref() == Some(me)
                    || pem_to_der(&c.client_tls_cert).as_ref() == Some(me)
            })
            .map(|i| i as u32)
    }

    /// Binds `ids` to `consenters` (ids[i] names consenters[i]); returns
    /// this node's id and the members. Refused if the lengths differ or an
    /// id is 0 or repeats.
    pub fn bind(&mut self, consenters: &[Consenter], ids: Vec<u64>) -> Result<Binding, SupportError> {
        if ids.len() != consenters.len() {
            return Err(SupportError::Invalid(format!(
                "bind-ids: {} ids for {} consenters",
                ids.len(),
                consenters.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in &ids {
            if *id == 0 || !seen.insert(*id) {
                return Err(SupportError::Invalid(format!("bind-ids: id {id} is 0 or repeats ({ids:?})")));
            }
        }
        let me = self.self_index(consenters).map(|i| ids[i as usize]);
        let members: Vec<(u64, Consenter)> = ids.into_iter().zip(consenters.iter().cloned()).collect();
        self.bound = Some((me, members.clone()));
        self.departed_until = None;
        Ok((me, members))
    }

    /// A written config block made `consenters` the channel's set at
    /// `now`: if members of the last binding left it, they stay bound for
    /// at most [`DEPARTED_GRACE`] unless the plugin binds the new set.
    pub fn consenters_changed(&mut self, consenters: &[Consenter], now: Instant) {
        let left = self.bound.as_ref().is_some_and(|(_, members)| members.iter().any(|(_, c)| !consenters.contains(c)));
        if left {
            self.departed_until.get_or_insert(now + DEPARTED_GRACE);
        }
    }

    /// Once the grace of [`Membership::consenters_changed`] is over (the
    /// plugin did not bind the new set), drops from the binding every
    /// member that is not in `consenters`, the set in force; returns the
    /// binding left, for the transport (None: nothing changed).
    pub fn expire_departed(&mut self, consenters: &[Consenter], now: Instant) -> Option<Binding> {
        if self.departed_until.is_none_or(|t| now < t) {
            return None;
        }
        self.departed_until = None;
        let (me, members) = self.bound.as_mut()?;
        members.retain(|(_, c)| consenters.contains(c));
        if me.is_some_and(|m| !members.iter().any(|(id, _)| *id == m)) {
            *me = None;
        }
        self.bound.clone()
    }

    /// Whether members that left the consenter set are within their grace
    /// (see [`Membership::expire_departed`]).
    pub fn has_departing(&self) -> bool {
        self.departed_until.is_some()
    }

    /// Whether `id` is a bound member other than this node. After the
    /// consenter set changed, the last binding stays in force until the
    /// plugin binds the new set: a member that left stays reachable until
    /// the plugin's own removal of it is done (Fabric's etcdraft configures
    /// its comm once raft applied the conf change, which commits under the
    /// old voters), for at most [`DEPARTED_GRACE`].
    pub fn is_peer(&self, id: u64) -> bool {
        self.bound.as_ref().is_some_and(|(me, members)| Some(id) != *me && members.iter().any(|(m, _)| *m == id))
    }

    /// The bound ids, in binding order, if any.
    pub fn ids(&self) -> Option<Vec<u64>> {
        self.bound.as_ref().map(|(_, members)| members.iter().map(|(id, _)| *id).collect())
    }

    /// This node's id in the last binding (None: unbound, or this node is
    /// none of the consenters bound).
    pub fn self_id(&self) -> Option<u64> {
        self.bound.as_ref().and_then(|(me, _)| *me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consenter(port: u32, cert: &[u8]) -> Consenter {
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec())).into_bytes();
        Consenter { host: "127.0.0.1".into(), port, client_tls_cert: pem.clone(), server_tls_cert: pem }
    }

    #[test]
    fn the_last_binding_holds_until_the_plugin_binds_the_new_set() {
        let (a, b, c) = (consenter(1, b"a"), consenter(2, b"b"), consenter(3, b"c"));
        let mut m = Membership::new(Some(b"a".to_vec()));
        assert!(!m.is_peer(2), "nothing is bound before bind-ids");
        let (me, members) = m.bind(&[a.clone(), b.clone(), c.clone()], vec![1, 2, 3]).unwrap();
        assert_eq!((me, members.len()), (Some(1), 3));
        assert!(m.is_peer(2) && m.is_peer(3) && !m.is_peer(1) && !m.is_peer(4));
        // The config now names two consenters: 3 stays reachable until the
        // plugin binds the new set (its removal commits under the old one).
        assert!(m.is_peer(3));
        m.bind(&[a.clone(), b.clone()], vec![1, 2]).unwrap();
        assert!(!m.is_peer(3) && m.is_peer(2));
        assert_eq!((m.ids(), m.self_id()), (Some(vec![1, 2]), Some(1)));
        // Refused bindings change nothing.
        assert!(m.bind(&[a.clone(), b], vec![1]).is_err());
        assert!(m.bind(&[a, c], vec![2, 2]).is_err());
        assert_eq!(m.ids(), Some(vec![1, 2]));
    }

    #[test]
    fn members_that_left_are_dropped_after_the_grace_if_the_plugin_never_binds() {
        let (a, b, c) = (consenter(1, b"a"), consenter(2, b"b"), consenter(3, b"c"));
        let mut m = Membership::new(Some(b"a".to_vec()));
        m.bind(&[a.clone(), b.clone(), c.clone()], vec![1, 2, 3]).unwrap();
        let t0 = Instant::now();
        // Growing the set departs nobody: no deadline.
        m.consenters_changed(&[a.clone(), b.clone(), c.clone(), consenter(4, b"d")], t0);
        assert!(m.expire_departed(&[a.clone(), b.clone()], t0 + DEPARTED_GRACE * 2).is_none());
        // c leaves; the plugin does not bind the new set.
        let now = [a.clone(), b.clone()];
        m.consenters_changed(&now, t0);
        assert!(m.expire_departed(&now, t0 + DEPARTED_GRACE / 2).is_none(), "within the grace");
        assert!(m.is_peer(3), "c is reachable during its removal");
        let (me, members) = m.expire_departed(&now, t0 + DEPARTED_GRACE).expect("the grace is over");
        assert_eq!((me, members.iter().map(|(id, _)| *id).collect::<Vec<_>>()), (Some(1), vec![1, 2]));
        assert!(!m.is_peer(3) && m.is_peer(2));
        assert!(m.expire_departed(&now, t0 + DEPARTED_GRACE * 3).is_none(), "once");
        // A plugin that binds in time keeps its own binding.
        m.bind(&[a.clone(), b.clone(), c.clone()], vec![1, 2, 3]).unwrap();
        m.consenters_changed(&now, t0);
        m.bind(&now, vec![1, 2]).unwrap();
        assert!(m.expire_departed(&now, t0 + DEPARTED_GRACE).is_none());
    }
}
