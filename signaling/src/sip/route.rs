//! Inbound routing: what the Request-URI's user part asks for. Pure.

/// What an INVITE's Request-URI user names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `sip:{call_id}@host`: join that call (a UUID, lowercased).
    Call(String),
    /// `sip:+E164@host` (or bare digits): a phone number, normalised to `+digits`.
    Number(String),
    /// Anything else.
    Unknown,
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A phone number as `+digits` (E.164: at most 15 digits), from `+15551234567`, `15551234567`
/// or `tel`-style visual separators (`+1-555-123-4567`, `(555) 123 4567`).
pub fn normalise_number(s: &str) -> Option<String> {
    let s = s.trim();
    let body = s.strip_prefix('+').unwrap_or(s);
    let mut digits = String::with_capacity(16);
    for c in body.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '-' | '.' | ' ' | '(' | ')' => {}
            _ => return None,
        }
    }
    (3..=15)
        .contains(&digits.len())
        .then(|| format!("+{digits}"))
}

/// Classify a Request-URI user part (already percent-decoded or not: `%2B` is taken as `+`).
pub fn classify(user: &str) -> Target {
    let user = user.split(';').next().unwrap_or("").trim();
    if is_uuid(user) {
        return Target::Call(user.to_ascii_lowercase());
    }
    let user = user.replace("%2B", "+").replace("%2b", "+");
    match normalise_number(&user) {
        Some(n) => Target::Number(n),
        None => Target::Unknown,
    }
}

/// The last four digits of a number, for logs (numbers never appear in the clear).
pub fn redact_number(n: &str) -> String {
    let digits: Vec<char> = n.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 4 {
        return "***".into();
    }
    let tail: String = digits[digits.len() - 2..].iter().collect();
    format!("***{tail}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn users_are_classified() {
        assert_eq!(
            classify("0D3F2C1A-1111-4222-8333-944455556666"),
            Target::Call("0d3f2c1a-1111-4222-8333-944455556666".into())
        );
        assert_eq!(
            classify("+15551234567"),
            Target::Number("+15551234567".into())
        );
        assert_eq!(
            classify("%2B15551234567"),
            Target::Number("+15551234567".into())
        );
        assert_eq!(
            classify("15551234567;npdi"),
            Target::Number("+15551234567".into())
        );
        assert_eq!(classify("service"), Target::Unknown);
        assert_eq!(classify(""), Target::Unknown);
        assert_eq!(classify("+1234567890123456"), Target::Unknown);
        assert_eq!(
            classify("0d3f2c1a-1111-4222-8333-94445555666g"),
            Target::Unknown
        );
    }

    #[test]
    fn numbers_are_normalised_and_redacted() {
        assert_eq!(
            normalise_number("+1 (555) 123-4567").as_deref(),
            Some("+15551234567")
        );
        assert_eq!(normalise_number("12"), None);
        assert_eq!(normalise_number("+1555x"), None);
        assert_eq!(redact_number("+15551234567"), "***67");
        assert_eq!(redact_number("+12"), "***");
    }
}
