//! `consenter-host conformance` as a plugin author runs it: a verdict per
//! check, the exit status, `--json` for CI, `--replay` of a schedule
//! printing the same trace twice, `--only`, and a signed package checked
//! against a trust directory.

use std::process::{Command, Output};

fn conformance(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consenter-host")).arg("conformance").args(args).output().unwrap()
}

fn plugin(file: &str) -> String {
    consenter_test_plugins::path(file).display().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn solo_passes_and_a_mutant_fails_naming_its_check() {
    let solo = plugin("consenter_solo.wasm");
    let o = conformance(&[&solo, "--consensus-type", "solo", "--long-run", "2000"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for check in [
        "contract",
        "ordering",
        "revalidation",
        "cutter",
        "restart",
        "upgrade",
        "determinism",
        "schedules",
        "resources",
    ] {
        assert!(out.lines().any(|l| l.starts_with(&format!("pass {check} "))), "{check}: {out}");
    }
    assert!(out.contains("9 passed, 0 failed"), "{out}");

    let mutant = plugin("mutant_solo_no_timer.wasm");
    let o = conformance(&[&mutant, "--consensus-type", "solo", "--only", "cutter"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let line = out.lines().find(|l| l.starts_with("FAIL cutter")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("batch count: Fabric writes block 3"), "{line}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}

#[test]
fn json_reports_parse_and_unknown_checks_are_refused() {
    let mutant = plugin("mutant_solo_drop_1000th.wasm");
    let o = conformance(&[&mutant, "--consensus-type", "solo", "--json", "--long-run", "2000"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints one JSON object");
    assert_eq!(v["plugin"], "solo");
    assert_eq!(v["world"], "consenter");
    let checks = v["checks"].as_array().unwrap();
    let ordering = checks.iter().find(|c| c["name"] == "ordering").unwrap();
    assert_eq!(ordering["passed"], false);
    assert!(ordering["reason"].as_str().unwrap().contains("was accepted but is in no block"), "{ordering}");
    assert_eq!(checks.iter().find(|c| c["name"] == "contract").unwrap()["passed"], true);

    let o = conformance(&[&mutant, "--only", "speed"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--only \"speed\": no such check") && err.contains("cutter"), "{err}");
}

#[test]
fn a_replayed_schedule_prints_the_same_trace_twice() {
    let mutant = plugin("mutant_raft_minority_commit.wasm");
    // The first failing schedule, from the JSON report's details.
    let o =
        conformance(&[&mutant, "--consensus-type", "etcdraft", "--only", "schedules", "--schedules", "40", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let details = v["checks"][0]["details"].as_array().unwrap();
    let first = details[0].as_str().unwrap();
    let seed = first.strip_prefix("schedule ").and_then(|r| r.split(' ').next()).unwrap_or_else(|| panic!("{first}"));
    assert!(details.iter().any(|d| d.as_str().unwrap().starts_with("shortest failing trace")), "{details:?}");
    let run = || {
        let o = conformance(&[&mutant, "--consensus-type", "etcdraft", "--replay", seed]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        // Everything but the wall time a check took: "(47 ms)".
        let strip = |l: &str| match l.rsplit_once(" (") {
            Some((head, tail)) if tail.ends_with(" ms)") => head.to_string(),
            _ => l.to_string(),
        };
        stdout(&o).lines().map(strip).collect::<Vec<_>>().join("\n")
    };
    let (a, b) = (run(), run());
    assert!(a.contains(&format!("FAIL schedules     schedule {seed}: safety")), "{a}");
    assert!(a.lines().filter(|l| l.trim_start().starts_with("t=")).count() > 5, "{a}");
    assert_eq!(a, b, "the same seed, the same trace");
}

#[test]
fn raft_passes_its_schedules_and_a_signed_package_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("author");
    let bin = env!("CARGO_BIN_EXE_consenter-host");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success());
    ok(Command::new(bin).args(["plugin", "keygen", "--out"]).arg(&key));
    let signed = dir.path().join("raft.wasm");
    ok(Command::new(bin)
        .args(["plugin", "sign", "--key"])
        .arg(key.with_extension("key"))
        .args(["--name", "consenter-raft", "--version", "0.1.0", "--consensus-type", "etcdraft"])
        .args(["--capability", "cluster", "--capability", "storage", "--capability", "replication"])
        .arg(plugin("consenter_raft.wasm"))
        .arg("-o")
        .arg(&signed));
    let trust = dir.path().join("trusted");
    std::fs::create_dir(&trust).unwrap();
    std::fs::copy(key.with_extension("pub"), trust.join("author.pub")).unwrap();
    let s = signed.display().to_string();
    let t = trust.display().to_string();
    let o = conformance(&[&s, "--trust-dir", &t, "--only", "schedules", "--schedules", "40", "--seed", "100"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("signed by a key of"), "{out}");
    assert!(out.contains("pass schedules     40 seeded schedules (100..139) on 3 nodes"), "{out}");
    assert!(out.contains("schedules_per_second"), "{out}");
    // An empty trust directory refuses the package, as a node would.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = conformance(&[&s, "--trust-dir", &empty.display().to_string()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("plugin etcdraft refused"), "{err}");
}
