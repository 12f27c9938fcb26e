//! JavaScript timestamps (float milliseconds) and repred's hybrid
//! [`Timestamp`] (milliseconds in the high 48 bits, 1/65,536 ms below).
//!
//! A float `ts` maps to the raw value `ts * 65536`. Multiplying by a power of
//! two is exact, and every float from 2^36 ms (1972) to 2^48 ms (year 10889)
//! is a whole number of 1/65,536 ms (its last bit is worth at least 2^-16
//! ms), so every timestamp a JavaScript peer makes today maps exactly and
//! back: `Date.now()`, and monotonic-timestamp's `t + n/(n+1000)` too.
//!
//! Floats below 2^36 ms with a finer fraction (only hand-made ones, such as
//! `1.1`) are rounded down to the next 1/65,536 ms. That rounding orders
//! updates only: the write keeps the float it came with and goes out with it
//! unchanged. Two such updates of one source within one 1/65,536 ms would
//! look like one (the second is taken as already seen). Zero, negative and
//! non-finite floats and floats from 2^48 ms on have no [`Timestamp`]; an
//! update carrying one is refused.
//!
//! A Rust node's own timestamps are always floats exactly (see
//! [`next_own`]), so they travel to JavaScript and back unchanged.

use repred::Timestamp;

const SCALE: f64 = 65_536.0;

/// The timestamp a JavaScript float orders as, or `None` when it has none.
///
/// ```
/// use repred::Timestamp;
/// use repred_scuttlebutt::time::{float_of, timestamp_of};
///
/// let ts = 1_700_000_000_000.000_999_f64; // as monotonic-timestamp makes them
/// let t = timestamp_of(ts).unwrap();
/// assert_eq!(t.millis(), 1_700_000_000_000);
/// assert_eq!(float_of(t), ts, "exact both ways");
/// assert_eq!(timestamp_of(-1.0), None);
/// assert_eq!(timestamp_of(0.0), None, "zero is never issued");
/// assert_eq!(timestamp_of(1.0), Some(Timestamp::new(1, 0)));
/// ```
pub fn timestamp_of(ts: f64) -> Option<Timestamp> {
    let scaled = (ts * SCALE).floor();
    // From 1/65536 ms up to 2^64 (as a float) exclusive; NaN, negatives,
    // zero and infinities are outside.
    if !(1.0..18_446_744_073_709_551_616.0).contains(&scaled) {
        return None;
    }
    // In range and whole: the cast is exact.
    Some(Timestamp::from_raw(scaled as u64))
}

/// Whether `ts` maps to a timestamp and back without rounding.
pub fn is_exact(ts: f64) -> bool {
    timestamp_of(ts).is_some_and(|t| float_of(t) == ts)
}

/// The float a timestamp stands for, rounded down when it is no float (only
/// timestamps that did not come from a float: a clock entry of a repred
/// peer's own update). Rounding down is the safe side for a clock: a peer
/// told we have less sends a little more, never less.
///
/// ```
/// use repred::Timestamp;
/// use repred_scuttlebutt::time::float_of;
///
/// assert_eq!(float_of(Timestamp::new(1_700_000_000_000, 0)), 1_700_000_000_000.0);
/// assert_eq!(float_of(Timestamp::new(5, 32_768)), 5.5);
/// ```
pub fn float_of(ts: Timestamp) -> f64 {
    let raw = ts.to_raw();
    let mut f = raw as f64;
    // `as` rounds to nearest above 2^53; step down if it rounded up. The
    // comparison is done in u128 so that 2^64 itself does not saturate.
    if f as u128 > u128::from(raw) {
        f = f.next_down();
    }
    f / SCALE
}

/// The smallest timestamp at or above `raw` that is a float exactly.
fn exact_at_or_above(raw: u64) -> Option<u64> {
    let f = raw as f64;
    let f = if (f as u128) < u128::from(raw) { f.next_up() } else { f };
    // 2^64 and above do not fit.
    if f >= 18_446_744_073_709_551_616.0 {
        return None;
    }
    Some(f as u64)
}

/// The timestamp of a Rust node's next own write: after `last` (the newest
/// it has issued or accepted) and no earlier than the wall clock `now`
/// (milliseconds), a float exactly, and never a whole millisecond.
///
/// Whole milliseconds are what a JavaScript peer stamps the first write of
/// each millisecond with (`Date.now()`; later writes in the same millisecond
/// get `n/(n+1000)` more). `scuttlebutt/model` takes the later *arrival*
/// when two writes of a key have equal timestamps, which no rule can make
/// agree everywhere; never issuing whole milliseconds keeps a Rust write from
/// tying with a JavaScript first write. At today's dates a float has 4,096
/// steps per millisecond, so a node can write about four million times a
/// second before its timestamps run ahead of the wall clock.
///
/// ```
/// use repred::Timestamp;
/// use repred_scuttlebutt::time::{float_of, is_exact, next_own};
///
/// let now = 1_700_000_000_000;
/// let a = next_own(Timestamp::ZERO, now);
/// let b = next_own(a, now);
/// assert!(a.millis() == now && a.counter() != 0);
/// assert!(b > a && is_exact(float_of(a)) && is_exact(float_of(b)));
/// ```
pub fn next_own(last: Timestamp, now: u64) -> Timestamp {
    let wall = Timestamp::new(now.min(u64::MAX >> 16), 0).to_raw();
    let candidate = last.to_raw().saturating_add(1).max(wall);
    let mut raw = exact_at_or_above(candidate).unwrap_or(u64::MAX);
    if raw & 0xFFFF == 0 {
        raw = exact_at_or_above(raw.saturating_add(1)).unwrap_or(u64::MAX);
    }
    Timestamp::from_raw(raw)
}

#[cfg(test)]
mod tests {
    // Literals written as JavaScript prints them.
    #![allow(clippy::excessive_precision)]
    use super::*;

    #[test]
    fn every_float_from_1972_maps_exactly() {
        let mut ts = 68_719_476_736.0_f64; // 2^36 ms
        for _ in 0..10_000 {
            assert!(is_exact(ts), "{ts}");
            ts = ts.next_up();
        }
        for ts in [1_700_000_000_000.0, 1_700_000_000_000.5, 1_700_000_000_000.0 + 7.0 / 1007.0] {
            assert!(is_exact(ts), "{ts}");
        }
        assert!(is_exact(281_474_976_710_655.5), "just below 2^48 ms");
        assert_eq!(timestamp_of(281_474_976_710_656.0), None, "2^48 ms has no timestamp");
    }

    #[test]
    fn fine_small_floats_round_down_and_keep_order() {
        assert!(!is_exact(1.1));
        let t = timestamp_of(1.1).unwrap();
        assert!(float_of(t) < 1.1 && float_of(t) > 1.0999);
        assert!(timestamp_of(1.1) < timestamp_of(1.2));
        assert_eq!(timestamp_of(1e-9), None, "below 1/65536 ms");
        assert_eq!(timestamp_of(f64::NAN), None);
        assert_eq!(timestamp_of(f64::INFINITY), None);
    }

    #[test]
    fn float_of_rounds_down_when_the_timestamp_is_no_float() {
        let t = Timestamp::new(1_700_000_000_000, 1); // not a float at this date
        let f = float_of(t);
        assert!(timestamp_of(f).unwrap() < t);
        assert!(float_of(Timestamp::MAX) < 281_474_976_710_656.0);
    }

    #[test]
    fn own_timestamps_increase_are_floats_and_never_whole_milliseconds() {
        let now = 1_700_000_000_000;
        let mut last = Timestamp::ZERO;
        for i in 0..20_000 {
            let t = next_own(last, now + i / 10_000);
            assert!(t > last);
            assert_ne!(t.counter(), 0);
            assert_eq!(timestamp_of(float_of(t)), Some(t));
            last = t;
        }
        // After a remote timestamp from the future, ours go after it.
        let remote = timestamp_of(1_700_000_050_000.0).unwrap();
        assert!(next_own(remote, now) > remote);
        // Small dates (tests): every raw value is a float there.
        assert_eq!(next_own(Timestamp::new(5, 0), 5), Timestamp::new(5, 1));
    }
}
