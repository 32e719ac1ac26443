//! Load generator (first cut): R rooms x P webrtc-rs participants against a running commhub,
//! each publishing 50 packets/s and subscribing to the others. Prints progress every second, then
//! join times, delivery, and the server's CPU and RSS (read from /proc for `--server-pid`).
//!
//! ```sh
//! cargo run --release -p commhub-benches --bin load -- --url ws://127.0.0.1:8080/ws \
//!     --rooms 1 --participants 10 --duration 20 --server-pid "$(pgrep -x commhub)"
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use commhub_benches::client::Client;

#[derive(Parser, Debug)]
#[command(about = "Drive a running commhub with rooms of webrtc-rs participants")]
struct Args {
    /// Signaling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Rooms to create.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 10)]
    participants: usize,
    /// Participants joined per second (ramp).
    #[arg(long, default_value_t = 5.0)]
    ramp: f64,
    /// Seconds of steady state measured after everyone joined.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The server's pid, to read its CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Fail (exit 1) when fewer packets than this were delivered in steady state.
    #[arg(long, default_value_t = 0)]
    min_delivered: u64,
}

fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn proc_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn total_received(clients: &[Client]) -> u64 {
    clients
        .iter()
        .map(|c| {
            c.received
                .lock()
                .map(|m| m.values().map(|v| v.len() as u64).sum::<u64>())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(0.1));
    let mut clients: Vec<Client> = Vec::new();
    let mut join_ms: Vec<f64> = Vec::new();
    let mut failed = 0usize;
    let t_start = Instant::now();
    for r in 0..args.rooms {
        let room = format!("load-{r}");
        for p in 0..args.participants {
            let t0 = Instant::now();
            let others: Vec<String> = clients
                .iter()
                .filter(|c| c.room == room)
                .map(|c| c.id.clone())
                .collect();
            match Client::join(&args.url, &room, &format!("p{p}"), (p % 250) as u8 + 1).await {
                Ok(mut c) => {
                    c.room = room.clone();
                    // Join time: until audio from every participant already there arrives.
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !others.iter().all(|o| c.count_from(o) > 0) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if !others.is_empty() {
                        join_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    clients.push(c);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("join failed: {e:#}");
                }
            }
            eprintln!(
                "[{:5.1}s] joined {}/{} ({} failed)",
                t_start.elapsed().as_secs_f64(),
                clients.len(),
                args.rooms * args.participants,
                failed
            );
            tokio::time::sleep(gap.saturating_sub(t0.elapsed())).await;
        }
    }

    // Steady state.
    let cpu0 = args.server_pid.and_then(proc_cpu_secs);
    let recv0 = total_received(&clients);
    let t0 = Instant::now();
    let mut last = recv0;
    for s in 1..=args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = total_received(&clients);
        eprintln!(
            "[steady {s:3}s] {} pkts/s received by clients, server RSS {:.1} MB",
            now - last,
            args.server_pid.and_then(proc_rss_mb).unwrap_or(f64::NAN)
        );
        last = now;
    }
    let secs = t0.elapsed().as_secs_f64();
    let delivered = total_received(&clients) - recv0;
    let cpu = match (cpu0, args.server_pid.and_then(proc_cpu_secs)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    // Each participant's 50 packets/s go to everyone else in its room.
    let expected = (args.rooms * args.participants * (args.participants - 1)) as f64 * 50.0 * secs;
    let rss = args.server_pid.and_then(proc_rss_mb);
    let report = serde_json::json!({
        "rooms": args.rooms,
        "participants_per_room": args.participants,
        "joined": clients.len(),
        "failed": failed,
        "join_ms_p50": pct(&mut join_ms.clone(), 0.5),
        "join_ms_p99": pct(&mut join_ms.clone(), 0.99),
        "join_ms_max": pct(&mut join_ms, 1.0),
        "steady_seconds": secs,
        "delivered_packets": delivered,
        "delivered_per_sec": delivered as f64 / secs,
        "delivery_ratio": delivered as f64 / expected,
        "server_cpu_percent_of_one_core": cpu.map(|c| c / secs * 100.0),
        "server_cpu_us_per_forwarded_packet": cpu.map(|c| c * 1e6 / delivered.max(1) as f64),
        "server_rss_mb": rss,
        "server_rss_mb_per_participant": rss.map(|r| r / clients.len().max(1) as f64),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).context("report")?
    );
    for c in clients {
        c.leave().await;
    }
    if delivered < args.min_delivered {
        anyhow::bail!(
            "only {delivered} packets delivered (< {})",
            args.min_delivered
        );
    }
    Ok(())
}
