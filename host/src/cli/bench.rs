//! The load generator command.

use crate::*;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Orderer address (host:port).
    #[arg(long, default_value = "127.0.0.1:7050")]
    orderer: String,
    /// Channel to load.
    #[arg(long, default_value = "devchannel")]
    channel: String,
    /// MSP folder that signs the envelopes (default: the development client
    /// identity of the embedded default, if present; else unsigned).
    #[arg(long, requires = "mspid")]
    msp_dir: Option<PathBuf>,
    /// MSP id of --msp-dir.
    #[arg(long)]
    mspid: Option<String>,
    /// Concurrent Broadcast streams.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Envelopes to send in all.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload data bytes per envelope.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// How long to wait for blocks after the last acknowledgement.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    commit_timeout: Duration,
}

pub(crate) fn bench(a: BenchArgs) -> Result<()> {
    let signer = match (&a.msp_dir, &a.mspid) {
        (Some(dir), Some(id)) => Some(Signer::from_msp_dir(dir, id)?),
        _ => {
            let dev = Path::new("consenter-data/dev-identity/client/msp");
            if dev.join("signcerts").exists() {
                Some(Signer::from_msp_dir(dev, signer::DEV_MSPID)?)
            } else {
                eprintln!("no --msp-dir and no development identity here: sending unsigned envelopes");
                None
            }
        }
    };
    let spec = consenter_host::loadgen::LoadSpec {
        orderer: a.orderer,
        channel: a.channel,
        clients: a.clients.max(1),
        messages: a.messages,
        size: a.size,
        commit_timeout: a.commit_timeout,
    };
    println!(
        "bench: {} envelopes of {} bytes over {} streams to {} channel {}",
        spec.messages, spec.size, spec.clients, spec.orderer, spec.channel
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let r = rt.block_on(consenter_host::loadgen::run(&spec, signer.map(Arc::new), |acked, committed| {
        eprintln!("  acknowledged {acked}, committed {committed}");
    }))?;
    println!("acknowledged: {:.0} tx/s ({} in {:.2} s)", r.ack_rate(), r.acknowledged, r.ack_secs);
    println!("committed: {:.0} tx/s ({} in {:.2} s)", r.commit_rate(), r.committed, r.commit_secs);
    println!("latency: p50 {:.1} ms, p99 {:.1} ms (send to delivery)", ms(r.latency_p50), ms(r.latency_p99));
    println!("blocks: {}, envelopes seen: {}", r.blocks, r.envelopes_seen);
    for (status, info) in &r.refusals {
        println!("refused: {} ({status}): {info}", consenter_host::loadgen::status_name(*status));
    }
    if r.refused > 0 {
        bail!("{} envelopes were refused", r.refused);
    }
    if r.committed < r.acknowledged {
        bail!("only {} of {} acknowledged envelopes were delivered in blocks", r.committed, r.acknowledged);
    }
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
