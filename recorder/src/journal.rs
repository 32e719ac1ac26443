//! The crash-safe journal: an append-only file of checksummed records that holds everything
//! needed to render the recording again (header with ids and settings, the announcement PCM,
//! participants, every packet). `recover` replays it after a crash.
//!
//! ## Format (version 1)
//!
//! ```text
//! file   := MAGIC record*
//! MAGIC  := "CHRECJ01"                          (8 bytes)
//! record := kind:u8 len:u32le body[len] crc:u32le   crc = CRC-32C of kind, len and body
//! kind 1 header        body = JSON JournalHeader   (always the first record)
//! kind 2 announcement  body = i16le PCM, 48 kHz mono
//! kind 3 participant   body = JSON {id, role, display_name, at_unix_ns}
//! kind 4 packet        body = participant:u16le seq:u16le ts:u32le arrival_unix_ns:i64le payload
//! ```
//!
//! A record whose length runs past the end of the file, or whose checksum does not match, ends
//! the readable journal: everything before it is used, the rest is counted as ignored bytes (a
//! torn tail after kill -9 or power loss). Unknown kinds with a valid checksum are skipped.
//!
//! ## Durability
//!
//! Records go through a 64 KiB buffer. At every append and every `advance`, the journal is
//! written and `fdatasync`ed when its oldest unsynced record is at least 0.8 x `journal_flush`
//! old (by the times the caller passes in). Packets arrive every 20 ms, so a crash loses less
//! than `journal_flush` (1 s by default) of audio.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::{from_unix_nanos, signed_nanos, to_unix_nanos};
use crate::error::RecorderError;

const MAGIC: &[u8; 8] = b"CHRECJ01";
const KIND_HEADER: u8 = 1;
const KIND_ANNOUNCEMENT: u8 = 2;
const KIND_PARTICIPANT: u8 = 3;
const KIND_PACKET: u8 = 4;
/// Longest record accepted (the announcement is the largest: 64 MiB is 11 minutes of PCM).
const MAX_RECORD: usize = 64 << 20;
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What the journal records about the recording itself, so that it can be rendered again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct JournalHeader {
    pub version: u32,
    pub call_id: String,
    pub recording_id: String,
    pub room: String,
    pub started_at_unix_ns: i64,
    pub beep_interval_ns: u64,
    pub beep_frequency_hz: f32,
    pub beep_duration_ns: u64,
    pub beep_level_dbfs: f32,
    pub mp3_bitrate_kbps: u32,
    pub reorder_window_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ParticipantRecord {
    pub id: String,
    pub role: String,
    pub display_name: String,
    pub at_unix_ns: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Announcement(Vec<i16>),
    Participant(ParticipantRecord),
    Packet {
        participant: u16,
        seq: u16,
        ts: u32,
        arrival: SystemTime,
        payload: Vec<u8>,
    },
}

/// Appends records; see the module docs for when it syncs.
pub(crate) struct JournalWriter {
    path: PathBuf,
    out: BufWriter<File>,
    sync_after: Duration,
    oldest_unsynced: Option<SystemTime>,
}

impl JournalWriter {
    /// Creates the journal (it must not exist), writes the header (and announcement) and syncs
    /// the file and its directory.
    pub fn create(
        path: &Path,
        header: &JournalHeader,
        announcement: Option<&[i16]>,
        journal_flush: Duration,
    ) -> Result<JournalWriter, RecorderError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| RecorderError::io("create journal", path, e))?;
        let mut w = JournalWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, file),
            sync_after: journal_flush.mul_f64(0.8),
            oldest_unsynced: None,
        };
        w.write_raw(MAGIC)?;
        let body = serde_json::to_vec(header)
            .map_err(|e| RecorderError::InvalidInput(format!("journal header: {e}")))?;
        w.record(KIND_HEADER, &[&body])?;
        if let Some(a) = announcement {
            let pcm: Vec<u8> = a.iter().flat_map(|s| s.to_le_bytes()).collect();
            w.record(KIND_ANNOUNCEMENT, &[&pcm])?;
        }
        w.sync()?;
        if let Some(dir) = path.parent() {
            // Make the new directory entry durable too (best effort: not every FS allows it).
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(w)
    }

    pub fn participant(
        &mut self,
        p: &ParticipantRecord,
        now: SystemTime,
    ) -> Result<(), RecorderError> {
        let body = serde_json::to_vec(p)
            .map_err(|e| RecorderError::InvalidInput(format!("journal participant: {e}")))?;
        self.record(KIND_PARTICIPANT, &[&body])?;
        self.mark(now);
        self.maybe_sync(now)
    }

    pub fn packet(
        &mut self,
        participant: u16,
        seq: u16,
        ts: u32,
        arrival: SystemTime,
        payload: &[u8],
    ) -> Result<(), RecorderError> {
        let mut head = [0u8; 16];
        head[0..2].copy_from_slice(&participant.to_le_bytes());
        head[2..4].copy_from_slice(&seq.to_le_bytes());
        head[4..8].copy_from_slice(&ts.to_le_bytes());
        head[8..16].copy_from_slice(&to_unix_nanos(arrival).to_le_bytes());
        self.record(KIND_PACKET, &[&head, payload])?;
        self.mark(arrival);
        self.maybe_sync(arrival)
    }

    fn mark(&mut self, t: SystemTime) {
        if self.oldest_unsynced.is_none() {
            self.oldest_unsynced = Some(t);
        }
    }

    /// Syncs if the oldest unsynced record is old enough at `now` (or `now` went backwards).
    pub fn maybe_sync(&mut self, now: SystemTime) -> Result<(), RecorderError> {
        if let Some(oldest) = self.oldest_unsynced {
            let age = signed_nanos(oldest, now);
            if age.unsigned_abs() >= self.sync_after.as_nanos() {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Writes out the buffer and `fdatasync`s.
    pub fn sync(&mut self) -> Result<(), RecorderError> {
        self.out
            .flush()
            .map_err(|e| RecorderError::io("write journal", &self.path, e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| RecorderError::io("sync journal", &self.path, e))?;
        self.oldest_unsynced = None;
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), RecorderError> {
        self.out
            .write_all(bytes)
            .map_err(|e| RecorderError::io("write journal", &self.path, e))
    }

    fn record(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), RecorderError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_RECORD {
            return Err(RecorderError::InvalidInput(format!(
                "journal record of {len} bytes is too large"
            )));
        }
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..5].copy_from_slice(&(len as u32).to_le_bytes());
        let mut digest = CRC32C.digest();
        digest.update(&head);
        for p in parts {
            digest.update(p);
        }
        let crc = digest.finalize();
        self.write_raw(&head)?;
        for p in parts {
            self.write_raw(p)?;
        }
        self.write_raw(&crc.to_le_bytes())
    }
}

/// Reads a journal record by record (memory stays bounded by one record).
pub(crate) struct JournalReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    file_len: u64,
    /// Bytes after the last good record (a torn or damaged tail).
    pub ignored_bytes: u64,
    /// Why reading stopped early, if it did.
    pub stop_reason: Option<String>,
    done: bool,
}

impl JournalReader {
    /// Opens a journal and reads its header.
    pub fn open(path: &Path) -> Result<(JournalReader, JournalHeader), RecorderError> {
        let file = File::open(path).map_err(|e| RecorderError::io("open journal", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| RecorderError::io("stat journal", path, e))?
            .len();
        let mut r = JournalReader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            file_len,
            ignored_bytes: 0,
            stop_reason: None,
            done: false,
        };
        let corrupt =
            |why: &str| RecorderError::CorruptJournal(format!("{}: {why}", path.display()));
        let mut magic = [0u8; 8];
        match r.input.read_exact(&mut magic) {
            Ok(()) if &magic == MAGIC => r.offset = 8,
            Ok(()) => return Err(corrupt("not a commhub recorder journal (bad magic)")),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(corrupt("shorter than its magic number"));
            }
            Err(e) => return Err(RecorderError::io("read journal", path, e)),
        }
        match r.raw_record()? {
            Some((KIND_HEADER, body)) => {
                let h: JournalHeader = serde_json::from_slice(&body)
                    .map_err(|e| corrupt(&format!("unreadable header: {e}")))?;
                if h.version != 1 {
                    return Err(corrupt(&format!(
                        "unsupported journal version {}",
                        h.version
                    )));
                }
                Ok((r, h))
            }
            Some(_) => Err(corrupt("the first record is not a header")),
            None => Err(corrupt(
                r.stop_reason.as_deref().unwrap_or("no header record"),
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next record, or `None` at the end of the readable journal.
    pub fn next_record(&mut self) -> Result<Option<Record>, RecorderError> {
        loop {
            let Some((kind, body)) = self.raw_record()? else {
                return Ok(None);
            };
            match kind {
                KIND_ANNOUNCEMENT => {
                    let pcm = body
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    return Ok(Some(Record::Announcement(pcm)));
                }
                KIND_PARTICIPANT => match serde_json::from_slice::<ParticipantRecord>(&body) {
                    Ok(p) => return Ok(Some(Record::Participant(p))),
                    Err(e) => {
                        self.stop(
                            format!("unreadable participant record: {e}"),
                            body.len() as u64 + 9,
                        );
                        return Ok(None);
                    }
                },
                KIND_PACKET if body.len() >= 16 => {
                    let participant = u16::from_le_bytes([body[0], body[1]]);
                    let seq = u16::from_le_bytes([body[2], body[3]]);
                    let ts = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                    let mut ns = [0u8; 8];
                    ns.copy_from_slice(&body[8..16]);
                    let arrival = from_unix_nanos(i64::from_le_bytes(ns));
                    let payload = body[16..].to_vec();
                    return Ok(Some(Record::Packet {
                        participant,
                        seq,
                        ts,
                        arrival,
                        payload,
                    }));
                }
                KIND_PACKET => {
                    self.stop("packet record too short".into(), body.len() as u64 + 9);
                    return Ok(None);
                }
                _ => continue, // a kind from a later version: skip it
            }
        }
    }

    fn stop(&mut self, why: String, consumed: u64) {
        self.done = true;
        self.ignored_bytes = self
            .file_len
            .saturating_sub(self.offset.saturating_sub(consumed));
        self.stop_reason = Some(why);
    }

    /// One framed record whose checksum matches, or `None` (end, torn tail or damage).
    fn raw_record(&mut self) -> Result<Option<(u8, Vec<u8>)>, RecorderError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        match read_full(&mut self.input, &mut head)
            .map_err(|e| RecorderError::io("read journal", &self.path, e))?
        {
            0 => {
                self.done = true;
                return Ok(None);
            }
            5 => {}
            _ => {
                self.stop("torn record header at the end".into(), 0);
                return Ok(None);
            }
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let remaining = self.file_len.saturating_sub(self.offset + 5);
        if len > MAX_RECORD || (len as u64 + 4) > remaining {
            let why = if (len as u64 + 4) > remaining && len <= MAX_RECORD {
                "torn record at the end"
            } else {
                "record length out of range"
            };
            self.stop(why.into(), 0);
            return Ok(None);
        }
        let mut body = vec![0u8; len + 4];
        let got = read_full(&mut self.input, &mut body)
            .map_err(|e| RecorderError::io("read journal", &self.path, e))?;
        if got < body.len() {
            self.stop("torn record at the end".into(), 0);
            return Ok(None);
        }
        let crc = u32::from_le_bytes([body[len], body[len + 1], body[len + 2], body[len + 3]]);
        body.truncate(len);
        let mut digest = CRC32C.digest();
        digest.update(&head);
        digest.update(&body);
        if digest.finalize() != crc {
            self.stop("record checksum mismatch".into(), 0);
            return Ok(None);
        }
        self.offset += 5 + len as u64 + 4;
        Ok(Some((head[0], body)))
    }
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn header() -> JournalHeader {
        JournalHeader {
            version: 1,
            call_id: "c".into(),
            recording_id: "r".into(),
            room: "room".into(),
            started_at_unix_ns: 5,
            beep_interval_ns: 15_000_000_000,
            beep_frequency_hz: 1400.0,
            beep_duration_ns: 200_000_000,
            beep_level_dbfs: -12.0,
            mp3_bitrate_kbps: 32,
            reorder_window_ns: 80_000_000,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("recorder-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let path = tmp("rt");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut w =
            JournalWriter::create(&path, &header(), Some(&[1, -2, 3]), Duration::from_secs(1))
                .expect("create");
        let p = ParticipantRecord {
            id: "a".into(),
            role: "agent".into(),
            display_name: "A".into(),
            at_unix_ns: 7,
        };
        w.participant(&p, t).expect("participant");
        for i in 0..10u16 {
            w.packet(
                0,
                i,
                u32::from(i) * 960,
                t + Duration::from_millis(20 * u64::from(i)),
                &[i as u8; 40],
            )
            .expect("packet");
        }
        w.sync().expect("sync");
        drop(w);
        let full = std::fs::metadata(&path).expect("meta").len();

        let (mut r, h) = JournalReader::open(&path).expect("open");
        assert_eq!(h, header());
        assert_eq!(
            r.next_record().expect("rec"),
            Some(Record::Announcement(vec![1, -2, 3]))
        );
        assert_eq!(r.next_record().expect("rec"), Some(Record::Participant(p)));
        let mut n = 0;
        while let Some(Record::Packet { seq, payload, .. }) = r.next_record().expect("rec") {
            assert_eq!(payload, vec![seq as u8; 40]);
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(r.ignored_bytes, 0);

        // Tear the last record in the middle.
        let f = OpenOptions::new().write(true).open(&path).expect("open rw");
        f.set_len(full - 20).expect("truncate");
        let (mut r, _) = JournalReader::open(&path).expect("open torn");
        let mut n = 0;
        while let Some(rec) = r.next_record().expect("rec") {
            if matches!(rec, Record::Packet { .. }) {
                n += 1;
            }
        }
        assert_eq!(n, 9);
        assert_eq!(r.ignored_bytes, 40 + 16 + 9 - 20);
        assert!(r.stop_reason.is_some());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn garbage_is_a_corrupt_journal_error() {
        let path = tmp("garbage");
        std::fs::write(&path, b"hello world, not a journal").expect("write");
        match JournalReader::open(&path) {
            Err(RecorderError::CorruptJournal(m)) => assert!(m.contains("magic"), "{m}"),
            other => panic!("expected CorruptJournal, got {:?}", other.err()),
        }
        let _ = std::fs::remove_file(&path);
    }
}
