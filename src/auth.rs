//! Join tokens (JWT, HS256), TURN REST credentials (coturn `use-auth-secret`), and the
//! constant-time checks of API keys and the PBX token.
//!
//! A join token admits one participant identity with one role to one room (and, for calls made
//! through the API, one call) until it expires (`auth.token_ttl_secs`, 10 minutes by default).
//! Only HS256 is accepted; the header's `alg` must say so (no `none`, no key confusion).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<sha2::Sha256>;
type HmacSha1 = Hmac<sha1::Sha1>;

/// Issuer written into and required from every token.
pub const ISSUER: &str = "commhub";

/// What a join token grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    /// The participant identity (a user id, a phone leg, ...).
    pub sub: String,
    pub room: String,
    /// Set for calls created through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// `agent`, `customer`, `pstn`, `supervisor` or `guest`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    /// The call this token is for (tokens of API calls name one; we sign them, so a value that
    /// is not a call id means no call).
    pub fn call(&self) -> Option<crate::domain::CallId> {
        self.call_id.as_deref().and_then(|c| c.parse().ok())
    }
}

/// Why a token was refused. The messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a join token is required")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not HS256")]
    Algorithm,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another room")]
    WrongRoom,
    #[error("the token was not issued by commhub")]
    Issuer,
}

impl TokenError {
    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::Algorithm => "token_algorithm",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::WrongRoom => "token_wrong_room",
            TokenError::Issuer => "token_issuer",
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs and checks join tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        TokenKey {
            secret: secret.to_vec(),
        }
    }

    /// A random key (tokens then only verify in this process).
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        TokenKey::new(&bytes)
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        m.update(data);
        m
    }

    /// Issue a token valid for `ttl` from now.
    pub fn issue(
        &self,
        sub: &str,
        room: &str,
        call_id: Option<&str>,
        role: &str,
        name: Option<&str>,
        ttl: Duration,
    ) -> (String, Claims) {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: sub.to_string(),
            room: room.to_string(),
            call_id: call_id.map(str::to_string),
            role: role.to_string(),
            name: name.map(str::to_string),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        (self.sign(&claims), claims)
    }

    /// Sign arbitrary claims (tests use this for expired tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let sig = self.mac(signing_input.as_bytes()).finalize().into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Check signature, issuer and expiry (at `now`, unix seconds); the room is checked by
    /// [`Claims::for_room`].
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Algorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        self.mac(signing_input.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, unix_now())
    }
}

impl Claims {
    pub fn for_room(self, room: &str) -> Result<Claims, TokenError> {
        if self.room == room {
            Ok(self)
        } else {
            Err(TokenError::WrongRoom)
        }
    }
}

/// TURN REST credentials (draft-uberti-behave-turn-rest, coturn `use-auth-secret`):
/// username `"{expiry_unix}:{user}"`, credential base64(HMAC-SHA1(secret, username)).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub credential: String,
    pub ttl: u64,
    pub expires_at: u64,
}

pub fn turn_credentials(secret: &str, user: &str, ttl: Duration, now: u64) -> TurnCredentials {
    let expires_at = now + ttl.as_secs();
    // ':' separates expiry and user in coturn's parser; keep the user part free of it.
    let user: String = user.chars().filter(|c| *c != ':').collect();
    let username = format!("{expires_at}:{user}");
    let mut m = <HmacSha1 as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(username.as_bytes());
    TurnCredentials {
        username,
        credential: STANDARD.encode(m.finalize().into_bytes()),
        ttl: ttl.as_secs(),
        expires_at,
    }
}

/// Constant-time equality of a presented secret and the configured one. An empty configured
/// secret never matches.
pub fn secret_matches(presented: &str, configured: &str) -> bool {
    if configured.is_empty() {
        return false;
    }
    // Compare digests so the time does not depend on where the strings differ or on length.
    let a = <sha2::Sha256 as sha2::Digest>::digest(presented.as_bytes());
    let b = <sha2::Sha256 as sha2::Digest>::digest(configured.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The ICE servers a participant is given (signaling's `joined`, call-create, tokens): the
/// configured STUN/TURN URLs, and TURN with REST credentials for `user` when a TURN secret is
/// configured.
pub fn ice_servers(cfg: &crate::config::Config, user: &str) -> Vec<signaling::IceServer> {
    let mut out = Vec::new();
    if !cfg.signaling.ice_servers.is_empty() {
        out.push(signaling::IceServer {
            urls: cfg.signaling.ice_servers.clone(),
            username: None,
            credential: None,
        });
    }
    let urls = cfg.turn_urls();
    if !cfg.turn.shared_secret.is_empty() && !urls.is_empty() {
        let c = turn_credentials(
            &cfg.turn.shared_secret,
            user,
            std::time::Duration::from_secs(cfg.turn.credential_ttl_secs),
            unix_now(),
        );
        out.push(signaling::IceServer {
            urls,
            username: Some(c.username),
            credential: Some(c.credential),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(b"test-secret")
    }

    #[test]
    fn issued_tokens_verify_for_their_room_only() {
        let (t, c) = key().issue(
            "u1",
            "r1",
            Some("c1"),
            "agent",
            None,
            Duration::from_secs(600),
        );
        let v = key().verify(&t).expect("valid");
        assert_eq!(v, c);
        assert_eq!(v.clone().for_room("r1").expect("room").sub, "u1");
        assert_eq!(v.for_room("r2"), Err(TokenError::WrongRoom));
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let (t, c) = key().issue("u1", "r1", None, "agent", None, Duration::from_secs(600));
        assert_eq!(key().verify_at(&t, c.exp), Err(TokenError::Expired));
        assert_eq!(
            TokenKey::new(b"other").verify(&t),
            Err(TokenError::Signature)
        );
        assert_eq!(key().verify(""), Err(TokenError::Missing));
        assert_eq!(key().verify("a.b"), Err(TokenError::Malformed));
        // Tampered payload, original signature.
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut claims = c.clone();
        claims.room = "r2".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        assert_eq!(key().verify(&parts.join(".")), Err(TokenError::Signature));
        // alg none.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(key().verify(&none), Err(TokenError::Algorithm));
    }

    #[test]
    fn turn_credentials_match_an_independent_hmac() {
        let c = turn_credentials("secret", "alice", Duration::from_secs(600), 1_000_000);
        assert_eq!(c.username, "1000600:alice");
        // Independent value: printf '1000600:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(c.credential, "EUVmHpFeStn26cw8L0a33nZgRxM=");
        assert_eq!(c.ttl, 600);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_matches("abc", "abc"));
        assert!(!secret_matches("abd", "abc"));
        assert!(!secret_matches("", ""));
        assert!(!secret_matches("abc", ""));
    }
}
