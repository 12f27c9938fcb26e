//! `cargo run --example custom_reduce`: a merge of your own, written by
//! hand as `impl Reduce`.
//!
//! A leaderboard keeps the three best scores ever posted. Its merge is a
//! join (the top three of a union is the top three of the tops, in any
//! order, any number of times), and it returns only the entries that made
//! it onto the board, so a score too low to show never travels. The law
//! checker confirms the join in one line, then three replicas post scores
//! apart and merge.

use std::collections::BTreeSet;
use std::io::Write;

use proptest::prelude::*;
use repred::{Network, Reduce, Replica, SourceId, laws};

/// How many entries the board shows.
const TOP: usize = 3;

/// One posted score: `(score, player)`, so entries sort by score, ties by
/// name.
pub type Entry = (u32, String);

/// The best [`TOP`] scores ever posted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leaderboard(BTreeSet<Entry>);

impl Leaderboard {
    /// An update posting one score.
    pub fn post(player: &str, score: u32) -> BTreeSet<Entry> {
        BTreeSet::from([(score, player.to_string())])
    }

    /// The board, best first.
    pub fn ranking(&self) -> Vec<(&str, u32)> {
        self.0.iter().rev().map(|(s, p)| (p.as_str(), *s)).collect()
    }
}

impl Reduce for Leaderboard {
    /// Entries to consider: one posted score, or a whole board.
    type Update = BTreeSet<Entry>;

    fn reduce(&mut self, update: BTreeSet<Entry>) -> Option<BTreeSet<Entry>> {
        let new: BTreeSet<Entry> = update.into_iter().filter(|e| !self.0.contains(e)).collect();
        self.0.extend(new.iter().cloned());
        while self.0.len() > TOP {
            self.0.pop_first();
        }
        // What changed: the new entries that made it onto the board.
        let shown: BTreeSet<Entry> = new.into_iter().filter(|e| self.0.contains(e)).collect();
        (!shown.is_empty()).then_some(shown)
    }

    fn snapshot(&self) -> BTreeSet<Entry> {
        self.0.clone()
    }
}

/// Posts a score on one replica and says whether it travels.
fn post(
    out: &mut impl Write,
    net: &mut Network<Leaderboard>,
    at: repred::NodeId,
    player: &str,
    score: u32,
) -> anyhow::Result<()> {
    let sent = net.update(at, Leaderboard::post(player, score))?.is_some();
    let verdict = if sent { "on its board, sent" } else { "too low: changes nothing, not sent" };
    writeln!(out, "{} posts {player} {score}: {verdict}", net[at].id())?;
    Ok(())
}

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    // Any posted scores, in any order, any number of times: the laws hold.
    let posts = prop::collection::btree_set((0u32..20, "[a-d]"), 0..4);
    laws::try_check::<Leaderboard>(posts)?;
    writeln!(out, "the law checker: Leaderboard is a lawful join")?;

    let mut net = Network::new();
    let a = net.add(Replica::new(SourceId::new("a")?, Leaderboard::default()));
    let b = net.add(Replica::new(SourceId::new("b")?, Leaderboard::default()));
    let c = net.add(Replica::new(SourceId::new("c")?, Leaderboard::default()));
    // Apart: each replica posts to its own board.
    post(out, &mut net, a, "ann", 30)?;
    post(out, &mut net, a, "dee", 40)?;
    post(out, &mut net, b, "bo", 50)?;
    post(out, &mut net, b, "ed", 20)?;
    post(out, &mut net, c, "cy", 10)?;
    // Linked a - b - c: the boards merge.
    net.link(a, b);
    net.link(b, c);
    net.pump();
    writeln!(out, "merged, every board: {:?}", net[c].state().ranking())?;
    // Once merged, c's board knows 30 is the bar.
    post(out, &mut net, c, "fay", 15)?;
    post(out, &mut net, c, "gus", 45)?;
    net.pump();
    for node in [a, b, c] {
        writeln!(out, "{}'s board: {:?}", net[node].id(), net[node].state().ranking())?;
    }
    anyhow::ensure!(net[a].state() == net[c].state() && net[b].state() == net[c].state());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}
