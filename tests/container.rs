//! The container image without a container engine: the Dockerfile's
//! runtime interface (ENTRYPOINT, CMD, USER, EXPOSE, VOLUME, every ENV)
//! is the one the README documents, the image's orderer.yaml loads under
//! those variables with no unknown key, and the compose file's mounts
//! exist. (.ci/run builds the image where an engine is running.)

use std::path::{Path, PathBuf};

use consenter_host::config::Config;
use consenter_host::config::settings::Settings;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The runtime stage's instructions: (instruction, arguments), lines joined.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut joined = vec![];
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(head) => cur.push_str(head),
            None => {
                cur.push_str(l);
                if !cur.trim().is_empty() {
                    joined.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    let last_from = joined.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM");
    joined[last_from..]
        .iter()
        .filter_map(|l| l.split_once(' ').map(|(i, a)| (i.to_string(), a.trim().to_string())))
        .collect()
}

fn readme_section() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("## Running it like a Fabric orderer").expect("the README section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e + 1);
    rest[..end].to_string()
}

fn image_env() -> Vec<(String, String)> {
    runtime_stage()
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .map(|(_, a)| {
            let (k, v) = a.split_once('=').expect("ENV KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn dockerfile_matches_the_readme() {
    let stage = runtime_stage();
    let section = readme_section();
    assert!(stage[0].1.starts_with("debian:") && stage[0].1.contains("slim"), "a slim Debian base: {:?}", stage[0]);
    for wanted in ["ENTRYPOINT", "CMD", "USER", "EXPOSE", "VOLUME"] {
        let (i, a) = stage.iter().find(|(i, _)| i == wanted).unwrap_or_else(|| panic!("no {wanted}"));
        let line = format!("{i} {a}");
        assert!(section.contains(&line), "the README does not show `{line}`");
    }
    let get = |i: &str| stage.iter().find(|(x, _)| x == i).map(|(_, a)| a.clone()).unwrap();
    assert_ne!(get("USER"), "root");
    for p in ["7050", "7053", "9443"] {
        assert!(get("EXPOSE").split_whitespace().any(|x| x == p), "port {p} exposed");
    }
    assert!(get("VOLUME").contains("/var/hyperledger/production/orderer") && get("VOLUME").contains("/msp"));
    let env = image_env();
    assert!(env.iter().any(|(k, v)| k == "FABRIC_CFG_PATH" && v == "/etc/hyperledger/fabric"));
    for (k, v) in &env {
        let row = format!("| `{k}` | `{v}` |");
        assert!(section.contains(&row), "the README's table lacks {row}");
    }
    // And the README lists no image variable the Dockerfile does not set.
    for l in section.lines().filter(|l| l.starts_with("| `FABRIC_CFG_PATH`") || l.starts_with("| `ORDERER_")) {
        let k = l.split('`').nth(1).unwrap();
        assert!(env.iter().any(|(e, _)| e == k), "README row {l} is not an ENV of the image");
    }
}

#[test]
fn image_configuration_loads() {
    let f = repo().join("docker/orderer.yaml");
    let env = image_env();
    let c = Config::load(Some(&f), env.clone()).unwrap();
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);
    let s = Settings::from_config(&c).unwrap();
    assert_eq!(s.listen.port(), 7050);
    assert_eq!(s.data_dir, PathBuf::from("/var/hyperledger/production/orderer"));
    assert_eq!(s.local_msp.as_ref().unwrap().0, PathBuf::from("/etc/hyperledger/fabric/msp"));
    assert_eq!(s.operations.as_ref().unwrap().listen.port(), 9443);
    assert!(s.metrics && s.participation && s.dev_channel.is_none() && s.bootstrap_file.is_none());
    // An empty ORDERER_GENERAL_LOCALMSPDIR falls back to a development identity.
    let mut dev = env;
    dev.retain(|(k, _)| k != "ORDERER_GENERAL_LOCALMSPDIR");
    dev.push(("ORDERER_GENERAL_LOCALMSPDIR".into(), String::new()));
    let s = Settings::from_config(&Config::load(Some(&f), dev).unwrap()).unwrap();
    assert!(s.local_msp.is_none());
}

#[test]
fn compose_mounts_exist() {
    let dir = repo().join("docker");
    let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let mounts: Vec<&str> =
        text.lines().filter_map(|l| l.trim().strip_prefix("- ../")).filter_map(|m| m.split(':').next()).collect();
    assert_eq!(mounts.len(), 9, "msp, tls and the genesis block for three nodes");
    for m in mounts {
        let p = dir.join("..").join(m);
        assert!(p.exists(), "{} does not exist", p.display());
    }
    for port in ["\"7050\"", "\"7150\"", "\"7250\""] {
        assert!(
            text.contains(&format!("ORDERER_GENERAL_LISTENPORT: {port}")),
            "{port}: the genesis block's consenters"
        );
    }
    assert!(text.contains("raftchannel.genesis.block"));
}
