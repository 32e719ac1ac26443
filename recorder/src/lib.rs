//! # recorder
//!
//! The audio pipeline that turns a call's tapped Opus packets into a dual-channel FLAC archive
//! and an MP3 preview. It knows nothing of WebRTC or the network: its input is [`TapPacket`]-like
//! values that `src` hands over from a room's tap.
//!
//! ## Status
//! Only the input type exists so far; decoding, alignment, consent beeps and the encoders come
//! with the recording issue.

use std::time::SystemTime;

use bytes::Bytes;

/// One Opus packet of one participant, as the recorder receives it.
#[derive(Debug, Clone)]
pub struct RecorderPacket {
    pub participant_id: String,
    pub sequence: u16,
    pub timestamp: u32,
    pub arrival: SystemTime,
    pub payload: Bytes,
}
