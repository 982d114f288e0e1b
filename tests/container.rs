//! The container image without a container engine: the Dockerfile's
//! runtime interface (ENTRYPOINT, CMD, USER, EXPOSE, VOLUME, every ENV)
//! is the one the README documents, the image's orderer.yaml loads under
//! those variables with no unknown key, the compose file's mounts exist,
//! and its three raft nodes, run as processes with the image's variables
//! and the compose file's environment (mounts mapped to the fixtures),
//! order a transaction. (.ci/run builds the image where an engine runs.)

mod common;
mod raft_cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// One service of the compose file: its name, environment and volumes as
/// (host path, container path).
type Service = (String, Vec<(String, String)>, Vec<(PathBuf, String)>);

/// The compose file's services, read line by line.
fn compose_services() -> Vec<Service> {
    let dir = repo().join("docker");
    let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let mut out: Vec<Service> = vec![];
    let mut section = "";
    let mut top = "";
    for line in text.lines() {
        if let Some(t) = line.strip_suffix(':').filter(|l| !l.starts_with(' ') && !l.starts_with('#')) {
            top = if t == "services" { "services" } else { "" };
            continue;
        }
        if top != "services" {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')).filter(|n| !n.starts_with(' ')) {
            if name.starts_with("orderer") {
                out.push((name.to_string(), vec![], vec![]));
            }
            continue;
        }
        let t = line.trim();
        if t == "environment:" || t == "volumes:" {
            section = if t == "environment:" { "env" } else { "vol" };
            continue;
        }
        let Some(svc) = out.last_mut() else { continue };
        if !line.starts_with("      ") {
            continue;
        }
        match section {
            "env" => {
                let (k, v) = t.split_once(": ").expect("KEY: VALUE");
                svc.1.push((k.to_string(), v.trim_matches('"').to_string()));
            }
            "vol" => {
                let m = t.strip_prefix("- ").unwrap();
                let mut parts = m.split(':');
                let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
                if host.starts_with('.') {
                    svc.2.push((dir.join(host), container.to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

/// The fixture's raft ports, held across test processes (the lock file
/// tests/raft.rs and tests/raft_faults.rs take too).
async fn lock_fixture_ports() -> std::fs::File {
    let path = std::env::temp_dir().join("consenter-host-fabric-fixture-ports.lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::create(&path).unwrap();
        f.lock().unwrap();
        f
    })
    .await
    .unwrap()
}

/// The compose file's network, as processes: each node gets the image's
/// variables, then its service's environment, with every path under a
/// mount mapped to the mounted fixture path, `FABRIC_CFG_PATH` at
/// docker/ (the image's orderer.yaml) and the ledger volume in a temporary
/// directory. The consensus ports stay the compose file's (the genesis
/// block names them); the admin and operations endpoints take free ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_network_orders_as_processes() {
    let _ports = lock_fixture_ports().await;
    // Processes that do not take the lock (a raft bench) may hold the
    // genesis block's ports: wait for them, then say so.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while let Some(p) = [7050, 7150, 7250].into_iter().find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
    {
        assert!(std::time::Instant::now() < end, "port {p} of the raft fixture is held by another process");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let dir =
        tempfile::Builder::new().disable_cleanup(std::env::var_os("KEEP_COMPOSE_LOGS").is_some()).tempdir().unwrap();
    eprintln!("compose network logs in {}", dir.path().display());
    let services = compose_services();
    assert_eq!(services.len(), 3);
    let mut nodes = vec![];
    for (name, env, vols) in &services {
        let map = |v: &str| -> String {
            let mut best: Option<(&PathBuf, &String)> = None;
            for (host, container) in vols {
                if (v == container || v.starts_with(&format!("{container}/")))
                    && best.is_none_or(|(_, c)| container.len() > c.len())
                {
                    best = Some((host, container));
                }
            }
            match best {
                Some((host, container)) => format!("{}{}", host.display(), &v[container.len()..]),
                None => v.to_string(),
            }
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_consenter-host"));
        cmd.arg("start").env_remove("RUST_LOG");
        for (k, v) in image_env().iter().chain(env.iter()) {
            let v = if k.starts_with("ORDERER_") && v.starts_with('[') {
                let items: Vec<String> = v.trim_matches(['[', ']']).split(',').map(|i| map(i.trim())).collect();
                format!("[{}]", items.join(","))
            } else {
                map(v)
            };
            cmd.env(k, v);
        }
        cmd.env("FABRIC_CFG_PATH", repo().join("docker"))
            .env("ORDERER_FILELEDGER_LOCATION", dir.path().join(name))
            .env("ORDERER_ADMIN_LISTENADDRESS", "127.0.0.1:0")
            .env("ORDERER_OPERATIONS_LISTENADDRESS", "127.0.0.1:0");
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        nodes.push(common::NodeProc::spawn_as_is(cmd, Stdio::from(log), false));
    }
    for n in &nodes {
        assert!(n.banner.iter().any(|l| l.contains("orderer.AtomicBroadcast, orderer.Cluster, TLS")), "{:?}", n.banner);
        assert!(n.admin.is_some() && n.banner.iter().any(|l| l.starts_with("admin endpoint on https://")));
    }
    let net = raft_cluster::Net::raft3();
    let txs = raft_cluster::txs("compose", 3);
    net.broadcast_until_ok(1, &txs).await;
    net.all_agree(&[0, 1, 2], &txs).await;
    let mut leaders = 0.0;
    for n in &nodes {
        let h = n.ops("GET", "/healthz", None);
        assert_eq!(h.status, 200, "{}", String::from_utf8_lossy(&h.body));
        // Fabric's etcdraft metrics, from what the raft plugin reports.
        assert_eq!(n.metric(r#"consensus_etcdraft_cluster_size{channel="raftchannel"}"#), Some(3.0));
        leaders += n.metric(r#"consensus_etcdraft_is_leader{channel="raftchannel"}"#).unwrap_or(0.0);
        let s: serde_json::Value = serde_json::from_slice(&n.ops("GET", "/status.json", None).body).unwrap();
        let ch = &s["channels"][0];
        assert_eq!((&ch["name"], &ch["consensus"]), (&"raftchannel".into(), &"etcdraft".into()), "{s}");
        assert!(ch["leader"].as_u64().is_some_and(|l| (1..=3).contains(&l)) || ch["is_leader"] == true, "{s}");
    }
    assert_eq!(leaders, 1.0, "one leader among the three");
}
