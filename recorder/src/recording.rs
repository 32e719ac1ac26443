//! [`Recording`]: one recording of one call, from journal to finished files; [`recover`] for a
//! journal left by a crash.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::RecorderPacket;
use crate::clock::{self, SAMPLE_RATE, duration_to_samples, sample_index, samples_to_duration};
use crate::consent::{BeepConfig, ConsentEvent, ConsentKind, ConsentMixer, load_announcement};
use crate::error::RecorderError;
use crate::flac::FlacWriter;
use crate::journal::{JournalHeader, JournalReader, JournalWriter, ParticipantRecord, Record};
use crate::mp3::{MP3_SAMPLE_RATE, Mp3Writer, nearest_bitrate};
use crate::track::{ParticipantStats, Track};

/// Settings of the recorder; `src` builds it from its own configuration.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Root of `call-recordings/` and `journal/`.
    pub storage_root: PathBuf,
    pub beep: BeepConfig,
    /// 48 kHz mono PCM mixed into both channels at offset 0 (and played to the call by `src`).
    pub announcement: Option<Arc<Vec<i16>>>,
    /// MP3 preview bit rate in kbps, snapped to 40, 48, 64, 80, 96, 112 or 128 (40 is the
    /// lowest at which LAME's Info tag fits, see `mp3.rs`). Default 40.
    pub mp3_bitrate_kbps: u32,
    /// The journal is synced to disk at least this often (see the crate docs).
    pub journal_flush: Duration,
    /// How long after its arrival time a packet may still be placed (jitter and reordering);
    /// audio is final, and written to the encoders, this long after the fact.
    pub reorder_window: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            storage_root: PathBuf::from("data"),
            beep: BeepConfig::default(),
            announcement: Some(load_announcement()),
            mp3_bitrate_kbps: 40,
            journal_flush: Duration::from_secs(1),
            reorder_window: Duration::from_millis(80),
        }
    }
}

/// Who and what is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingMeta {
    /// Safe file name: 1-128 of `A-Z a-z 0-9 _ - .`, not starting with `.`.
    pub call_id: String,
    /// Safe file name, as `call_id`; unique per recording.
    pub recording_id: String,
    pub room: String,
    pub started_at: SystemTime,
}

/// A participant and the channel their audio went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantChannel {
    pub id: String,
    pub role: String,
    pub display_name: String,
    /// 1 = left (internal side), 2 = right (other side).
    pub channel: u8,
    pub joined_offset: Duration,
}

/// Per-recording counters (beyond the API in the brief).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingStats {
    pub participants: Vec<ParticipantStats>,
    /// Packets of participants with role `system` (the server's own consent track), not recorded.
    pub ignored_system_packets: u64,
    /// For a recovered recording: bytes of torn or damaged journal tail that were ignored.
    pub journal_bytes_ignored: u64,
}

/// What a finished recording left on disk.
#[derive(Debug, Clone)]
pub struct Summary {
    pub meta: RecordingMeta,
    pub ended_at: SystemTime,
    pub duration: Duration,
    pub flac_path: PathBuf,
    pub mp3_path: PathBuf,
    pub sidecar_path: PathBuf,
    pub flac_bytes: u64,
    pub mp3_bytes: u64,
    pub flac_sha256: String,
    pub mp3_sha256: String,
    pub participants: Vec<ParticipantChannel>,
    pub consent_events: Vec<ConsentEvent>,
    /// Finalised by [`recover`] from a journal rather than by [`Recording::finish`].
    pub recovered: bool,
    /// Addition: loss/concealment counters.
    pub stats: RecordingStats,
}

/// Render in steps of at most 100 ms.
const CHUNK: usize = 4_800;
/// In recovery, render every 100 ms of journal time.
const REPLAY_STEP: i64 = 4_800;
/// Soft limiter: linear up to this level, then a tanh knee up to full scale.
const LIMIT_KNEE: f32 = 0.75 * 32_767.0;

#[derive(Debug, Clone)]
struct Settings {
    beep: BeepConfig,
    mp3_bitrate_kbps: u32,
    reorder_samples: i64,
}

struct Paths {
    flac: PathBuf,
    mp3: PathBuf,
    sidecar: PathBuf,
    journal: PathBuf,
}

/// One recording in progress: journal, decode/align/mix state and the two encoders. It is
/// `Send`; all methods take the time as an argument and do blocking file IO (call them off the
/// async workers). After an error it is failed (see [`RecorderError`]).
pub struct Recording {
    meta: RecordingMeta,
    settings: Settings,
    paths: Paths,
    /// `None` while replaying a journal in [`recover`].
    journal: Option<JournalWriter>,
    tracks: Vec<Track>,
    index: HashMap<String, usize>,
    system: HashSet<String>,
    consent: ConsentMixer,
    announcement_len: usize,
    cursor: i64,
    flac: FlacWriter,
    mp3: Mp3Writer,
    pending_events: Vec<ConsentEvent>,
    all_events: Vec<ConsentEvent>,
    failed: Option<String>,
    recovered: bool,
    stats: RecordingStats,
    left: Vec<f32>,
    right: Vec<f32>,
    l16: Vec<i16>,
    r16: Vec<i16>,
    raw_events: Vec<(ConsentKind, i64)>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("meta", &self.meta)
            .field("rendered", &self.rendered())
            .field("participants", &self.tracks.len())
            .field("failed", &self.failed)
            .field("journal", &self.paths.journal)
            .finish_non_exhaustive()
    }
}

/// Checks that an id is usable as a file name on every platform.
fn check_id(what: &str, id: &str) -> Result<(), RecorderError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(RecorderError::InvalidInput(format!(
            "{what} {id:?} must be 1-128 of A-Z a-z 0-9 _ - . and not start with '.'"
        )))
    }
}

fn check_config(cfg: &RecordingConfig) -> Result<(), RecorderError> {
    let b = &cfg.beep;
    if !b.frequency_hz.is_finite() || b.frequency_hz <= 0.0 || b.frequency_hz >= 24_000.0 {
        return Err(RecorderError::InvalidInput(format!(
            "beep frequency {} Hz",
            b.frequency_hz
        )));
    }
    if !b.level_dbfs.is_finite() || b.level_dbfs > 0.0 {
        return Err(RecorderError::InvalidInput(format!(
            "beep level {} dBFS",
            b.level_dbfs
        )));
    }
    if b.duration > Duration::from_secs(10)
        || (b.interval > Duration::ZERO && b.interval < b.duration)
    {
        return Err(RecorderError::InvalidInput(
            "beep longer than 10 s or than its interval".into(),
        ));
    }
    if cfg.reorder_window > Duration::from_secs(10) {
        return Err(RecorderError::InvalidInput(
            "reorder window above 10 s".into(),
        ));
    }
    Ok(())
}

/// `{root}/call-recordings/{yyyy}/{mm}/{dd}/{call_id}` (UTC date of the start).
fn output_dir(root: &Path, meta: &RecordingMeta) -> PathBuf {
    let c = clock::civil(meta.started_at);
    root.join("call-recordings")
        .join(format!("{:04}", c.year))
        .join(format!("{:02}", c.month))
        .join(format!("{:02}", c.day))
        .join(&meta.call_id)
}

/// `{root}/journal`.
fn journal_dir(root: &Path) -> PathBuf {
    root.join("journal")
}

/// Which side a participant is on, fixed when they join (see the crate docs).
fn side_for(role: &str, first: bool) -> u8 {
    match role.trim().to_ascii_lowercase().as_str() {
        "agent" | "supervisor" => 1,
        "customer" | "pstn" | "guest" => 2,
        _ if first => 1,
        _ => 2,
    }
}

fn is_system(role: &str) -> bool {
    role.trim().eq_ignore_ascii_case("system")
}

impl Recording {
    /// Creates the output directory, the journal and both encoders.
    pub fn start(cfg: &RecordingConfig, meta: RecordingMeta) -> Result<Recording, RecorderError> {
        check_config(cfg)?;
        let settings = Settings {
            beep: cfg.beep.clone(),
            mp3_bitrate_kbps: nearest_bitrate(cfg.mp3_bitrate_kbps),
            reorder_samples: duration_to_samples(cfg.reorder_window),
        };
        check_id("call_id", &meta.call_id)?;
        check_id("recording_id", &meta.recording_id)?;
        let existing =
            output_dir(&cfg.storage_root, &meta).join(format!("{}.flac", meta.recording_id));
        if existing.exists() {
            return Err(RecorderError::InvalidInput(format!(
                "recording {} already exists ({})",
                meta.recording_id,
                existing.display()
            )));
        }
        let jdir = journal_dir(&cfg.storage_root);
        std::fs::create_dir_all(&jdir)
            .map_err(|e| RecorderError::io("create directory", &jdir, e))?;
        let journal_path = jdir.join(format!("{}.journal", meta.recording_id));
        let header = JournalHeader {
            version: 1,
            call_id: meta.call_id.clone(),
            recording_id: meta.recording_id.clone(),
            room: meta.room.clone(),
            started_at_unix_ns: clock::to_unix_nanos(meta.started_at),
            beep_interval_ns: cfg.beep.interval.as_nanos().min(u64::MAX as u128) as u64,
            beep_frequency_hz: cfg.beep.frequency_hz,
            beep_duration_ns: cfg.beep.duration.as_nanos().min(u64::MAX as u128) as u64,
            beep_level_dbfs: cfg.beep.level_dbfs,
            mp3_bitrate_kbps: settings.mp3_bitrate_kbps,
            reorder_window_ns: cfg.reorder_window.as_nanos().min(u64::MAX as u128) as u64,
        };
        let announcement = cfg.announcement.clone().filter(|a| !a.is_empty());
        let journal = JournalWriter::create(
            &journal_path,
            &header,
            announcement.as_deref().map(|v| v.as_slice()),
            cfg.journal_flush,
        )?;
        match Recording::open(
            &cfg.storage_root,
            meta,
            settings,
            announcement,
            Some(journal),
            journal_path.clone(),
        ) {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = std::fs::remove_file(&journal_path);
                Err(e)
            }
        }
    }

    fn open(
        root: &Path,
        meta: RecordingMeta,
        settings: Settings,
        announcement: Option<Arc<Vec<i16>>>,
        journal: Option<JournalWriter>,
        journal_path: PathBuf,
    ) -> Result<Recording, RecorderError> {
        check_id("call_id", &meta.call_id)?;
        check_id("recording_id", &meta.recording_id)?;
        let dir = output_dir(root, &meta);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RecorderError::io("create directory", &dir, e))?;
        let paths = Paths {
            flac: dir.join(format!("{}.flac", meta.recording_id)),
            mp3: dir.join(format!("{}.mp3", meta.recording_id)),
            sidecar: dir.join(format!("{}.json", meta.recording_id)),
            journal: journal_path,
        };
        let tags = [
            (
                "TITLE",
                format!("Call {} recording {}", meta.call_id, meta.recording_id),
            ),
            ("CALL_ID", meta.call_id.clone()),
            ("RECORDING_ID", meta.recording_id.clone()),
            ("ROOM", meta.room.clone()),
            ("START_TIME", clock::rfc3339(meta.started_at)),
            ("DATE", clock::rfc3339(meta.started_at)[..10].to_string()),
            (
                "CHANNELS",
                "1=left=agent side, 2=right=other side".to_string(),
            ),
            (
                "ENCODER",
                format!("commhub recorder {}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        let flac = FlacWriter::create(&paths.flac, &tags)?;
        let mp3 = Mp3Writer::create(&paths.mp3, settings.mp3_bitrate_kbps)?;
        let consent = ConsentMixer::new(&settings.beep, announcement.clone());
        Ok(Recording {
            meta,
            settings,
            paths,
            journal,
            tracks: Vec::new(),
            index: HashMap::new(),
            system: HashSet::new(),
            consent,
            announcement_len: announcement.map(|a| a.len()).unwrap_or(0),
            cursor: 0,
            flac,
            mp3,
            pending_events: Vec::new(),
            all_events: Vec::new(),
            failed: None,
            recovered: false,
            stats: RecordingStats::default(),
            left: vec![0.0; CHUNK],
            right: vec![0.0; CHUNK],
            l16: vec![0; CHUNK],
            r16: vec![0; CHUNK],
            raw_events: Vec::new(),
        })
    }

    /// Where the journal is: `{storage_root}/journal/{recording_id}.journal`.
    pub fn journal_path(&self) -> &Path {
        &self.paths.journal
    }

    /// The recording's identity.
    pub fn meta(&self) -> &RecordingMeta {
        &self.meta
    }

    /// Audio written to the encoders so far.
    pub fn rendered(&self) -> Duration {
        samples_to_duration(self.cursor)
    }

    /// Counters so far.
    pub fn stats(&self) -> RecordingStats {
        let mut s = self.stats.clone();
        s.participants = self.tracks.iter().map(|t| t.stats.clone()).collect();
        s
    }

    /// Participants and their channels so far.
    pub fn participants(&self) -> Vec<ParticipantChannel> {
        self.tracks
            .iter()
            .map(|t| ParticipantChannel {
                id: t.id.clone(),
                role: t.role.clone(),
                display_name: t.display_name.clone(),
                channel: t.channel,
                joined_offset: samples_to_duration(t.joined_sample),
            })
            .collect()
    }

    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, RecorderError>,
    ) -> Result<T, RecorderError> {
        if let Some(why) = &self.failed {
            return Err(RecorderError::Failed(why.clone()));
        }
        let r = f(self);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    /// Adds a participant (journaled). The channel is fixed now: see the crate docs. Adding a
    /// known id again updates its role and name (and its channel from now on).
    pub fn add_participant(
        &mut self,
        id: &str,
        role: &str,
        display_name: &str,
        at: SystemTime,
    ) -> Result<(), RecorderError> {
        self.guard(|r| r.add_participant_inner(id, role, display_name, at))
    }

    fn add_participant_inner(
        &mut self,
        id: &str,
        role: &str,
        display_name: &str,
        at: SystemTime,
    ) -> Result<(), RecorderError> {
        if id.is_empty() || id.len() > 256 || role.len() > 64 || display_name.len() > 256 {
            return Err(RecorderError::InvalidInput(
                "participant id, role or name too long or empty".into(),
            ));
        }
        if is_system(role) {
            self.system.insert(id.to_string());
            return Ok(());
        }
        if let Some(j) = self.journal.as_mut() {
            let rec = ParticipantRecord {
                id: id.to_string(),
                role: role.to_string(),
                display_name: display_name.to_string(),
                at_unix_ns: clock::to_unix_nanos(at),
            };
            j.participant(&rec, at)?;
        }
        self.apply_participant(id, role, display_name, at)
            .map(|_| ())
    }

    fn apply_participant(
        &mut self,
        id: &str,
        role: &str,
        display_name: &str,
        at: SystemTime,
    ) -> Result<usize, RecorderError> {
        let joined = sample_index(self.meta.started_at, at).max(0);
        if let Some(&i) = self.index.get(id) {
            let t = &mut self.tracks[i];
            if t.role != role {
                let others_left = self
                    .tracks
                    .iter()
                    .enumerate()
                    .any(|(j, o)| j != i && o.channel == 1);
                let t = &mut self.tracks[i];
                t.channel = side_for(role, i == 0 && !others_left);
                t.role = role.to_string();
            }
            self.tracks[i].display_name = display_name.to_string();
            return Ok(i);
        }
        if self.tracks.len() >= u16::MAX as usize {
            return Err(RecorderError::InvalidInput("too many participants".into()));
        }
        let channel = side_for(role, self.tracks.is_empty());
        let track = Track::new(id, role, display_name, channel, joined, self.cursor)?;
        self.tracks.push(track);
        self.index.insert(id.to_string(), self.tracks.len() - 1);
        Ok(self.tracks.len() - 1)
    }

    /// Journals a packet and buffers it for decoding. A packet from an unknown participant adds
    /// them with an empty role; packets of `system` participants are ignored.
    pub fn push(&mut self, pkt: RecorderPacket) -> Result<(), RecorderError> {
        self.guard(|r| r.push_inner(pkt))
    }

    fn push_inner(&mut self, pkt: RecorderPacket) -> Result<(), RecorderError> {
        if self.system.contains(&pkt.participant_id) {
            self.stats.ignored_system_packets += 1;
            return Ok(());
        }
        let idx = match self.index.get(&pkt.participant_id) {
            Some(&i) => i,
            None => {
                self.add_participant_inner(
                    &pkt.participant_id,
                    "",
                    &pkt.participant_id,
                    pkt.arrival,
                )?;
                match self.index.get(&pkt.participant_id) {
                    Some(&i) => i,
                    None => return Ok(()),
                }
            }
        };
        if let Some(j) = self.journal.as_mut() {
            j.packet(
                idx as u16,
                pkt.sequence,
                pkt.timestamp,
                pkt.arrival,
                &pkt.payload,
            )?;
        }
        self.buffer_packet(idx, pkt.sequence, pkt.timestamp, pkt.arrival, pkt.payload)
    }

    fn buffer_packet(
        &mut self,
        idx: usize,
        seq: u16,
        ts: u32,
        arrival: SystemTime,
        payload: Bytes,
    ) -> Result<(), RecorderError> {
        let at = sample_index(self.meta.started_at, arrival);
        if self.tracks[idx].push(seq, ts, at, payload) {
            // The caller has not called advance for a long time: render now to bound memory.
            let events = self.render_until(at - self.settings.reorder_samples)?;
            self.pending_events.extend(events);
        }
        Ok(())
    }

    /// Renders everything up to `now - reorder_window` into the encoders and returns the consent
    /// events that started in that span. Also syncs the journal when due.
    pub fn advance(&mut self, now: SystemTime) -> Result<Vec<ConsentEvent>, RecorderError> {
        self.guard(|r| {
            let horizon = sample_index(r.meta.started_at, now) - r.settings.reorder_samples;
            let mut events = std::mem::take(&mut r.pending_events);
            events.extend(r.render_until(horizon)?);
            if let Some(j) = r.journal.as_mut() {
                j.maybe_sync(now)?;
            }
            Ok(events)
        })
    }

    fn render_until(&mut self, target: i64) -> Result<Vec<ConsentEvent>, RecorderError> {
        let mut events = Vec::new();
        while self.cursor < target {
            let n = ((target - self.cursor) as usize).min(CHUNK);
            let start = self.cursor;
            let (left, right) = (&mut self.left[..n], &mut self.right[..n]);
            left.fill(0.0);
            right.fill(0.0);
            for t in &mut self.tracks {
                if t.channel == 1 {
                    t.render(start, left);
                } else {
                    t.render(start, right);
                }
            }
            self.raw_events.clear();
            self.consent.mix(start, left, right, &mut self.raw_events);
            for (l, o) in left.iter().zip(self.l16.iter_mut()) {
                *o = limit(*l);
            }
            for (r, o) in right.iter().zip(self.r16.iter_mut()) {
                *o = limit(*r);
            }
            self.flac.write(&self.l16[..n], &self.r16[..n])?;
            self.mp3.write(&self.l16[..n], &self.r16[..n])?;
            self.cursor += n as i64;
            for &(kind, at) in &self.raw_events {
                let offset = samples_to_duration(at);
                let ev = ConsentEvent {
                    kind,
                    offset,
                    at: self.meta.started_at + offset,
                };
                self.all_events.push(ev.clone());
                events.push(ev);
            }
        }
        Ok(events)
    }

    /// Renders the rest up to `ended_at`, finalises FLAC and MP3, writes the JSON sidecar and
    /// removes the journal. Takes well under a second whatever the length (the only work that
    /// grows with it is hashing the two files).
    pub fn finish(mut self, ended_at: SystemTime) -> Result<Summary, RecorderError> {
        if let Some(why) = &self.failed {
            return Err(RecorderError::Failed(why.clone()));
        }
        // The journal is complete on disk before anything is finalised: a crash from here on
        // recovers the whole recording.
        if let Some(j) = self.journal.as_mut() {
            j.sync()?;
        }
        let end = sample_index(self.meta.started_at, ended_at).max(self.cursor);
        self.render_until(end)?;
        let mut stats = self.stats();
        stats.journal_bytes_ignored = self.stats.journal_bytes_ignored;
        let participants = self.participants();
        let duration = samples_to_duration(self.cursor);
        let ended_at = self.meta.started_at + duration;
        let mp3_kbps = self.mp3.kbps();
        let flac_bytes = self.flac.finish()?;
        let mp3_bytes = self.mp3.finish()?;
        let flac_sha256 = sha256_file(&self.paths.flac)?;
        let mp3_sha256 = sha256_file(&self.paths.mp3)?;
        let summary = Summary {
            meta: self.meta.clone(),
            ended_at,
            duration,
            flac_path: self.paths.flac.clone(),
            mp3_path: self.paths.mp3.clone(),
            sidecar_path: self.paths.sidecar.clone(),
            flac_bytes,
            mp3_bytes,
            flac_sha256,
            mp3_sha256,
            participants,
            consent_events: self.all_events.clone(),
            recovered: self.recovered,
            stats,
        };
        write_sidecar(&summary, self.cursor, mp3_kbps, self.announcement_len)?;
        drop(self.journal.take());
        std::fs::remove_file(&self.paths.journal)
            .map_err(|e| RecorderError::io("remove journal", &self.paths.journal, e))?;
        Ok(summary)
    }
}

/// Soft limiter: identity below the knee, a tanh curve from the knee to full scale.
#[inline]
fn limit(x: f32) -> i16 {
    let a = x.abs();
    let y = if a <= LIMIT_KNEE {
        x
    } else {
        let room = 32_767.0 - LIMIT_KNEE;
        (LIMIT_KNEE + room * ((a - LIMIT_KNEE) / room).tanh()).copysign(x)
    };
    clock::to_i16(y)
}

fn sha256_file(path: &Path) -> Result<String, RecorderError> {
    let mut f = File::open(path).map_err(|e| RecorderError::io("open for hashing", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| RecorderError::io("read for hashing", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write_sidecar(
    s: &Summary,
    samples: i64,
    mp3_kbps: u32,
    announcement_len: usize,
) -> Result<(), RecorderError> {
    let participants: Vec<_> = s
        .participants
        .iter()
        .map(|p| {
            let st = s
                .stats
                .participants
                .iter()
                .find(|x| x.id == p.id)
                .cloned()
                .unwrap_or_default();
            serde_json::json!({
                "id": p.id,
                "role": p.role,
                "display_name": p.display_name,
                "channel": p.channel,
                "side": if p.channel == 1 { "left" } else { "right" },
                "joined_offset_seconds": p.joined_offset.as_secs_f64(),
                "packets": st.packets,
                "decoded": st.decoded,
                "lost": st.lost,
                "fec_recovered": st.fec_recovered,
                "concealed_ms": st.concealed_samples as f64 / 48.0,
                "late": st.late,
                "duplicate": st.duplicate,
                "corrupt": st.corrupt,
                "reanchors": st.reanchors,
            })
        })
        .collect();
    let events: Vec<_> = s
        .consent_events
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({
                "kind": e.kind.as_str(),
                "offset_seconds": e.offset.as_secs_f64(),
                "at": clock::rfc3339(e.at),
            });
            if e.kind == ConsentKind::IvrAnnouncement {
                v["duration_seconds"] = serde_json::json!(announcement_len as f64 / 48_000.0);
            }
            v
        })
        .collect();
    let doc = serde_json::json!({
        "format": "commhub-recording/1",
        "call_id": s.meta.call_id,
        "recording_id": s.meta.recording_id,
        "room": s.meta.room,
        "started_at": clock::rfc3339(s.meta.started_at),
        "ended_at": clock::rfc3339(s.ended_at),
        "duration_seconds": s.duration.as_secs_f64(),
        "duration_samples": samples,
        "sample_rate": SAMPLE_RATE,
        "channels": 2,
        "channel_layout": {"1": "left: agent side (agent, supervisor)", "2": "right: other side"},
        "recovered": s.recovered,
        "files": {
            "flac": {
                "name": file_name(&s.flac_path),
                "bytes": s.flac_bytes,
                "sha256": s.flac_sha256,
                "sample_rate": SAMPLE_RATE,
                "channels": 2,
                "bits_per_sample": 16,
            },
            "mp3": {
                "name": file_name(&s.mp3_path),
                "bytes": s.mp3_bytes,
                "sha256": s.mp3_sha256,
                "sample_rate": MP3_SAMPLE_RATE,
                "channels": 2,
                "bitrate_kbps": mp3_kbps,
            },
        },
        "participants": participants,
        "consent_events": events,
        "ignored_system_packets": s.stats.ignored_system_packets,
        "journal_bytes_ignored": s.stats.journal_bytes_ignored,
    });
    let mut text = serde_json::to_vec_pretty(&doc)
        .map_err(|e| RecorderError::InvalidInput(format!("sidecar: {e}")))?;
    text.push(b'\n');
    let tmp = s.sidecar_path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(|e| RecorderError::io("create sidecar", &tmp, e))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| RecorderError::io("write sidecar", &tmp, e))?;
    std::fs::rename(&tmp, &s.sidecar_path)
        .map_err(|e| RecorderError::io("rename sidecar", &s.sidecar_path, e))
}

/// Finalises a recording from the journal a crashed process left (`recovered: true`). Uses the
/// settings recorded in the journal and `cfg.storage_root` for the outputs; the end time is the
/// last journaled packet's arrival plus 20 ms. A torn or damaged tail is ignored (counted in
/// [`RecordingStats::journal_bytes_ignored`]). On success the journal is removed.
///
/// Do not call it on the journal of a recording that is still running.
pub fn recover(journal: &Path, cfg: &RecordingConfig) -> Result<Summary, RecorderError> {
    let (mut reader, h) = JournalReader::open(journal)?;
    let meta = RecordingMeta {
        call_id: h.call_id.clone(),
        recording_id: h.recording_id.clone(),
        room: h.room.clone(),
        started_at: clock::from_unix_nanos(h.started_at_unix_ns),
    };
    let settings = Settings {
        beep: BeepConfig {
            interval: Duration::from_nanos(h.beep_interval_ns),
            frequency_hz: h.beep_frequency_hz,
            duration: Duration::from_nanos(h.beep_duration_ns),
            level_dbfs: h.beep_level_dbfs,
        },
        mp3_bitrate_kbps: h.mp3_bitrate_kbps,
        reorder_samples: duration_to_samples(Duration::from_nanos(h.reorder_window_ns)),
    };
    // The announcement, if any, is the first record after the header.
    let mut first = reader.next_record()?;
    let announcement = match &mut first {
        Some(Record::Announcement(pcm)) => {
            let a = Arc::new(std::mem::take(pcm));
            first = reader.next_record()?;
            Some(a)
        }
        _ => None,
    };
    let mut rec = Recording::open(
        &cfg.storage_root,
        meta,
        settings,
        announcement,
        None,
        journal.to_path_buf(),
    )?;
    rec.recovered = true;
    let mut last_time = rec.meta.started_at;
    let mut next_render = i64::MIN;
    let mut record = first;
    while let Some(r) = record {
        match r {
            Record::Participant(p) => {
                let at = clock::from_unix_nanos(p.at_unix_ns);
                if is_system(&p.role) {
                    rec.system.insert(p.id.clone());
                } else {
                    rec.apply_participant(&p.id, &p.role, &p.display_name, at)?;
                }
            }
            Record::Packet {
                participant,
                seq,
                ts,
                arrival,
                payload,
            } => {
                let idx = participant as usize;
                if idx < rec.tracks.len() {
                    rec.buffer_packet(idx, seq, ts, arrival, Bytes::from(payload))?;
                    last_time = last_time.max(arrival);
                    let at = sample_index(rec.meta.started_at, arrival);
                    if at >= next_render {
                        let events = rec.render_until(at - rec.settings.reorder_samples)?;
                        rec.pending_events.extend(events);
                        next_render = at + REPLAY_STEP;
                    }
                }
            }
            Record::Announcement(_) => {}
        }
        record = reader.next_record()?;
    }
    rec.stats.journal_bytes_ignored = reader.ignored_bytes;
    if let Some(why) = &reader.stop_reason {
        tracing::warn!(journal = %reader.path().display(), reason = %why, ignored_bytes = reader.ignored_bytes, "recorder: journal tail ignored");
    }
    let ended = last_time + Duration::from_millis(20);
    rec.finish(ended)
}

/// Journals left in `{storage_root}/journal/` (recordings that never finished), oldest name
/// first. A missing directory gives an empty list.
pub fn pending_journals(storage_root: &Path) -> Vec<PathBuf> {
    let dir = journal_dir(storage_root);
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "journal"))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(side_for("agent", false), 1);
        assert_eq!(side_for("Supervisor", false), 1);
        assert_eq!(side_for("customer", true), 2);
        assert_eq!(side_for("pstn", true), 2);
        assert_eq!(side_for("", true), 1);
        assert_eq!(side_for("", false), 2);
        assert_eq!(side_for("host", false), 2);
    }

    #[test]
    fn ids_must_be_safe_file_names() {
        assert!(check_id("x", "abc-123_X.y").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", "é"] {
            assert!(check_id("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limiter_is_transparent_below_the_knee_and_never_wraps() {
        assert_eq!(limit(1000.0), 1000);
        assert_eq!(limit(-20_000.0), -20_000);
        assert!(limit(100_000.0) > 30_000);
        assert!(limit(-100_000.0) >= -32_768);
        assert!(limit(30_000.0) < 30_000);
    }

    #[test]
    fn recording_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Recording>();
        assert_send::<Summary>();
    }
}
