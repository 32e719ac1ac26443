//! Typed protocol errors. Every bad input maps to one [`ErrorCode`]; none panics.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` message. Clients switch on these; messages are for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, or no string `type`.
    Malformed,
    /// `type` names no client message.
    UnknownType,
    /// The frame exceeds 64 KiB.
    TooLarge,
    /// A field is missing, has the wrong type, or is out of bounds.
    InvalidField,
    /// The message is valid but not allowed in the session's current state.
    OutOfOrder,
    /// The SDP could not be parsed or applied, or offers no usable Opus audio.
    BadSdp,
    /// The client asked for a protocol version the server does not speak.
    UnsupportedVersion,
    /// Missing, expired, forged or other-room token.
    Unauthorized,
    /// The call this room belongs to has ended.
    CallEnded,
    /// The room or server is at capacity.
    Capacity,
    /// Binary frames are not part of the protocol.
    UnsupportedFrame,
    /// The server failed; details are in its log, not here.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::CallEnded => "call_ended",
            ErrorCode::Capacity => "capacity",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A protocol error: a code, a human message, and the message type it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct SignalError {
    pub code: ErrorCode,
    pub message: String,
    pub in_reply_to: Option<String>,
}

impl SignalError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SignalError {
            code,
            message: message.into(),
            in_reply_to: None,
        }
    }

    /// Attach the `type` of the message this error answers.
    pub fn reply_to(mut self, ty: &str) -> Self {
        self.in_reply_to = Some(ty.to_string());
        self
    }
}
