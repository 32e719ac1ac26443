//! The SMS gateway: the IO around the pure rules of `crate::sms`.
//!
//! - `link.rs`: what the sender and a carrier link exchange (parts out, events in).
//! - `smpp.rs`: the SMPP bind(s) driving `crate::sms::smpp::Session`.
//! - `http.rs`: HTTP carriers (generic JSON, Twilio-style, Telnyx-style).

pub mod link;
pub mod smpp;

use std::sync::atomic::AtomicU64;

/// Counters for /metrics (`commhub_sms_*`).
#[derive(Debug, Default)]
pub struct SmsStats {
    /// Parts the carrier accepted.
    pub sent: AtomicU64,
    /// Parts the carrier refused (any reason).
    pub submit_errors: AtomicU64,
    pub receipts: AtomicU64,
    /// Receipts for an id we do not know (yet): kept in sms_receipts_pending.
    pub receipts_orphaned: AtomicU64,
    /// Whole inbound messages stored.
    pub inbound: AtomicU64,
    /// Inbound parts (multipart) received.
    pub inbound_parts: AtomicU64,
    /// Sends refused because the number opted out.
    pub blocked: AtomicU64,
    /// Transient failures that will be retried.
    pub retries: AtomicU64,
    /// ESME_RTHROTTLED / ESME_RMSGQFUL / HTTP 429 answers.
    pub throttled: AtomicU64,
    /// A late OK for a part that was already resent.
    pub possible_duplicates: AtomicU64,
    /// Inbound messages or receipts seen before (stored once).
    pub duplicates: AtomicU64,
    /// Bind attempts refused (bad credentials, bind_fail) or failed to connect.
    pub bind_failures: AtomicU64,
    /// Frames that could not be decoded (answered generic_nack).
    pub bad_frames: AtomicU64,
    /// Bind state per role: 0 down, 1 binding, 2 bound (transceiver or transmitter, receiver).
    pub bind_state_tx: AtomicU64,
    pub bind_state_rx: AtomicU64,
    /// Parts submitted and not yet answered.
    pub in_flight: AtomicU64,
}
