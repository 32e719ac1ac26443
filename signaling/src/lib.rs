//! # signaling
//!
//! The commhub WebSocket protocol, as values: what a client may send ([`ClientMessage`]), what the
//! server sends ([`ServerMessage`]), a parser that turns any text frame into a message or a typed
//! [`SignalError`], and [`Session`], the per-connection state machine that decides which messages
//! are allowed when and sequences the server-initiated renegotiation of the subscribe connection.
//!
//! ## Layout
//! - `protocol.rs`: message enums, limits, [`parse_client_message`].
//! - `error.rs`: [`ErrorCode`] and [`SignalError`].
//! - `session.rs`: [`Session`] (join / publish / subscribe / leave ordering) and
//!   [`SubscribeNegotiation`] (one outstanding offer at a time, never glare).
//! - `sip/`: the SIP bridge's rules: `sdp.rs` (audio offer/answer, hold, codecs), `route.rs`
//!   (Request-URI user to call or number), `timer.rs` (RFC 4028 session timers).
//!
//! ## Contract
//! No sockets, no clocks, no WebRTC: values in, values out. Every input yields either a message
//! or a typed error; nothing here panics on input. The human-readable protocol is
//! `docs/signaling.md`.

mod error;
mod protocol;
mod session;
pub mod sip;

pub use error::{ErrorCode, SignalError};
pub use protocol::*;
pub use session::{Action, Session, SessionState, SubscribeNegotiation};
