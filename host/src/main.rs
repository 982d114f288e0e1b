//! The `consenter-host` command line: run a node, check and inspect ledgers,
//! load-test an orderer, manage plugin packages and channels. One module per
//! command group under `cli/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use prost::Message;

use consenter_host::admin;
use consenter_host::block::{self, hex};
use consenter_host::chain::{RestartPolicies, RestartPolicy};
use consenter_host::channel::ChannelTemplate;
use consenter_host::config::settings::Settings;
use consenter_host::envelope::Envelope;
use consenter_host::ledger;
use consenter_host::node::{self, Node, NodeConfig};
use consenter_host::package;
use consenter_host::proto::common::Block;
use consenter_host::runtime::{self, Limits};
use consenter_host::signer::{self, Signer};
use consenter_host::support::SupportLimits;

/// A Hyperledger Fabric ordering node that runs consensus algorithms as
/// sandboxed WebAssembly plugins.
mod cli {
    pub mod bench;
    pub mod channel;
    pub mod config;
    pub mod conformance;
    pub mod ledger;
    pub mod plugin;
    pub mod start;
}

use cli::bench::*;
use cli::channel::*;
use cli::config::*;
use cli::conformance::*;
use cli::ledger::*;
use cli::plugin::*;
use cli::start::*;

#[derive(Parser)]
#[command(name = "consenter-host", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. With no flags: data in ./consenter-data, a generated
    /// development identity (its client MSP is printed, for clients to sign
    /// with), and a development channel `devchannel` ordered by the solo
    /// plugin, served over gRPC (AtomicBroadcast) on 127.0.0.1:7050.
    Start(Box<StartArgs>),
    /// Check and read ledgers.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Load generator: sign envelopes ahead of time, send them over
    /// concurrent Broadcast streams to any AtomicBroadcast endpoint (Fabric's
    /// orderer included), follow Deliver until every one is in a block, and
    /// report acknowledged and committed tx/s and latency. With no flags it
    /// loads the development channel of `consenter-host start` run from the
    /// same directory.
    Bench(BenchArgs),
    /// Plugin packages: signing keys, signing, verifying and inspecting
    /// plugin files (a manifest and Ed25519 signatures in custom sections).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Channel participation (Fabric's `osnadmin channel`): join, list,
    /// show and remove channels of a running node through its admin
    /// endpoint.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// The effective configuration: `config show` prints every setting of
    /// `start` (defaults < orderer.yaml < ORDERER_* variables < flags) and
    /// where each value came from.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Test a plugin against the reference host before anyone runs it:
    /// named checks (contract, ordering, Fabric's cutter semantics,
    /// restart, determinism, resources; for clustered plugins seeded fault
    /// schedules on a simulated network in virtual time), each pass or
    /// fail with a reason; exits non-zero if any fails.
    Conformance(Box<ConformanceArgs>),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    consenter_host::channel::parse_go_duration(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 2s, 500ms)"))
}

fn main() -> Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let sub = |name: &str| matches.subcommand_matches(name).cloned().unwrap_or_default();
    match cli.cmd {
        Cmd::Start(a) => start(*a, &sub("start")),
        Cmd::Config(c) => config_cmd(c, &sub("config")),
        Cmd::Ledger(LedgerCmd::Verify { data_dir, channel }) => verify(&data_dir, channel.as_deref()),
        Cmd::Ledger(LedgerCmd::Inspect { data_dir, channel, block }) => inspect(&data_dir, &channel, block),
        Cmd::Bench(a) => bench(a),
        Cmd::Plugin(c) => plugin_cmd(c),
        Cmd::Channel(c) => channel_cmd(c),
        Cmd::Conformance(a) => conformance_cmd(*a),
    }
}
