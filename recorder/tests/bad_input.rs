//! Bad input ends in a clear error or is concealed and counted; never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use recorder::{
    RecorderError, RecorderPacket, Recording, RecordingConfig, pending_journals, recover,
};

/// A participant's packets for `secs` seconds from t0, 25 ms delay, no loss.
fn tone(id: &str, freq: f32, secs: u32) -> Vec<Sent> {
    let mut s = ToneSender::new(id, freq, 7, 7);
    (0..secs * 50)
        .map(|f| {
            let at = t0() + Duration::from_millis(20 * u64::from(f) + 25);
            Sent {
                arrival: at,
                pkt: s.frame(at),
            }
        })
        .collect()
}

#[test]
fn a_journal_torn_mid_record_recovers_everything_before_the_tear() {
    let root = temp_dir("torn");
    let cfg = config(&root);
    let mut rec = Recording::start(&cfg, meta("call-t", "rec-torn")).unwrap();
    rec.add_participant("a", "agent", "A", t0()).unwrap();
    let sent = tone("a", 440.0, 10);
    let last = sent.last().unwrap().arrival;
    drive(&mut rec, &sent, last + Duration::from_secs(2)); // journal synced to the end
    let journal = rec.journal_path().to_path_buf();
    std::mem::forget(rec); // crash

    // Tear the last record (a packet record of ~60-100 bytes) in the middle.
    let len = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let summary = recover(&journal, &cfg).unwrap();
    assert!(summary.recovered);
    let st = &summary.stats.participants[0];
    assert_eq!(st.packets, 499, "every packet before the torn one: {st:?}");
    assert!(summary.stats.journal_bytes_ignored > 0 && summary.stats.journal_bytes_ignored < 200);
    // The torn packet was the last one (sent at 9.98 s); the recording ends 20 ms after the
    // arrival of the one before it (9.96 s + 25 ms delay).
    let secs = summary.duration.as_secs_f64();
    assert!((secs - 10.005).abs() < 0.001, "{secs}");
    run_ok(
        "flac",
        &["-t", "--silent", summary.flac_path.to_str().unwrap()],
    );
    let pcm = sox_decode(&summary.flac_path, 48_000);
    assert!(tone_amplitude(&window(&pcm, 48_000, 0, 9.0, 9.9), 48_000, 440.0) > 5_000.0);
    assert!(pending_journals(&root).is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn garbage_or_headless_journals_are_corrupt_journal_errors() {
    let root = temp_dir("garbage");
    let cfg = config(&root);
    let garbage = root.join("x.journal");
    std::fs::write(&garbage, b"definitely not a journal").unwrap();
    let err = recover(&garbage, &cfg).unwrap_err();
    assert!(matches!(err, RecorderError::CorruptJournal(_)), "{err}");
    assert!(err.to_string().contains("corrupt journal"), "{err}");

    // A journal cut inside its header record.
    let rec = Recording::start(&cfg, meta("call-g", "rec-g")).unwrap();
    let journal = rec.journal_path().to_path_buf();
    std::mem::forget(rec);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(30)
        .unwrap();
    let err = recover(&journal, &cfg).unwrap_err();
    assert!(matches!(err, RecorderError::CorruptJournal(_)), "{err}");
    assert!(
        journal.exists(),
        "an unrecoverable journal is left for a person to look at"
    );

    let err = recover(&root.join("missing.journal"), &cfg).unwrap_err();
    assert!(matches!(err, RecorderError::Io { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn corrupt_opus_payloads_are_concealed_and_counted() {
    let root = temp_dir("corrupt");
    let cfg = config(&root);
    let mut rec = Recording::start(&cfg, meta("call-x", "rec-x")).unwrap();
    rec.add_participant("a", "agent", "A", t0()).unwrap();
    let mut sent = tone("a", 440.0, 6);
    let garbage: [&[u8]; 4] = [
        &[0xFF; 3],
        &[],
        &[0x03, 0xFF, 0xFF, 0xFF, 0x00],
        &[0xFC; 200],
    ];
    for (i, g) in garbage.iter().enumerate() {
        sent[50 + 60 * i].pkt.payload = Bytes::copy_from_slice(g);
    }
    let last = sent.last().unwrap().arrival;
    drive(&mut rec, &sent, last);
    let summary = rec.finish(last + Duration::from_millis(20)).unwrap();
    let st = &summary.stats.participants[0];
    assert!(st.corrupt >= 3, "corrupt payloads counted: {st:?}");
    assert_eq!(st.decoded + st.corrupt, 300, "{st:?}");
    run_ok(
        "flac",
        &["-t", "--silent", summary.flac_path.to_str().unwrap()],
    );
    let pcm = sox_decode(&summary.flac_path, 48_000);
    // Concealment keeps the tone going across the damaged packets.
    assert!(tone_amplitude(&window(&pcm, 48_000, 0, 1.0, 5.5), 48_000, 440.0) > 5_000.0);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary.sidecar_path).unwrap()).unwrap();
    assert_eq!(side["participants"][0]["corrupt"], st.corrupt);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn invalid_ids_and_settings_are_input_errors() {
    let root = temp_dir("invalid");
    let cfg = config(&root);
    for (call, rec) in [("../etc", "r"), ("c", "a/b"), ("", "r"), ("c", ".hidden")] {
        let err = Recording::start(&cfg, meta(call, rec)).unwrap_err();
        assert!(
            matches!(err, RecorderError::InvalidInput(_)),
            "{call}/{rec}: {err}"
        );
    }
    let mut bad = cfg.clone();
    bad.beep.frequency_hz = 30_000.0;
    assert!(matches!(
        Recording::start(&bad, meta("c", "r")),
        Err(RecorderError::InvalidInput(_))
    ));
    let mut bad = cfg.clone();
    bad.beep.level_dbfs = f32::NAN;
    assert!(matches!(
        Recording::start(&bad, meta("c", "r")),
        Err(RecorderError::InvalidInput(_))
    ));
    assert!(pending_journals(&root).is_empty(), "nothing left behind");

    // Odd but valid: unknown participants, system packets, time going backwards, a huge
    // participant id.
    let mut rec = Recording::start(&cfg, meta("c", "r")).unwrap();
    rec.add_participant("sys", "system", "Server", t0())
        .unwrap();
    let pkt = |id: &str, secs: u64| RecorderPacket {
        participant_id: id.into(),
        sequence: 1,
        timestamp: 1,
        arrival: t0() + Duration::from_secs(secs),
        payload: Bytes::from_static(&[0xF8, 0xFF, 0xFE]),
    };
    rec.push(pkt("sys", 1)).unwrap();
    rec.push(pkt("stranger", 1)).unwrap();
    rec.advance(t0() + Duration::from_secs(2)).unwrap();
    rec.advance(t0()).unwrap();
    assert!(
        rec.add_participant(&"x".repeat(10_000), "agent", "X", t0())
            .is_err()
    );
    // After an error the recording is failed; finish says so.
    assert!(matches!(
        rec.push(pkt("stranger", 2)),
        Err(RecorderError::Failed(_))
    ));
    assert!(matches!(
        rec.finish(t0() + Duration::from_secs(3)),
        Err(RecorderError::Failed(_))
    ));
    let _ = std::fs::remove_dir_all(&root);
}

/// Unmounts on drop.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_small_tmpfs(dir: &Path) -> Option<Mount> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=200k", "tmpfs"])
        .arg(dir)
        .output()
        .ok()?;
    if out.status.success() {
        Some(Mount(dir.to_path_buf()))
    } else {
        eprintln!(
            "SKIPPED full-disk test: cannot mount a 200 KiB tmpfs ({}); run as root to include it",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        None
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_other_recordings_go_on() {
    let root = temp_dir("fulldisk");
    let small = root.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let Some(_mount) = mount_small_tmpfs(&small) else {
        return;
    };
    let full_cfg = RecordingConfig {
        storage_root: small.clone(),
        ..Default::default()
    };
    let ok_cfg = config(&root.join("big"));

    let mut healthy = Recording::start(&ok_cfg, meta("call-ok", "rec-ok")).unwrap();
    healthy.add_participant("b", "agent", "B", t0()).unwrap();
    let sent_ok = tone("b", 880.0, 30);

    let mut failing: Option<Recording> = None;
    let mut error: Option<RecorderError> = None;
    match Recording::start(&full_cfg, meta("call-full", "rec-full")) {
        Ok(mut r) => {
            r.add_participant("a", "agent", "A", t0()).unwrap();
            failing = Some(r);
        }
        Err(e) => error = Some(e),
    }
    let sent_full = tone("a", 440.0, 30);
    let mut next = t0();
    for (s_ok, s_full) in sent_ok.iter().zip(&sent_full) {
        healthy.push(s_ok.pkt.clone()).unwrap();
        if let Some(Err(e)) = failing.as_mut().map(|r| r.push(s_full.pkt.clone())) {
            error = Some(e);
            failing = None;
        }
        if s_ok.arrival >= next {
            healthy.advance(next).unwrap();
            if let Some(Err(e)) = failing.as_mut().map(|r| r.advance(next)) {
                error = Some(e);
                failing = None;
            }
            next += Duration::from_millis(100);
        }
    }
    if let Some(Err(e)) = failing
        .take()
        .map(|r| r.finish(t0() + Duration::from_secs(30)))
    {
        error = Some(e);
    }
    let err = error.expect("200 KiB cannot hold 30 s of FLAC: some call must fail");
    eprintln!("full disk error: {err}");
    assert!(err.is_disk_full(), "{err:?}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(
        err.to_string().contains(small.to_str().unwrap()),
        "the message names the file: {err}"
    );

    // The other recording is unaffected.
    let summary = healthy.finish(t0() + Duration::from_secs(30)).unwrap();
    run_ok(
        "flac",
        &["-t", "--silent", summary.flac_path.to_str().unwrap()],
    );
    drop(_mount);
    let _ = std::fs::remove_dir_all(&root);
}
