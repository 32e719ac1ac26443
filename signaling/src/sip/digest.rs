//! SIP digest authentication as a server (RFC 3261 section 22.3, RFC 2617, MD5 with
//! `qop=auth`): the `Proxy-Authenticate` challenge, stateless nonces bound to the source
//! address and time, and a constant-time check of `Proxy-Authorization`. Pure: the caller
//! passes the clock and the source.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A nonce: `<unix secs, hex>.<HMAC-SHA256(secret, secs|source), 32 hex>`.
pub fn nonce(secret: &[u8], now_secs: u64, source: &str) -> String {
    format!("{now_secs:x}.{}", nonce_mac(secret, now_secs, source))
}

fn nonce_mac(secret: &[u8], secs: u64, source: &str) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    m.update(&secs.to_be_bytes());
    m.update(source.as_bytes());
    m.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a nonce is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    /// Ours, but older than the limit: challenge again with `stale=true`.
    Stale,
    /// Not ours (forged, or for another source).
    Invalid,
}

pub fn check_nonce(
    secret: &[u8],
    n: &str,
    now_secs: u64,
    source: &str,
    max_age_secs: u64,
) -> NonceCheck {
    let Some((ts, mac)) = n.split_once('.') else {
        return NonceCheck::Invalid;
    };
    let Ok(secs) = u64::from_str_radix(ts, 16) else {
        return NonceCheck::Invalid;
    };
    let want = nonce_mac(secret, secs, source);
    if want.is_empty() || !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
        return NonceCheck::Invalid;
    }
    if secs > now_secs + 5 || now_secs - secs > max_age_secs {
        return NonceCheck::Stale;
    }
    NonceCheck::Fresh
}

/// The `Proxy-Authenticate` value.
pub fn challenge(realm: &str, nonce: &str, stale: bool) -> String {
    format!(
        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"{}",
        if stale { ", stale=true" } else { "" }
    )
}

/// The fields of a `Proxy-Authorization: Digest ...` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
    pub algorithm: Option<String>,
}

/// Parse a `Digest` credentials value (quoted or bare parameters, any order).
pub fn parse(v: &str) -> Option<Credentials> {
    let rest = v.trim().strip_prefix("Digest")?.trim_start();
    let mut c = Credentials::default();
    let mut s = rest;
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        let val = val.to_string();
        match k.as_str() {
            "username" => c.username = val,
            "realm" => c.realm = val,
            "nonce" => c.nonce = val,
            "uri" => c.uri = val,
            "response" => c.response = val,
            "qop" => c.qop = Some(val),
            "nc" => c.nc = Some(val),
            "cnonce" => c.cnonce = Some(val),
            "algorithm" => c.algorithm = Some(val),
            _ => {}
        }
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    (!c.username.is_empty() && !c.nonce.is_empty() && !c.response.is_empty()).then_some(c)
}

/// Whether `c` answers the challenge for `method` with `password` (constant-time compare).
pub fn verify(c: &Credentials, password: &str, method: &str) -> bool {
    if c.algorithm
        .as_deref()
        .is_some_and(|a| !a.eq_ignore_ascii_case("md5"))
    {
        return false;
    }
    let ha1 = md5_hex(&format!("{}:{}:{password}", c.username, c.realm));
    let ha2 = md5_hex(&format!("{method}:{}", c.uri));
    let want = match (&c.qop, &c.nc, &c.cnonce) {
        (Some(q), Some(nc), Some(cn)) if q.eq_ignore_ascii_case("auth") => {
            md5_hex(&format!("{ha1}:{}:{nc}:{cn}:auth:{ha2}", c.nonce))
        }
        (None, _, _) => md5_hex(&format!("{ha1}:{}:{ha2}", c.nonce)),
        _ => return false,
    };
    bool::from(
        want.as_bytes()
            .ct_eq(c.response.to_ascii_lowercase().as_bytes()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_2617_example_verifies() {
        let v = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = parse(v).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.nc.as_deref(), Some("00000001"));
        assert!(verify(&c, "Circle Of Life", "GET"));
        assert!(!verify(&c, "circle of life", "GET"));
        assert!(!verify(&c, "Circle Of Life", "POST"));
        let mut md5sess = c.clone();
        md5sess.algorithm = Some("MD5-sess".into());
        assert!(!verify(&md5sess, "Circle Of Life", "GET"));
    }

    #[test]
    fn nonces_are_bound_to_time_and_source() {
        let k = b"secret";
        let n = nonce(k, 1_000, "10.0.0.1");
        assert_eq!(
            check_nonce(k, &n, 1_100, "10.0.0.1", 300),
            NonceCheck::Fresh
        );
        assert_eq!(
            check_nonce(k, &n, 1_400, "10.0.0.1", 300),
            NonceCheck::Stale
        );
        assert_eq!(
            check_nonce(k, &n, 1_100, "10.0.0.2", 300),
            NonceCheck::Invalid
        );
        assert_eq!(
            check_nonce(b"other", &n, 1_100, "10.0.0.1", 300),
            NonceCheck::Invalid
        );
        assert_eq!(
            check_nonce(k, "zz.00", 1_100, "10.0.0.1", 300),
            NonceCheck::Invalid
        );
        assert_eq!(
            check_nonce(k, "", 1_100, "10.0.0.1", 300),
            NonceCheck::Invalid
        );
        assert!(challenge("commhub", &n, true).ends_with("stale=true"));
    }

    #[test]
    fn junk_is_not_credentials() {
        for v in [
            "",
            "Basic abc",
            "Digest",
            "Digest username=",
            "Digest username=\"x",
            "Digest ,,,=,",
        ] {
            assert!(parse(v).is_none(), "{v}");
        }
    }
}
