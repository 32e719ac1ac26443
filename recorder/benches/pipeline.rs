//! The whole per-call recording pipeline for 2 parties: journal, Opus decode, alignment, mix,
//! beeps and announcement, FLAC and MP3 encoding, sidecar and hashing, for a 60 s call.
//!
//! Criterion's throughput is in "elements" = seconds of call, so `thrpt: N elem/s` reads as
//! N seconds of call per second, i.e. N concurrent real-time calls per core (the pipeline is
//! single-threaded). The bench also prints the same figure measured in CPU time of the thread
//! (from /proc/thread-self/schedstat), which leaves out disk waits. Files go to /dev/shm when it
//! exists so that fsync latency of the test machine's disk does not count as pipeline cost.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use recorder::{RecorderPacket, Recording, RecordingConfig, RecordingMeta};

const CALL_SECS: u64 = 60;

fn packets(id: &str, freq: f32, start_ms: u64) -> Vec<RecorderPacket> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    enc.set_inband_fec(true).unwrap();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let frames = (CALL_SECS * 1000 - start_ms) / 20;
    (0..frames)
        .map(|f| {
            // A tone with a slow vibrato and a syllable-like envelope, so the encoders see
            // changing content rather than a steady sine.
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (f * 960 + i) as f32 / 48_000.0;
                    let env = 0.5 + 0.5 * (t * 2.0 * std::f32::consts::PI * 3.0).sin();
                    let ph = t * freq * 2.0 * std::f32::consts::PI + (t * 5.0).sin() * 3.0;
                    (ph.sin() * env * 8_000.0) as i16
                })
                .collect();
            RecorderPacket {
                participant_id: id.into(),
                sequence: f as u16,
                timestamp: (f * 960) as u32,
                arrival: t0 + Duration::from_millis(start_ms + f * 20 + 15),
                payload: Bytes::from(enc.encode_vec(&pcm, 1500).unwrap()),
            }
        })
        .collect()
}

fn root() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("recorder-bench-{}", std::process::id()))
}

/// One whole call through the recorder; returns how long `finish` took and the output bytes.
fn run_call(cfg: &RecordingConfig, n: u64, all: &[RecorderPacket]) -> (Duration, u64) {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let meta = RecordingMeta {
        call_id: "bench".into(),
        recording_id: format!("rec-{n}"),
        room: "bench".into(),
        started_at: t0,
    };
    let mut rec = Recording::start(cfg, meta).unwrap();
    rec.add_participant("agent", "agent", "Agent", t0).unwrap();
    rec.add_participant("customer", "customer", "Customer", t0)
        .unwrap();
    let mut next = t0;
    for p in all {
        while next <= p.arrival {
            rec.advance(next).unwrap();
            next += Duration::from_millis(100);
        }
        rec.push(p.clone()).unwrap();
    }
    let started = std::time::Instant::now();
    let s = rec.finish(t0 + Duration::from_secs(CALL_SECS)).unwrap();
    let finish = started.elapsed();
    let _ = std::fs::remove_file(s.flac_path);
    let _ = std::fs::remove_file(s.mp3_path);
    let _ = std::fs::remove_file(s.sidecar_path);
    (finish, s.flac_bytes + s.mp3_bytes)
}

/// How fast `finish` hashes (the only part of finishing that grows with the call).
fn sha256_mb_per_s() -> f64 {
    use sha2::Digest;
    let buf = vec![0x5au8; 64 << 20];
    let t = std::time::Instant::now();
    let d = sha2::Sha256::digest(&buf);
    std::hint::black_box(d);
    64.0 / t.elapsed().as_secs_f64()
}

/// CPU time of this thread so far.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        s.split_whitespace().next()?.parse().ok()?,
    ))
}

fn bench(c: &mut Criterion) {
    let mut all = packets("agent", 300.0, 0);
    all.extend(packets("customer", 700.0, 0));
    all.sort_by_key(|p| p.arrival);
    let cfg = RecordingConfig {
        storage_root: root(),
        ..Default::default()
    };
    let mut n = 0u64;

    // The figure in CPU time, over a few calls.
    let calls = 5;
    if let Some(before) = thread_cpu() {
        let wall = SystemTime::now();
        let mut finish = Duration::ZERO;
        let mut bytes = 0;
        for _ in 0..calls {
            n += 1;
            let (f, b) = run_call(&cfg, n, &all);
            finish = finish.max(f);
            bytes = b;
        }
        if let Some(after) = thread_cpu() {
            let cpu = (after - before).as_secs_f64();
            let wall = wall.elapsed().unwrap_or_default().as_secs_f64();
            let per_core = (calls * CALL_SECS) as f64 / cpu;
            println!(
                "recorder pipeline (2 parties, {CALL_SECS} s call): {:.1} ms CPU per call-second \
                 => {per_core:.0} concurrent real-time calls per core (CPU {cpu:.2} s, wall {wall:.2} s for {calls} calls)",
                1000.0 * cpu / (calls * CALL_SECS) as f64
            );
            let hour_mb = bytes as f64 * 3600.0 / CALL_SECS as f64 / 1e6;
            let sha = sha256_mb_per_s();
            println!(
                "finish of a {CALL_SECS} s call: {:.1} ms; an hour of call is {hour_mb:.0} MB of FLAC+MP3, \
                 hashed at {sha:.0} MB/s => finishing an hour-long call takes about {:.0} ms",
                finish.as_secs_f64() * 1000.0,
                finish.as_secs_f64() * 1000.0 + 1000.0 * hour_mb / sha
            );
        }
    }

    let mut g = c.benchmark_group("recorder");
    g.throughput(Throughput::Elements(CALL_SECS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("pipeline_2_parties_60s_call", |b| {
        b.iter(|| {
            n += 1;
            run_call(&cfg, n, &all);
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(root());
}

criterion_group!(benches, bench);
criterion_main!(benches);
