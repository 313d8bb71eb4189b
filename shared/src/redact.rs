//! Redaction for values that may appear in logs and error messages.

/// `ada@example.com` → `a***@example.com`: enough to tell contacts apart in a log, not enough
/// to identify a person. Input without `@` is fully masked.
pub fn email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_only_first_letter_and_domain() {
        assert_eq!(super::email("ada@example.com"), "a***@example.com");
        assert_eq!(super::email("not-an-email"), "***");
    }
}
