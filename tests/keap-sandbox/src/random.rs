//! Unguessable identifiers for codes, tokens and keys.

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters from [A-Za-z0-9], uniformly (rejection sampling avoids modulo bias).
pub(crate) fn alphanumeric(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).expect("the operating system's random source failed");
        for &byte in &buf {
            // 248 = 4 * 62: bytes at or above it would favour the first characters.
            if byte < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
            }
        }
    }
    out
}

/// Uniform in [0, 1): where in Keap's documented ranges a retry delay falls.
pub(crate) fn unit() -> f64 {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    // 53 random bits: every value is exactly representable as an f64.
    (u64::from_le_bytes(buf) >> 11) as f64 / (1u64 << 53) as f64
}
