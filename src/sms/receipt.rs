//! Delivery receipts: the SMPP 3.4 receipt text (Appendix B: `id:... sub:... dlvrd:...
//! submit date:... done date:... stat:DELIVRD err:000 text:...`) and the `message_state` TLV,
//! mapped to the status of `sms_messages`, which only moves forward (queued -> sent ->
//! delivered or failed; an ENROUTE after DELIVRD changes nothing). Pure.

/// A message's status in `sms_messages.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    Queued,
    Sent,
    Delivered,
    Failed,
    /// Not sent: the recipient opted out.
    Blocked,
    /// An inbound message.
    Received,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Failed => "failed",
            MessageStatus::Blocked => "blocked",
            MessageStatus::Received => "received",
        }
    }

    fn rank(self) -> u8 {
        match self {
            MessageStatus::Queued => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Delivered | MessageStatus::Failed => 2,
            MessageStatus::Blocked | MessageStatus::Received => 3,
        }
    }

    pub fn is_final(self) -> bool {
        self.rank() >= 2
    }
}

/// The status after `next` is reported for a message in `current`, or `None` when the report
/// changes nothing: statuses only move forward, and a final one stays.
pub fn advance(current: MessageStatus, next: MessageStatus) -> Option<MessageStatus> {
    if matches!(current, MessageStatus::Blocked | MessageStatus::Received)
        || matches!(next, MessageStatus::Blocked | MessageStatus::Received)
    {
        return None;
    }
    (next.rank() > current.rank()).then_some(next)
}

/// A receipt's delivery state (SMPP 3.4 section 5.2.28, `message_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptState {
    Enroute,
    Delivered,
    Expired,
    Deleted,
    Undeliverable,
    Accepted,
    Unknown,
    Rejected,
}

impl ReceiptState {
    /// The receipt text's `stat:` value.
    pub fn from_stat(s: &str) -> Option<ReceiptState> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "ENROUTE" => ReceiptState::Enroute,
            "DELIVRD" | "DELIVERED" => ReceiptState::Delivered,
            "EXPIRED" => ReceiptState::Expired,
            "DELETED" => ReceiptState::Deleted,
            "UNDELIV" | "UNDELIVERABLE" => ReceiptState::Undeliverable,
            "ACCEPTD" | "ACCEPTED" => ReceiptState::Accepted,
            "UNKNOWN" => ReceiptState::Unknown,
            "REJECTD" | "REJECTED" => ReceiptState::Rejected,
            _ => return None,
        })
    }

    /// The `message_state` TLV (0x0427) value.
    pub fn from_tlv(v: u8) -> Option<ReceiptState> {
        Some(match v {
            1 => ReceiptState::Enroute,
            2 => ReceiptState::Delivered,
            3 => ReceiptState::Expired,
            4 => ReceiptState::Deleted,
            5 => ReceiptState::Undeliverable,
            6 => ReceiptState::Accepted,
            7 => ReceiptState::Unknown,
            8 => ReceiptState::Rejected,
            _ => return None,
        })
    }

    /// What it means for the message: still on its way (`Sent`), delivered, or failed.
    pub fn status(self) -> MessageStatus {
        match self {
            ReceiptState::Enroute | ReceiptState::Accepted | ReceiptState::Unknown => {
                MessageStatus::Sent
            }
            ReceiptState::Delivered => MessageStatus::Delivered,
            ReceiptState::Expired
            | ReceiptState::Deleted
            | ReceiptState::Undeliverable
            | ReceiptState::Rejected => MessageStatus::Failed,
        }
    }
}

/// A parsed receipt text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The SMSC's message id, as the submit_sm_resp gave it.
    pub id: String,
    pub state: ReceiptState,
    /// The `err:` code (network-specific), if not zero.
    pub err: Option<String>,
}

/// Why a receipt text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt has no id")]
    NoId,
    #[error("the receipt has no (known) stat")]
    NoStat,
}

/// The value after `key:` in a receipt text (keys are case-insensitive; a value ends at the
/// next known key, since `submit date` and `done date` contain a space).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find(&format!("{key}:"))?;
    // The key must start the text or follow a space.
    if at > 0 && !lower[..at].ends_with(' ') {
        return None;
    }
    let start = at + key.len() + 1;
    let rest = &text[start..];
    let keys = [
        " sub:",
        " dlvrd:",
        " submit date:",
        " done date:",
        " stat:",
        " err:",
        " text:",
    ];
    let rest_lower = &lower[start..];
    let end = keys
        .iter()
        .filter_map(|k| rest_lower.find(k))
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Parse a receipt text (`short_message` of a deliver_sm with esm_class receipt bits).
pub fn parse_text(text: &str) -> Result<Receipt, ReceiptError> {
    let id = field(text, "id")
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .ok_or(ReceiptError::NoId)?;
    let state = field(text, "stat")
        .and_then(ReceiptState::from_stat)
        .ok_or(ReceiptError::NoStat)?;
    let err = field(text, "err")
        .filter(|e| !e.trim_start_matches('0').is_empty())
        .map(str::to_string);
    Ok(Receipt {
        id: id.to_string(),
        state,
        err,
    })
}

/// A receipt's message id in the form the submit's answer used. `mode` is
/// `sms.smpp.receipt_id`: "hex_to_dec" when the SMSC answered in hex and reports in decimal
/// (so the receipt's decimal id becomes hex, lowercase, no leading zeros), "dec_to_hex" the
/// other way round, anything else leaves it. An id that does not parse is left as is.
pub fn normalize_id(id: &str, mode: &str) -> String {
    match mode {
        "hex_to_dec" => id
            .parse::<u128>()
            .map(|n| format!("{n:x}"))
            .unwrap_or_else(|_| id.to_string()),
        "dec_to_hex" => u128::from_str_radix(id, 16)
            .map(|n| n.to_string())
            .unwrap_or_else(|_| id.to_string()),
        _ => id.to_string(),
    }
}

/// The same id compared case-insensitively for hex (SMSCs differ in case).
pub fn id_key(id: &str, mode: &str) -> String {
    if mode == "hex_to_dec" {
        id.to_ascii_lowercase().trim_start_matches('0').to_string()
    } else {
        id.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use MessageStatus::*;

    #[test]
    fn receipt_texts() {
        let r = parse_text("id:0123456789 sub:001 dlvrd:001 submit date:2612011200 done date:2612011201 stat:DELIVRD err:000 text:Hello there").unwrap();
        assert_eq!(
            r,
            Receipt {
                id: "0123456789".into(),
                state: ReceiptState::Delivered,
                err: None
            }
        );
        let r = parse_text("id:a7f3-09 sub:001 dlvrd:000 submit date:2612011200 done date:2612011201 stat:UNDELIV err:034 Text:x").unwrap();
        assert_eq!(
            (r.state, r.err.as_deref()),
            (ReceiptState::Undeliverable, Some("034"))
        );
        assert_eq!(r.state.status(), Failed);
        // Jasmin writes lower-case keys and sometimes no text.
        let r = parse_text("id:2f4f1d2e-8b1a stat:ENROUTE err:000").unwrap();
        assert_eq!(r.state.status(), Sent);
        assert_eq!(parse_text("stat:DELIVRD"), Err(ReceiptError::NoId));
        assert_eq!(parse_text("id:1 stat:WHATEVER"), Err(ReceiptError::NoStat));
        assert_eq!(parse_text(""), Err(ReceiptError::NoId));
        // "text:" containing key-like words does not confuse the id.
        let r = parse_text("id:77 sub:001 dlvrd:001 submit date:1 done date:2 stat:REJECTD err:001 text:id:99 stat:DELIVRD").unwrap();
        assert_eq!((r.id.as_str(), r.state), ("77", ReceiptState::Rejected));
        for v in 1..=8 {
            assert!(ReceiptState::from_tlv(v).is_some());
        }
        assert_eq!(ReceiptState::from_tlv(0), None);
    }

    #[test]
    fn statuses_only_move_forward() {
        assert_eq!(advance(Queued, Sent), Some(Sent));
        assert_eq!(
            advance(Queued, Delivered),
            Some(Delivered),
            "a receipt before the submit's answer"
        );
        assert_eq!(advance(Sent, Delivered), Some(Delivered));
        assert_eq!(advance(Delivered, Sent), None, "ENROUTE after DELIVRD");
        assert_eq!(advance(Delivered, Failed), None);
        assert_eq!(advance(Failed, Delivered), None);
        assert_eq!(advance(Sent, Sent), None);
        assert_eq!(advance(Blocked, Sent), None);
        assert_eq!(advance(Received, Delivered), None);
        assert!(Delivered.is_final() && Failed.is_final() && !Sent.is_final());
    }

    #[test]
    fn receipt_ids_are_normalised_between_bases() {
        // Answered "1a2b" (hex), reported 6699 (decimal).
        assert_eq!(normalize_id("6699", "hex_to_dec"), "1a2b");
        assert_eq!(normalize_id("1A2B", "dec_to_hex"), "6699");
        assert_eq!(normalize_id("abc", "same"), "abc");
        assert_eq!(normalize_id("not-a-number", "hex_to_dec"), "not-a-number");
        assert_eq!(id_key("001A2B", "hex_to_dec"), "1a2b");
    }
}
