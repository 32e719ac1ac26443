//! The deterministic pipeline test: a 40 s synthetic call driven with synthetic time, checked
//! with decoders this project did not write (flac, sox, ffprobe/ffmpeg, symphonia).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use recorder::{ConsentKind, Recording};

const CALL_SECS: f64 = 40.0;

/// Party A (agent, 440 Hz) from 0 s, party B (customer, 880 Hz) joining at 5 s with a 3 s DTX
/// gap (20-23 s); 5% loss, 3% reordering, 10-40 ms network delay.
fn synthetic_call() -> Vec<Sent> {
    let start = t0();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut a = ToneSender::new("alice", 440.0, 65_000, 4_294_000_000); // both wrap mid-call
    let mut b = ToneSender::new("bob", 880.0, 100, 77);
    let mut sent = Vec::new();
    for f in 0..2_000u32 {
        let send = start + Duration::from_millis(20 * u64::from(f));
        for (who, s) in [(0, &mut a), (1, &mut b)] {
            if who == 1 {
                if f < 250 {
                    continue; // B joins at 5 s
                }
                if (1_000..1_150).contains(&f) {
                    if f == 1_000 {
                        s.skip_dtx(150);
                    }
                    continue; // 3 s without packets, sequence numbers continue (DTX)
                }
            }
            let delay = Duration::from_micros(10_000 + (rng.next_f64() * 30_000.0) as u64);
            let pkt = s.frame(send + delay);
            if rng.next_f64() < 0.05 {
                continue; // lost
            }
            sent.push(Sent {
                arrival: pkt.arrival,
                pkt,
            });
        }
    }
    // Reorder: swap the arrival of ~3% of neighbouring packets of the same sender.
    for i in 0..sent.len() - 2 {
        if rng.next_f64() < 0.03 && sent[i].pkt.participant_id == sent[i + 2].pkt.participant_id {
            let later = sent[i + 2].arrival;
            sent[i].arrival = later + Duration::from_millis(1);
            sent[i].pkt.arrival = sent[i].arrival;
        }
    }
    sent.sort_by_key(|s| s.arrival);
    sent
}

#[test]
fn forty_second_call_is_aligned_mixed_beeped_and_readable_by_other_decoders() {
    let root = temp_dir("pipeline");
    let cfg = config(&root);
    let mut rec = Recording::start(&cfg, meta("call-42", "rec-42")).unwrap();
    let journal = rec.journal_path().to_path_buf();
    assert!(journal.exists());
    assert_eq!(recorder::pending_journals(&root), vec![journal.clone()]);
    rec.add_participant("alice", "agent", "Alice", t0())
        .unwrap();

    let sent = synthetic_call();
    let (before_b, after_b): (Vec<Sent>, Vec<Sent>) = sent
        .into_iter()
        .partition(|s| s.arrival < t0() + Duration::from_secs(5));
    let mut events = drive(&mut rec, &before_b, t0() + Duration::from_secs(5));
    rec.add_participant("bob", "customer", "Bob", t0() + Duration::from_secs(5))
        .unwrap();
    events.extend(drive(&mut rec, &after_b, t0() + Duration::from_secs(40)));
    let summary = rec.finish(t0() + Duration::from_secs(40)).unwrap();

    // --- the summary
    assert_eq!(summary.duration, Duration::from_secs(40));
    assert!(!summary.recovered);
    assert!(!journal.exists(), "finish removes the journal");
    assert!(
        summary
            .flac_path
            .ends_with("call-recordings/2023/11/14/call-42/rec-42.flac"),
        "{:?}",
        summary.flac_path
    );
    let kinds: Vec<(ConsentKind, Duration)> = summary
        .consent_events
        .iter()
        .map(|e| (e.kind, e.offset))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ConsentKind::IvrAnnouncement, Duration::ZERO),
            (ConsentKind::PeriodicBeep, Duration::from_secs(15)),
            (ConsentKind::PeriodicBeep, Duration::from_secs(30)),
        ]
    );
    assert_eq!(
        events, summary.consent_events,
        "advance() reported the same events"
    );
    assert_eq!(summary.consent_events[1].at, t0() + Duration::from_secs(15));
    let chans: Vec<(&str, u8, Duration)> = summary
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p.channel, p.joined_offset))
        .collect();
    assert_eq!(
        chans,
        vec![
            ("alice", 1, Duration::ZERO),
            ("bob", 2, Duration::from_secs(5))
        ]
    );
    for st in &summary.stats.participants {
        eprintln!("{st:?}");
        assert!(st.lost > 40 && st.lost < 160, "{st:?}");
        assert!(st.fec_recovered > 20, "{st:?}");
        assert_eq!(st.late, 0, "{st:?}");
        assert_eq!(st.corrupt, 0);
    }

    // --- FLAC: the reference decoder, sox, ffprobe, tags
    let flac = summary.flac_path.to_str().unwrap();
    run_ok("flac", &["-t", "--silent", flac]);
    assert_eq!(run_ok("soxi", &["-c", flac]).trim(), "2");
    assert_eq!(run_ok("soxi", &["-r", flac]).trim(), "48000");
    assert_eq!(run_ok("soxi", &["-b", flac]).trim(), "16");
    let soxi_secs: f64 = run_ok("soxi", &["-D", flac]).trim().parse().unwrap();
    assert!(
        (soxi_secs - CALL_SECS).abs() <= 0.020,
        "soxi duration {soxi_secs}"
    );
    let ffprobe_secs = ffprobe_duration(&summary.flac_path);
    assert!(
        (ffprobe_secs - CALL_SECS).abs() <= 0.020,
        "ffprobe duration {ffprobe_secs}"
    );
    assert_eq!(
        run_ok("metaflac", &["--show-tag=CALL_ID", flac]).trim(),
        "CALL_ID=call-42"
    );
    assert_eq!(
        run_ok("metaflac", &["--show-tag=START_TIME", flac]).trim(),
        "START_TIME=2023-11-14T22:13:20.000Z"
    );
    assert_eq!(
        run_ok("metaflac", &["--show-total-samples", flac]).trim(),
        "1920000"
    );

    // --- content, decoded by sox: left 440, right 880, silence where B was absent, beeps.
    let pcm = sox_decode(&summary.flac_path, 48_000);
    assert_eq!(pcm.len(), 2 * 1_920_000);
    let amp = |ch: usize, from: f64, to: f64, f: f32| {
        tone_amplitude(&window(&pcm, 48_000, ch, from, to), 48_000, f)
    };
    let level = |ch: usize, from: f64, to: f64| rms(&window(&pcm, 48_000, ch, from, to));
    let beep_free = |from: f64| !(14.8..15.4).contains(&from) && !(29.8..30.4).contains(&from);
    let mut t = 1.5;
    while t + 0.5 <= CALL_SECS {
        if beep_free(t) {
            let (l440, l880) = (amp(0, t, t + 0.5, 440.0), amp(0, t, t + 0.5, 880.0));
            assert!(
                l440 > 5_000.0 && l440 > 20.0 * l880,
                "left at {t}s: 440 {l440}, 880 {l880}"
            );
            let b_present = t >= 5.3 && !(19.8..23.2).contains(&t);
            if b_present {
                let (r880, r440) = (amp(1, t, t + 0.5, 880.0), amp(1, t, t + 0.5, 440.0));
                assert!(
                    r880 > 5_000.0 && r880 > 20.0 * r440,
                    "right at {t}s: 880 {r880}, 440 {r440}"
                );
            }
        }
        t += 0.5;
    }
    // Right is silent before B joins (after the announcement) and during B's DTX gap.
    assert!(
        level(1, 1.2, 4.95) < 1.0,
        "right before B joined: {}",
        level(1, 1.2, 4.95)
    );
    assert!(
        level(1, 20.1, 22.95) < 1.0,
        "right in B's DTX gap: {}",
        level(1, 20.1, 22.95)
    );
    // The announcement is in both channels.
    assert!(
        level(1, 0.1, 1.0) > 300.0,
        "announcement on the right: {}",
        level(1, 0.1, 1.0)
    );
    // Beeps: 1400 Hz at -12 dBFS (~8230) in both channels, and nowhere else.
    for at in [15.0, 30.0] {
        for ch in 0..2 {
            let a = amp(ch, at + 0.01, at + 0.19, 1400.0);
            assert!(
                (6_500.0..9_500.0).contains(&a),
                "beep at {at}s ch {ch}: {a}"
            );
            let before = amp(ch, at - 0.5, at - 0.1, 1400.0);
            assert!(before < 300.0, "no beep before {at}s ch {ch}: {before}");
        }
    }

    // --- MP3: duration (LAME/Info tag) and channels, by ffprobe/ffmpeg. ffprobe's stream
    // starts after the encoder delay the Info tag declares (start_time); from there to its end
    // is the call plus at most one frame of padding. Its container duration counts whole frames
    // from the file start, so it also includes LAME's fixed 69 ms delay (see mp3.rs).
    let (start, dur) = ffprobe_stream(&summary.mp3_path);
    assert!(
        (start - 1105.0 / 16_000.0).abs() < 0.001,
        "ffprobe MP3 start_time {start}: no LAME tag?"
    );
    assert!(
        (dur - start - CALL_SECS).abs() <= 0.050,
        "ffprobe MP3 duration {dur} - start {start}"
    );
    let container = ffprobe_duration(&summary.mp3_path);
    assert!(
        (0.069..0.106).contains(&(container - CALL_SECS)),
        "ffprobe MP3 format duration {container}"
    );
    let mp3 = ffmpeg_decode(&summary.mp3_path);
    let secs = mp3.len() as f64 / 2.0 / 16_000.0;
    assert!(
        (secs - CALL_SECS).abs() <= 0.050,
        "ffmpeg decodes {secs} s of MP3"
    );
    let mp3_amp = |ch: usize, from: f64, f: f32| {
        tone_amplitude(&window(&mp3, 16_000, ch, from, from + 1.0), 16_000, f)
    };
    assert!(
        mp3_amp(0, 10.0, 440.0) > 10.0 * mp3_amp(0, 10.0, 880.0),
        "MP3 left is A"
    );
    assert!(
        mp3_amp(1, 10.0, 880.0) > 10.0 * mp3_amp(1, 10.0, 440.0),
        "MP3 right is B"
    );

    // --- symphonia agrees on both durations
    let (frames, rate, declared) = symphonia_frames(&summary.flac_path);
    assert_eq!(
        (frames, rate, declared),
        (1_920_000, 48_000, Some(1_920_000))
    );
    let (frames, rate, _) = symphonia_frames(&summary.mp3_path);
    assert_eq!(rate, 16_000);
    let secs = frames as f64 / 16_000.0;
    assert!(
        (secs - CALL_SECS).abs() <= 0.050,
        "symphonia MP3 duration {secs}"
    );

    // --- the sidecar
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary.sidecar_path).unwrap()).unwrap();
    assert_eq!(side["call_id"], "call-42");
    assert_eq!(side["recording_id"], "rec-42");
    assert_eq!(side["duration_seconds"], 40.0);
    assert_eq!(side["sample_rate"], 48_000);
    assert_eq!(side["channels"], 2);
    assert_eq!(side["started_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(side["ended_at"], "2023-11-14T22:14:00.000Z");
    assert_eq!(
        side["files"]["flac"]["sha256"],
        sha256sum(&summary.flac_path).as_str()
    );
    assert_eq!(
        side["files"]["mp3"]["sha256"],
        sha256sum(&summary.mp3_path).as_str()
    );
    assert_eq!(
        side["files"]["flac"]["bytes"],
        std::fs::metadata(&summary.flac_path).unwrap().len()
    );
    assert_eq!(
        side["files"]["mp3"]["bytes"],
        std::fs::metadata(&summary.mp3_path).unwrap().len()
    );
    assert_eq!(summary.flac_sha256, sha256sum(&summary.flac_path));
    assert_eq!(side["participants"][1]["channel"], 2);
    assert_eq!(side["participants"][1]["joined_offset_seconds"], 5.0);
    assert_eq!(side["consent_events"][0]["kind"], "ivr_announcement");
    assert_eq!(side["consent_events"][2]["kind"], "periodic_beep");
    assert_eq!(side["consent_events"][2]["offset_seconds"], 30.0);
    eprintln!(
        "flac {} bytes, mp3 {} bytes, sidecar:\n{}",
        summary.flac_bytes,
        summary.mp3_bytes,
        std::fs::read_to_string(&summary.sidecar_path).unwrap()
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn memory_stays_bounded_without_advance_and_ids_are_not_reused() {
    let root = temp_dir("bounded");
    let cfg = config(&root);
    let mut rec = Recording::start(&cfg, meta("call-b", "rec-b")).unwrap();
    rec.add_participant("a", "", "A", t0()).unwrap(); // no role, first joiner: left
    let mut s = ToneSender::new("a", 440.0, 0, 0);
    for f in 0..1_500u64 {
        let at = t0() + Duration::from_millis(20 * f + 30);
        rec.push(s.frame(at)).unwrap(); // never advance()
    }
    // 30 s pushed: the recorder rendered on its own once 10 s were buffered.
    let rendered = rec.rendered().as_secs_f64();
    assert!(rendered >= 19.0, "rendered only {rendered} s");
    let summary = rec.finish(t0() + Duration::from_secs(30)).unwrap();
    assert_eq!(summary.participants[0].channel, 1);
    run_ok(
        "flac",
        &["-t", "--silent", summary.flac_path.to_str().unwrap()],
    );
    let pcm = sox_decode(&summary.flac_path, 48_000);
    for t in [2.0, 12.0, 25.0] {
        assert!(
            tone_amplitude(&window(&pcm, 48_000, 0, t, t + 0.5), 48_000, 440.0) > 5_000.0,
            "at {t}"
        );
    }
    // The same recording id cannot be started again over a finished recording.
    let err = Recording::start(&cfg, meta("call-b", "rec-b")).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn empty_and_tiny_recordings_finish_cleanly() {
    let root = temp_dir("tiny");
    let cfg = config(&root);
    for (id, secs) in [("rec-empty", 0.0), ("rec-tiny", 0.05), ("rec-before", -1.0)] {
        let rec = Recording::start(&cfg, meta("call-t", id)).unwrap();
        let end = if secs >= 0.0 {
            t0() + Duration::from_secs_f64(secs)
        } else {
            t0() - Duration::from_secs_f64(-secs)
        };
        let summary = rec.finish(end).unwrap();
        let expect = secs.max(0.0);
        assert!(
            (summary.duration.as_secs_f64() - expect).abs() < 1e-6,
            "{id}"
        );
        let flac = summary.flac_path.to_str().unwrap();
        run_ok("flac", &["-t", "--silent", flac]);
        let samples: u64 = run_ok("soxi", &["-s", flac]).trim().parse().unwrap();
        assert_eq!(samples, (expect * 48_000.0).round() as u64, "{id}");
        if samples > 0 {
            // (symphonia cannot probe a FLAC stream without frames; flac and sox can.)
            let (frames, _, declared) = symphonia_frames(&summary.flac_path);
            assert_eq!((frames, declared), (samples, Some(samples)), "{id}");
            let mp3 = ffmpeg_decode(&summary.mp3_path);
            assert!(
                ((mp3.len() / 2) as f64 / 16_000.0 - expect).abs() < 0.01,
                "{id}"
            );
        }
        assert!(summary.sidecar_path.exists());
    }
    let _ = std::fs::remove_dir_all(&root);
}
