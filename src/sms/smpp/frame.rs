//! Framing of SMPP PDUs on a byte stream. rusmpp's `CommandCodec` ends the stream on any decode
//! error, so this codec reads the 4-byte `command_length` itself (16 to [`MAX_FRAME`] bytes; a
//! length outside that range cannot be resynchronised and is an error that closes), splits the
//! whole frame off, and only then lets rusmpp decode it. A frame whose body does not decode is
//! returned as [`Frame::Bad`] with its header's sequence number and command id, so the session
//! can answer it with `generic_nack` and go on.

use bytes::BytesMut;
use rusmpp::Command;
use rusmpp::tokio_codec::CommandCodec;
use tokio_util::codec::{Decoder, Encoder};

/// The longest PDU accepted (header included).
pub const MAX_FRAME: usize = 8192;
/// The SMPP header: length, command id, status, sequence number.
pub const HEADER: usize = 16;

/// One PDU read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Command(Box<Command>),
    /// A frame of a valid length whose body could not be decoded.
    Bad {
        seq: u32,
        command_id: u32,
    },
}

/// Why the stream must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad command_length {0}")]
    Length(u32),
    #[error("encode: {0}")]
    Encode(String),
}

/// The codec (see the module doc). `inner` only encodes.
#[derive(Debug, Default)]
pub struct FrameCodec {
    inner: CommandCodec,
}

impl FrameCodec {
    pub fn new() -> Self {
        FrameCodec {
            inner: CommandCodec::new().with_max_length(MAX_FRAME),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = be32(&src[..4]);
        let n = len as usize;
        if !(HEADER..=MAX_FRAME).contains(&n) {
            return Err(FrameError::Length(len));
        }
        if src.len() < n {
            src.reserve(n - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(n);
        let command_id = be32(&frame[4..8]);
        let seq = be32(&frame[12..16]);
        // A fresh rusmpp codec per frame: its state machine never sees a partial frame, and an
        // error in one frame cannot leave it half-way through the next.
        let mut codec = CommandCodec::new().with_max_length(MAX_FRAME);
        match codec.decode(&mut frame) {
            Ok(Some(command)) => Ok(Some(Frame::Command(Box::new(command)))),
            Ok(None) | Err(_) => Ok(Some(Frame::Bad { seq, command_id })),
        }
    }
}

impl Encoder<Command> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Command, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.inner
            .encode(&item, dst)
            .map_err(|e| FrameError::Encode(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rusmpp::{CommandStatus, Pdu};

    fn bytes_of(c: &Command) -> BytesMut {
        let mut b = BytesMut::new();
        FrameCodec::new().encode(c.clone(), &mut b).unwrap();
        b
    }

    #[test]
    fn round_trip_and_partial_input() {
        let c = Command::new(CommandStatus::EsmeRok, 7, Pdu::EnquireLink);
        let all = bytes_of(&c);
        assert_eq!(all.len(), 16);
        let mut codec = FrameCodec::new();
        let mut src = BytesMut::from(&all[..10]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        src.extend_from_slice(&all[10..]);
        // Two frames back to back.
        src.extend_from_slice(&all);
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Command(Box::new(c.clone())))
        );
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Command(Box::new(c)))
        );
        assert!(codec.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn bad_body_is_an_item_and_the_stream_goes_on() {
        // A bind_transmitter (0x00000002) whose body is not a C string sequence, then a valid
        // enquire_link.
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4]);
        let ok = Command::new(CommandStatus::EsmeRok, 10, Pdu::EnquireLink);
        src.extend_from_slice(&bytes_of(&ok));
        let mut codec = FrameCodec::new();
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Bad {
                seq: 9,
                command_id: 2
            })
        );
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Command(Box::new(ok)))
        );
        // A submit_sm_resp whose message_id has no terminating NUL.
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0, 0, 0, 20, 0x80, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 3]);
        src.extend_from_slice(b"abcd");
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Bad {
                seq: 3,
                command_id: 0x8000_0004
            })
        );
        assert!(src.is_empty());
    }

    #[test]
    fn bad_length_closes() {
        let mut codec = FrameCodec::new();
        let mut src = BytesMut::from(&[0u8, 0, 0, 8, 0, 0, 0, 0][..]);
        assert!(matches!(codec.decode(&mut src), Err(FrameError::Length(8))));
        let mut src = BytesMut::from(&[0u8, 0, 0x20, 0x01][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(FrameError::Length(8193))
        ));
        // 8192 itself is fine (waits for the rest).
        let mut src = BytesMut::from(&[0u8, 0, 0x20, 0x00][..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
    }
}
