//! `POST /functions/v1/recording-upload`: the PBX hands over a finished recording, exactly in
//! the platform's body: `call_id`, `codec` (`mp3`, `flac` or `wav`), `duration_sec`,
//! `channels`, `sample_rate`, `file_data` (base64) and `checksum` (SHA-256 of the file, hex),
//! with `Authorization: Bearer PBX_AUTH_TOKEN`.
//!
//! Everything is checked before anything is written: the token (constant-time), the body, the
//! base64, the checksum, the call, and the audio itself (decoded with symphonia: it must be the
//! codec it claims, with the claimed channels and rate, and last `duration_sec` within
//! max(1 s, 5 %)). Then the file is kept under `call-recordings/` and the other half of the
//! FLAC (archive) + MP3 (preview) pair is made from the decoded audio (48 kHz stereo, the
//! archive format; mono is copied to both channels), and a `call_recordings` row is written
//! (source `pbx-upload`). The same file uploaded again for the same call answers 200 with the
//! existing recording.

use std::fs::File;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{Datelike, Utc};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::http::AppError;
use crate::http::AppState;
use crate::store::writer::Durable;
use crate::store::{RecordingRow, StoreOp, storage_key};

#[derive(Debug, Deserialize)]
pub struct UploadBody {
    pub call_id: String,
    pub codec: String,
    pub duration_sec: f64,
    pub channels: u32,
    pub sample_rate: u32,
    pub file_data: String,
    pub checksum: String,
}

fn bad(code: &'static str, msg: impl Into<String>) -> AppError {
    AppError::coded(StatusCode::BAD_REQUEST, code, msg)
}

fn unprocessable(code: &'static str, msg: impl Into<String>) -> AppError {
    AppError::coded(StatusCode::UNPROCESSABLE_ENTITY, code, msg)
}

/// Does the file look like `codec`?
fn magic_matches(codec: &str, b: &[u8]) -> bool {
    match codec {
        "flac" => b.starts_with(b"fLaC"),
        "wav" => b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "mp3" => b.starts_with(b"ID3") || (b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0),
        _ => false,
    }
}

/// What decoding found.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub frames: u64,
    pub rate: u32,
    pub channels: u32,
}

/// Decode the whole file, handing each block of interleaved samples to `sink`.
fn decode(
    codec: &str,
    data: Bytes,
    mut sink: impl FnMut(&[i16], u32, u32) -> Result<(), String>,
) -> Result<Probe, String> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::TrackType;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::io::MediaSourceStream;

    let cursor = std::io::Cursor::new(data);
    let mss = MediaSourceStream::new(Box::new(cursor), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(codec);
    let mut format = symphonia::default::get_probe()
        .probe(&hint, mss, Default::default(), Default::default())
        .map_err(|e| format!("not a readable {codec} file: {e}"))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or("the file has no audio track")?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or("the file has no audio track")?
        .clone();
    let id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| format!("no decoder for the file's codec: {e}"))?;
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut channels = params
        .channels
        .as_ref()
        .map(|c| c.count() as u32)
        .unwrap_or(0);
    let (mut frames, mut packets, mut errors) = (0u64, 0u64, 0u64);
    let mut buf: Vec<i16> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(symphonia::core::errors::Error::IoError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break;
            }
            Err(e) => return Err(format!("the file is damaged: {e}")),
        };
        if packet.track_id != id {
            continue;
        }
        packets += 1;
        match decoder.decode(&packet) {
            Ok(audio) => {
                rate = audio.spec().rate();
                channels = audio.spec().channels().count() as u32;
                frames += audio.frames() as u64;
                audio.copy_to_vec_interleaved(&mut buf);
                sink(&buf, channels, rate)?;
            }
            Err(symphonia::core::errors::Error::DecodeError(_)) => errors += 1,
            Err(e) => return Err(format!("decoding failed: {e}")),
        }
    }
    if frames == 0 {
        return Err("the file holds no audio".into());
    }
    if errors * 100 > packets.max(1) {
        return Err(format!("{errors} of {packets} packets do not decode"));
    }
    Ok(Probe {
        frames,
        rate,
        channels,
    })
}

/// Linear-interpolating resampler to 48 kHz stereo, streaming.
struct To48k {
    step: f64,
    pos: f64,
    hist: Vec<[f32; 2]>,
    left: Vec<i16>,
    right: Vec<i16>,
}

impl To48k {
    fn new(rate: u32) -> Self {
        To48k {
            step: f64::from(rate) / 48_000.0,
            pos: 0.0,
            hist: Vec::new(),
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    /// Feed interleaved samples; output accumulates in `left` / `right`.
    fn push(&mut self, inter: &[i16], channels: u32) {
        let ch = channels.max(1) as usize;
        for f in inter.chunks_exact(ch) {
            let l = f32::from(f[0]);
            let r = if ch > 1 { f32::from(f[1]) } else { l };
            self.hist.push([l, r]);
        }
        if (self.step - 1.0).abs() < f64::EPSILON {
            for [l, r] in self.hist.drain(..) {
                self.left.push(l as i16);
                self.right.push(r as i16);
            }
            return;
        }
        while self.pos + 1.0 < self.hist.len() as f64 {
            let i = self.pos as usize;
            let t = (self.pos - i as f64) as f32;
            let (a, b) = (self.hist[i], self.hist[i + 1]);
            self.left.push((a[0] + (b[0] - a[0]) * t).round() as i16);
            self.right.push((a[1] + (b[1] - a[1]) * t).round() as i16);
            self.pos += self.step;
        }
        let used = (self.pos as usize).min(self.hist.len().saturating_sub(1));
        self.hist.drain(..used);
        self.pos -= used as f64;
    }

    fn take(&mut self) -> (Vec<i16>, Vec<i16>) {
        (
            std::mem::take(&mut self.left),
            std::mem::take(&mut self.right),
        )
    }
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex(&h.finalize()), n))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Made {
    flac: PathBuf,
    mp3: PathBuf,
}

/// Write the pair into `tmp` (renamed into place by the caller).
fn make_pair(
    codec: &str,
    data: Bytes,
    tmp: &Path,
    rid: &str,
    call_id: &str,
    mp3_kbps: u32,
) -> Result<Made, String> {
    let flac = tmp.join(format!("{rid}.flac"));
    let mp3 = tmp.join(format!("{rid}.mp3"));
    let io = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    // Keep the original when it is one of the pair.
    match codec {
        "flac" => {
            std::fs::write(&flac, &data).map_err(|e| io("writing the FLAC", &e))?;
        }
        "mp3" => {
            std::fs::write(&mp3, &data).map_err(|e| io("writing the MP3", &e))?;
        }
        _ => {}
    }
    let mut flac_w = if codec == "flac" {
        None
    } else {
        Some(
            recorder::FlacWriter::create(
                &flac,
                &[
                    ("CALL_ID", call_id.to_string()),
                    ("RECORDING_ID", rid.to_string()),
                    ("SOURCE", "pbx-upload".to_string()),
                ],
            )
            .map_err(|e| e.to_string())?,
        )
    };
    let mut mp3_w = if codec == "mp3" {
        None
    } else {
        Some(recorder::Mp3Writer::create(&mp3, mp3_kbps).map_err(|e| e.to_string())?)
    };
    let mut rs: Option<To48k> = None;
    decode(codec, data, |inter, channels, rate| {
        let r = rs.get_or_insert_with(|| To48k::new(rate));
        r.push(inter, channels);
        let (l, rr) = r.take();
        if let Some(w) = flac_w.as_mut() {
            w.write(&l, &rr).map_err(|e| e.to_string())?;
        }
        if let Some(w) = mp3_w.as_mut() {
            w.write(&l, &rr).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map(|_| ())?;
    if let Some(w) = flac_w {
        w.finish().map_err(|e| e.to_string())?;
    }
    if let Some(w) = mp3_w {
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(Made { flac, mp3 })
}

pub async fn recording_upload(
    State(state): State<AppState>,
    // 1. The PBX token (before the body is read).
    _pbx: crate::http::extract::PbxToken,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    // 2. The body.
    let limit = state.cfg.api.max_upload_bytes;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(format!("the upload is larger than {limit} bytes"))
        } else {
            AppError::BadRequest(e.body_text())
        }
    })?;
    if body.len() > limit {
        return Err(AppError::TooLarge(format!(
            "the upload is {} bytes; the limit is {limit}",
            body.len()
        )));
    }
    let b: UploadBody = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("the body is not the upload JSON: {e}")))?;
    drop(body);
    let call_id = Uuid::parse_str(b.call_id.trim())
        .map_err(|_| bad("invalid_call_id", "call_id must be a UUID"))?;
    let codec = b.codec.trim().to_ascii_lowercase();
    if !["mp3", "flac", "wav"].contains(&codec.as_str()) {
        return Err(AppError::BadRequest(
            "codec must be mp3, flac or wav".into(),
        ));
    }
    if !(1..=8).contains(&b.channels) {
        return Err(AppError::BadRequest("channels must be 1..=8".into()));
    }
    if !(8_000..=192_000).contains(&b.sample_rate) {
        return Err(AppError::BadRequest(
            "sample_rate must be 8000..=192000".into(),
        ));
    }
    if !b.duration_sec.is_finite() || b.duration_sec < 0.0 || b.duration_sec > 86_400.0 {
        return Err(AppError::BadRequest(
            "duration_sec must be 0..=86400 seconds".into(),
        ));
    }
    let want = b
        .checksum
        .trim()
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(AppError::BadRequest(
            "checksum must be the file's SHA-256 as 64 hex digits".into(),
        ));
    }
    // 3. base64 (line breaks allowed), then the checksum.
    let b64: String = b
        .file_data
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| bad("bad_base64", format!("file_data is not valid base64: {e}")))?;
    if data.is_empty() {
        return Err(bad("bad_base64", "file_data is empty"));
    }
    let got = hex(&Sha256::digest(&data));
    if got != want {
        return Err(bad(
            "checksum_mismatch",
            "the checksum does not match file_data's SHA-256",
        ));
    }
    // 4. The call, and whether this file is already here.
    let store = &state.store.store;
    let call = store
        .call(&call_id)
        .await?
        .ok_or_else(|| AppError::coded(StatusCode::NOT_FOUND, "unknown_call", "no such call"))?;
    if let Some(r) = store.uploaded(&call_id, &got).await? {
        return Ok((StatusCode::OK, Json(response(&r, true))).into_response());
    }
    // 5. The audio: the claimed codec, channels, rate and duration.
    if !magic_matches(&codec, &data) {
        return Err(unprocessable(
            "bad_audio",
            format!("file_data is not a {codec} file"),
        ));
    }
    let data = Bytes::from(data);
    let probe = {
        let (d, c) = (data.clone(), codec.clone());
        tokio::task::spawn_blocking(move || decode(&c, d, |_, _, _| Ok(())))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("decoder task: {e}")))?
            .map_err(|e| unprocessable("bad_audio", e))?
    };
    let secs = probe.frames as f64 / f64::from(probe.rate.max(1));
    let mut mismatch = Vec::new();
    if probe.channels != b.channels {
        mismatch.push(format!(
            "channels: claimed {}, the file has {}",
            b.channels, probe.channels
        ));
    }
    if probe.rate != b.sample_rate {
        mismatch.push(format!(
            "sample_rate: claimed {}, the file has {}",
            b.sample_rate, probe.rate
        ));
    }
    if (secs - b.duration_sec).abs() > (b.duration_sec * 0.05).max(1.0) {
        mismatch.push(format!(
            "duration_sec: claimed {}, the file lasts {secs:.2}",
            b.duration_sec
        ));
    }
    if !mismatch.is_empty() {
        return Err(unprocessable("metadata_mismatch", mismatch.join("; ")));
    }
    // 6. Write the pair (in a temporary directory, then into place).
    let root = state.cfg.recording.storage_root.clone();
    let now = Utc::now();
    let dir = root
        .join("call-recordings")
        .join(format!("{:04}", now.year()))
        .join(format!("{:02}", now.month()))
        .join(format!("{:02}", now.day()))
        .join(call_id.to_string());
    let rid = Uuid::new_v4();
    let tmp = root.join("tmp").join(rid.to_string());
    let made = {
        let (tmp, codec, rid_s, cid) = (
            tmp.clone(),
            codec.clone(),
            rid.to_string(),
            call_id.to_string(),
        );
        let kbps = state.cfg.recording.mp3_bitrate_kbps;
        tokio::task::spawn_blocking(move || -> Result<(PathBuf, PathBuf), String> {
            std::fs::create_dir_all(&tmp)
                .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            let m = make_pair(&codec, data, &tmp, &rid_s, &cid, kbps)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let (flac, mp3) = (
                dir.join(format!("{rid_s}.flac")),
                dir.join(format!("{rid_s}.mp3")),
            );
            for (from, to) in [(&m.flac, &flac), (&m.mp3, &mp3)] {
                File::open(from)
                    .and_then(|f| f.sync_all())
                    .and_then(|_| std::fs::rename(from, to))
                    .map_err(|e| format!("storing {}: {e}", to.display()))?;
            }
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
            let _ = std::fs::remove_dir_all(&tmp);
            Ok((flac, mp3))
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("encoder task: {e}")))?
    };
    let (flac, mp3) = match made {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(AppError::Internal(anyhow::anyhow!(
                "upload conversion: {e}"
            )));
        }
    };
    let (flac_sha, flac_bytes) =
        sha256_file(&flac).map_err(|e| AppError::Internal(anyhow::anyhow!("hashing: {e}")))?;
    let (mp3_sha, mp3_bytes) =
        sha256_file(&mp3).map_err(|e| AppError::Internal(anyhow::anyhow!("hashing: {e}")))?;
    // 7. The row.
    let row = RecordingRow {
        id: rid,
        call_id: call.id,
        source: "pbx-upload".into(),
        status: crate::domain::RecordingStatus::Ready.as_str().into(),
        codec: codec.clone(),
        flac_key: Some(storage_key(&root, &flac)),
        mp3_key: Some(storage_key(&root, &mp3)),
        duration_sec: Some((secs * 1000.0).round() / 1000.0),
        channels: Some(probe.channels as i32),
        sample_rate: Some(probe.rate as i32),
        flac_bytes: Some(flac_bytes as i64),
        mp3_bytes: Some(mp3_bytes as i64),
        flac_sha256: Some(flac_sha),
        mp3_sha256: Some(mp3_sha),
        upload_sha256: Some(got),
        error: None,
        started_at: now,
        ready_at: Some(Utc::now()),
    };
    match state.store.write(StoreOp::Recording(row.clone())).await {
        Durable::Rejected => {
            let _ = std::fs::remove_file(&flac);
            let _ = std::fs::remove_file(&mp3);
            Err(AppError::Internal(anyhow::anyhow!(
                "the recording row was refused by the database"
            )))
        }
        d => {
            tracing::info!(call = %call_id, recording = %rid, codec, queued = d == Durable::Queued, "PBX recording stored");
            Ok((StatusCode::CREATED, Json(response(&row, false))).into_response())
        }
    }
}

fn response(r: &RecordingRow, duplicate: bool) -> serde_json::Value {
    json!({
        "recording_id": r.id,
        "call_id": r.call_id,
        "status": r.status,
        "codec": r.codec,
        "duration_sec": r.duration_sec,
        "channels": r.channels,
        "sample_rate": r.sample_rate,
        "flac_key": r.flac_key,
        "mp3_key": r.mp3_key,
        "flac_sha256": r.flac_sha256,
        "mp3_sha256": r.mp3_sha256,
        "flac_bytes": r.flac_bytes,
        "mp3_bytes": r.mp3_bytes,
        "duplicate": duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampler_keeps_duration_and_copies_mono() {
        let mut r = To48k::new(8_000);
        let input: Vec<i16> = (0..8_000).map(|i| (i % 100) as i16).collect();
        r.push(&input[..3000], 1);
        r.push(&input[3000..], 1);
        let (l, rr) = r.take();
        assert!((47_990..=48_000).contains(&l.len()), "{}", l.len());
        assert_eq!(l, rr);
    }

    #[test]
    fn magic_bytes() {
        assert!(magic_matches("flac", b"fLaC\0\0"));
        assert!(magic_matches("mp3", b"ID3\x04"));
        assert!(magic_matches("mp3", &[0xFF, 0xFB, 0x90]));
        assert!(magic_matches("wav", b"RIFF\0\0\0\0WAVEfmt "));
        assert!(!magic_matches("mp3", b"fLaC"));
    }
}
