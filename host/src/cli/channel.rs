//! Channel participation (Fabric's `osnadmin channel`) over the admin endpoint.

use crate::*;

#[derive(Subcommand)]
pub(crate) enum ChannelCmd {
    /// Join a channel from its genesis block (a file made by Fabric's
    /// configtxgen, for instance).
    Join {
        #[command(flatten)]
        admin: AdminArgs,
        /// The channel's config block.
        #[arg(long = "config-block", short = 'b')]
        config_block: PathBuf,
    },
    /// List the node's channels.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one channel: status, consensus relation, height.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// Channel id.
        #[arg(long = "channel-id", short = 'c')]
        channel: String,
    },
    /// Remove a channel: halt it and delete its ledger.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        /// Channel id.
        #[arg(long = "channel-id", short = 'c')]
        channel: String,
    },
}

#[derive(Args)]
pub(crate) struct AdminArgs {
    /// Admin endpoint of the node (host:port).
    #[arg(long = "orderer-address", short = 'o', default_value = "127.0.0.1:7053")]
    pub(crate) address: String,
    /// CA certificate (PEM) of the endpoint's TLS certificate; with it the
    /// command speaks TLS, the server name being the host of the address
    /// (or --tls-server-name). Also --tls-root-ca.
    #[arg(long = "ca-file", visible_alias = "tls-root-ca", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS. Also --tls-client-cert.
    #[arg(
        long = "client-cert",
        visible_alias = "tls-client-cert",
        value_name = "FILE",
        requires_all = ["client_key", "ca_file"]
    )]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert. Also --tls-client-key.
    #[arg(long = "client-key", visible_alias = "tls-client-key", value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The name the endpoint's certificate must carry, when the address's
    /// host is not in it.
    #[arg(long, value_name = "NAME", requires = "ca_file")]
    tls_server_name: Option<String>,
}

impl AdminArgs {
    pub(crate) fn tls(&self) -> Result<admin::ClientTls> {
        let Some(ca) = &self.ca_file else { return Ok(Default::default()) };
        let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
        Ok(admin::ClientTls {
            config: Some(admin::tls::client_config(ca, identity)?),
            has_client_cert: identity.is_some(),
            server_name: self.tls_server_name.as_deref().map(admin::tls::parse_server_name).transpose()?,
        })
    }
}

pub(crate) fn channel_cmd(c: ChannelCmd) -> Result<()> {
    use admin::CHANNELS;
    let (ChannelCmd::Join { admin: a, .. }
    | ChannelCmd::List { admin: a }
    | ChannelCmd::Show { admin: a, .. }
    | ChannelCmd::Remove { admin: a, .. }) = &c;
    let tls = a.tls()?;
    let send = |method, path: &str, body| admin::request_with(&a.address, &tls, method, path, body);
    let answer = match &c {
        ChannelCmd::Join { config_block, .. } => {
            let bytes = std::fs::read(config_block).with_context(|| format!("reading {}", config_block.display()))?;
            let name = config_block.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (ct, body) = admin::multipart_body("config-block", &name, &bytes);
            send("POST", CHANNELS, Some((&ct, &body)))
        }
        ChannelCmd::List { .. } => send("GET", CHANNELS, None),
        ChannelCmd::Show { channel, .. } => send("GET", &format!("{CHANNELS}/{channel}"), None),
        ChannelCmd::Remove { channel, .. } => send("DELETE", &format!("{CHANNELS}/{channel}"), None),
    }?;
    print_answer(&answer)
}

/// Prints what osnadmin prints, the status code and the JSON body; an
/// error unless the status is 2xx.
pub(crate) fn print_answer(answer: &admin::HttpAnswer) -> Result<()> {
    println!("Status: {}", answer.status);
    if !answer.body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&answer.body) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => println!("{}", String::from_utf8_lossy(&answer.body)),
        }
    }
    if answer.status >= 300 {
        bail!("{}", answer.error_text());
    }
    Ok(())
}
