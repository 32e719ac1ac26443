//! Helpers shared by the recorder's integration tests: temp dirs, synthetic Opus calls, external
//! decoders (flac, sox, ffprobe/ffmpeg, symphonia) and a Goertzel detector.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use recorder::{RecorderPacket, Recording, RecordingConfig, RecordingMeta};

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "recorder-test-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fixed start time: 2023-11-14T22:13:20Z.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub fn meta(call: &str, rec: &str) -> RecordingMeta {
    RecordingMeta {
        call_id: call.into(),
        recording_id: rec.into(),
        room: "room-1".into(),
        started_at: t0(),
    }
}

pub fn config(root: &Path) -> RecordingConfig {
    RecordingConfig {
        storage_root: root.to_path_buf(),
        ..Default::default()
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One synthetic packet and when it reaches the recorder.
#[derive(Clone)]
pub struct Sent {
    pub arrival: SystemTime,
    pub pkt: RecorderPacket,
}

/// A participant sending a sine tone as 20 ms Opus frames (in-band FEC on, 32 kbps).
pub struct ToneSender {
    id: String,
    freq: f32,
    enc: opus::Encoder,
    seq: u16,
    ts: u32,
    phase_samples: u64,
}

impl ToneSender {
    pub fn new(id: &str, freq: f32, seq0: u16, ts0: u32) -> ToneSender {
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc.set_packet_loss_perc(10).unwrap();
        enc.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
        ToneSender {
            id: id.into(),
            freq,
            enc,
            seq: seq0,
            ts: ts0,
            phase_samples: 0,
        }
    }

    /// The next 20 ms frame, sent at `send` (timeline time), as a packet with that arrival.
    pub fn frame(&mut self, arrival: SystemTime) -> RecorderPacket {
        let pcm: Vec<i16> = (0..960)
            .map(|i| {
                let t = (self.phase_samples + i) as f32 / 48_000.0;
                ((t * self.freq * 2.0 * std::f32::consts::PI).sin() * 9_000.0) as i16
            })
            .collect();
        self.phase_samples += 960;
        let payload = Bytes::from(self.enc.encode_vec(&pcm, 1500).unwrap());
        let p = RecorderPacket {
            participant_id: self.id.clone(),
            sequence: self.seq,
            timestamp: self.ts,
            arrival,
            payload,
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(960);
        p
    }

    /// Skips `frames` frames without sending: DTX-like (sequence numbers continue, time moves).
    pub fn skip_dtx(&mut self, frames: u32) {
        self.ts = self.ts.wrapping_add(960 * frames);
        self.phase_samples += 960 * u64::from(frames);
    }
}

/// Pushes `sent` (sorted by arrival) into `rec`, calling `advance` every 100 ms of arrival time.
/// Returns the consent events that `advance` reported.
pub fn drive(rec: &mut Recording, sent: &[Sent], until: SystemTime) -> Vec<recorder::ConsentEvent> {
    let mut events = Vec::new();
    let mut next = t0();
    for s in sent {
        while next <= s.arrival {
            events.extend(rec.advance(next).unwrap());
            next += Duration::from_millis(100);
        }
        rec.push(s.pkt.clone()).unwrap();
    }
    while next <= until {
        events.extend(rec.advance(next).unwrap());
        next += Duration::from_millis(100);
    }
    events
}

/// Runs a tool; panics with a clear message when it is missing.
pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{cmd}` ({e}); install the test tools with scripts/setup-test-deps.sh")
    })
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Decodes any file sox reads into interleaved 16-bit stereo at `rate`.
pub fn sox_decode(path: &Path, rate: u32) -> Vec<i16> {
    let out = run(
        "sox",
        &[
            path.to_str().unwrap(),
            "-t",
            "raw",
            "-e",
            "signed-integer",
            "-b",
            "16",
            "-c",
            "2",
            "-r",
            &rate.to_string(),
            "-",
        ],
    );
    assert!(
        out.status.success(),
        "sox failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Decodes a file with ffmpeg into interleaved 16-bit stereo at its own rate.
pub fn ffmpeg_decode(path: &Path) -> Vec<i16> {
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-f",
            "s16le",
            "-ac",
            "2",
            "-",
        ],
    );
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// `ffprobe` duration of the container, in seconds.
pub fn ffprobe_duration(path: &Path) -> f64 {
    let s = run_ok(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe said {s:?}"))
}

/// `ffprobe`'s audio stream `(start_time, duration)` in seconds. For an MP3 with a LAME/Info
/// tag, start_time is the encoder delay that decoders skip.
pub fn ffprobe_stream(path: &Path) -> (f64, f64) {
    let s = run_ok(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=start_time,duration",
            "-of",
            "default=nw=1",
            path.to_str().unwrap(),
        ],
    );
    let get = |k: &str| -> f64 {
        s.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("ffprobe gave no {k}: {s:?}"))
    };
    (get("start_time"), get("duration"))
}

/// One channel (0 = left) of interleaved stereo, seconds `from..to` at `rate`.
pub fn window(pcm: &[i16], rate: u32, ch: usize, from: f64, to: f64) -> Vec<f32> {
    let a = (from * f64::from(rate)) as usize;
    let b = ((to * f64::from(rate)) as usize).min(pcm.len() / 2);
    (a..b).map(|i| f32::from(pcm[2 * i + ch])).collect()
}

/// Amplitude of the `freq` component (Goertzel), in sample units.
pub fn tone_amplitude(x: &[f32], rate: u32, freq: f32) -> f32 {
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &v in x {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - c * s1 * s2;
    (2.0 * power.max(0.0).sqrt() / x.len().max(1) as f64) as f32
}

pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Frames decoded by symphonia (delay/padding removed), the track's sample rate and its
/// declared frame count.
pub fn symphonia_frames(path: &Path) -> (u64, u32, Option<u64>) {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::TrackType;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::io::MediaSourceStream;

    let src = File::open(path).unwrap();
    let mss = MediaSourceStream::new(Box::new(src), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(&hint, mss, Default::default(), Default::default())
        .unwrap_or_else(|e| panic!("symphonia cannot probe {}: {e}", path.display()));
    let track = format.default_track(TrackType::Audio).unwrap();
    let params = track
        .codec_params
        .as_ref()
        .unwrap()
        .audio()
        .unwrap()
        .clone();
    let declared = track.num_frames;
    let id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .unwrap();
    let mut frames = 0u64;
    while let Some(packet) = format.next_packet().unwrap() {
        if packet.track_id != id {
            continue;
        }
        let buf = decoder.decode(&packet).unwrap();
        frames += buf.frames() as u64;
    }
    (frames, params.sample_rate.unwrap_or(0), declared)
}

pub fn sha256sum(path: &Path) -> String {
    let s = run_ok("sha256sum", &[path.to_str().unwrap()]);
    s.split_whitespace().next().unwrap().to_string()
}
