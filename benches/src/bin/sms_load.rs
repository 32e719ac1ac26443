//! Open-loop load on `POST /functions/v1/sms-send`: requests are due at a fixed rate and each
//! one's latency is measured from when it was due (so a slow server cannot hide its queue), over
//! a pool of keep-alive HTTP/1.1 connections. Then it waits until every message is `delivered`
//! (the SMSC's receipts applied) and prints one JSON line.
//!
//!   sms_load --url http://127.0.0.1:8080 --key KEY --rate 500 --seconds 30 [--parts 1]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

#[derive(Parser)]
#[command(about = "Open-loop sms-send load with latency percentiles and time to delivered")]
struct Args {
    /// The server's base URL (http only).
    #[arg(long)]
    url: String,
    /// API key.
    #[arg(long, default_value = "")]
    key: String,
    /// Messages per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// SMS parts per message (1: 100 characters; 2: 200 characters).
    #[arg(long, default_value_t = 1)]
    parts: u32,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to wait for every message to be delivered after the load.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
}

struct Conn {
    host: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.host).await?;
                s.set_nodelay(true)?;
                self.stream = Some(BufReader::new(s));
            }
            let Some(s) = self.stream.as_mut() else {
                unreachable!()
            };
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.host,
                body.len()
            );
            if s.get_mut().write_all(req.as_bytes()).await.is_err() {
                self.stream = None;
                continue;
            }
            match read_response(s).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    let _ = e;
                    self.stream = None;
                }
                Err(e) => return Err(e),
            }
        }
        anyhow::bail!("the connection failed twice")
    }
}

async fn read_response(s: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if s.read_line(&mut line).await? == 0 {
        anyhow::bail!("closed");
    }
    let status: u16 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let mut len = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        s.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            s.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim(), 16)?;
            let mut chunk = vec![0u8; n + 2];
            s.read_exact(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len, 0);
        s.read_exact(&mut body).await?;
    }
    Ok((status, body))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let host = a
        .url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--url must be http://"))?
        .trim_end_matches('/')
        .to_string();
    let total = u64::from(a.rate) * u64::from(a.seconds);
    let body_text = "x".repeat(if a.parts <= 1 {
        100
    } else {
        153 * (a.parts as usize - 1) + 50
    });
    let (tx, rx) = mpsc::channel::<(u64, Instant)>(100_000);
    let rx = Arc::new(Mutex::new(rx));
    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..a.connections {
        let (rx, lat, ok, errors) = (rx.clone(), lat.clone(), ok.clone(), errors.clone());
        let (host, key, text) = (host.clone(), a.key.clone(), body_text.clone());
        workers.push(tokio::spawn(async move {
            let mut c = Conn { host, stream: None };
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, due)) = next else { return };
                let body = format!(
                    "{{\"from\":\"+15550001111\",\"to\":\"+1666{:07}\",\"body\":\"{n} {text}\"}}",
                    n % 10_000_000
                );
                match c
                    .request("POST", "/functions/v1/sms-send", &key, &body)
                    .await
                {
                    Ok((201, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let ms = due.elapsed().as_secs_f64() * 1000.0;
                        if let Ok(mut l) = lat.lock() {
                            l.push(ms);
                        }
                    }
                    Ok((status, body)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "sms_load: {status} {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        );
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("sms_load: {e}");
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    for n in 0..total {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        tx.send((n, due)).await?;
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Wait until every message is delivered.
    let mut c = Conn {
        host: host.clone(),
        stream: None,
    };
    let drain_start = Instant::now();
    let mut delivered = 0u64;
    while drain_start.elapsed() < Duration::from_secs(a.drain_seconds) {
        let (_, b) = c
            .request(
                "GET",
                "/api/v1/sms/messages?status=delivered&limit=1",
                &a.key,
                "",
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        delivered = v["total"].as_u64().unwrap_or(0);
        if delivered >= ok.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_delivered_secs = start.elapsed().as_secs_f64();
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|x, y| x.total_cmp(y));
    println!(
        "{}",
        serde_json::json!({
            "rate": a.rate, "seconds": a.seconds, "parts": a.parts,
            "requested": total, "accepted": ok.load(Ordering::Relaxed),
            "errors": errors.load(Ordering::Relaxed),
            "achieved_per_sec": (ok.load(Ordering::Relaxed) as f64 / send_secs * 10.0).round() / 10.0,
            "send_ms_p50": (percentile(&l, 0.5) * 100.0).round() / 100.0,
            "send_ms_p99": (percentile(&l, 0.99) * 100.0).round() / 100.0,
            "send_ms_max": (l.last().copied().unwrap_or(f64::NAN) * 100.0).round() / 100.0,
            "delivered": delivered,
            "all_delivered_after_load_s": ((all_delivered_secs - send_secs) * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
