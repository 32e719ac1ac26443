//! What the sender (`queue.rs`) and a carrier link (`smpp.rs`, `http.rs`) exchange. A link pulls
//! [`OutPart`]s from a bounded channel only while it can submit (bound, window not full, not
//! paused), and reports everything it learns as [`LinkEvent`]s. It never touches the store:
//! events that must be durable before the carrier is answered (an inbound part, a receipt)
//! carry an [`Ack`] the gateway completes once the write is durable.

use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::sms::encoding::Encoding;
use crate::sms::receipt::MessageStatus;

/// One part of an outbound message, ready for a carrier.
#[derive(Debug, Clone)]
pub struct OutPart {
    pub message_id: Uuid,
    /// 1-based.
    pub part: u8,
    pub total: u8,
    /// E.164 with `+`.
    pub from: String,
    pub to: String,
    pub encoding: Encoding,
    /// This part's payload without UDH: unpacked GSM septets (data_coding 0) or UTF-16BE
    /// (data_coding 8).
    pub payload: Vec<u8>,
    /// The 6-byte concatenation UDH of a multipart message (esm_class 0x40).
    pub udh: Option<[u8; 6]>,
    /// The whole message's text (HTTP carriers take the message in one request, part 1).
    pub text: String,
    /// Public URLs of MMS media (HTTP carriers only).
    pub media_urls: Vec<String>,
}

/// Why a part was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The carrier refused it for good: the message fails with `code`/`error`.
    Permanent,
    /// Try again later (counts as an attempt); `after` is the carrier's hint (Retry-After).
    Transient { after: Option<Duration> },
    /// ESME_RTHROTTLED / ESME_RMSGQFUL / HTTP 429 with a pause: resend first once the link
    /// pulls again; not an attempt.
    Throttled,
    /// The link went down with the part in flight (or before its answer came): resend, not an
    /// attempt.
    Lost,
}

/// Completed by the gateway once the event is durable (true) or could not be stored
/// (false: the link answers the carrier with a temporary error so it resends).
pub type Ack = oneshot::Sender<bool>;

/// An inbound part as the carrier delivered it.
#[derive(Debug)]
pub struct InboundPart {
    pub from: String,
    pub to: String,
    /// SMPP data_coding (0 GSM unpacked septets, 3 Latin-1, 8 UCS-2); HTTP carriers give
    /// text and use 0 with `text` set.
    pub data_coding: u8,
    /// The payload with any UDH removed.
    pub payload: Vec<u8>,
    /// Concatenation info from the UDH or SAR TLVs.
    pub concat: Option<crate::sms::reassemble::Concat>,
    /// The carrier's message id, when it gives one (HTTP webhooks; SMPP deliver_sm has none).
    pub carrier_message_id: Option<String>,
}

#[derive(Debug)]
pub enum LinkEvent {
    Accepted {
        message_id: Uuid,
        part: u8,
        carrier_message_id: String,
    },
    Failed {
        message_id: Uuid,
        part: u8,
        retry: Retry,
        /// Short code: the SMPP status name (`ESME_RINVDSTADR`), or `http_400`.
        code: String,
        /// Human text (never the message body or a number).
        error: String,
    },
    /// A delivery receipt (status Sent, Delivered or Failed).
    Receipt {
        carrier_message_id: String,
        status: MessageStatus,
        error_code: Option<String>,
        ack: Option<Ack>,
    },
    /// An inbound message or one part of it; answer the SMSC after `ack`.
    Inbound { part: InboundPart, ack: Option<Ack> },
    /// Bind state of a role (`transceiver`, `transmitter`, `receiver`, `http`):
    /// 0 down, 1 binding, 2 bound.
    BindState { role: &'static str, state: u8 },
}
