//! What the transport counts and tells: per-member counters (sent,
//! dropped, connected, received, refused), inbound refusals by reason,
//! their snapshot ([`TransportStats`]), and the rare events a caller can
//! await ([`TransportEvent`]: a member connected or disconnected, a
//! message refused, a member refused a submit). Counting never blocks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tokio::sync::broadcast;

/// Why an inbound message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The connection has no TLS client certificate.
    NoCertificate,
    /// The message names a channel the transport has no members for.
    UnknownChannel,
    /// The connection's certificate is no member's client_tls_cert.
    NotMember,
    /// The payload is over the transport's max_message_bytes.
    Oversized,
    /// No channel, no payload, or no envelope.
    Malformed,
}

impl Refusal {
    /// Every reason, in order.
    pub const ALL: [Refusal; 5] =
        [Refusal::NoCertificate, Refusal::UnknownChannel, Refusal::NotMember, Refusal::Oversized, Refusal::Malformed];

    /// Its name in the admin endpoint's cluster stats.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "noCertificate",
            Refusal::UnknownChannel => "unknownChannel",
            Refusal::NotMember => "notMember",
            Refusal::Oversized => "oversized",
            Refusal::Malformed => "malformed",
        }
    }

    /// Fabric's text where it has one (orderer/common/cluster/comm.go).
    pub fn text(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no TLS certificate sent",
            Refusal::UnknownChannel => "channel doesn't exist",
            Refusal::NotMember => "certificate extracted from TLS connection isn't authorized",
            Refusal::Oversized => "message is larger than the transport's max_message_bytes",
            Refusal::Malformed => "badly formatted message",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// The counters of one (channel, member).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub received: AtomicU64,
    pub refused: AtomicU64,
    pub refused_by_peer: AtomicU64,
}

/// Inbound refusals, by reason.
#[derive(Debug, Default)]
pub(crate) struct RefusalCounters([AtomicU64; 5]);

impl RefusalCounters {
    pub fn add(&self, r: Refusal) {
        self.0[r as usize].fetch_add(1, Relaxed);
    }
    pub fn snapshot(&self) -> BTreeMap<Refusal, u64> {
        Refusal::ALL.iter().map(|r| (*r, self.0[*r as usize].load(Relaxed))).filter(|(_, n)| *n > 0).collect()
    }
}

/// One member as the transport sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Its endpoint.
    pub endpoint: String,
    /// Messages handed to its stream.
    pub sent: u64,
    /// Messages dropped because its queue was full.
    pub dropped: u64,
    /// Whether a connection to it is up now.
    pub connected: bool,
    /// Streams opened to it so far (one per connection attempt that
    /// reached it; reconnections included).
    pub connections: u64,
    /// Messages accepted from it.
    pub received: u64,
    /// Messages from it that were refused (oversized, malformed).
    pub refused: u64,
    /// Submits it refused (a SubmitResponse came back).
    pub refused_by_peer: u64,
}

impl PeerStats {
    pub(crate) fn of(endpoint: &str, c: &PeerCounters) -> PeerStats {
        PeerStats {
            endpoint: endpoint.to_string(),
            sent: c.sent.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            connected: c.connected.load(Relaxed),
            connections: c.connections.load(Relaxed),
            received: c.received.load(Relaxed),
            refused: c.refused.load(Relaxed),
            refused_by_peer: c.refused_by_peer.load(Relaxed),
        }
    }
}

/// One channel as the transport sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// This node's id in the channel.
    pub self_id: u64,
    /// The other members (this node is not listed).
    pub peers: BTreeMap<u64, PeerStats>,
    /// Messages for this channel refused because their sender is not a
    /// member (or sent no certificate).
    pub refused: u64,
}

/// A snapshot of the transport's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Per channel.
    pub channels: BTreeMap<String, ChannelStats>,
    /// Every inbound refusal, by reason (unknown channels included).
    pub refused: BTreeMap<Refusal, u64>,
}

impl TransportStats {
    /// The stats of one member of a channel.
    pub fn peer(&self, channel: &str, id: u64) -> Option<&PeerStats> {
        self.channels.get(channel).and_then(|c| c.peers.get(&id))
    }

    /// How many inbound messages were refused for `reason`.
    pub fn refused_for(&self, reason: Refusal) -> u64 {
        self.refused.get(&reason).copied().unwrap_or(0)
    }
}

/// Something that happened, for whoever listens
/// ([`super::Transport::events`]). Per-message events are only refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A connection to a member is up (TLS verified, HTTP/2 spoken).
    Connected {
        /// The channel.
        channel: String,
        /// The member.
        peer: u64,
    },
    /// The connection to a member failed or ended.
    Disconnected {
        /// The channel.
        channel: String,
        /// The member.
        peer: u64,
        /// What happened.
        reason: String,
    },
    /// An inbound message was refused (and dropped).
    Refused {
        /// The channel it named (empty if none).
        channel: String,
        /// The sender's id, when it is a member.
        from: Option<u64>,
        /// Why.
        reason: Refusal,
    },
    /// A member answered a submit with a refusal.
    RefusedByPeer {
        /// The channel.
        channel: String,
        /// The member.
        peer: u64,
        /// Its status (a common.Status).
        status: i32,
        /// Its reason.
        info: String,
    },
}

/// The events' sender: sending never blocks (a slow listener loses the
/// oldest events).
#[derive(Debug, Clone)]
pub(crate) struct Events(broadcast::Sender<TransportEvent>);

impl Events {
    pub fn new() -> Events {
        Events(broadcast::channel(1024).0)
    }
    pub fn send(&self, e: TransportEvent) {
        let _ = self.0.send(e);
    }
    pub fn subscribe(&self) -> broadcast::Receiver<TransportEvent> {
        self.0.subscribe()
    }
}
