//! `cargo run --example laws`: the law checker catching broken reducers.
//!
//! A reducer must be a join: the same updates, in any order, any number of
//! times, give the same state, and it returns exactly what changed.
//! `repred::laws` (feature `laws`) checks that with generated updates,
//! stamped as replicas stamp them, in one line of a test. Here it passes a
//! correct reducer and catches two plausible-looking broken ones, each with
//! the law it breaks and proptest's smallest failing input.

use std::io::Write;

use proptest::prelude::*;
use repred::{Max, Reduce, laws};

/// "The last write wins", without timestamps: the last update to *arrive*
/// wins, so two replicas that receive the same writes in different orders
/// disagree for good.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LastArrival(Option<u8>);

impl Reduce for LastArrival {
    type Update = Option<u8>;

    fn reduce(&mut self, update: Option<u8>) -> Option<Option<u8>> {
        let value = update?;
        (self.0 != Some(value)).then(|| {
            self.0 = Some(value);
            Some(value)
        })
    }

    fn snapshot(&self) -> Option<u8> {
        self.0
    }
}

/// A tally that adds every update: an update delivered twice (a relay, a
/// reconnect) counts twice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally(u64);

impl Reduce for Tally {
    type Update = u64;

    fn reduce(&mut self, n: u64) -> Option<u64> {
        self.0 += n;
        (n > 0).then_some(n)
    }

    fn snapshot(&self) -> u64 {
        self.0
    }
}

/// The first line of what the checker says, which names the law.
fn law(error: &laws::LawError) -> String {
    match error {
        laws::LawError::Violated { law, .. } => law.lines().next().unwrap_or_default().to_string(),
        other => other.to_string(),
    }
}

pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    // In a test, `laws::check::<Max<u32>>(any::<u32>().prop_map(Max::new))`
    // panics on a violation; `try_check` returns it.
    laws::try_check::<Max<u32>>(any::<u32>().prop_map(Max::new))?;
    writeln!(out, "Max<u32>: lawful")?;

    for (name, verdict) in [
        ("LastArrival", laws::try_check::<LastArrival>((0u8..4).prop_map(Some))),
        ("Tally", laws::try_check::<Tally>(1u64..10)),
    ] {
        match verdict {
            Ok(()) => writeln!(out, "{name}: lawful (unexpected!)")?,
            Err(e) => {
                writeln!(out, "{name}: {}", law(&e))?;
                if let laws::LawError::Violated { input, .. } = &e {
                    let updates = input.lines().filter(|l| l.trim_start().starts_with('(')).count();
                    writeln!(out, "  smallest failing input: {updates} update(s)")?;
                }
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(&mut std::io::stdout())
}
