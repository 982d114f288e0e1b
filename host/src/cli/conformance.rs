//! `consenter-host conformance`: the conformance suite of the testkit
//! (`consenter_testkit::conformance`) on a plugin file, loaded as the node
//! loads one (package checks, contract, limits, canary).

use crate::*;
use consenter_host::conformance::{self, Options};

#[derive(Args)]
pub(crate) struct ConformanceArgs {
    /// The plugin (a wasm component, signed or not).
    plugin: PathBuf,
    /// The consensus type its test channels name (default: the manifest's,
    /// else the file name without `.wasm`).
    #[arg(long)]
    consensus_type: Option<String>,
    /// A file whose bytes are the single-node test channels'
    /// ConsensusType.metadata.
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Nodes of the simulated network (clustered plugins).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seed of the seeded checks; schedules run SEED..SEED+SCHEDULES.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fault schedules to run (clustered plugins).
    #[arg(long, default_value_t = 100)]
    schedules: u64,
    /// Rerun one fault schedule and print its whole trace.
    #[arg(long, value_name = "SEED")]
    replay: Option<u64>,
    /// Print the report as JSON (for CI).
    #[arg(long)]
    json: bool,
    /// Run only the check of this name.
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Envelopes of the resources check's long run.
    #[arg(long, default_value_t = 10_000)]
    long_run: usize,
    /// Threads running schedules (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also require a signature by a key of this trust directory, as a
    /// node without --allow-unsigned-plugins does.
    #[arg(long)]
    trust_dir: Option<PathBuf>,
    /// Linear memory cap of each instance, in MiB (the node's
    /// --plugin-memory-mib).
    #[arg(long, default_value_t = 64)]
    plugin_memory_mib: usize,
    /// Wall-clock deadline of one call (the node's --plugin-call-deadline).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    plugin_call_deadline: Duration,
}

pub(crate) fn conformance_cmd(a: ConformanceArgs) -> Result<()> {
    // Quiet unless asked (RUST_LOG=info shows the plugin's own log lines):
    // a check provokes refusals and failures on purpose.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let file = a.plugin.display().to_string();
    let bytes = std::fs::read(&a.plugin).with_context(|| format!("reading {file}"))?;
    let pkg = package::Package::parse(&file, &bytes)?;
    // The consensus type: given, the manifest's, else for a clustered
    // plugin etcdraft (the consenter set the host reads), for a single-node
    // one the file's name.
    let stem = a.plugin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clustered = runtime::World::of(&pkg).is_clustered();
    let ty = match (&a.consensus_type, &pkg.manifest) {
        (Some(t), _) => t.clone(),
        (None, Some(m)) => m.consensus_type.clone(),
        (None, None) if clustered => "etcdraft".to_string(),
        (None, None) => stem,
    };
    let admission = match &a.trust_dir {
        Some(dir) => {
            let policy = package::Policy { trust: package::TrustStore::load(dir)?, allow_unsigned: false };
            package::admit(&policy, &ty, &a.plugin, &bytes).with_context(|| format!("plugin {ty} refused"))?;
            format!("signed by a key of {}", dir.display())
        }
        None => {
            let policy = package::Policy { trust: package::TrustStore::default(), allow_unsigned: true };
            package::admit(&policy, &ty, &a.plugin, &bytes).with_context(|| format!("plugin {ty} refused"))?;
            "signatures not checked (pass --trust-dir)".to_string()
        }
    };
    let limits =
        Limits { memory_bytes: a.plugin_memory_mib << 20, call_deadline: a.plugin_call_deadline, ..Limits::default() };
    let rt = runtime::Runtime::new(limits)?;
    let plugin = rt.load(&ty, &bytes)?;
    // A throw-away identity signs the test blocks.
    let dir = std::env::temp_dir().join(format!("consenter-conformance-{}", std::process::id()));
    let id = signer::ensure_dev_identity(&dir);
    let signer = id.and_then(|id| Signer::from_msp_dir(&id.orderer_msp, &id.mspid));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = Arc::new(signer.context("a test identity")?);
    let metadata = match &a.metadata {
        Some(p) => Bytes::from(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => Bytes::new(),
    };
    let names = if plugin.world().is_clustered() { conformance::CLUSTERED_CHECKS } else { conformance::SINGLE_CHECKS };
    if let Some(only) = &a.only
        && !names.contains(&only.as_str())
    {
        bail!("--only {only:?}: no such check for this plugin (its checks: {})", names.join(", "));
    }
    let mut opts = Options {
        consensus_type: Some(ty),
        metadata,
        nodes: a.nodes,
        seed: a.seed,
        schedules: a.schedules,
        replay: a.replay,
        only: a.only,
        long_run: a.long_run,
        ..Options::default()
    };
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    if !a.json {
        println!("{file}: {} bytes, {admission}", bytes.len());
    }
    let report = conformance::run(&plugin, signer, &opts);
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if !report.ok() {
        // The report said what failed; the exit status says that it did.
        std::process::exit(1);
    }
    Ok(())
}
