//! What HTTP carriers send to the webhooks, parsed into one shape: inbound messages (MO) and
//! delivery reports (DLR) in the three styles the gateway speaks: commhub's generic JSON (see
//! `docs/sms-http.md`), Twilio's form posts and Telnyx's JSON events. Pure: bodies in, typed
//! values or a clear error out (never a partial message).

use serde_json::Value;
use signaling::sip::route::normalise_number;

use super::receipt::{MessageStatus, ReceiptState};

/// Longest text accepted from a carrier (10 UCS-2 parts, generously).
pub const MAX_TEXT_CHARS: usize = 1_600;
/// Most media items in one MO.
pub const MAX_MEDIA: usize = 10;

/// An inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mo {
    /// The carrier's id (makes a repeated webhook idempotent).
    pub carrier_id: String,
    pub from: String,
    pub to: String,
    pub text: String,
    pub media: Vec<MediaRef>,
}

/// An MMS item the carrier hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub url: String,
    pub content_type: Option<String>,
}

/// A delivery report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dlr {
    pub carrier_id: String,
    pub status: MessageStatus,
    pub error: Option<String>,
}

/// What a carrier event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Mo(Mo),
    Dlr(Dlr),
    /// An event the gateway does not act on (acknowledged, not stored).
    Ignored(String),
}

/// Why a webhook body is refused (400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is not {0}")]
    NotParsable(&'static str),
    #[error("`{0}` is missing or empty")]
    Missing(&'static str),
    #[error("`{0}` is not a phone number")]
    BadNumber(&'static str),
    #[error("`{0}` is too long")]
    TooLong(&'static str),
    #[error("unknown status `{0}`")]
    UnknownStatus(String),
}

fn number(v: Option<&str>, field: &'static str) -> Result<String, WebhookError> {
    let v = v
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::Missing(field))?;
    normalise_number(v).ok_or(WebhookError::BadNumber(field))
}

fn id(v: Option<&str>, field: &'static str) -> Result<String, WebhookError> {
    let v = v
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::Missing(field))?;
    if v.len() > 128 {
        return Err(WebhookError::TooLong(field));
    }
    Ok(v.to_string())
}

fn text(v: Option<&str>) -> Result<String, WebhookError> {
    let t = v.unwrap_or("");
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(WebhookError::TooLong("text"));
    }
    Ok(t.to_string())
}

/// The generic JSON status words (and SMPP's `stat:` words, which some gateways pass on).
fn generic_status(s: &str) -> Result<MessageStatus, WebhookError> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "queued" | "accepted" | "enroute" | "sent" | "sending" => MessageStatus::Sent,
        "delivered" | "delivrd" => MessageStatus::Delivered,
        "failed"
        | "undelivered"
        | "undeliv"
        | "rejected"
        | "rejectd"
        | "expired"
        | "deleted"
        | "delivery_failed"
        | "sending_failed"
        | "delivery_unconfirmed" => MessageStatus::Failed,
        other => match ReceiptState::from_stat(other) {
            Some(st) => st.status(),
            None => {
                return Err(WebhookError::UnknownStatus(
                    other.chars().take(32).collect(),
                ));
            }
        },
    })
}

/// commhub's generic JSON MO: `{"id", "from", "to", "text", "media": [{"url", "content_type"}]}`.
pub fn generic_mo(body: &[u8]) -> Result<Mo, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| WebhookError::NotParsable("JSON"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let media = media_list(v.get("media"), "url", "content_type")?;
    Ok(Mo {
        carrier_id: id(s("id"), "id")?,
        from: number(s("from"), "from")?,
        to: number(s("to"), "to")?,
        text: text(s("text"))?,
        media,
    })
}

/// commhub's generic JSON DLR: `{"id", "status", "error"}`.
pub fn generic_dlr(body: &[u8]) -> Result<Dlr, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| WebhookError::NotParsable("JSON"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    Ok(Dlr {
        carrier_id: id(s("id"), "id")?,
        status: generic_status(s("status").ok_or(WebhookError::Missing("status"))?)?,
        error: s("error")
            .filter(|e| !e.is_empty())
            .map(|e| e.chars().take(200).collect()),
    })
}

fn media_list(
    v: Option<&Value>,
    url_key: &str,
    type_key: &str,
) -> Result<Vec<MediaRef>, WebhookError> {
    let Some(items) = v.and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    if items.len() > MAX_MEDIA {
        return Err(WebhookError::TooLong("media"));
    }
    items
        .iter()
        .map(|m| {
            let url = m
                .get(url_key)
                .and_then(Value::as_str)
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                .ok_or(WebhookError::Missing("media url"))?;
            Ok(MediaRef {
                url: url.to_string(),
                content_type: m.get(type_key).and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// Twilio's form post (`application/x-www-form-urlencoded`, already decoded into pairs): an MO
/// carries `Body`; a status callback carries `MessageStatus`.
pub fn twilio(params: &[(String, String)]) -> Result<Event, WebhookError> {
    let get = |k: &str| params.iter().find(|(a, _)| a == k).map(|(_, b)| b.as_str());
    let sid = id(get("MessageSid").or(get("SmsSid")), "MessageSid")?;
    if let Some(st) = get("MessageStatus").or(get("SmsStatus"))
        && st != "received"
    {
        return Ok(Event::Dlr(Dlr {
            carrier_id: sid,
            status: generic_status(st)?,
            error: get("ErrorCode")
                .filter(|e| !e.is_empty())
                .map(str::to_string),
        }));
    }
    let n: usize = get("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
    if n > MAX_MEDIA {
        return Err(WebhookError::TooLong("media"));
    }
    let media = (0..n)
        .filter_map(|i| {
            Some(MediaRef {
                url: get(&format!("MediaUrl{i}"))?.to_string(),
                content_type: get(&format!("MediaContentType{i}")).map(str::to_string),
            })
        })
        .collect();
    Ok(Event::Mo(Mo {
        carrier_id: sid,
        from: number(get("From"), "From")?,
        to: number(get("To"), "To")?,
        text: text(get("Body"))?,
        media,
    }))
}

/// Telnyx's JSON event: `message.received` is an MO; `message.sent` and `message.finalized`
/// report delivery (the first recipient's status).
pub fn telnyx(body: &[u8]) -> Result<Event, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| WebhookError::NotParsable("JSON"))?;
    let data = v.get("data").ok_or(WebhookError::Missing("data"))?;
    let kind = data
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or(WebhookError::Missing("event_type"))?;
    let p = data
        .get("payload")
        .ok_or(WebhookError::Missing("payload"))?;
    let s = |k: &str| p.get(k).and_then(Value::as_str);
    let first_to = p
        .get("to")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    match kind {
        "message.received" => Ok(Event::Mo(Mo {
            carrier_id: id(s("id"), "id")?,
            from: number(
                p.get("from")
                    .and_then(|f| f.get("phone_number"))
                    .and_then(Value::as_str),
                "from",
            )?,
            to: number(
                first_to
                    .and_then(|t| t.get("phone_number"))
                    .and_then(Value::as_str),
                "to",
            )?,
            text: text(s("text"))?,
            media: media_list(p.get("media"), "url", "content_type")?,
        })),
        "message.sent" | "message.finalized" => {
            let st = first_to
                .and_then(|t| t.get("status"))
                .and_then(Value::as_str)
                .ok_or(WebhookError::Missing("to[0].status"))?;
            let error = p
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .and_then(|e| e.get("code").or(e.get("title")))
                .map(|c| c.to_string().trim_matches('"').to_string());
            Ok(Event::Dlr(Dlr {
                carrier_id: id(s("id"), "id")?,
                status: generic_status(st)?,
                error,
            }))
        }
        other => Ok(Event::Ignored(other.chars().take(64).collect())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generic_bodies() {
        let mo = generic_mo(br#"{"id":"c-1","from":"+15557654321","to":"15551230000","text":"STOP","media":[{"url":"https://c.example/m/1","content_type":"image/png"}]}"#).unwrap();
        assert_eq!(
            (mo.from.as_str(), mo.to.as_str(), mo.text.as_str()),
            ("+15557654321", "+15551230000", "STOP")
        );
        assert_eq!(mo.media.len(), 1);
        assert_eq!(
            generic_mo(b"{").unwrap_err(),
            WebhookError::NotParsable("JSON")
        );
        assert_eq!(
            generic_mo(br#"{"id":"x","from":"hello","to":"+15551230000"}"#).unwrap_err(),
            WebhookError::BadNumber("from")
        );
        assert_eq!(
            generic_mo(br#"{"from":"+15557654321","to":"+15551230000"}"#).unwrap_err(),
            WebhookError::Missing("id")
        );
        let long = format!(
            r#"{{"id":"x","from":"+15557654321","to":"+15551230000","text":"{}"}}"#,
            "a".repeat(1601)
        );
        assert_eq!(
            generic_mo(long.as_bytes()).unwrap_err(),
            WebhookError::TooLong("text")
        );
        let d = generic_dlr(br#"{"id":"c-1","status":"DELIVRD"}"#).unwrap();
        assert_eq!(d.status, MessageStatus::Delivered);
        let d = generic_dlr(br#"{"id":"c-1","status":"undelivered","error":"30003"}"#).unwrap();
        assert_eq!(
            (d.status, d.error.as_deref()),
            (MessageStatus::Failed, Some("30003"))
        );
        assert!(matches!(
            generic_dlr(br#"{"id":"c","status":"maybe"}"#),
            Err(WebhookError::UnknownStatus(_))
        ));
    }

    #[test]
    fn twilio_and_telnyx_bodies() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let e = twilio(&p(&[
            ("MessageSid", "SM1"),
            ("From", "+15557654321"),
            ("To", "+15551230000"),
            ("Body", "hi"),
            ("NumMedia", "1"),
            ("MediaUrl0", "https://api.twilio.com/x"),
            ("MediaContentType0", "image/jpeg"),
        ]))
        .unwrap();
        let Event::Mo(mo) = e else { panic!() };
        assert_eq!((mo.text.as_str(), mo.media.len()), ("hi", 1));
        let e = twilio(&p(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30005"),
        ]))
        .unwrap();
        assert_eq!(
            e,
            Event::Dlr(Dlr {
                carrier_id: "SM1".into(),
                status: MessageStatus::Failed,
                error: Some("30005".into())
            })
        );
        let mo = br#"{"data":{"event_type":"message.received","payload":{"id":"t-1","from":{"phone_number":"+15557654321"},"to":[{"phone_number":"+15551230000"}],"text":"help"}}}"#;
        let Event::Mo(m) = telnyx(mo).unwrap() else {
            panic!()
        };
        assert_eq!(m.text, "help");
        let dlr = br#"{"data":{"event_type":"message.finalized","payload":{"id":"t-2","to":[{"phone_number":"+15551230000","status":"delivery_failed"}],"errors":[{"code":"40002"}]}}}"#;
        assert_eq!(
            telnyx(dlr).unwrap(),
            Event::Dlr(Dlr {
                carrier_id: "t-2".into(),
                status: MessageStatus::Failed,
                error: Some("40002".into())
            })
        );
        let other = br#"{"data":{"event_type":"number.updated","payload":{}}}"#;
        assert_eq!(
            telnyx(other).unwrap(),
            Event::Ignored("number.updated".into())
        );
        assert_eq!(telnyx(b"[]").unwrap_err(), WebhookError::Missing("data"));
    }
}
