//! Keep secrets and personal data out of logs: tokens, IP addresses and phone numbers are shown
//! only in redacted form.

use std::fmt;

/// Wraps a value that must never be logged in the clear; `Display`/`Debug` show a redacted form.
#[derive(Clone, PartialEq, Eq)]
pub struct Pii<T>(pub T);

impl<T: AsRef<str>> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0.as_ref()))
    }
}

impl<T: AsRef<str>> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Show at most the last 2 characters of a secret-ish string, plus its length.
pub fn redact(s: &str) -> String {
    let n = s.chars().count();
    if n <= 4 {
        return "***".to_string();
    }
    let tail: String = s.chars().skip(n - 2).collect();
    format!("***{tail}({n})")
}

/// A database URL for logs: scheme and database name only (no user, password or host).
pub fn db_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let db = rest
        .rsplit_once('/')
        .map(|(_, d)| d.split('?').next().unwrap_or(""))
        .unwrap_or("");
    format!("{scheme}://***/{db}")
}

/// Replace IPv4 addresses in ICE candidates / SDP fragments with `x.x.x.x` for logging.
pub fn scrub_ips(s: &str) -> String {
    s.split(' ')
        .map(|tok| {
            if tok.parse::<std::net::IpAddr>().is_ok() {
                "x.x.x.x"
            } else {
                tok
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_shown() {
        let shown = format!("{}", Pii("eyJhbGciOiJIUzI1NiJ9.secret.sig"));
        assert!(!shown.contains("secret"));
        assert!(shown.ends_with("ig(31)"));
        assert_eq!(redact("+1"), "***");
        assert_eq!(
            scrub_ips("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"),
            "candidate:1 1 udp 2130706431 x.x.x.x 5000 typ host"
        );
    }
}
