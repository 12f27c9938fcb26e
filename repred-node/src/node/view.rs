//! The active view: which members this node keeps connections to, when it
//! dials, backs off and trades one connection for another.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use foca::Member;
use rand::RngExt;
use repred::SourceId;

use super::{NodeCore, Timer};
use crate::{Address, CloseWhy, Command, ConnId, Peer};

/// From this many members on, the members to dial are drawn at random
/// positions of the member list instead of filtered from all of it.
const SAMPLE_ABOVE: usize = 64;

/// A member whose dials failed: how often, and until when it is not
/// dialed again.
#[derive(Clone, Copy, Debug)]
pub(super) struct Backoff {
    pub(super) failures: u32,
    pub(super) until: u64,
}

impl<A: Address> NodeCore<A> {
    /// How many connections this node wants now.
    pub fn wanted_connections(&self) -> usize {
        self.config.active_view(self.swim.num_members() + 1)
    }

    pub(super) fn dial_timeout_ms(&self) -> u64 {
        self.config.dial_timeout.as_millis() as u64
    }

    pub(super) fn jitter(&mut self, around: Duration) -> u64 {
        let ms = around.as_millis() as u64;
        // Between half and one and a half of it.
        ms / 2 + self.rng.random_range(0..=ms.max(1))
    }

    pub(super) fn schedule_maintain(&mut self, at: u64) {
        if self.maintain_at.is_some_and(|t| t <= at) {
            return;
        }
        self.maintain_at = Some(at);
        self.timers.set(at, Timer::Maintain(at));
    }

    pub(super) fn close(&mut self, conn: ConnId, reason: CloseWhy) {
        self.stats.closes += 1;
        self.commands.push_back(Command::Close { conn, reason });
    }

    /// Dials members until the active view is full; closes what is too
    /// much; asks the seeds again while alone.
    pub(super) fn maintain(&mut self, now: u64) {
        let period = self.config.probe_period;
        let next = now + period.as_millis() as u64;
        self.schedule_maintain(next);
        if self.left {
            return;
        }
        let alone = self.swim.num_members() == 0;
        if !self.active {
            self.rejoin(now);
        }
        let want = self.wanted_connections();
        let connected: BTreeSet<SourceId> = self.conns.values().map(|c| c.peer).collect();
        let busy = connected.len() + self.dialing.len();
        if busy < want {
            let free = |addr: &A, backoff: &BTreeMap<A, Backoff>, dialing: &BTreeMap<A, u64>| {
                !dialing.contains_key(addr) && backoff.get(addr).is_none_or(|b| b.until <= now)
            };
            let eligible = |m: &Member<Peer<A>>| {
                let id = m.id().id?;
                let ok = id != self.id
                    && matches!(m.state(), foca::State::Alive | foca::State::Suspect)
                    && !connected.contains(&id)
                    && free(&m.id().addr, &self.backoff, &self.dialing);
                ok.then(|| (m.id().addr.clone(), Some(id)))
            };
            // A few random members, drawn from foca's list by position
            // (O(wanted), whatever N); the scan of every member only when
            // the draws find too few (a small or mostly ineligible list).
            let mut candidates = if alone {
                Vec::new()
            } else {
                let all = self.swim.iter_membership_state().len();
                let mut drawn: Vec<(A, Option<SourceId>)> = Vec::new();
                if all >= SAMPLE_ABOVE {
                    let need = want - busy;
                    for _ in 0..need * 16 + 32 {
                        if drawn.len() == need {
                            break;
                        }
                        let pos = self.rng.random_range(0..all);
                        let pick = self.swim.iter_membership_state().nth(pos).and_then(eligible);
                        if let Some(pick) = pick.filter(|p| !drawn.iter().any(|d| d.0 == p.0)) {
                            drawn.push(pick);
                        }
                    }
                    if drawn.len() < need {
                        drawn.clear();
                    }
                }
                if drawn.is_empty() {
                    drawn = self.swim.iter_members().filter_map(eligible).collect();
                }
                drawn
            };
            if alone {
                let conn_addrs: BTreeSet<&A> = self.conns.values().map(|c| &c.addr).collect();
                candidates = self
                    .bootstrap
                    .iter()
                    .filter(|a| !conn_addrs.contains(a) && free(a, &self.backoff, &self.dialing))
                    .map(|a| (a.clone(), None))
                    .collect();
            }
            for i in 0..candidates.len().min(want - busy) {
                let pick = self.rng.random_range(i..candidates.len());
                candidates.swap(i, pick);
                let (addr, expect) = candidates[i].clone();
                self.dialing.insert(addr.clone(), now);
                self.stats.dials += 1;
                let timeout = now + self.config.dial_timeout.as_millis() as u64;
                self.timers.set(timeout, Timer::DialTimeout(addr.clone(), now));
                self.commands.push_back(Command::Dial { addr, expect });
            }
        }
        // Others' dials can pile up on one node (a seed everyone joins
        // through): past twice the view it sheds incoming connections, at
        // random, and their dialers pick someone else. The view stays
        // O(log N) at every node, as in HyParView.
        let cap = (2 * want).max(want + 4).min(self.config.max_connections);
        if self.conns.len() > cap {
            let mut incoming: Vec<ConnId> =
                self.conns.iter().filter(|(_, c)| !c.outgoing).map(|(&k, _)| k).collect();
            let extra = (self.conns.len() - cap).min(incoming.len());
            for i in 0..extra {
                let pick = self.rng.random_range(i..incoming.len());
                incoming.swap(i, pick);
                let conn = incoming[i];
                self.conns.remove(&conn);
                self.close(conn, CloseWhy::TooMany);
            }
        }
    }

    /// Trades one outgoing connection for another member, when the view is
    /// full and someone is left out.
    pub(super) fn rotate(&mut self, now: u64) {
        let next = now + self.jitter(self.config.rotate_every);
        self.timers.set(next, Timer::Rotate);
        if self.left {
            return;
        }
        let connected: BTreeSet<SourceId> = self.conns.values().map(|c| c.peer).collect();
        if connected.len() < self.wanted_connections() {
            return;
        }
        let spare = self
            .swim
            .iter_members()
            .any(|m| m.id().id.is_some_and(|id| id != self.id && !connected.contains(&id)));
        let outgoing: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| c.outgoing).map(|(&k, _)| k).collect();
        if !spare || outgoing.is_empty() {
            return;
        }
        let victim = outgoing[self.rng.random_range(0..outgoing.len())];
        self.close(victim, CloseWhy::Rotated);
    }
}
