//! What the simulated network is like.

use repred_node::NodeConfig;

/// The simulated world: its seed, its network and the settings every node
/// and replica runs with.
///
/// ```
/// use repred_sim::SimConfig;
///
/// let lossy = SimConfig::new(7).loss(0.05).latency(5, 40);
/// assert_eq!(lossy.latency_ms, (5, 40));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// The seed: one seed, one run, exactly.
    pub seed: u64,
    /// The node core's settings.
    pub node: NodeConfig,
    /// The replicas' settings (lazy relay on by default, as on QUIC).
    pub replica: repred::Config,
    /// One-way latency of every hop, drawn uniformly from this range in
    /// milliseconds (so datagrams reorder; stream bytes never do).
    pub latency_ms: (u64, u64),
    /// Probability that a membership datagram is lost. Streams are
    /// reliable (QUIC retransmits), so loss only delays them, which the
    /// latency range stands for.
    pub loss: f64,
    /// Probability that a membership datagram arrives twice.
    pub duplicate: f64,
    /// How long a connection whose peer vanished (a crash, a partition)
    /// takes to be noticed: QUIC's idle timeout.
    pub conn_timeout_ms: u64,
    /// Bytes each membership datagram costs on the wire beyond what the
    /// node core hands out: IPv4 and UDP headers (28) and the QUIC shell's
    /// authentication (flags, length and an ECDSA signature: 74 on
    /// average; the certificate sent once per pair is left out).
    pub datagram_overhead: u64,
    /// Bytes each stream packet costs beyond its payload (IP, UDP, QUIC
    /// short header, frame header and AEAD tag), per 1,200 bytes of
    /// payload or part of it.
    pub packet_overhead: u64,
}

impl SimConfig {
    /// The defaults with this seed: 1-10 ms latency, no loss, lazy relay,
    /// connections noticed gone after 3 s.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            node: NodeConfig::default(),
            replica: repred::Config::default().lazy_relay(true),
            latency_ms: (1, 10),
            loss: 0.0,
            duplicate: 0.0,
            conn_timeout_ms: 3_000,
            datagram_overhead: 28 + 74,
            packet_overhead: 28 + 30,
        }
    }

    /// Sets [`SimConfig::node`].
    pub fn node(mut self, node: NodeConfig) -> Self {
        self.node = node;
        self
    }

    /// Sets [`SimConfig::replica`].
    pub fn replica(mut self, replica: repred::Config) -> Self {
        self.replica = replica;
        self
    }

    /// Sets [`SimConfig::latency_ms`].
    pub fn latency(mut self, min_ms: u64, max_ms: u64) -> Self {
        self.latency_ms = (min_ms, max_ms.max(min_ms));
        self
    }

    /// Sets [`SimConfig::loss`].
    pub fn loss(mut self, probability: f64) -> Self {
        self.loss = probability;
        self
    }

    /// Sets [`SimConfig::duplicate`].
    pub fn duplicate(mut self, probability: f64) -> Self {
        self.duplicate = probability;
        self
    }

    /// Sets [`SimConfig::conn_timeout_ms`].
    pub fn conn_timeout(mut self, millis: u64) -> Self {
        self.conn_timeout_ms = millis;
        self
    }
}
