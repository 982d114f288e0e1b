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
    /// Swap the channel's consensus type this many times during the run,
    /// alternating between its type now and --swap-to (unsigned config
    /// updates: an org-less channel such as the development channel). The
    /// node's pauses: `channel show` (consenter.swapPauseUs).
    #[arg(long, default_value_t = 0, requires = "swap_to")]
    swaps: usize,
    /// The other consensus type of --swaps (a plugin the node has).
    #[arg(long, value_name = "TYPE")]
    swap_to: Option<String>,
    #[command(flatten)]
    tls: GrpcTlsArgs,
}

/// The TLS flags of a gRPC client (Fabric's orderer TLS client settings).
#[derive(Args)]
pub(crate) struct GrpcTlsArgs {
    /// Root CA (PEM) that the orderer's TLS certificate must chain to.
    /// Given, the client speaks TLS. Repeatable.
    #[arg(long = "tls-root-ca", value_name = "FILE")]
    tls_root_cas: Vec<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires_all = ["tls_client_key", "tls_root_cas"])]
    tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert.
    #[arg(long, value_name = "FILE", requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
    /// The name the orderer's certificate must carry, when the address's
    /// host is not in it (e.g. orderer0.example.com for 127.0.0.1:7050).
    #[arg(long, value_name = "NAME", requires = "tls_root_cas")]
    tls_server_name: Option<String>,
}

impl GrpcTlsArgs {
    /// The client TLS, or None for plaintext.
    pub(crate) fn client_tls(&self) -> Result<Option<consenter_host::tls::dial::ClientTls>> {
        if self.tls_root_cas.is_empty() {
            return Ok(None);
        }
        let identity = self.tls_client_cert.as_deref().zip(self.tls_client_key.as_deref());
        let config = consenter_host::tls::grpc_client_config(&self.tls_root_cas, identity)?;
        let server_name = self.tls_server_name.as_deref().map(consenter_host::tls::parse_server_name).transpose()?;
        Ok(Some(consenter_host::tls::dial::ClientTls { config, server_name }))
    }

    /// SHA-256 of the client certificate's DER (empty without one): what
    /// Deliver requests carry as the channel header's `tls_cert_hash`, so
    /// an orderer that requires client certificates serves them.
    pub(crate) fn tls_cert_hash(&self) -> Result<bytes::Bytes> {
        use sha2::Digest;
        let Some(cert) = self.tls_client_cert.as_deref().filter(|_| !self.tls_root_cas.is_empty()) else {
            return Ok(bytes::Bytes::new());
        };
        let certs = consenter_host::tls::load_certs("TLS client certificate (--tls-client-cert)", cert)?;
        Ok(certs.first().map(|c| bytes::Bytes::copy_from_slice(&sha2::Sha256::digest(c))).unwrap_or_default())
    }
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
        tls: a.tls.client_tls()?,
        tls_cert_hash: a.tls.tls_cert_hash()?,
    };
    println!(
        "bench: {} envelopes of {} bytes over {} streams to {} channel {}",
        spec.messages, spec.size, spec.clients, spec.orderer, spec.channel
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let load = consenter_host::loadgen::run(&spec, signer.map(Arc::new), |acked, committed| {
        eprintln!("  acknowledged {acked}, committed {committed}");
    });
    let (r, swapped) = match (a.swaps, &a.swap_to) {
        (n, Some(to)) if n > 0 => {
            let (r, s) = rt.block_on(async { tokio::join!(load, consenter_host::loadgen::swaps(&spec, to, n)) });
            (r?, Some(s?))
        }
        _ => (rt.block_on(load)?, None),
    };
    println!("acknowledged: {:.0} tx/s ({} in {:.2} s)", r.ack_rate(), r.acknowledged, r.ack_secs);
    println!("committed: {:.0} tx/s ({} in {:.2} s)", r.commit_rate(), r.committed, r.commit_secs);
    println!("latency: p50 {:.1} ms, p99 {:.1} ms (send to delivery)", ms(r.latency_p50), ms(r.latency_p99));
    println!("blocks: {}, envelopes seen: {}", r.blocks, r.envelopes_seen);
    if let Some(s) = &swapped {
        let mut rt: Vec<_> = s.round_trips.clone();
        rt.sort();
        let at = |q: f64| rt.get(((rt.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default();
        println!(
            "swaps: {} between {} and {} during the run; config update round trip p50 {:.2} ms, p99 {:.2} ms (the \
             node's pause per swap: consenter-host channel show -c {} → consenter.swapPauseUs)",
            s.done,
            s.from,
            a.swap_to.as_deref().unwrap_or_default(),
            ms(at(0.5)),
            ms(at(0.99)),
            spec.channel
        );
    }
    for ((status, info), n) in &r.refusals {
        println!("refused: {n} x {} ({status}): {info}", consenter_host::loadgen::status_name(*status));
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
