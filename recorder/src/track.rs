//! One participant's audio on the call timeline: Opus decoding, a reorder buffer keyed by
//! timeline position, loss concealment (Opus PLC, in-band FEC from the next packet), silence for
//! DTX and absence, and re-anchoring when RTP timestamps jump.
//!
//! Placement: the first packet's RTP timestamp is anchored to its arrival time (as a 48 kHz
//! sample index from the recording start); later packets are placed by RTP timestamp difference
//! (Opus RTP clock is always 48 kHz). A packet whose placement differs from its arrival by more
//! than [`REANCHOR_SAMPLES`] (a timestamp jump, a publisher restart, or clock drift piling up) is
//! re-anchored to its arrival. Sequence numbers tell loss from DTX: a timeline gap with missing
//! sequence numbers is concealed, a gap without is silence.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::RecorderError;

/// 250 ms: more than any sane jitter, far less than a publisher restart.
pub const REANCHOR_SAMPLES: i64 = 12_000;
/// Concealment beyond this many samples of loss (60 ms) gives way to silence.
const MAX_CONCEAL: usize = 2_880;
/// A sequence gap this large is a stream restart, not loss.
const MAX_LOSS_RUN: i64 = 3_000;
/// Packets buffered per participant before the recording renders on its own (10 s).
pub const MAX_BUFFERED: usize = 500;
/// The largest Opus frame (120 ms at 48 kHz).
const MAX_FRAME: usize = 5_760;
const DEFAULT_FRAME: usize = 960;
/// Opus PLC/FEC work on multiples of 2.5 ms.
const PLC_QUANTUM: usize = 120;

/// Counters per participant; they end up in the sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    pub id: String,
    /// Packets received (pushed or replayed).
    pub packets: u64,
    /// Packets decoded into the recording.
    pub decoded: u64,
    /// Packets missing by sequence number (concealed, or silence after 60 ms).
    pub lost: u64,
    /// Lost frames rebuilt from in-band FEC of the following packet.
    pub fec_recovered: u64,
    /// Samples produced by PLC or FEC.
    pub concealed_samples: u64,
    /// Packets that arrived after their place on the timeline was already rendered.
    pub late: u64,
    /// Packets seen twice.
    pub duplicate: u64,
    /// Packets libopus could not decode (concealed instead).
    pub corrupt: u64,
    /// Times the RTP timestamp was re-anchored to arrival time.
    pub reanchors: u64,
}

struct Pending {
    seq: i64,
    payload: Bytes,
}

pub(crate) struct Track {
    pub id: String,
    pub role: String,
    pub display_name: String,
    /// 1 = left, 2 = right.
    pub channel: u8,
    pub joined_sample: i64,
    pub stats: ParticipantStats,
    decoder: opus::Decoder,
    anchor: Option<(i64, i64)>,
    last_ts: Option<i64>,
    last_seq: Option<i64>,
    buffer: BTreeMap<i64, Pending>,
    /// Decoded samples for timeline `[carry_start, carry_start + carry.len())`.
    carry: Vec<i16>,
    carry_start: i64,
    last_rendered_seq: Option<i64>,
    frame_len: usize,
    pcm: Vec<i16>,
}

fn unwrap_to(last: Option<i64>, value: i64, bits: u32) -> i64 {
    match last {
        None => value,
        Some(l) => {
            let modulus = 1i64 << bits;
            let half = modulus / 2;
            let diff = (value - l.rem_euclid(modulus)).rem_euclid(modulus);
            let diff = if diff >= half { diff - modulus } else { diff };
            l + diff
        }
    }
}

impl Track {
    pub fn new(
        id: &str,
        role: &str,
        display_name: &str,
        channel: u8,
        joined_sample: i64,
        cursor: i64,
    ) -> Result<Track, RecorderError> {
        let decoder = opus::Decoder::new(48_000, opus::Channels::Mono)
            .map_err(|e| RecorderError::Encode(format!("opus decoder: {e}")))?;
        Ok(Track {
            id: id.to_string(),
            role: role.to_string(),
            display_name: display_name.to_string(),
            channel,
            joined_sample,
            stats: ParticipantStats {
                id: id.to_string(),
                ..Default::default()
            },
            decoder,
            anchor: None,
            last_ts: None,
            last_seq: None,
            buffer: BTreeMap::new(),
            carry: Vec::new(),
            carry_start: cursor,
            last_rendered_seq: None,
            frame_len: DEFAULT_FRAME,
            pcm: vec![0; MAX_FRAME],
        })
    }

    /// Buffers a packet that arrived at timeline sample `arrival`. Returns true when the buffer
    /// is full enough that the caller should render.
    pub fn push(&mut self, seq: u16, ts: u32, arrival: i64, payload: Bytes) -> bool {
        self.stats.packets += 1;
        let seq = unwrap_to(self.last_seq, i64::from(seq), 16);
        let ts = unwrap_to(self.last_ts, i64::from(ts), 32);
        self.last_seq = Some(seq);
        self.last_ts = Some(ts);
        let (a_ts, a_pos) = *self.anchor.get_or_insert((ts, arrival));
        let mut pos = a_pos + (ts - a_ts);
        if (pos - arrival).abs() > REANCHOR_SAMPLES {
            self.anchor = Some((ts, arrival));
            self.stats.reanchors += 1;
            pos = arrival;
        }
        if pos < self.produced() {
            self.stats.late += 1;
            return false;
        }
        if self.buffer.contains_key(&pos) {
            self.stats.duplicate += 1;
            return false;
        }
        self.buffer.insert(pos, Pending { seq, payload });
        self.buffer.len() > MAX_BUFFERED
    }

    fn produced(&self) -> i64 {
        self.carry_start + self.carry.len() as i64
    }

    /// Adds this track's samples for `[start, start + out.len())` into `out`. Every packet placed
    /// before the end of that span is used; the span is final afterwards.
    pub fn render(&mut self, start: i64, out: &mut [f32]) {
        debug_assert_eq!(start, self.carry_start);
        let target = start + out.len() as i64;
        while self.produced() < target {
            let next = self.buffer.first_key_value().map(|(&pos, _)| pos);
            match next {
                Some(pos) if pos < target => {
                    if let Some(p) = self.buffer.remove(&pos) {
                        self.place(pos, p);
                    }
                }
                _ => {
                    let gap = (target - self.produced()) as usize;
                    self.carry.resize(self.carry.len() + gap, 0);
                }
            }
        }
        for (o, &s) in out.iter_mut().zip(&self.carry) {
            *o += f32::from(s);
        }
        self.carry.drain(..out.len());
        self.carry_start = target;
    }

    fn place(&mut self, pos: i64, p: Pending) {
        let produced = self.produced();
        if pos < produced {
            // Overlaps what is already decoded (e.g. after a re-anchor): too late.
            self.stats.late += 1;
            return;
        }
        let gap = (pos - produced) as usize;
        if gap > 0 {
            let missing = self.last_rendered_seq.map(|l| p.seq - l - 1).unwrap_or(0);
            if missing > 0 && missing < MAX_LOSS_RUN {
                self.stats.lost += missing as u64;
                self.conceal(gap, &p.payload);
            } else {
                self.carry.resize(self.carry.len() + gap, 0);
            }
        }
        self.decode(&p.payload);
        self.last_rendered_seq = Some(p.seq);
    }

    /// Fills `gap` samples of loss: PLC, then the last frame from the next packet's in-band FEC;
    /// beyond [`MAX_CONCEAL`], silence.
    fn conceal(&mut self, gap: usize, next_payload: &[u8]) {
        let conceal = gap.min(MAX_CONCEAL) / PLC_QUANTUM * PLC_QUANTUM;
        let fec = if gap <= MAX_CONCEAL && conceal >= self.frame_len && !next_payload.is_empty() {
            self.frame_len
        } else {
            0
        };
        let mut plc = conceal - fec;
        while plc > 0 {
            let chunk = plc.min(self.frame_len).min(MAX_FRAME);
            let n = match self.decoder.decode(&[], &mut self.pcm[..chunk], false) {
                Ok(n) => n.min(chunk),
                Err(_) => {
                    self.pcm[..chunk].fill(0);
                    chunk
                }
            };
            if n == 0 {
                break;
            }
            self.carry.extend_from_slice(&self.pcm[..n]);
            self.stats.concealed_samples += n as u64;
            plc -= n;
        }
        // Silence for what PLC did not cover (long loss, or a gap not a multiple of 2.5 ms).
        let covered_so_far = conceal - fec - plc;
        let silence = gap - covered_so_far - fec;
        self.carry.resize(self.carry.len() + silence, 0);
        if fec > 0 {
            match self
                .decoder
                .decode(next_payload, &mut self.pcm[..fec], true)
            {
                Ok(n) if n > 0 => {
                    let n = n.min(fec);
                    self.carry.extend_from_slice(&self.pcm[..n]);
                    self.carry.resize(self.carry.len() + (fec - n), 0);
                    self.stats.fec_recovered += 1;
                    self.stats.concealed_samples += n as u64;
                }
                _ => self.carry.resize(self.carry.len() + fec, 0),
            }
        }
    }

    fn decode(&mut self, payload: &[u8]) {
        let result = if payload.is_empty() {
            Err(())
        } else {
            self.decoder
                .decode(payload, &mut self.pcm, false)
                .map_err(|_| ())
        };
        match result {
            Ok(n) if n > 0 => {
                let n = n.min(MAX_FRAME);
                self.carry.extend_from_slice(&self.pcm[..n]);
                self.frame_len = n;
                self.stats.decoded += 1;
            }
            _ => {
                // Corrupt: conceal one frame instead.
                self.stats.corrupt += 1;
                let len = self.frame_len;
                match self.decoder.decode(&[], &mut self.pcm[..len], false) {
                    Ok(n) if n > 0 => {
                        let n = n.min(len);
                        self.carry.extend_from_slice(&self.pcm[..n]);
                        self.stats.concealed_samples += n as u64;
                    }
                    _ => self.carry.resize(self.carry.len() + len, 0),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrapping() {
        assert_eq!(unwrap_to(None, 65_535, 16), 65_535);
        assert_eq!(unwrap_to(Some(65_535), 0, 16), 65_536);
        assert_eq!(unwrap_to(Some(65_536), 65_535, 16), 65_535);
        assert_eq!(unwrap_to(Some(10), 5, 16), 5);
        assert_eq!(
            unwrap_to(Some(u32::MAX as i64), 959, 32),
            u32::MAX as i64 + 960
        );
    }

    fn tone_packets(n: usize) -> Vec<Bytes> {
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("enc");
        (0..n)
            .map(|f| {
                let pcm: Vec<i16> = (0..960)
                    .map(|i| {
                        let t = (f * 960 + i) as f32 / 48_000.0;
                        ((t * 440.0 * 2.0 * std::f32::consts::PI).sin() * 8_000.0) as i16
                    })
                    .collect();
                Bytes::from(enc.encode_vec(&pcm, 1500).expect("encode"))
            })
            .collect()
    }

    #[test]
    fn loss_is_concealed_and_dtx_is_silence() {
        let pkts = tone_packets(100);
        let mut t = Track::new("a", "agent", "A", 1, 0, 0).expect("track");
        for (i, p) in pkts.iter().enumerate() {
            if i == 10 || i == 11 {
                continue; // lost
            }
            let seq = if i >= 50 { i - 10 } else { i } as u16; // 50..60 never sent: DTX
            if (40..50).contains(&i) {
                continue;
            }
            t.push(seq, (i * 960) as u32, (i * 960) as i64, p.clone());
        }
        let mut out = vec![0f32; 100 * 960];
        t.render(0, &mut out);
        assert_eq!(t.stats.lost, 2);
        assert_eq!(t.stats.fec_recovered, 1);
        assert!(t.stats.concealed_samples >= 1920);
        let dtx_energy: f32 = out[41 * 960..49 * 960].iter().map(|s| s.abs()).sum();
        assert_eq!(dtx_energy, 0.0);
        let speech: f32 = out[60 * 960..70 * 960].iter().map(|s| s.abs()).sum();
        assert!(speech > 1e6);
    }

    #[test]
    fn timestamp_jump_reanchors_and_garbage_is_concealed() {
        let pkts = tone_packets(20);
        let mut t = Track::new("a", "", "A", 1, 0, 0).expect("track");
        for (i, p) in pkts.iter().enumerate().take(10) {
            t.push(i as u16, (i * 960) as u32, (i * 960) as i64, p.clone());
        }
        t.push(
            10,
            123_456_789,
            10 * 960,
            Bytes::from_static(&[0xFF, 0xFF, 0xFF]),
        );
        for (i, p) in pkts.iter().enumerate().skip(11) {
            t.push(
                i as u16,
                123_456_789 + ((i - 10) * 960) as u32,
                (i * 960) as i64,
                p.clone(),
            );
        }
        let mut out = vec![0f32; 20 * 960];
        t.render(0, &mut out);
        assert_eq!(t.stats.reanchors, 1);
        assert_eq!(t.stats.corrupt, 1);
        assert_eq!(t.stats.decoded, 19);
    }
}
