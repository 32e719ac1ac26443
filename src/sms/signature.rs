//! Carrier webhook signatures (HTTP mode): Twilio's `X-Twilio-Signature` (HMAC-SHA1 over the
//! URL and the sorted form parameters, base64) and Telnyx's Ed25519 signature over
//! `{telnyx-timestamp}|{raw body}` with a freshness window. Pure (the caller passes the clock);
//! comparisons are constant-time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Twilio's signature of a request: the full URL (with its query string), then each POST form
/// parameter's name and value, sorted by name, appended without separators; HMAC-SHA1 with the
/// account's auth token; base64.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(data.as_bytes());
    b64().encode(mac.finalize().into_bytes())
}

/// Whether `header` (`X-Twilio-Signature`) signs this request.
pub fn twilio_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let want = twilio_signature(auth_token, url, params);
    !want.is_empty() && bool::from(want.as_bytes().ct_eq(header.trim().as_bytes()))
}

/// Why a Telnyx webhook is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature or timestamp header is missing or malformed")]
    Malformed,
    #[error("the timestamp is outside the {0} s window")]
    Stale(u64),
    #[error("the signature does not verify")]
    Invalid,
}

/// Check a Telnyx webhook: `public_key` is the account's Ed25519 public key (base64 of the 32
/// raw bytes, as Telnyx's portal shows it), `signature` the `telnyx-signature-ed25519` header
/// (base64), `timestamp` the `telnyx-timestamp` header (Unix seconds).
pub fn telnyx_verify(
    public_key: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    if now_secs.abs_diff(ts) > tolerance_secs {
        return Err(SignatureError::Stale(tolerance_secs));
    }
    let key = b64()
        .decode(public_key.trim())
        .map_err(|_| SignatureError::Malformed)?;
    let sig = b64()
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed)?;
    if key.len() != 32 || sig.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut msg = Vec::with_capacity(timestamp.len() + 1 + body.len());
    msg.extend_from_slice(timestamp.trim().as_bytes());
    msg.push(b'|');
    msg.extend_from_slice(body);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
        .verify(&msg, &sig)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signatures_follow_the_order_and_detect_changes() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let params = p(&[
            ("To", "+15551230000"),
            ("Body", "hi"),
            ("From", "+15557654321"),
        ]);
        let url = "https://example.com/functions/v1/sms-webhook-mo?token=x";
        let sig = twilio_signature("secret", url, &params);
        // Parameter order does not matter; names and values do.
        let shuffled = p(&[
            ("From", "+15557654321"),
            ("To", "+15551230000"),
            ("Body", "hi"),
        ]);
        assert!(twilio_valid("secret", url, &shuffled, &sig));
        assert!(!twilio_valid("secret", url, &p(&[("Body", "hi!")]), &sig));
        assert!(!twilio_valid("other", url, &params, &sig));
        assert!(!twilio_valid(
            "secret",
            "https://example.com/x",
            &params,
            &sig
        ));
        assert!(!twilio_valid("secret", url, &params, ""));
    }

    #[test]
    fn telnyx_signatures() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = b64().encode(kp.public_key().as_ref());
        let body = br#"{"data":{"event_type":"message.received"}}"#;
        let ts = "1796150000";
        let sig = b64().encode(kp.sign(&[ts.as_bytes(), b"|", body].concat()).as_ref());
        assert_eq!(
            telnyx_verify(&public, ts, body, &sig, 1796150010, 300),
            Ok(())
        );
        assert_eq!(
            telnyx_verify(&public, ts, b"{}", &sig, 1796150010, 300),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            telnyx_verify(&public, ts, body, &sig, 1796151000, 300),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            telnyx_verify(&public, "x", body, &sig, 1796150010, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            telnyx_verify("AAAA", ts, body, &sig, 1796150010, 300),
            Err(SignatureError::Malformed)
        );
    }
}
