//! What the load generator sends: real Opus frames (a tone encoded once, replayed in a loop),
//! each carrying a 20-byte stamp (sender, sequence, send time) in the Opus packet's own
//! padding, so the payload stays a valid Opus packet that any decoder plays.
//!
//! libopus emits single-frame packets (TOC code 0) for 20 ms frames. Each is rewritten once as a
//! code 3 packet with one CBR frame and padding (RFC 6716 §3.2.5): `TOC|3`, `0x41` (padding
//! flag, 1 frame), the padding length, the frame, then the padding, whose content a decoder
//! ignores. The stamp is that padding: `CHLB`, sender (u32), sequence (u32), send time (u64 ns
//! on this process's monotonic clock), all big-endian. Sender and receiver are the same
//! process, so one clock measures the forwarding latency.

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};

/// The first bytes of a stamp.
pub const MAGIC: [u8; 4] = *b"CHLB";
/// Bytes a stamp adds to the end of a packet.
pub const STAMP_LEN: usize = 20;

/// One packet's identity and send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sending participant (the generator's global participant number).
    pub sender: u32,
    /// The sender's packet counter, from 0.
    pub seq: u32,
    /// [`now_ns`] when the packet was handed to the sending stack.
    pub sent_ns: u64,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on this process's monotonic clock (from its first use).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A tone encoded once as 20 ms Opus frames (48 kHz mono), replayed in a loop.
#[derive(Debug, Clone)]
pub struct OpusTone {
    /// Each frame already rewritten as a code 3 packet with `STAMP_LEN` bytes of padding, minus
    /// the padding itself.
    heads: Vec<Bytes>,
}

impl OpusTone {
    /// Encode `frames` frames (50 per second) of a 440 Hz tone at 32 kbit/s.
    pub fn encode(frames: usize) -> anyhow::Result<OpusTone> {
        let mut enc = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Audio)
            .context("opus encoder")?;
        enc.set_bitrate(opus::Bitrate::Bits(32_000))?;
        let mut heads = Vec::with_capacity(frames);
        let mut out = [0u8; 1500];
        for f in 0..frames {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (f * 960 + i) as f32 / 48000.0;
                    ((t * 440.0 * std::f32::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let n = enc.encode(&pcm, &mut out).context("opus encode")?;
            heads.push(with_padding_header(&out[..n])?);
        }
        Ok(OpusTone { heads })
    }

    /// The frames as sent, without their stamps (for checks).
    pub fn frames(&self) -> usize {
        self.heads.len()
    }

    /// Packet `stamp.seq`: frame `seq % frames` with the stamp as its padding.
    pub fn packet(&self, stamp: &Stamp) -> Bytes {
        let head = &self.heads[stamp.seq as usize % self.heads.len()];
        let mut b = BytesMut::with_capacity(head.len() + STAMP_LEN);
        b.extend_from_slice(head);
        b.extend_from_slice(&MAGIC);
        b.put_u32(stamp.sender);
        b.put_u32(stamp.seq);
        b.put_u64(stamp.sent_ns);
        b.freeze()
    }
}

/// Turn a single-frame (code 0) Opus packet into a code 3 one announcing `STAMP_LEN` bytes of
/// padding, the padding itself left for the caller to append.
fn with_padding_header(pkt: &[u8]) -> anyhow::Result<Bytes> {
    let Some((&toc, frame)) = pkt.split_first() else {
        bail!("empty Opus packet");
    };
    if toc & 0x03 != 0 {
        bail!(
            "expected a single-frame Opus packet, got TOC code {}",
            toc & 3
        );
    }
    let mut b = BytesMut::with_capacity(pkt.len() + 2);
    b.put_u8(toc | 0x03);
    b.put_u8(0x41); // CBR, padding present, 1 frame
    b.put_u8(STAMP_LEN as u8);
    b.extend_from_slice(frame);
    Ok(b.freeze())
}

/// The stamp of a received payload, if it carries one.
pub fn read_stamp(p: &[u8]) -> Option<Stamp> {
    if p.len() < 3 + STAMP_LEN || p[0] & 0x03 != 0x03 || p[1] & 0x40 == 0 {
        return None;
    }
    let s = &p[p.len() - STAMP_LEN..];
    if s[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&s[12..20]);
    Some(Stamp {
        sender: u32_at(4),
        seq: u32_at(8),
        sent_ns: u64::from_be_bytes(ns),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stamped_packets_are_valid_opus_and_the_stamp_reads_back() {
        let tone = OpusTone::encode(10).unwrap();
        let mut dec = opus::Decoder::new(48000, opus::Channels::Mono).unwrap();
        let mut pcm = [0i16; 960];
        for seq in 0..20u32 {
            let st = Stamp {
                sender: 7,
                seq,
                sent_ns: 123_456_789 + u64::from(seq),
            };
            let p = tone.packet(&st);
            assert_eq!(read_stamp(&p), Some(st));
            // A decoder accepts the padding and yields one 20 ms frame.
            assert_eq!(dec.decode(&p, &mut pcm, false).unwrap(), 960);
        }
        let energy: f64 = pcm.iter().map(|&s| f64::from(s).powi(2)).sum();
        assert!(energy > 1e6, "the tone is audible");
    }

    #[test]
    fn unstamped_payloads_are_rejected() {
        assert_eq!(read_stamp(&[0xC0; 70]), None);
        assert_eq!(read_stamp(&[]), None);
    }
}
