//! Bad config values are errors, never panics: a proptest over BatchSize,
//! BatchTimeout, ConsensusType and MSP values, each put into a real config
//! (the development template, and Fabric's solochannel for MSPs), read as a
//! channel config and proposed as a CONFIG_UPDATE. Every outcome is Ok or a
//! refusal that names the value.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use consenter_host::channel::{ChannelConfig, ChannelTemplate};
use consenter_host::envelope::Envelope;
use consenter_host::processor::{self, Refusal};
use consenter_host::proto::common::{Block, Config};
use consenter_host::proto::msp::{FabricMspConfig, MspConfig};
use consenter_host::proto::orderer::{BatchSize, BatchTimeout, ConsensusType};
use consenter_host::signer::{self, Signer};
use proptest::prelude::*;
use prost::Message;

use common::{config_in, orderer_update};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

struct World {
    template: Config,
    fabric: Config,
    cfg: ChannelConfig,
    signer: Signer,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let id = signer::ensure_dev_identity(dir.path()).unwrap();
        let signer = Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap();
        let g = ChannelTemplate::solo("values").genesis_block();
        let raw = std::fs::read(fixtures().join("blocks/solochannel.genesis.block")).unwrap();
        let fabric = config_in(&Block::decode(raw.as_slice()).unwrap());
        World { template: config_in(&g), cfg: ChannelConfig::from_config_block(&g).unwrap(), fabric, signer, _dir: dir }
    })
}

/// Reads `config` with `key` of the Orderer group set to `value`, then
/// proposes the same change as a CONFIG_UPDATE; asserts each outcome is Ok
/// or an error naming `names`.
fn check_orderer_value(key: &str, value: Vec<u8>, names: &str) {
    let w = world();
    let mut c = w.template.clone();
    let orderer = c.channel_group.as_mut().unwrap().groups.get_mut("Orderer").unwrap();
    orderer.values.get_mut(key).unwrap().value = Bytes::from(value.clone());
    if let Err(e) = ChannelConfig::from_config("values", &c) {
        let e = e.to_string();
        assert!(e.contains(names), "reading {key}: {e:?} does not name {names:?}");
    }
    let pb = orderer_update("values", &w.template, key, value);
    let env = Envelope::from_message(pb.clone()).unwrap();
    let types = vec!["solo".to_string()];
    match processor::config_update(&w.cfg, &w.signer, &pb, &env, &types) {
        Ok(_) => {}
        Err(Refusal::BadRequest(e)) => assert!(
            e.contains(names) || e.contains("ConsensusType.type"),
            "update of {key}: {e:?} does not name {names:?}"
        ),
        Err(other) => panic!("update of {key}: not a BAD_REQUEST: {other:?}"),
    }
}

/// Go duration text, valid or not: digits (often huge), fractions, signs,
/// units known and unknown, stray characters.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|µs|ms|s|m|h|d|x|)([0-9]{1,5}(ms|s|m|h))?",
        ".{0,16}",
        Just("99999999999999999999h".to_string()),
        Just("2562047h47m16.854775808s".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn batch_timeout_values(t in duration_text()) {
        check_orderer_value("BatchTimeout", BatchTimeout { timeout: t }.encode_to_vec(), "BatchTimeout");
    }

    #[test]
    fn batch_size_values(max in any::<u32>(), abs in any::<u32>(), pref in any::<u32>()) {
        let bs = BatchSize { max_message_count: max, absolute_max_bytes: abs, preferred_max_bytes: pref };
        check_orderer_value("BatchSize", bs.encode_to_vec(), "BatchSize");
    }

    #[test]
    fn consensus_type_values(ty in ".{0,12}", md in proptest::collection::vec(any::<u8>(), 0..64), state in any::<i32>()) {
        let ct = ConsensusType { r#type: ty, metadata: md.into(), state };
        check_orderer_value("ConsensusType", ct.encode_to_vec(), "ConsensusType");
    }

    #[test]
    fn undecodable_orderer_values(key in prop_oneof![Just("BatchSize"), Just("BatchTimeout"), Just("ConsensusType")],
                                  bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_orderer_value(key, bytes, key);
    }

    /// Org1's MSP value in Fabric's solochannel: random bytes, or a
    /// FabricMSPConfig with random certificates.
    #[test]
    fn msp_values(raw in proptest::collection::vec(any::<u8>(), 0..256), as_fabric in any::<bool>(),
                  ty in 0i32..3) {
        let w = world();
        let mut c = w.fabric.clone();
        let org1 = c.channel_group.as_mut().unwrap().groups.get_mut("Application").unwrap()
            .groups.get_mut("Org1MSP").unwrap();
        let value = if as_fabric {
            let f = FabricMspConfig { name: "Org1MSP".into(), root_certs: vec![raw.clone().into()],
                                      admins: vec![raw.into()], ..Default::default() };
            MspConfig { r#type: ty, config: f.encode_to_vec().into() }.encode_to_vec()
        } else {
            raw
        };
        org1.values.get_mut("MSP").unwrap().value = value.into();
        if let Err(e) = ChannelConfig::from_config("solochannel", &c) {
            let e = e.to_string();
            prop_assert!(e.contains("MSP") || e.contains("Org1MSP"), "{e:?} does not name the MSP");
        }
    }
}

#[test]
fn the_world_is_sound() {
    let w = world();
    assert!(ChannelConfig::from_config("solochannel", &w.fabric).is_ok());
    let _ = Arc::new(());
}
