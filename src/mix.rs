//! Deterministic mixing for seeded behaviour (spot prices, fault draws, generated names): the same
//! seed and inputs always give the same numbers, on every machine.

/// SplitMix64's finaliser: a well-spread 64-bit value from any 64-bit input.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a of a string: a stable hash (unlike `std`'s, which is randomised per process).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A number in [0, 1) from 64 random bits.
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// `len` characters of Kubernetes' name-suffix alphabet (no vowels, no look-alikes) drawn from `x`.
pub fn name_suffix(mut x: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_input_always_mixes_to_the_same_value() {
        assert_eq!(splitmix64(1), splitmix64(1));
        assert_ne!(splitmix64(1), splitmix64(2));
        assert_eq!(fnv1a("m5.large"), fnv1a("m5.large"));
        assert!((0.0..1.0).contains(&unit(u64::MAX)));
        assert_eq!(name_suffix(12345, 5).len(), 5);
    }
}
