//! # recorder
//!
//! The audio pipeline that turns a call's Opus packets into a dual-channel FLAC archive, an MP3
//! preview and a JSON sidecar. It knows nothing of WebRTC or the network: `src` hands it
//! [`RecorderPacket`]s from a room's tap, and the time. It reads no clock: every method takes
//! the time as an argument (sans-IO apart from its own files), so tests drive it with synthetic
//! time.
//!
//! ## Layout
//!
//! - `recording.rs`: [`Recording`] (start / add_participant / push / advance / finish),
//!   [`recover`], [`pending_journals`], the sidecar, the soft limiter.
//! - `journal.rs`: the crash-safe journal (format and durability rules in its docs).
//! - `track.rs`: one participant: Opus decode, reorder buffer, PLC/FEC, DTX gaps, timeline anchor.
//! - `consent.rs`: [`beep_pcm`], [`load_announcement`], [`encode_opus_frames`], the consent mixer.
//! - `flac.rs`: a streaming FLAC encoder (why not libFLAC: see there).
//! - `mp3.rs`: 48 -> 16 kHz decimation and LAME (why 16 kHz / 40 kbps CBR: see there).
//! - `clock.rs`: sample indices and UTC formatting.
//!
//! ## Contract
//!
//! - **Files.** `{storage_root}/call-recordings/{yyyy}/{mm}/{dd}/{call_id}/{recording_id}.flac`,
//!   `.mp3` and `.json` (UTC date of the start), and while the recording runs its journal
//!   `{storage_root}/journal/{recording_id}.journal` (one directory, so [`pending_journals`]
//!   finds every unfinished recording with one `read_dir`). `call_id` and `recording_id` must be
//!   safe file names (1-128 of `A-Z a-z 0-9 _ - .`, not starting with `.`).
//! - **Journal first.** [`Recording::push`] appends the packet to the journal before anything
//!   else; the journal is written and fdatasync'ed whenever its oldest unsynced record is
//!   0.8 x `journal_flush` (default 1 s) old, checked at every push and advance, so after kill -9
//!   or power loss [`recover`] rebuilds the files with all but less than that last second (a
//!   test measures at most 0.7 s lost). The journal holds the settings and the announcement
//!   too: a recovered recording is rendered as the original would have been.
//!   [`Recording::finish`] removes the journal once the files and the sidecar are on disk.
//! - **Progressive.** [`Recording::advance`]`(now)` makes everything up to
//!   `now - reorder_window` final and writes it to both encoders; call it every 100-200 ms.
//!   Memory per recording is bounded (a reorder buffer of at most ~10 s per participant, one
//!   100 ms mix chunk, encoder state) whatever the call length. If `advance` is not called, a
//!   participant's buffer reaching 500 packets makes `push` render by itself.
//! - **Timeline.** Sample 0 is `RecordingMeta::started_at`. Each participant's first packet is
//!   anchored at its arrival time; later packets are placed by RTP timestamp, and re-anchored
//!   to arrival time when the two disagree by more than 250 ms (timestamp jump, restart). A late
//!   joiner is silent until their first packet. Gaps with missing sequence numbers are
//!   concealed (Opus PLC, in-band FEC from the next packet; silence after 60 ms), gaps without
//!   (DTX, mute) are silence. Packets placed before what is already final are dropped (counted
//!   as late).
//! - **Channels.** Channel 1 (left) is the internal side, channel 2 (right) everyone else. The
//!   side is fixed when a participant joins: role `agent` or `supervisor` (any case) -> left;
//!   `customer`, `pstn`, `guest` -> right; any other role, including none (`""`): the first
//!   participant of the recording goes left, later ones right ("without roles, the first joiner
//!   is left"). Role `system` (the server's own consent track) is not recorded: the recorder
//!   mixes consent audio itself. Several people on one side are summed and pass a soft limiter
//!   (transparent below -2.5 dBFS, tanh knee above), so the mix never wraps or hard-clips.
//! - **Consent.** The announcement (if configured) is mixed into both channels at offset 0, a
//!   beep every `beep.interval` (first at offset = interval; `Duration::ZERO` disables them).
//!   Each is a [`ConsentEvent`], returned by the `advance` that rendered its start, and listed
//!   in the [`Summary`] and the sidecar.
//! - **Outputs.** FLAC: 2 ch, 48 kHz, 16 bit, STREAMINFO rewritten at the end with the total
//!   samples, frame sizes and MD5; Vorbis comments `CALL_ID`, `RECORDING_ID`, `ROOM`,
//!   `START_TIME`, `DATE`, `TITLE`, `CHANNELS`, `ENCODER`. MP3 preview: 16 kHz stereo, 40 kbps
//!   CBR, LAME quality 7, with the LAME/Info tag (why: `mp3.rs`; in short, LAME at 48 kHz alone
//!   would eat most of the 10 ms of CPU per call-second that 100 calls per core allow, and 40
//!   is the lowest rate whose frame holds the tag). The sidecar (`.json`, written atomically):
//!   ids, start/end, duration, sample rate, channels, byte sizes and SHA-256 of both files,
//!   participants with channel and counters, consent events, `recovered`.
//! - **Finishing** renders the last `reorder_window`, flushes both encoders, rewrites FLAC's
//!   STREAMINFO and MP3's tag frame in place (constant time), then hashes both files (SHA-256, ~1.5 GB/s
//!   with the CPU's SHA extensions: an hour-long call, ~260 MB, finishes in about 0.2 s).
//!   The journal is synced first and removed last, so a crash at any point is recoverable.
//! - **Errors.** Bad input (ids, config) is an error, never a panic; a corrupt Opus payload is
//!   concealed and counted; a full disk is an [`RecorderError::Io`] (see
//!   [`RecorderError::is_disk_full`]). After any error the recording is failed, and the journal
//!   stays for a later [`recover`].
//! - **Threads.** [`Recording`] is `Send`. Every call does blocking file IO and CPU work
//!   (about 6 ms of CPU per second of a 2-party call, `cargo bench -p recorder`): run it off the
//!   async workers, e.g. one thread per recording.

mod clock;
mod consent;
mod error;
mod flac;
mod journal;
mod mp3;
mod recording;
mod track;

use std::time::SystemTime;

use bytes::Bytes;

pub use consent::{
    BeepConfig, ConsentEvent, ConsentKind, beep_pcm, encode_opus_frames, load_announcement,
    load_consent_prompt,
};
pub use error::RecorderError;
/// The encoders on their own, for audio that does not come from a call's packets (e.g. a
/// PBX upload converted to the FLAC + MP3 pair): 2 channels, 48 kHz, 16 bit in.
pub use flac::FlacWriter;
pub use mp3::{MP3_SAMPLE_RATE, Mp3Writer};
pub use recording::{
    ParticipantChannel, Recording, RecordingConfig, RecordingMeta, RecordingStats, Summary,
    pending_journals, recover,
};
pub use track::ParticipantStats;

/// The sample rate of the recording (and of [`beep_pcm`], [`load_announcement`]).
pub const SAMPLE_RATE: u32 = clock::SAMPLE_RATE;

/// One Opus packet of one participant, as the recorder receives it.
#[derive(Debug, Clone)]
pub struct RecorderPacket {
    pub participant_id: String,
    pub sequence: u16,
    pub timestamp: u32,
    pub arrival: SystemTime,
    pub payload: Bytes,
}
