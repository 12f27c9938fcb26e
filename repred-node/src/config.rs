//! The node core's settings.

use std::time::Duration;

/// How a node runs membership and picks its connections.
///
/// The defaults suit a LAN cluster of up to tens of thousands of nodes:
/// failure detection in seconds (two probes a second, under 1 kB/s per
/// node), each node holding about log2(N) + 1 connections.
///
/// ```
/// use std::time::Duration;
/// use repred_node::NodeConfig;
///
/// let config = NodeConfig::default().probe_period(Duration::from_millis(500));
/// assert_eq!(config.active_view(1), 3, "a floor even when alone");
/// assert_eq!(config.active_view(10_000), 15, "log2(N) + 1 at scale");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeConfig {
    /// How often this node probes one member (SWIM's protocol period).
    /// Default 500 ms: a crashed node is first probed after an exponential
    /// wait of this mean (every member probes one at random), so this sets
    /// the tail of detection (p99 under 5 s at 10,000 nodes in the
    /// simulator); each probe costs a ping and an ack of ~100 bytes.
    pub probe_period: Duration,
    /// How long a direct probe may take before members are asked to probe
    /// indirectly; below `probe_period`. Default 200 ms (a LAN: raise it,
    /// and the period, where round trips are longer).
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly: with 5% loss each indirect path
    /// fails a fifth of the time, so five make a false suspicion ten times
    /// rarer than three. Default 5.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute the suspicion before it
    /// is declared down. Default 2 s (no live member was declared down in
    /// 10 simulated minutes at 5% loss with 10,000 nodes).
    pub suspect_timeout: Duration,
    /// How many times each membership change rides on outgoing messages;
    /// it should grow with log N. Default 12 (enough for 100,000 nodes).
    pub max_transmissions: u8,
    /// How often a node with membership changes to spread sends them to a
    /// few members on its own, besides what rides on probes. Default
    /// 200 ms.
    pub gossip_every: Duration,
    /// How often a node sends its member list to one random member (heals
    /// what dissemination missed). Default 30 s.
    pub announce_every: Duration,
    /// How often a node announces itself to members it believes down, so
    /// that the two sides of a healed partition find each other. Default
    /// 10 s.
    pub announce_down_every: Duration,
    /// How often a node compares its view of the members with one
    /// neighbour's (a count and a fingerprint on the connection) and pulls
    /// the neighbour's list if it counts more: repairs what dissemination
    /// missed. Default 10 s.
    pub compare_every: Duration,
    /// Connections kept: log2(N) + `extra_active`, at least `min_active`,
    /// at most `max_active`. Defaults 1, 3, 24.
    pub extra_active: usize,
    /// See [`NodeConfig::extra_active`].
    pub min_active: usize,
    /// See [`NodeConfig::extra_active`].
    pub max_active: usize,
    /// Most connections in all, incoming ones included: past it the newest
    /// incoming connections are closed. Default 64.
    pub max_connections: usize,
    /// How often one connection is traded for another random member, so
    /// that over time the graph mixes. Each trade costs a TLS handshake
    /// (a few kB) and a Hello per object. Default 120 s.
    pub rotate_every: Duration,
    /// How long a dial may take before it counts as failed. Default 3 s.
    pub dial_timeout: Duration,
    /// The first wait before dialing an address again after a failure;
    /// it doubles per failure, with jitter. Default 250 ms.
    pub dial_backoff: Duration,
    /// The longest such wait. Default 30 s.
    pub max_dial_backoff: Duration,
    /// Most members remembered; updates about more are ignored. Default
    /// 200,000.
    pub max_members: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            indirect_probes: 5,
            suspect_timeout: Duration::from_secs(2),
            max_transmissions: 12,
            gossip_every: Duration::from_millis(200),
            announce_every: Duration::from_secs(30),
            announce_down_every: Duration::from_secs(10),
            compare_every: Duration::from_secs(10),
            extra_active: 1,
            min_active: 3,
            max_active: 24,
            max_connections: 64,
            rotate_every: Duration::from_secs(120),
            dial_timeout: Duration::from_secs(3),
            dial_backoff: Duration::from_millis(250),
            max_dial_backoff: Duration::from_secs(30),
            max_members: 200_000,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl NodeConfig {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`NodeConfig::probe_period`].
    probe_period: Duration,
    /// Sets [`NodeConfig::probe_rtt`].
    probe_rtt: Duration,
    /// Sets [`NodeConfig::suspect_timeout`].
    suspect_timeout: Duration,
    /// Sets [`NodeConfig::max_transmissions`].
    max_transmissions: u8,
    /// Sets [`NodeConfig::announce_every`].
    announce_every: Duration,
    /// Sets [`NodeConfig::announce_down_every`].
    announce_down_every: Duration,
    /// Sets [`NodeConfig::compare_every`].
    compare_every: Duration,
    /// Sets [`NodeConfig::min_active`].
    min_active: usize,
    /// Sets [`NodeConfig::max_active`].
    max_active: usize,
    /// Sets [`NodeConfig::max_connections`].
    max_connections: usize,
    /// Sets [`NodeConfig::rotate_every`].
    rotate_every: Duration,
    /// Sets [`NodeConfig::dial_timeout`].
    dial_timeout: Duration,
    /// Sets [`NodeConfig::dial_backoff`].
    dial_backoff: Duration,
    /// Sets [`NodeConfig::max_dial_backoff`].
    max_dial_backoff: Duration,
}

impl NodeConfig {
    /// How many connections a node keeps when `members` are alive (itself
    /// included): ceil(log2(members)) + `extra_active`, within the bounds.
    pub fn active_view(&self, members: usize) -> usize {
        let log = usize::BITS - members.saturating_sub(1).leading_zeros();
        (log as usize + self.extra_active).clamp(self.min_active, self.max_active.max(1))
    }

    /// Whether the settings fit together; what is wrong if not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.probe_period.is_zero() || self.probe_rtt.is_zero() {
            return Err("probe_period and probe_rtt must not be zero");
        }
        if self.probe_rtt >= self.probe_period {
            return Err("probe_rtt must be shorter than probe_period");
        }
        if self.suspect_timeout.is_zero()
            || self.rotate_every.is_zero()
            || self.compare_every.is_zero()
        {
            return Err("suspect_timeout, rotate_every and compare_every must not be zero");
        }
        if self.indirect_probes == 0 || self.max_transmissions == 0 {
            return Err("indirect_probes and max_transmissions must not be zero");
        }
        if self.min_active == 0 || self.min_active > self.max_active {
            return Err("need 0 < min_active <= max_active");
        }
        if self.max_connections < self.max_active {
            return Err("max_connections must be at least max_active");
        }
        Ok(())
    }
}
