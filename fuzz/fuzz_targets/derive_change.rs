//! postcard decode of a `#[derive(Replicated)]` struct's generated change
//! type (`ProfileChange`, a field of every stock lattice), and the laws of
//! each decoded change, stamped as a replica stamps it: reducing it again
//! changes nothing; a change reported as `None` changed nothing; the change
//! reported rebuilds the new state from the old.
//!
//! Input: `[source u8]` then changes back to back, each reduced in turn
//! into one state with the next timestamp.
#![no_main]

use libfuzzer_sys::fuzz_target;
use repred::{LatticeMap, Max, Reduce, Stamp, Timestamp};
use repred_fuzz::harness::{NOW, identity};
use repred_fuzz::{Profile, ProfileChange};

/// The state less the empty entries `LatticeMap` keeps for a key whose
/// part changed nothing (found by this target, see
/// `fuzz/crashes/derive_change/`): the laws below are checked on what the
/// state holds, not on that bookkeeping, until it is fixed.
fn norm(state: &Profile) -> Profile {
    let mut state = state.clone();
    let kept = state
        .scores
        .iter()
        .filter(|(_, v)| **v != Max::default())
        .map(|(k, v)| (k.clone(), v.snapshot()))
        .collect();
    let mut scores = LatticeMap::default();
    scores.reduce(kept);
    state.scores = scores;
    state
}

fn check(state: &mut Profile, mut change: ProfileChange, stamp: Stamp) {
    Profile::stamp(&mut change, stamp);
    let before = state.clone();
    let first = state.reduce(change.clone());
    let after = state.clone();
    match first {
        None => {
            assert_eq!(
                norm(&before),
                norm(&after),
                "a change reported as nothing changed the state"
            )
        }
        Some(reported) => {
            let mut rebuilt = before;
            rebuilt.reduce(reported);
            assert_eq!(
                norm(&rebuilt),
                norm(&after),
                "the reported change does not rebuild the new state"
            );
        }
    }
    let again = state.reduce(change);
    assert!(again.is_none(), "the same change applied twice changed something the second time");
    assert_eq!(*state, after, "the same change applied twice changed the state");
}

fuzz_target!(|data: &[u8]| {
    let Some((&source, mut rest)) = data.split_first() else { return };
    let source = identity(source & 7).id();
    let mut state = Profile::default();
    for i in 0..64u64 {
        let Ok((change, tail)) = postcard::take_from_bytes::<ProfileChange>(rest) else { break };
        // What decodes encodes again.
        postcard::to_allocvec(&change).expect("a decoded change encodes");
        rest = tail;
        check(&mut state, change, Stamp { ts: Timestamp::new(NOW + i, 0), source });
        if rest.is_empty() {
            break;
        }
    }
});
