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
