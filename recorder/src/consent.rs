//! Consent audio: the periodic recording beep, the spoken announcement asset, Opus frames of
//! either for live injection into the call, and the schedule that mixes both into the recording.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{SAMPLE_RATE, duration_to_samples};
use crate::error::RecorderError;

/// The periodic recording tone.
#[derive(Debug, Clone, PartialEq)]
pub struct BeepConfig {
    /// Time between beeps; the first beep is at this offset. `Duration::ZERO` disables beeps.
    pub interval: Duration,
    /// Tone frequency in Hz (0 < f < 24000).
    pub frequency_hz: f32,
    /// Tone length (including 5 ms fades).
    pub duration: Duration,
    /// Peak level in dBFS (at most 0).
    pub level_dbfs: f32,
}

impl Default for BeepConfig {
    fn default() -> Self {
        BeepConfig {
            interval: Duration::from_secs(15),
            frequency_hz: 1400.0,
            duration: Duration::from_millis(200),
            level_dbfs: -12.0,
        }
    }
}

/// What a consent event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentKind {
    /// The spoken announcement at the start of the recording.
    IvrAnnouncement,
    /// One periodic beep.
    PeriodicBeep,
}

impl ConsentKind {
    /// The wire name: `ivr_announcement` or `periodic_beep`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentKind::IvrAnnouncement => "ivr_announcement",
            ConsentKind::PeriodicBeep => "periodic_beep",
        }
    }
}

/// A beep or the announcement, as it starts in the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentEvent {
    pub kind: ConsentKind,
    /// Offset from the recording start.
    pub offset: Duration,
    /// Wall-clock time (recording start + offset).
    pub at: std::time::SystemTime,
}

const FADE: Duration = Duration::from_millis(5);

/// The beep as 48 kHz mono PCM: a sine at `frequency_hz`, peak `level_dbfs`, with 5 ms
/// raised-cosine fades. An invalid frequency or a zero length gives an empty vector.
pub fn beep_pcm(cfg: &BeepConfig) -> Vec<i16> {
    let n = duration_to_samples(cfg.duration).clamp(0, i64::from(SAMPLE_RATE) * 10) as usize;
    let f = cfg.frequency_hz;
    if n == 0 || !f.is_finite() || f <= 0.0 || f >= SAMPLE_RATE as f32 / 2.0 {
        return Vec::new();
    }
    let level = if cfg.level_dbfs.is_finite() {
        cfg.level_dbfs.min(0.0)
    } else {
        -12.0
    };
    let amp = 10f64.powf(f64::from(level) / 20.0) * 32767.0;
    let fade = (duration_to_samples(FADE) as usize).min(n / 2).max(1);
    let w = 2.0 * std::f64::consts::PI * f64::from(f) / f64::from(SAMPLE_RATE);
    (0..n)
        .map(|i| {
            let edge = i.min(n - 1 - i);
            let g = if edge < fade {
                0.5 - 0.5 * (std::f64::consts::PI * edge as f64 / fade as f64).cos()
            } else {
                1.0
            };
            (amp * g * (w * i as f64).sin()).round() as i16
        })
        .collect()
}

static ANNOUNCEMENT_WAV: &[u8] = include_bytes!("../assets/announcement.wav");

/// The shipped announcement ("This call is recorded.", espeak-ng, see `assets/README.md`) as
/// 48 kHz mono 16-bit PCM. Parsed once; later calls share it.
pub fn load_announcement() -> Arc<Vec<i16>> {
    static PCM: OnceLock<Arc<Vec<i16>>> = OnceLock::new();
    PCM.get_or_init(|| Arc::new(parse_wav_48k_mono(ANNOUNCEMENT_WAV).unwrap_or_default()))
        .clone()
}

static CONSENT_PROMPT_WAV: &[u8] = include_bytes!("../assets/consent_prompt.wav");

/// "This call may be recorded. To agree, press 1.": played to a phone leg when
/// `recording.consent_mode = "dtmf"` (48 kHz mono; empty if the asset does not parse).
pub fn load_consent_prompt() -> Arc<Vec<i16>> {
    static PCM: OnceLock<Arc<Vec<i16>>> = OnceLock::new();
    PCM.get_or_init(|| Arc::new(parse_wav_48k_mono(CONSENT_PROMPT_WAV).unwrap_or_default()))
        .clone()
}

/// Parses a RIFF/WAVE file holding 48 kHz mono 16-bit PCM.
pub(crate) fn parse_wav_48k_mono(bytes: &[u8]) -> Option<Vec<i16>> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut fmt_ok = false;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        if id == b"fmt " && body.len() >= 16 {
            let format = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            fmt_ok =
                (format == 1 || format == 0xFFFE) && channels == 1 && rate == 48_000 && bits == 16;
        } else if id == b"data" && fmt_ok {
            return Some(
                body.chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            );
        }
        pos += 8 + len + (len & 1);
    }
    None
}

/// Encodes 48 kHz mono PCM as 20 ms Opus frames (mono Opus at 32 kbps; any opus/48000/2
/// receiver, e.g. a browser, decodes it). The last frame is padded with silence.
pub fn encode_opus_frames(pcm_48k_mono: &[i16]) -> Result<Vec<Vec<u8>>, RecorderError> {
    const FRAME: usize = 960;
    let enc_err = |e: opus::Error| RecorderError::Encode(format!("opus: {e}"));
    let mut enc = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)
        .map_err(enc_err)?;
    enc.set_bitrate(opus::Bitrate::Bits(32_000))
        .map_err(enc_err)?;
    let mut frames = Vec::with_capacity(pcm_48k_mono.len().div_ceil(FRAME));
    let mut buf = [0i16; FRAME];
    for chunk in pcm_48k_mono.chunks(FRAME) {
        buf.fill(0);
        buf[..chunk.len()].copy_from_slice(chunk);
        frames.push(enc.encode_vec(&buf, 1500).map_err(enc_err)?);
    }
    Ok(frames)
}

/// Mixes the announcement (offset 0) and the beeps (offsets k * interval, k >= 1) into both
/// channels, and reports each one as it starts.
pub(crate) struct ConsentMixer {
    beep: Vec<f32>,
    interval: i64,
    announcement: Option<Arc<Vec<i16>>>,
}

impl ConsentMixer {
    pub fn new(beep: &BeepConfig, announcement: Option<Arc<Vec<i16>>>) -> ConsentMixer {
        let pcm = beep_pcm(beep);
        ConsentMixer {
            beep: pcm.iter().map(|&s| f32::from(s)).collect(),
            interval: if pcm.is_empty() {
                0
            } else {
                duration_to_samples(beep.interval)
            },
            announcement: announcement.filter(|a| !a.is_empty()),
        }
    }

    /// Adds consent audio for timeline samples `[start, start + left.len())`; pushes
    /// (kind, start sample) of every event that starts in that span.
    pub fn mix(
        &self,
        start: i64,
        left: &mut [f32],
        right: &mut [f32],
        events: &mut Vec<(ConsentKind, i64)>,
    ) {
        let n = left.len() as i64;
        let end = start + n;
        if let Some(a) = &self.announcement {
            let a_len = a.len() as i64;
            if start <= 0 && end > 0 {
                events.push((ConsentKind::IvrAnnouncement, 0));
            }
            let from = start.max(0);
            let to = end.min(a_len);
            for t in from..to {
                let s = f32::from(a[t as usize]);
                let i = (t - start) as usize;
                left[i] += s;
                right[i] += s;
            }
        }
        if self.interval <= 0 || end <= 0 {
            return;
        }
        let b_len = self.beep.len() as i64;
        let k_min = ((start - b_len).div_euclid(self.interval) + 1).max(1);
        let k_max = (end - 1).div_euclid(self.interval);
        for k in k_min..=k_max {
            let b0 = k * self.interval;
            if b0 >= start {
                events.push((ConsentKind::PeriodicBeep, b0));
            }
            let from = start.max(b0);
            let to = end.min(b0 + b_len);
            for t in from..to {
                let s = self.beep[(t - b0) as usize];
                let i = (t - start) as usize;
                left[i] += s;
                right[i] += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_asset_parses() {
        let a = load_announcement();
        assert!(a.len() > 24_000 && a.len() < 150_000, "{} samples", a.len());
        assert!(a.iter().any(|&s| s.unsigned_abs() > 5_000));
    }

    #[test]
    fn consent_prompt_asset_parses() {
        let a = load_consent_prompt();
        assert!(a.len() > 96_000 && a.len() < 200_000, "{} samples", a.len());
        assert!(a.iter().any(|&s| s.unsigned_abs() > 5_000));
    }

    #[test]
    fn beep_has_the_right_length_and_level() {
        let b = beep_pcm(&BeepConfig::default());
        assert_eq!(b.len(), 9_600);
        let peak = b.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!((8_000..=8_300).contains(&peak), "peak {peak}");
        assert!(b[0].unsigned_abs() < 10 && b[9_599].unsigned_abs() < 100);
        assert!(
            beep_pcm(&BeepConfig {
                frequency_hz: f32::NAN,
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn schedule_reports_each_event_once_across_chunks() {
        let cfg = BeepConfig {
            interval: Duration::from_millis(100),
            ..Default::default()
        };
        let m = ConsentMixer::new(&cfg, Some(Arc::new(vec![100; 1000])));
        let mut events = Vec::new();
        let mut start = 0;
        for chunk in [7, 4800, 3000, 1, 10_000] {
            let mut l = vec![0.0; chunk];
            let mut r = vec![0.0; chunk];
            m.mix(start, &mut l, &mut r, &mut events);
            start += chunk as i64;
        }
        let beeps: Vec<i64> = events
            .iter()
            .filter(|e| e.0 == ConsentKind::PeriodicBeep)
            .map(|e| e.1)
            .collect();
        assert_eq!(beeps, vec![4800, 9600, 14_400]);
        assert_eq!(events[0], (ConsentKind::IvrAnnouncement, 0));
    }

    #[test]
    fn opus_frames_of_the_beep() {
        let frames = encode_opus_frames(&beep_pcm(&BeepConfig::default())).expect("encode");
        assert_eq!(frames.len(), 10);
        assert!(frames.iter().all(|f| !f.is_empty()));
    }
}
