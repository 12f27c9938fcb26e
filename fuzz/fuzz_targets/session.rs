//! Arbitrary bytes into a replica's sessions: four streams, fed in pieces
//! the input chooses (and never more than one frame end per `handle`
//! call), under plain and strict configurations, lazy relay, few unknown
//! sources and a short history. See `repred_fuzz::harness::run_session` for
//! the input's layout and the invariants checked after every op.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    repred_fuzz::harness::run_session(data);
});
