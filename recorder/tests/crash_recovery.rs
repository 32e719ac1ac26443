//! Crash safety: a recording whose process dies (kill -9, or a `Recording` that is never
//! finished) is rebuilt from its journal by `recover`, with all but at most the last second.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use recorder::{ConsentKind, Recording, pending_journals, recover};

/// Two parties from t0 for `secs` seconds, 20 ms frames, 25 ms network delay, no loss.
fn two_party_call(secs: u32) -> Vec<Sent> {
    let mut a = ToneSender::new("agent-1", 440.0, 1, 1);
    let mut b = ToneSender::new("cust-1", 880.0, 1, 1);
    let mut sent = Vec::new();
    for f in 0..secs * 50 {
        let at = t0() + Duration::from_millis(20 * u64::from(f) + 25);
        for s in [&mut a, &mut b] {
            let pkt = s.frame(at);
            sent.push(Sent { arrival: at, pkt });
        }
    }
    sent
}

/// Checks a recovered recording holds both parties for at least `min_secs`.
fn assert_recovered(summary: &recorder::Summary, min_secs: f64, max_secs: f64) {
    assert!(summary.recovered);
    let secs = summary.duration.as_secs_f64();
    eprintln!(
        "recovered {secs:.3} s ({} journal bytes ignored)",
        summary.stats.journal_bytes_ignored
    );
    assert!(
        secs >= min_secs && secs <= max_secs,
        "recovered {secs} s, expected {min_secs}..{max_secs}"
    );
    run_ok(
        "flac",
        &["-t", "--silent", summary.flac_path.to_str().unwrap()],
    );
    let soxi: f64 = run_ok("soxi", &["-D", summary.flac_path.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap();
    assert!((soxi - secs).abs() < 0.001);
    let pcm = sox_decode(&summary.flac_path, 48_000);
    let mut t = 1.5;
    while t + 0.5 <= min_secs {
        let w = |ch| window(&pcm, 48_000, ch, t, t + 0.5);
        assert!(
            tone_amplitude(&w(0), 48_000, 440.0) > 5_000.0,
            "agent at {t} s"
        );
        assert!(
            tone_amplitude(&w(1), 48_000, 880.0) > 5_000.0,
            "customer at {t} s"
        );
        t += 0.5;
    }
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary.sidecar_path).unwrap()).unwrap();
    assert_eq!(side["recovered"], true);
    assert_eq!(summary.consent_events[0].kind, ConsentKind::IvrAnnouncement);
    assert_eq!(
        side["files"]["flac"]["sha256"],
        sha256sum(&summary.flac_path).as_str()
    );
    let mp3 = ffmpeg_decode(&summary.mp3_path);
    assert!(((mp3.len() / 2) as f64 / 16_000.0 - secs).abs() < 0.05);
}

#[test]
fn a_recording_never_finished_is_recovered_from_its_journal() {
    let root = temp_dir("forgotten");
    let cfg = config(&root);
    let mut rec = Recording::start(&cfg, meta("call-c", "rec-forgotten")).unwrap();
    rec.add_participant("agent-1", "agent", "Agent", t0())
        .unwrap();
    rec.add_participant("cust-1", "customer", "Customer", t0())
        .unwrap();
    let sent = two_party_call(12);
    let last = sent.last().unwrap().arrival;
    drive(&mut rec, &sent, last);
    let journal = rec.journal_path().to_path_buf();
    // The process "dies": no finish, no destructors, unflushed buffers lost.
    std::mem::forget(rec);

    assert_eq!(pending_journals(&root), vec![journal.clone()]);
    let summary = recover(&journal, &cfg).unwrap();
    assert_recovered(&summary, 11.0, 12.05);
    assert!(!journal.exists(), "recovery removes the journal");
    assert!(pending_journals(&root).is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_journal_on_disk_lags_the_call_by_less_than_a_second() {
    let root = temp_dir("lag");
    let cfg = config(&root);
    let mut rec = Recording::start(&cfg, meta("call-l", "rec-lag")).unwrap();
    rec.add_participant("agent-1", "agent", "Agent", t0())
        .unwrap();
    rec.add_participant("cust-1", "customer", "Customer", t0())
        .unwrap();
    let journal = rec.journal_path().to_path_buf();
    let sent = two_party_call(6);
    let mut snapshots = Vec::new();
    let mut next_snapshot = 1.5;
    for s in &sent {
        // Only push(): no advance() at all, the journal must keep up on its own.
        rec.push(s.pkt.clone()).unwrap();
        let t = s.arrival.duration_since(t0()).unwrap().as_secs_f64();
        if t >= next_snapshot {
            // What a kill -9 at this moment would leave: the file as it is now.
            let copy = root.join(format!("snap-{next_snapshot}"));
            std::fs::create_dir_all(copy.join("journal")).unwrap();
            std::fs::copy(&journal, copy.join("journal/rec-lag.journal")).unwrap();
            snapshots.push((t, copy));
            next_snapshot += 1.5;
        }
    }
    assert_eq!(snapshots.len(), 4);
    for (t, snap_root) in snapshots {
        let summary = recover(
            &snap_root.join("journal/rec-lag.journal"),
            &config(&snap_root),
        )
        .unwrap();
        let got = summary.duration.as_secs_f64();
        eprintln!("crash at {t:.3} s of packets: {got:.3} s recovered");
        assert!(
            got >= t - 1.0 && got <= t + 0.05,
            "crash at {t} s recovered {got} s"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

const CHILD_ENV: &str = "RECORDER_TEST_KILL9_ROOT";

/// Runs in a child process: records 8 s of a call (synthetic time, as fast as it can), then
/// kill -9s itself.
#[test]
fn kill9_child() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    }; // only as the child
    let cfg = config(Path::new(&root));
    let mut rec = Recording::start(&cfg, meta("call-k", "rec-kill9")).unwrap();
    rec.add_participant("agent-1", "agent", "Agent", t0())
        .unwrap();
    rec.add_participant("cust-1", "customer", "Customer", t0())
        .unwrap();
    let sent = two_party_call(8);
    let last = sent.last().unwrap().arrival;
    drive(&mut rec, &sent, last);
    let pid = std::process::id().to_string();
    let _ = Command::new("kill").args(["-9", &pid]).status();
    std::thread::sleep(Duration::from_secs(30));
    unreachable!("kill -9 did not kill the child");
}

#[test]
fn kill9_eight_seconds_into_a_call_leaves_a_journal_with_at_least_seven() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let root = temp_dir("kill9");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the child should die of SIGKILL: {status:?}"
    );

    let cfg = config(&root);
    let journals = pending_journals(&root);
    assert_eq!(journals.len(), 1, "{journals:?}");
    let summary = recover(&journals[0], &cfg).unwrap();
    assert_recovered(&summary, 7.0, 8.05);
    assert_eq!(summary.meta.recording_id, "rec-kill9");
    assert!(
        summary
            .flac_path
            .ends_with("call-recordings/2023/11/14/call-k/rec-kill9.flac")
    );
    let _ = std::fs::remove_dir_all(&root);
}
