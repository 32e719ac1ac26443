//! Measurement (ignored): N rooms x P webrtc-rs clients on one engine worker; reports the
//! worker thread's CPU per forwarded packet, the clients' CPU, and join latency.
//!
//! cargo test --release -p media --test engine_bench -- --ignored --nocapture
//! ENGINE_ROOMS=10 ENGINE_PER_ROOM=10 ENGINE_SECS=10 (defaults 2, 5, 10)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine_common::{Client, eventually};

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// utime + stime of a /proc stat file, in ticks of 10 ms.
fn stat_ticks(path: &str) -> u64 {
    let s = std::fs::read_to_string(path).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Nanoseconds on CPU of a thread (schedstat), if the kernel has it.
fn sched_ns(tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split(' ').next()?.parse().ok()
}

struct Sample {
    at: Instant,
    worker_ticks: u64,
    worker_ns: Option<u64>,
    proc_ticks: u64,
    forwarded: u64,
    datagrams_in: u64,
    datagrams_out: u64,
    received: u64,
}

fn sample(w: &media::engine::Worker, clients: &[Client]) -> Sample {
    let tid = w.thread_id();
    let c = w.counters().snapshot();
    Sample {
        at: Instant::now(),
        worker_ticks: stat_ticks(&format!("/proc/self/task/{tid}/stat")),
        worker_ns: sched_ns(tid),
        proc_ticks: stat_ticks("/proc/self/stat"),
        forwarded: c.forwarded,
        datagrams_in: c.datagrams_in,
        datagrams_out: c.datagrams_out,
        received: clients
            .iter()
            .map(|c| c.stats.total.load(Ordering::Relaxed))
            .sum(),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn engine_cpu_per_forwarded_packet() {
    let rooms = env("ENGINE_ROOMS", 2);
    let per = env("ENGINE_PER_ROOM", 5);
    let secs = env("ENGINE_SECS", 10);
    let w = engine_common::worker();
    assert!(w.thread_id() > 0);
    let mut clients: Vec<Client> = Vec::new();
    let mut joins = Vec::new();
    let t0 = Instant::now();
    // Room by room, so each join's latency is to a room whose members all send.
    for r in 0..rooms {
        for p in 0..per {
            let i = r * per + p;
            let name = format!("p{i}");
            let c = Client::join(&w, &format!("room{r}"), &name, i as u8, false).await;
            let others: Vec<String> = (r * per..r * per + p).map(|j| format!("p{j}")).collect();
            let o: Vec<&str> = others.iter().map(String::as_str).collect();
            if !o.is_empty() {
                assert!(
                    eventually(Duration::from_secs(10), || c.hears(&o)).await,
                    "{name} did not hear its room"
                );
                joins.push(c.join_latency(&o).unwrap());
            }
            clients.push(c);
        }
    }
    println!("{} clients joined in {:?}", clients.len(), t0.elapsed());
    // Everyone hears everyone in the room (the earlier members hear the later ones).
    assert!(
        eventually(Duration::from_secs(20), || {
            clients.iter().enumerate().all(|(i, c)| {
                let r = i / per;
                let o: Vec<String> = (r * per..(r + 1) * per)
                    .filter(|&j| j != i)
                    .map(|j| format!("p{j}"))
                    .collect();
                c.hears(&o.iter().map(String::as_str).collect::<Vec<_>>())
            })
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = sample(&w, &clients);
    tokio::time::sleep(Duration::from_secs(secs as u64)).await;
    let b = sample(&w, &clients);
    let dt = b.at.duration_since(a.at).as_secs_f64();
    let fwd = (b.forwarded - a.forwarded) as f64;
    let expect = (rooms * per * (per - 1) * 50) as f64 * dt;
    let w_cpu_stat = (b.worker_ticks - a.worker_ticks) as f64 * 0.01;
    let w_cpu_ns = match (a.worker_ns, b.worker_ns) {
        (Some(x), Some(y)) => Some((y - x) as f64 / 1e9),
        _ => None,
    };
    let p_cpu = (b.proc_ticks - a.proc_ticks) as f64 * 0.01;
    let c_cpu = p_cpu - w_cpu_stat;
    let rx = (b.received - a.received) as f64;
    joins.sort();
    println!("rooms x per-room: {rooms} x {per}, window {dt:.2} s");
    println!(
        "forwarded {fwd:.0} ({:.0}/s, {:.1}% of the {:.0}/s the senders offer); datagrams in {} out {}; clients received {rx:.0} ({:.1}% of forwarded)",
        fwd / dt,
        100.0 * fwd / expect,
        expect / dt,
        b.datagrams_in - a.datagrams_in,
        b.datagrams_out - a.datagrams_out,
        100.0 * rx / fwd.max(1.0)
    );
    println!(
        "worker thread CPU: {w_cpu_stat:.2} s (stat) {} = {:.2} us per forwarded packet (stat){}; {:.1}% of one core",
        w_cpu_ns.map_or(String::new(), |s| format!("/ {s:.3} s (schedstat)")),
        1e6 * w_cpu_stat / fwd,
        w_cpu_ns.map_or(String::new(), |s| format!(
            ", {:.2} us (schedstat)",
            1e6 * s / fwd
        )),
        100.0 * w_cpu_stat / dt
    );
    println!(
        "clients (rest of the process) CPU: {c_cpu:.2} s = {:.2} us per received packet; {:.0}% of one core",
        1e6 * c_cpu / rx.max(1.0),
        100.0 * c_cpu / dt
    );
    if !joins.is_empty() {
        println!(
            "join (offer -> first packet from every other member): n={} median {:?} max {:?}",
            joins.len(),
            joins[joins.len() / 2],
            joins[joins.len() - 1]
        );
    }
    println!("counters: {:?}", w.counters().snapshot());
    for c in clients {
        c.close().await;
    }
}
