//! State nonces: 256 random bits from the OS, hex-encoded, so a state cannot be guessed and a
//! malformed one is refused without a DynamoDB call.

/// 32 bytes = 256 bits.
const NONCE_BYTES: usize = 32;
const NONCE_HEX_LEN: usize = NONCE_BYTES * 2;

pub(crate) fn new_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; NONCE_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Only what [`new_nonce`] produces: anything else was never issued.
pub(crate) fn is_well_formed(state: &str) -> bool {
    state.len() == NONCE_HEX_LEN
        && state
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_unique_lowercase_hex_of_256_bits() {
        let a = new_nonce().unwrap();
        let b = new_nonce().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(is_well_formed(&a) && is_well_formed(&b));
    }

    #[test]
    fn anything_else_is_not_a_nonce() {
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }
}
