//! SMPP 3.4 client rules, pure (no sockets; the clock is passed in). The IO task that drives
//! them is `sms::gateway::smpp`.
//!
//! - `frame.rs`: a tokio-util codec around rusmpp's `CommandCodec`: a frame whose body does not
//!   decode becomes [`frame::Frame::Bad`] (answered `generic_nack`) instead of ending the stream;
//!   only a bad length closes the connection.
//! - `session.rs`: one bind's state machine: bind, window, sequence numbers, response timeouts
//!   with late answers, enquire_link, throttling pause, deliver_sm answered only after the
//!   gateway's ack.
//! - `pdu.rs`: an [`crate::sms::gateway::link::OutPart`] as a `submit_sm`, a `deliver_sm` as a
//!   receipt or an inbound part, and the SMPP status names and classes.

pub mod frame;
pub mod pdu;
pub mod session;
