//! The `cluster`, `replication` and `storage` interfaces of the
//! `clustered-consenter` world (contract 0.2): membership and messages
//! through the chain's [`crate::cluster::ClusterSink`], blocks from other
//! consenters and catch-up through [`crate::support::Support`], and the
//! plugin's durable state through its [`consenter_storage::KvStore`].
//! Every byte argument is capped (`max-call-bytes`) before any work.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::PluginState;
use super::types::EnvelopeRes;
use crate::bindings::v0_2::fabric::consenter::types;
use crate::bindings::v0_2_clustered::fabric::consenter::{cluster, replication, storage};
use crate::support::{CreatedBlock, SupportError};

impl PluginState {
    /// The chain's cluster sink, or a refusal if the chain has none (a
    /// clustered plugin run where no cluster is configured).
    fn no_cluster(&mut self, call: &str) -> SupportError {
        self.support.refuse(SupportError::Internal(format!(
            "{call}: this chain has no cluster (the node runs it without cluster TLS, or it is not a consenter)"
        )))
    }
}

impl cluster::Host for PluginState {
    fn consenters(&mut self) -> wasmtime::Result<Vec<cluster::Consenter>> {
        Ok(self
            .support
            .config
            .consenters
            .iter()
            .map(|c| cluster::Consenter {
                host: c.host.clone(),
                port: c.port,
                client_tls_cert: c.client_tls_cert.clone(),
                server_tls_cert: c.server_tls_cert.clone(),
            })
            .collect())
    }

    fn self_index(&mut self) -> wasmtime::Result<Option<u32>> {
        Ok(self.support.membership.self_index(&self.support.config.consenters))
    }

    fn bind_ids(&mut self, ids: Vec<u64>) -> wasmtime::Result<Result<(), types::SupportError>> {
        self.check_list("bind-ids", ids.len())?;
        let config = self.support.config.clone();
        let r = self.support.membership.bind(&config.consenters, ids);
        let r = match r {
            Ok((me, members)) => {
                if let Some(c) = self.support.cluster.as_mut() {
                    c.set_members(me, &members);
                }
                Ok(())
            }
            Err(e) => Err(self.support.refuse(e)),
        };
        self.answer(r)
    }

    fn send(&mut self, to: u64, payload: Vec<u8>) -> wasmtime::Result<Result<(), types::SupportError>> {
        let max = self.call_limits.max_call_bytes;
        if payload.len() > max {
            let e = SupportError::LimitExceeded(format!(
                "send: a message of {} bytes is over the cap of {max} (max-call-bytes)",
                payload.len()
            ));
            let e = self.support.refuse(e);
            return self.answer(Err(e));
        }
        if !self.support.membership.is_peer(to) {
            let e = SupportError::Invalid(format!(
                "send: {to} is not a bound member other than this node (bound: {:?})",
                self.support.membership.ids()
            ));
            let e = self.support.refuse(e);
            return self.answer(Err(e));
        }
        let Some(c) = self.support.cluster.as_mut() else {
            let e = self.no_cluster("send");
            return self.answer(Err(e));
        };
        // A dropped message is no refusal: raft resends.
        Ok(c.send(to, Bytes::from(payload)).map_err(types::SupportError::LimitExceeded))
    }

    fn forward(&mut self, to: u64, env: Resource<EnvelopeRes>) -> wasmtime::Result<Result<(), types::SupportError>> {
        let env = self.take_envelope(env)?;
        if !self.support.membership.is_peer(to) {
            let e = SupportError::Invalid(format!(
                "forward: {to} is not a bound member other than this node (bound: {:?})",
                self.support.membership.ids()
            ));
            let e = self.support.refuse(e);
            return self.answer(Err(e));
        }
        let Some(c) = self.support.cluster.as_mut() else {
            let e = self.no_cluster("forward");
            return self.answer(Err(e));
        };
        let r = c.forward(to, env.config_seq, env.bytes);
        if r.is_ok() {
            self.support.forwarded_envelopes += 1;
        }
        Ok(r.map_err(types::SupportError::LimitExceeded))
    }

    fn report(&mut self, leader: u64, active: Vec<u64>) -> wasmtime::Result<()> {
        self.report_cluster(leader, active)
    }
}

impl PluginState {
    fn report_cluster(&mut self, leader: u64, active: Vec<u64>) -> wasmtime::Result<()> {
        self.check_list("report", active.len())?;
        let self_id = self.support.membership.self_id().unwrap_or(0);
        if leader == 0 || leader != self_id {
            // Only a leader creates blocks: what this node created as one
            // and did not write is void (Fabric's etcdraft resets its block
            // creator when it becomes a follower). Else a node leading again
            // would number its next block past blocks that no log holds.
            self.support.void_created();
        }
        let report = crate::support::ClusterReport { self_id, leader, active };
        if self.support.cluster_report.as_ref().is_none_or(|r| r.leader != report.leader) {
            tracing::info!(channel = %self.support.chain_id, leader, self_id, "cluster leader");
        }
        self.support.cluster_report = Some(report);
        Ok(())
    }
}

impl replication::Host for PluginState {
    fn block_from_bytes(
        &mut self,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<CreatedBlock>, types::SupportError>> {
        self.check_bytes("block-from-bytes", bytes.len())?;
        match self.support.block_from_bytes(Bytes::from(bytes)) {
            Ok(b) => Ok(Ok(self.push(b)?)),
            Err(e) => self.answer(Err(e)),
        }
    }

    fn last_block_metadata(&mut self) -> wasmtime::Result<Vec<u8>> {
        Ok(self.support.last_metadata.clone())
    }

    fn catch_up(&mut self, target: u64) -> wasmtime::Result<Result<(), types::SupportError>> {
        let height = self.support.height;
        if target <= height {
            let e = self.support.refuse(SupportError::Invalid(format!(
                "catch-up: target height {target} is not above the height {height}"
            )));
            return self.answer(Err(e));
        }
        let Some(c) = self.support.cluster.as_mut() else {
            let e = self.no_cluster("catch-up");
            return self.answer(Err(e));
        };
        let r = c.catch_up(height, target).map_err(SupportError::Internal);
        self.answer(r)
    }
}

fn storage_error(e: consenter_storage::StorageError) -> SupportError {
    use consenter_storage::StorageError as S;
    match e {
        S::QuotaExceeded { .. } => SupportError::LimitExceeded(format!("storage: {e} (storage-mib)")),
        other => SupportError::Internal(format!("storage: {other}")),
    }
}

impl storage::Host for PluginState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Result<Option<Vec<u8>>, types::SupportError>> {
        self.check_bytes("storage.get", key.len())?;
        let r = match self.support.storage.as_ref() {
            Some(s) => s.get(&key).map_err(storage_error),
            None => Err(SupportError::Internal("storage: not granted to this chain".into())),
        };
        if let Err(SupportError::Internal(m)) = &r {
            self.support.fail_host(m.clone());
        }
        self.answer(r)
    }

    fn range(
        &mut self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<(Vec<u8>, Vec<u8>)>, types::SupportError>> {
        self.check_bytes("storage.range", start.len() + end.as_ref().map_or(0, Vec::len))?;
        let max_bytes = self.call_limits.max_call_bytes;
        let limit = (limit as usize).min(self.call_limits.max_list_len);
        let r = match self.support.storage.as_ref() {
            Some(s) => s.range(&start, end.as_deref(), limit, max_bytes).map_err(storage_error),
            None => Err(SupportError::Internal("storage: not granted to this chain".into())),
        };
        if let Err(SupportError::Internal(m)) = &r {
            self.support.fail_host(m.clone());
        }
        self.answer(r)
    }

    fn write(&mut self, ops: Vec<storage::Op>) -> wasmtime::Result<Result<(), types::SupportError>> {
        self.check_list("storage.write", ops.len())?;
        let bytes: usize = ops
            .iter()
            .map(|o| match o {
                storage::Op::Put((k, v)) => k.len() + v.len(),
                storage::Op::Delete(k) | storage::Op::DeletePrefix(k) => k.len(),
            })
            .sum();
        self.check_bytes("storage.write", bytes)?;
        let ops: Vec<consenter_storage::Op> = ops
            .into_iter()
            .map(|o| match o {
                storage::Op::Put((key, value)) => consenter_storage::Op::Put { key, value },
                storage::Op::Delete(key) => consenter_storage::Op::Delete { key },
                storage::Op::DeletePrefix(prefix) => consenter_storage::Op::DeletePrefix { prefix },
            })
            .collect();
        // The fsync is the host's work: not the plugin's time.
        let started = std::time::Instant::now();
        let r = match self.support.storage.as_mut() {
            Some(s) => s.write(&ops).map_err(storage_error),
            None => Err(SupportError::Internal("storage: not granted to this chain".into())),
        };
        self.host_time += started.elapsed();
        let r = match r {
            Err(SupportError::Internal(m)) => {
                self.support.fail_host(m.clone());
                Err(SupportError::Internal(m))
            }
            Err(e) => Err(self.support.refuse(e)),
            Ok(()) => Ok(()),
        };
        self.answer(r)
    }

    fn used_bytes(&mut self) -> wasmtime::Result<u64> {
        Ok(self.support.storage.as_ref().map_or(0, |s| s.used_bytes()))
    }

    fn quota_bytes(&mut self) -> wasmtime::Result<u64> {
        Ok(self.support.storage.as_ref().map_or(0, |s| s.quota_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::channel::{ChannelConfig, ChannelTemplate, Consenter};
    use crate::cluster::ClusterSink;
    use crate::proto::etcdraft::{ConfigMetadata, Consenter as PbConsenter};
    use crate::signer::Signer;
    use crate::support::{BlockSink, ChainPosition, Clock, OnDurable, Support, SupportLimits};
    use cluster::Host as _;
    use replication::Host as _;
    use storage::Host as _;

    struct Wall;
    impl Clock for Wall {
        fn now(&self) -> Instant {
            Instant::now()
        }
    }

    struct NoLedger;
    impl BlockSink for NoLedger {
        fn write(&mut self, _: u64, _: Bytes, _: Option<OnDurable>) -> Result<(), String> {
            Ok(())
        }
    }

    /// What the plugin sent, to whom.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(u64, usize)>>>);
    impl ClusterSink for Recorder {
        fn set_members(&mut self, _: Option<u64>, _: &[(u64, Consenter)]) {}
        fn send(&mut self, to: u64, payload: Bytes) -> Result<(), String> {
            self.0.lock().unwrap().push((to, payload.len()));
            Ok(())
        }
        fn forward(&mut self, _: u64, _: u64, _: Bytes) -> Result<(), String> {
            Ok(())
        }
        fn catch_up(&mut self, _: u64, _: u64) -> Result<(), String> {
            Ok(())
        }
    }

    fn pem_of(i: u8) -> Vec<u8> {
        pem::encode(&pem::Pem::new("CERTIFICATE", vec![i; 8])).into_bytes()
    }

    /// A three-consenter etcdraft channel seen from consenter 0.
    fn state(limits: SupportLimits) -> (PluginState, Recorder) {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::signer::ensure_dev_identity(dir.path()).unwrap();
        let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
        let consenters = (0..3)
            .map(|i| PbConsenter {
                host: "h".into(),
                port: 7050 + i,
                client_tls_cert: pem_of(i as u8).into(),
                server_tls_cert: pem_of(i as u8).into(),
            })
            .collect();
        let mut t = ChannelTemplate::solo("unit");
        t.consensus_type = "etcdraft".into();
        t.consensus_metadata = ConfigMetadata { consenters, options: None }.encode_to_vec().into();
        let genesis = t.genesis_block();
        let cfg = Arc::new(ChannelConfig::from_config_block(&genesis).unwrap());
        let hash = crate::block::header_hash(genesis.header.as_ref().unwrap());
        let mut s = Support::new(
            "unit",
            cfg,
            signer,
            Box::new(NoLedger),
            Arc::new(Wall),
            ChainPosition { height: 1, last_hash: hash, last_config: 0 },
            limits,
        );
        let rec = Recorder::default();
        s.set_cluster(Box::new(rec.clone()), Some(vec![0u8; 8]));
        s.set_storage(Box::new(consenter_storage::MemStore::new(1000)));
        (PluginState::for_test(s), rec)
    }

    #[test]
    fn sends_go_only_to_bound_peers_and_bad_ids_are_refused() {
        let (mut st, rec) = state(SupportLimits::default());
        assert_eq!(st.self_index().unwrap(), Some(0));
        // Before bind-ids, nobody is a member.
        assert!(matches!(st.send(2, vec![1]).unwrap(), Err(types::SupportError::Invalid(_))));
        // Bad bindings: wrong length, a zero id, a repeated id.
        for ids in [vec![1, 2], vec![0, 2, 3], vec![1, 1, 3]] {
            assert!(matches!(st.bind_ids(ids).unwrap(), Err(types::SupportError::Invalid(_))));
        }
        st.bind_ids(vec![1, 2, 3]).unwrap().unwrap();
        st.send(2, vec![7; 10]).unwrap().unwrap();
        st.send(3, vec![7; 20]).unwrap().unwrap();
        // To itself, or to an id that is no member: refused, nothing sent.
        assert!(matches!(st.send(1, vec![1]).unwrap(), Err(types::SupportError::Invalid(_))));
        assert!(matches!(st.send(99, vec![1]).unwrap(), Err(types::SupportError::Invalid(_))));
        assert_eq!(*rec.0.lock().unwrap(), vec![(2, 10), (3, 20)]);
    }

    #[test]
    fn a_flood_of_refused_sends_fails_the_chain() {
        let (mut st, _) = state(SupportLimits { max_refusals: 5, ..SupportLimits::default() });
        st.bind_ids(vec![1, 2, 3]).unwrap().unwrap();
        for _ in 0..4 {
            assert!(st.send(42, vec![]).unwrap().is_err());
        }
        assert!(st.support.failure().is_none());
        // The fifth refusal fails the chain, and the call traps (the
        // plugin may not keep the chain's thread busy with refused calls).
        assert!(st.send(42, vec![]).is_err(), "at the cap the call traps");
        assert!(st.support.failure().is_some_and(|f| f.contains("refused calls")));
    }

    #[test]
    fn storage_quota_and_catch_up_target_are_enforced() {
        let (mut st, _) = state(SupportLimits::default());
        st.write(vec![storage::Op::Put((b"k".to_vec(), vec![0; 500]))]).unwrap().unwrap();
        assert_eq!(st.get(b"k".to_vec()).unwrap().unwrap().map(|v| v.len()), Some(500));
        // Past the 1000-byte quota: refused, nothing written.
        let r = st.write(vec![storage::Op::Put((b"j".to_vec(), vec![0; 600]))]).unwrap();
        assert!(matches!(r, Err(types::SupportError::LimitExceeded(_))), "{r:?}");
        assert_eq!(st.get(b"j".to_vec()).unwrap().unwrap(), None);
        assert_eq!(st.used_bytes().unwrap(), 501);
        // A catch-up must aim above the height (1).
        assert!(matches!(st.catch_up(1).unwrap(), Err(types::SupportError::Invalid(_))));
        st.catch_up(5).unwrap().unwrap();
    }

    #[test]
    fn a_foreign_block_must_be_the_next_and_well_formed() {
        let (mut st, _) = state(SupportLimits::default());
        let r = st.block_from_bytes(b"not a block".to_vec()).unwrap();
        assert!(matches!(r, Err(types::SupportError::Invalid(_))), "{r:?}");
        // Block 5 when the next is 1.
        let b = crate::block::new_block(5, &[1; 32], vec![]);
        let r = st.block_from_bytes(b.encode_to_vec()).unwrap();
        assert!(matches!(r, Err(types::SupportError::OutOfOrder(_))), "{r:?}");
        // The next number, but a data hash that does not match its data.
        let prev = st.support.last_hash;
        let env =
            crate::envelope::build("unit", crate::proto::common::HeaderType::Message, "t", Bytes::new(), None).unwrap();
        let mut b = crate::block::new_block(1, &prev, vec![env]);
        b.header.as_mut().unwrap().data_hash = vec![0; 32].into();
        let r = st.block_from_bytes(b.encode_to_vec()).unwrap();
        assert!(matches!(r, Err(types::SupportError::Invalid(_))), "{r:?}");
        // An envelope of another channel.
        let other = crate::envelope::build("other", crate::proto::common::HeaderType::Message, "t", Bytes::new(), None)
            .unwrap();
        let b = crate::block::new_block(1, &prev, vec![other]);
        let r = st.block_from_bytes(b.encode_to_vec()).unwrap();
        assert!(matches!(&r, Err(types::SupportError::Invalid(m)) if m.contains("for channel other")), "{r:?}");
    }
}
