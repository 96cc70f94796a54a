//! Shared pieces of the hostile-input property tests (`tests/hostile_*.rs`
//! in each crate): one case count, one proptest configuration, and cheap
//! generators of random bytes.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property: the floor issue 12 sets for every parser.
pub const CASES: u32 = 10_000;

/// [`CASES`] cases, no regression files written into the source tree.
pub fn config() -> Config {
    Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Deterministic pseudo-random bytes (xorshift) from `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Random bytes of a length in `len`, from a seed: generating a vector
/// element by element costs more than most parsers under test, and these
/// cases need volume, not shrinking to the byte.
pub fn cheap_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    (len, any::<u64>()).prop_map(|(n, seed)| noise(n, seed))
}
