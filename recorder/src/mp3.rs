//! The MP3 preview: the mixed 48 kHz stereo signal decimated by 3 to 16 kHz (a 64-tap
//! Hann-windowed low-pass at 6.8 kHz, i.e. wideband speech), encoded by LAME as MPEG-2 Layer III
//! CBR joint stereo at quality 7, with LAME's Info tag (frame count, encoder delay and padding)
//! rewritten in place at the end so that players show the right duration and gapless decoders
//! (ffmpeg, symphonia) give back exactly the recorded length.
//!
//! ## Why 16 kHz, 40 kbps CBR, quality 7
//!
//! The preview is for people listening to speech; the FLAC is the archive. Measured on the
//! 2-core dev machine, LAME costs about 2.5 ms of CPU per second of call at 16 kHz but about
//! 7 ms at 48 kHz, and the whole pipeline must stay under 10 ms per call-second for 100
//! real-time calls per core. 16 kHz keeps all of speech up to 7-8 kHz. 40 kbps is the lowest
//! CBR rate at 16 kHz stereo whose frame (180 bytes) can hold LAME's Info tag (177 bytes), so
//! lower settings are raised to 40; it is 18 MB per hour and clean for wideband speech.
//!
//! One consequence of MPEG audio, not of this encoder: a tool that reads the duration as
//! "frames x 576 samples" without applying the Info tag's delay/padding (ffprobe's
//! `format=duration`) shows 69-105 ms more than the call, LAME's fixed 1105-sample delay plus
//! the last frame's padding. ffprobe's stream `duration - start_time` (start_time is that delay),
//! ffmpeg's decoded output and symphonia are within 36 ms / exact.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use mp3lame_encoder::{Bitrate, Builder, DualPcm, Encoder, FlushGap, Mode, Quality};

use crate::error::RecorderError;

/// Sample rate of the MP3 preview.
pub const MP3_SAMPLE_RATE: u32 = 16_000;
const DECIMATION: usize = 3;
/// 63 taps of filter plus a zero, so the dot product runs in 8-lane chunks.
const TAPS: usize = 64;
const HALF: usize = 31;
const CUTOFF_HZ: f32 = 6_800.0;

/// The MPEG-2 CBR rates (named by mp3lame-encoder) whose frames at 16 kHz hold the Info tag.
const RATES: [(u32, Bitrate); 7] = [
    (40, Bitrate::Kbps40),
    (48, Bitrate::Kbps48),
    (64, Bitrate::Kbps64),
    (80, Bitrate::Kbps80),
    (96, Bitrate::Kbps96),
    (112, Bitrate::Kbps112),
    (128, Bitrate::Kbps128),
];

/// The supported bit rate closest to `kbps` (40-128; ties go to the lower one).
pub fn nearest_bitrate(kbps: u32) -> u32 {
    nearest(kbps).0
}

fn nearest(kbps: u32) -> (u32, Bitrate) {
    let mut best = RATES[0];
    for r in RATES {
        if r.0.abs_diff(kbps) < best.0.abs_diff(kbps) {
            best = r;
        }
    }
    best
}

/// Decimates 48 kHz to 16 kHz with a linear-phase FIR low-pass, in integer arithmetic (Q14
/// taps, i32 sums: exact, and the compiler vectorises integer dot products).
struct Decimator {
    taps: [i16; TAPS],
    hist: Vec<i16>,
}

/// Fractional bits of the taps. Sum of |taps| stays below 2^15, so 64 products of 16-bit
/// samples cannot overflow an i32 accumulator.
const TAP_BITS: u32 = 14;

impl Decimator {
    fn new() -> Decimator {
        let mut taps = [0f64; TAPS];
        let fc = f64::from(CUTOFF_HZ) / 48_000.0;
        let mut sum = 0.0;
        for (i, t) in taps.iter_mut().enumerate().take(2 * HALF + 1) {
            let m = i as f64 - HALF as f64;
            let sinc = if m == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * m).sin() / (std::f64::consts::PI * m)
            };
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (2 * HALF) as f64).cos();
            *t = sinc * w;
            sum += *t;
        }
        let mut q = [0i16; TAPS];
        for (o, t) in q.iter_mut().zip(taps) {
            *o = (t / sum * f64::from(1u32 << TAP_BITS)).round() as i16;
        }
        // Centre the filter on input sample 0: output j is the filtered input at 3j.
        Decimator {
            taps: q,
            hist: vec![0; HALF],
        }
    }

    fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.hist.extend_from_slice(input);
        let mut pos = 0;
        while pos + TAPS <= self.hist.len() {
            let acc: i32 = self.hist[pos..pos + TAPS]
                .iter()
                .zip(&self.taps)
                .map(|(&h, &t)| i32::from(h) * i32::from(t))
                .sum();
            let y = (acc + (1 << (TAP_BITS - 1))) >> TAP_BITS;
            out.push(y.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16);
            pos += DECIMATION;
        }
        self.hist.drain(..pos);
    }

    fn flush(&mut self, out: &mut Vec<i16>) {
        // Centred on input sample 3j, the last output needs HALF samples after the end; the
        // 64th (zero) tap needs one more.
        self.process(&[0; HALF + 1], out);
    }
}

/// Streams the stereo preview to an MP3 file.
pub struct Mp3Writer {
    path: PathBuf,
    out: BufWriter<File>,
    enc: Encoder,
    dec: [Decimator; 2],
    l16: Vec<i16>,
    r16: Vec<i16>,
    buf: Vec<u8>,
    /// Where LAME's placeholder tag frame starts (no ID3v2 tag, so 0).
    tag_offset: u64,
    kbps: u32,
}

impl Mp3Writer {
    /// Creates (truncates) `path` with an encoder at the supported rate closest to `kbps`.
    pub fn create(path: &Path, kbps: u32) -> Result<Mp3Writer, RecorderError> {
        let (kbps, rate) = nearest(kbps);
        let enc = build_encoder(rate).map_err(|e| RecorderError::Encode(format!("LAME: {e}")))?;
        let file = File::create(path).map_err(|e| RecorderError::io("create MP3", path, e))?;
        Ok(Mp3Writer {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(16 * 1024, file),
            enc,
            dec: [Decimator::new(), Decimator::new()],
            l16: Vec::new(),
            r16: Vec::new(),
            buf: Vec::new(),
            tag_offset: 0,
            kbps,
        })
    }

    /// The bit rate in use.
    pub fn kbps(&self) -> u32 {
        self.kbps
    }

    /// Appends 48 kHz samples (both slices the same length).
    pub fn write(&mut self, left: &[i16], right: &[i16]) -> Result<(), RecorderError> {
        self.l16.clear();
        self.r16.clear();
        self.dec[0].process(left, &mut self.l16);
        self.dec[1].process(right, &mut self.r16);
        self.encode_pending()
    }

    fn encode_pending(&mut self) -> Result<(), RecorderError> {
        let n = self.l16.len().min(self.r16.len());
        if n == 0 {
            return Ok(());
        }
        self.buf.clear();
        self.buf
            .reserve(mp3lame_encoder::max_required_buffer_size(n));
        let input = DualPcm {
            left: &self.l16[..n],
            right: &self.r16[..n],
        };
        self.enc
            .encode_to_vec(input, &mut self.buf)
            .map_err(|e| RecorderError::Encode(format!("LAME encode: {e}")))?;
        self.out
            .write_all(&self.buf)
            .map_err(|e| RecorderError::io("write MP3", &self.path, e))
    }

    /// Flushes the encoder, rewrites the LAME/Info tag frame and syncs. Returns the file size.
    pub fn finish(mut self) -> Result<u64, RecorderError> {
        self.l16.clear();
        self.r16.clear();
        self.dec[0].flush(&mut self.l16);
        self.dec[1].flush(&mut self.r16);
        self.encode_pending()?;
        self.buf.clear();
        self.buf.reserve(7200);
        self.enc
            .flush_to_vec::<FlushGap>(&mut self.buf)
            .map_err(|e| RecorderError::Encode(format!("LAME flush: {e}")))?;
        self.out
            .write_all(&self.buf)
            .map_err(|e| RecorderError::io("write MP3", &self.path, e))?;
        let mut tag = Vec::with_capacity(self.enc.lame_tag_size().max(1));
        let tag_len = self
            .enc
            .lame_tag_encode_to_vec(&mut tag)
            .map(|n| n.get())
            .unwrap_or(0);
        let path = self.path.clone();
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| RecorderError::io("write MP3", &path, e.into_error()))?;
        if tag_len > 0 {
            file.seek(SeekFrom::Start(self.tag_offset))
                .and_then(|_| file.write_all(&tag[..tag_len]))
                .map_err(|e| RecorderError::io("write MP3 tag", &path, e))?;
        }
        file.sync_all()
            .map_err(|e| RecorderError::io("sync MP3", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| RecorderError::io("stat MP3", &path, e))?
            .len();
        Ok(len)
    }
}

fn build_encoder(rate: Bitrate) -> Result<Encoder, String> {
    let mut b = Builder::new().ok_or("cannot allocate the encoder")?;
    b.set_num_channels(2).map_err(|e| e.to_string())?;
    b.set_sample_rate(MP3_SAMPLE_RATE)
        .map_err(|e| e.to_string())?;
    b.set_output_sample_rate(NonZeroU32::new(MP3_SAMPLE_RATE))
        .map_err(|e| e.to_string())?;
    b.set_brate(rate).map_err(|e| e.to_string())?;
    b.set_mode(Mode::JointStereo).map_err(|e| e.to_string())?;
    b.set_quality(Quality::Ok).map_err(|e| e.to_string())?;
    b.set_to_write_vbr_tag(true).map_err(|e| e.to_string())?;
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimator_keeps_the_length_and_passes_speech_band() {
        let mut d = Decimator::new();
        let input: Vec<i16> = (0..4800)
            .map(|i| {
                ((i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 48_000.0).sin() * 10_000.0)
                    as i16
            })
            .collect();
        let mut out = Vec::new();
        d.process(&input[..1000], &mut out);
        d.process(&input[1000..], &mut out);
        d.flush(&mut out);
        assert_eq!(out.len(), 1600);
        let peak = out[100..1500]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        assert!((9_500..=10_500).contains(&peak), "peak {peak}");
    }

    #[test]
    fn bitrates_snap_to_supported_ones() {
        assert_eq!(nearest_bitrate(40), 40);
        assert_eq!(nearest_bitrate(0), 40);
        assert_eq!(nearest_bitrate(32), 40);
        assert_eq!(nearest_bitrate(56), 48);
        assert_eq!(nearest_bitrate(320), 128);
    }
}
