//! SMS: the platform's texting side (issue 12). The files here are pure rules, free of
//! IO, that the gateway (`gateway/`: the only IO here) and the webhooks use:
//!
//! - `carrier.rs`: carrier webhook bodies (generic JSON, Twilio forms, Telnyx events) parsed
//!   into inbound messages and delivery reports.
//! - `keywords.rs`: STOP / START / HELP and their variants in an inbound message.
//! - `encoding.rs`: GSM 03.38 (default alphabet and extension table) or UCS-2 for a text.
//! - `reassemble.rs`: inbound parts (8- and 16-bit concatenation UDH) joined back in order.
//! - `receipt.rs`: SMPP receipt texts and `message_state`, and the forward-only status rule.
//! - `segment.rs`: parts of 160/153 septets or 70/67 UCS-2 units with the concatenation UDH,
//!   never splitting an escape sequence or a surrogate pair.
//! - `signature.rs`: carrier webhook signatures: Twilio's HMAC-SHA1, Telnyx's Ed25519.
//! - `pace.rs`: token buckets (link and 10DLC campaign) and the retry backoff.
//! - `media.rs`: MMS media types from their bytes, storage keys, signed links.
//! - `smpp/`: SMPP framing on the rusmpp codec, the bind session state machine, PDU mapping.
//! - `gateway/` (IO): the `Sms` handle, the sender queue, the SMPP and HTTP carrier links.

pub mod carrier;
pub mod encoding;
pub mod gateway;
pub mod keywords;
pub mod media;
pub mod pace;
pub mod reassemble;
pub mod receipt;
pub mod segment;
pub mod signature;
pub mod smpp;
