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

/// Every email-looking address in `text`, however many and whatever surrounds them (commas,
/// brackets, quotes), redacted as [`email`] does; everything else is kept as it is.
pub fn emails_in(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let is_local = |c: char| c.is_alphanumeric() || "._%+-'".contains(c);
    let is_domain = |c: char| c.is_alphanumeric() || c == '.' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, &c) in chars.iter().enumerate() {
        if c != '@' || at < copied {
            continue;
        }
        let mut start = at;
        while start > copied && is_local(chars[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < chars.len() && is_domain(chars[end]) {
            end += 1;
        }
        // A sentence's full stop after the domain is not part of it.
        while end > at + 1 && chars[end - 1] == '.' {
            end -= 1;
        }
        if start == at || end == at + 1 {
            continue;
        }
        out.extend(&chars[copied..start]);
        out.push(chars[start]);
        out.push_str("***@");
        out.extend(&chars[at + 1..end]);
        copied = end;
    }
    out.extend(&chars[copied..]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_every_address_in_a_message() {
        assert_eq!(
            super::emails_in(
                "ada@example.com,bob.smith@example.org: duplicate of <ada@example.com>."
            ),
            "a***@example.com,b***@example.org: duplicate of <a***@example.com>."
        );
        assert_eq!(super::emails_in("no address @ all"), "no address @ all");
    }

    #[test]
    fn keeps_only_first_letter_and_domain() {
        assert_eq!(super::email("ada@example.com"), "a***@example.com");
        assert_eq!(super::email("not-an-email"), "***");
    }
}
