//! Load generator: R rooms x P webrtc-rs participants against a running commhub or Janus
//! VideoRoom, each publishing Opus at 50 packets/s (a tone encoded once, every packet stamped
//! with sender, sequence and send time in its Opus padding) and subscribing to the others.
//!
//! Participants join at `--ramp` per second; the steady state is then measured for
//! `--duration` seconds. Live progress goes to stderr each second; the final table to stdout,
//! the full report to `--json`, and a plot of throughput, CPU and latency against load to
//! `--plot`. `--find-capacity` keeps adding `--step-rooms` rooms, measuring each step, until
//! loss or p99 latency crosses its threshold. `--smoke` is a few seconds with 3 participants
//! that fails when nothing was forwarded (for CI).
//!
//! `--light` joins exactly as above, then moves every participant's media to one thread of
//! its own (`commhub_benches::light`): SRTP with the connection's keys, `recvmmsg`, no
//! per-packet tasks, so one core can saturate a server. `--target floor` drives the null
//! forwarder (`floor`) with plain-UDP participants on that same thread.
//!
//! ```sh
//! cargo run --release -p commhub-benches --bin load -- --url ws://127.0.0.1:8080/ws \
//!     --rooms 1 --participants 10 --duration 20 --server-pid "$(pgrep -x commhub)"
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use commhub_benches::client::{Client, MediaHooks};
use commhub_benches::janus::JanusClient;
use commhub_benches::light::{Engine, FloorPart, Publish};
use commhub_benches::measure::{Counts, Inbox, Meter, StreamTotals};
use commhub_benches::plot::{Point, plot};
use commhub_benches::procstat;
use commhub_benches::stamp::{OpusTone, Stamp, now_ns};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Commhub,
    Janus,
    /// The null forwarder `floor` (plain UDP, no WebRTC).
    Floor,
}

#[derive(Parser, Debug)]
#[command(
    about = "Drive a running commhub (or Janus VideoRoom) with rooms of webrtc-rs participants"
)]
struct Args {
    /// The server under load.
    #[arg(long, value_enum, default_value = "commhub")]
    target: Target,
    /// Signaling URL [default: ws://127.0.0.1:8080/ws for commhub, ws://127.0.0.1:8188 for Janus,
    /// udp://127.0.0.1:18090 for the floor].
    #[arg(long)]
    url: Option<String>,
    /// Light generator: join with webrtc-rs as usual, then send and receive every
    /// participant's SRTP on one thread of the generator's own (see `commhub_benches::light`).
    #[arg(long)]
    light: bool,
    /// Rooms to create (the first step with --find-capacity).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 10)]
    participants: usize,
    /// Participants joined per second.
    #[arg(long, default_value_t = 10.0)]
    ramp: f64,
    /// Seconds left after the ramp before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of steady state measured after everyone joined.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The server's pid, to read its CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the full report (JSON) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG of throughput, CPU and latency against load here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A label for the report (e.g. "recording off").
    #[arg(long, default_value = "")]
    label: String,
    /// Keep adding rooms until loss or p99 latency crosses its threshold (on two measurements
    /// in a row of the same load), a join fails, or the generator runs out of CPU.
    #[arg(long)]
    find_capacity: bool,
    /// Rooms added per capacity step.
    #[arg(long, default_value_t = 1)]
    step_rooms: usize,
    /// Seconds measured per capacity step.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Capacity thresholds: loss in percent ...
    #[arg(long, default_value_t = 1.0)]
    max_loss_pct: f64,
    /// ... and p99 forwarding latency in ms.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Never go past this many rooms.
    #[arg(long, default_value_t = 1000)]
    max_rooms: usize,
    /// CI smoke run: 1 room x 3 for a few seconds; exit 1 when nothing was forwarded.
    #[arg(long)]
    smoke: bool,
    /// Exit 1 when fewer packets than this were forwarded in the measured window.
    #[arg(long, default_value_t = 0)]
    min_delivered: u64,
    /// commhub with auth on: its `auth.jwt_secret`, so each participant joins with a token
    /// signed here (HS256, the room and an identity of its own). Without it, run commhub with
    /// COMMHUB_AUTH__ENABLED=false.
    #[arg(long, env = "COMMHUB_LOAD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

/// A commhub join token (JWT HS256) for `room` and `identity`, valid for an hour.
fn join_token(secret: &str, room: &str, identity: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::Mac;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({"iss": "commhub", "sub": identity, "room": room,
        "role": "customer", "iat": now, "exp": now + 3600});
    let input = format!(
        "{}.{}",
        B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    );
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

enum Part {
    Commhub(Client),
    Janus(JanusClient),
    Floor(FloorPart),
}

impl Part {
    async fn leave(self) {
        match self {
            Part::Commhub(c) => c.leave().await,
            Part::Janus(j) => j.leave().await,
            Part::Floor(f) => f.leave(),
        }
    }
}

/// Everything the joins, the ticker and the measurements share.
struct Run {
    args: Args,
    url: String,
    meter: Arc<Meter>,
    tone: Arc<OpusTone>,
    /// The light engine (`--light`, and the floor's participants).
    engine: Option<Arc<Engine>>,
    next_gid: AtomicU32,
    /// Participants (global ids) fully joined, per room.
    rooms: Mutex<HashMap<usize, Vec<u32>>>,
    parts: Mutex<Vec<Part>>,
    inboxes: Mutex<Vec<Arc<Inbox>>>,
    joining: AtomicUsize,
    failed: AtomicUsize,
    /// Joins after which audio from someone already there never came.
    incomplete: AtomicUsize,
    join_ms: Mutex<Vec<f64>>,
    samples: Mutex<Vec<Value>>,
    points: Mutex<Vec<Point>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Run {
    fn joined(&self) -> usize {
        lock(&self.parts).len()
    }

    fn stream_totals(&self) -> StreamTotals {
        let inboxes: Vec<Arc<Inbox>> = lock(&self.inboxes).clone();
        inboxes
            .iter()
            .map(|i| i.totals())
            .fold(StreamTotals::default(), |a, t| StreamTotals {
                received: a.received + t.received,
                expected: a.expected + t.expected,
            })
    }

    fn snap(&self) -> Snap {
        Snap {
            at: Instant::now(),
            sent: self.meter.sent.load(Ordering::Relaxed),
            received: self.meter.received.load(Ordering::Relaxed),
            hist: self.meter.latency.snapshot(),
            streams: self.stream_totals(),
            server_cpu: self
                .args
                .server_pid
                .and_then(|p| procstat::cpu_secs(Some(p))),
            gen_cpu: procstat::cpu_secs(None),
            pressure_us: procstat::cpu_pressure_us(),
            steal: procstat::steal_ticks(),
        }
    }

    /// Join one participant to room `room`; record its join time.
    async fn join_one(self: Arc<Self>, room: usize, p: usize) {
        self.joining.fetch_add(1, Ordering::Relaxed);
        let gid = self.next_gid.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        let hooks = {
            let (meter, tone) = (self.meter.clone(), self.tone.clone());
            let (meter2, inbox2) = (self.meter.clone(), inbox.clone());
            MediaHooks {
                payload: Some(Arc::new(move |n| {
                    meter.sent.fetch_add(1, Ordering::Relaxed);
                    tone.packet(&Stamp {
                        sender: gid,
                        seq: n,
                        sent_ns: now_ns(),
                    })
                })),
                on_rtp: Some(Arc::new(move |pkt| {
                    inbox2.on_payload(&meter2, &pkt.payload)
                })),
                token: self
                    .args
                    .jwt_secret
                    .as_deref()
                    .map(|s| join_token(s, &format!("load-{room}"), &format!("load-{gid}"))),
                light: self.engine.clone().filter(|_| self.args.light),
            }
        };
        let others: Vec<u32> = lock(&self.rooms).get(&room).cloned().unwrap_or_default();
        let t0 = Instant::now();
        let name = format!("p{p}");
        let index = (gid % 250) as u8 + 1;
        let res = match self.args.target {
            Target::Commhub => {
                Client::join_with(&self.url, &format!("load-{room}"), &name, index, hooks)
                    .await
                    .map(Part::Commhub)
            }
            Target::Janus => JanusClient::join(
                &self.url,
                1000 + room as u64,
                self.args.participants + 4,
                &name,
                index,
                hooks,
            )
            .await
            .map(Part::Janus),
            Target::Floor => self.join_floor(room, hooks).await.map(Part::Floor),
        };
        match res {
            Ok(part) => {
                lock(&self.parts).push(part);
                lock(&self.inboxes).push(inbox.clone());
                // Join time: until audio from everyone already there arrives.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !inbox.heard_all(&others) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if !inbox.heard_all(&others) {
                    self.incomplete.fetch_add(1, Ordering::Relaxed);
                } else if !others.is_empty() {
                    lock(&self.join_ms).push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                lock(&self.rooms).entry(room).or_default().push(gid);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("join failed (room {room}): {e:#}");
            }
        }
        self.joining.fetch_sub(1, Ordering::Relaxed);
    }

    /// A participant of the floor: the same stamped packets and accounting, over plain UDP.
    async fn join_floor(&self, room: usize, hooks: MediaHooks) -> anyhow::Result<FloorPart> {
        let engine = self
            .engine
            .as_ref()
            .context("the floor's participants run on the light engine")?;
        let (Some(payload), Some(on_rtp)) = (hooks.payload, hooks.on_rtp) else {
            anyhow::bail!("the floor needs payload and on_rtp hooks");
        };
        let addr: std::net::SocketAddr = self
            .url
            .trim_start_matches("udp://")
            .parse()
            .with_context(|| format!("floor address {}", self.url))?;
        let publish = Publish {
            ssrc: rand::random(),
            payload,
            sent: None,
        };
        FloorPart::join(engine, addr, room as u32, on_rtp, publish).await
    }

    /// Join rooms `from..to`, `participants` each, at the ramp rate; wait for every join.
    async fn add_rooms(self: &Arc<Self>, from: usize, to: usize) {
        let gap = Duration::from_secs_f64(1.0 / self.args.ramp.max(0.1));
        let mut next = Instant::now();
        let mut tasks = Vec::new();
        for r in from..to {
            for p in 0..self.args.participants {
                tokio::time::sleep_until(next.into()).await;
                next += gap;
                tasks.push(tokio::spawn(self.clone().join_one(r, p)));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn rooms_full(&self) -> usize {
        lock(&self.rooms)
            .values()
            .filter(|v| v.len() >= self.args.participants)
            .count()
    }
}

struct Snap {
    at: Instant,
    sent: u64,
    received: u64,
    hist: Counts,
    streams: StreamTotals,
    server_cpu: Option<f64>,
    gen_cpu: Option<f64>,
    pressure_us: Option<u64>,
    steal: Option<u64>,
}

/// What was measured between two snapshots.
#[derive(Debug, Clone, Copy)]
struct Window {
    secs: f64,
    sent_pps: f64,
    forwarded: u64,
    forwarded_pps: f64,
    loss: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    server_cores: Option<f64>,
    gen_cores: Option<f64>,
    /// Share of the window in which some task of the machine waited for a CPU (0..=1).
    cpu_pressure: Option<f64>,
    /// Share of the machine's CPU time stolen by the hypervisor in the window (0..=1).
    steal: Option<f64>,
}

fn window(a: &Snap, b: &Snap, max_ns: Option<u64>) -> Window {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let h = b.hist.since(&a.hist);
    let ms = |v: Option<u64>| v.map(|ns| ns as f64 / 1e6);
    let rec = b.streams.received.saturating_sub(a.streams.received);
    let exp = b.streams.expected.saturating_sub(a.streams.expected);
    let forwarded = b.received - a.received;
    Window {
        secs,
        sent_pps: (b.sent - a.sent) as f64 / secs,
        forwarded,
        forwarded_pps: forwarded as f64 / secs,
        loss: (exp > 0).then(|| (1.0 - rec as f64 / exp as f64).max(0.0)),
        p50_ms: ms(h.quantile(0.5)),
        p99_ms: ms(h.quantile(0.99)),
        max_ms: ms(max_ns.or_else(|| h.quantile(1.0))),
        server_cores: a.server_cpu.zip(b.server_cpu).map(|(x, y)| (y - x) / secs),
        gen_cores: a.gen_cpu.zip(b.gen_cpu).map(|(x, y)| (y - x) / secs),
        cpu_pressure: a
            .pressure_us
            .zip(b.pressure_us)
            .map(|(x, y)| y.saturating_sub(x) as f64 / 1e6 / secs),
        steal: a.steal.zip(b.steal).map(|(x, y)| {
            let cpus = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .max(1);
            // /proc/stat sums over every CPU of the machine, not only those we may use.
            let all = std::fs::read_to_string("/proc/stat")
                .map(|s| {
                    s.lines()
                        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                        .count()
                })
                .unwrap_or(cpus)
                .max(1);
            y.saturating_sub(x) as f64 / 100.0 / secs / all as f64
        }),
    }
}

fn fmt_opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.digits$}{unit}"))
}

/// Prints progress every second and keeps a sample per second, until `stop`.
async fn ticker(run: Arc<Run>, stop: Arc<AtomicBool>) {
    let mut prev = run.snap();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = run.snap();
        let w = window(&prev, &now, Some(run.meter.take_max()).filter(|m| *m > 0));
        prev = now;
        let joined = run.joined();
        let rooms_up = run.rooms_full();
        let rss = run.args.server_pid.and_then(|p| procstat::rss_mb(Some(p)));
        eprintln!(
            "[{:6.1}s] rooms {}/{} up, joined {} ({} joining, {} failed), sent {:.0}/s, \
             fwd {:.0}/s, loss {}, latency p50 {} p99 {} max {}, server cpu {} rss {}, gen cpu {}",
            run.started.elapsed().as_secs_f64(),
            rooms_up,
            if run.args.find_capacity {
                lock(&run.rooms).len()
            } else {
                run.args.rooms
            },
            joined,
            run.joining.load(Ordering::Relaxed),
            run.failed.load(Ordering::Relaxed),
            w.sent_pps,
            w.forwarded_pps,
            fmt_opt(w.loss.map(|l| l * 100.0), 2, "%"),
            fmt_opt(w.p50_ms, 2, "ms"),
            fmt_opt(w.p99_ms, 2, "ms"),
            fmt_opt(w.max_ms, 1, "ms"),
            fmt_opt(w.server_cores.map(|c| c * 100.0), 0, "%"),
            fmt_opt(rss, 0, "MB"),
            fmt_opt(w.gen_cores.map(|c| c * 100.0), 0, "%"),
        );
        lock(&run.samples).push(json!({
            "t": run.started.elapsed().as_secs_f64(),
            "participants": joined,
            "rooms_full": rooms_up,
            "sent_pps": w.sent_pps,
            "forwarded_pps": w.forwarded_pps,
            "loss": w.loss,
            "latency_ms_p50": w.p50_ms,
            "latency_ms_p99": w.p99_ms,
            "latency_ms_max": w.max_ms,
            "server_cpu_pct": w.server_cores.map(|c| c * 100.0),
            "server_rss_mb": rss,
            "generator_cpu_pct": w.gen_cores.map(|c| c * 100.0),
            "loadavg_1m": procstat::loadavg(),
            "machine_cpu_pressure_pct": w.cpu_pressure.map(|p| p * 100.0),
        }));
        if !run.args.find_capacity {
            lock(&run.points).push(Point {
                participants: joined as f64,
                forwarded_pps: w.forwarded_pps,
                server_cpu_pct: w.server_cores.map(|c| c * 100.0),
                p50_ms: w.p50_ms,
                p99_ms: w.p99_ms,
            });
        }
    }
}

/// Measure `secs` seconds of the current load.
async fn measure(run: &Arc<Run>, secs: u64) -> (Window, Snap, Snap) {
    let a = run.snap();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = run.snap();
    // The max is the top histogram bucket's (within 3%): the ticker owns the exact per-second max.
    let w = window(&a, &b, None);
    (w, a, b)
}

fn window_json(w: &Window, participants: usize, fanout: usize) -> Value {
    let us_per_pkt = w.server_cores.map(|c| c * 1e6 / w.forwarded_pps.max(1e-9));
    json!({
        "seconds": w.secs,
        "participants": participants,
        "sent_pps": w.sent_pps,
        "forwarded_pps": w.forwarded_pps,
        "forwarded_packets": w.forwarded,
        "delivery_ratio": w.forwarded_pps / (w.sent_pps * fanout as f64).max(1e-9),
        "loss": w.loss,
        "latency_ms": {"p50": w.p50_ms, "p99": w.p99_ms, "max": w.max_ms},
        "server_cpu_pct_of_one_core": w.server_cores.map(|c| c * 100.0),
        "server_pps_per_core": w.server_cores.map(|c| w.forwarded_pps / c.max(1e-9)),
        "server_cpu_us_per_forwarded_packet": us_per_pkt,
        "generator_cpu_pct_of_one_core": w.gen_cores.map(|c| c * 100.0),
        "generator_cpu_us_per_forwarded_packet": w.gen_cores.map(|c| c * 1e6 / w.forwarded_pps.max(1e-9)),
        "machine_cpu_pressure_pct": w.cpu_pressure.map(|p| p * 100.0),
        "machine_cpu_steal_pct": w.steal.map(|p| p * 100.0),
    })
}

fn pct(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    Some(v[i])
}

fn over_threshold(args: &Args, w: &Window) -> Option<String> {
    if let Some(l) = w.loss.filter(|l| l * 100.0 > args.max_loss_pct) {
        return Some(format!("loss {:.2}% > {}%", l * 100.0, args.max_loss_pct));
    }
    if let Some(p) = w.p99_ms.filter(|p| *p > args.max_p99_ms) {
        return Some(format!("p99 {p:.1} ms > {} ms", args.max_p99_ms));
    }
    None
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.rooms = 1;
        args.participants = 3;
        args.ramp = 20.0;
        args.warmup = 1;
        args.duration = args.duration.min(4);
        args.find_capacity = false;
        args.min_delivered = args.min_delivered.max(1);
    }
    // One participant per room forwards nothing between generator clients: benches/pstn.sh
    // uses it, with a phone leg from sipp as each room's other party.
    anyhow::ensure!(args.participants >= 1, "--participants must be at least 1");
    let url = args.url.clone().unwrap_or_else(|| match args.target {
        Target::Commhub => "ws://127.0.0.1:8080/ws".into(),
        Target::Janus => "ws://127.0.0.1:8188".into(),
        Target::Floor => "udp://127.0.0.1:18090".into(),
    });
    let engine = if args.light || args.target == Target::Floor {
        Some(Engine::start().context("starting the light engine")?)
    } else {
        None
    };
    let tone = Arc::new(OpusTone::encode(50).context("encoding the Opus tone")?);
    let rss_idle = args.server_pid.and_then(|p| procstat::rss_mb(Some(p)));
    let loadavg_start = procstat::loadavg();
    let run = Arc::new(Run {
        url,
        meter: Arc::new(Meter::default()),
        tone,
        engine,
        next_gid: AtomicU32::new(0),
        rooms: Mutex::default(),
        parts: Mutex::default(),
        inboxes: Mutex::default(),
        joining: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        incomplete: AtomicUsize::new(0),
        join_ms: Mutex::default(),
        samples: Mutex::default(),
        points: Mutex::default(),
        started: Instant::now(),
        args,
    });
    let args = &run.args;
    let target = match args.target {
        Target::Commhub => "commhub",
        Target::Janus => "janus",
        Target::Floor => "floor",
    };
    let generator = if args.target == Target::Floor {
        "plain UDP on one thread"
    } else if args.light {
        "light: webrtc-rs joins, SRTP on one thread"
    } else {
        "webrtc-rs"
    };
    eprintln!(
        "load: {target} at {}, {} room(s) x {} participants, ramp {}/s, generator ({generator}) on {} cpu(s)",
        run.url,
        args.rooms,
        args.participants,
        args.ramp,
        procstat::cpus_allowed()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ticker_task = tokio::spawn(ticker(run.clone(), stop.clone()));

    let fanout = args.participants - 1;
    let mut steps: Vec<Value> = Vec::new();
    let mut capacity: Option<Value> = None;
    let mut stop_reason = None;
    run.add_rooms(0, args.rooms).await;
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let (steady, rss_end) = if args.find_capacity {
        let mut rooms = args.rooms;
        let mut last_ok: Option<(Window, Option<f64>)> = None;
        let mut retried = false;
        loop {
            let (w, _, _) = measure(&run, args.step_secs).await;
            let joined = run.joined();
            let rss = args.server_pid.and_then(|p| procstat::rss_mb(Some(p)));
            let mut j = window_json(&w, joined, fanout);
            j["rooms"] = json!(rooms);
            j["server_rss_mb"] = json!(rss);
            eprintln!(
                "step: {rooms} rooms, {joined} participants: fwd {:.0}/s, loss {}, p99 {}, server cpu {}",
                w.forwarded_pps,
                fmt_opt(w.loss.map(|l| l * 100.0), 2, "%"),
                fmt_opt(w.p99_ms, 2, "ms"),
                fmt_opt(w.server_cores.map(|c| c * 100.0), 0, "%")
            );
            lock(&run.points).push(Point {
                participants: joined as f64,
                forwarded_pps: w.forwarded_pps,
                server_cpu_pct: w.server_cores.map(|c| c * 100.0),
                p50_ms: w.p50_ms,
                p99_ms: w.p99_ms,
            });
            steps.push(j.clone());
            let failed = run.failed.load(Ordering::Relaxed);
            let reason = over_threshold(args, &w)
                .or_else(|| (failed > 0).then(|| format!("{failed} join(s) failed")));
            if let Some(r) = reason {
                // One crossing can be a transient (another process on the machine): measure
                // the same load once more before calling it the limit.
                if !retried && failed == 0 {
                    eprintln!("step over the threshold ({r}): measuring it again");
                    retried = true;
                    continue;
                }
                stop_reason = Some(r);
                break;
            }
            retried = false;
            capacity = Some(j);
            last_ok = Some((w, rss));
            if w.gen_cores
                .is_some_and(|c| c > 0.9 * procstat::cpus_allowed() as f64)
            {
                stop_reason = Some("the generator is out of CPU: capacity is a lower bound".into());
                break;
            }
            if rooms + args.step_rooms > args.max_rooms {
                stop_reason = Some(format!("--max-rooms {} reached", args.max_rooms));
                break;
            }
            run.add_rooms(rooms, rooms + args.step_rooms).await;
            rooms += args.step_rooms;
            tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        }
        match last_ok {
            Some((w, rss)) => (w, rss),
            None => {
                let (w, _, _) = measure(&run, 1).await;
                (w, args.server_pid.and_then(|p| procstat::rss_mb(Some(p))))
            }
        }
    } else {
        let (w, _, _) = measure(&run, args.duration).await;
        (w, args.server_pid.and_then(|p| procstat::rss_mb(Some(p))))
    };
    stop.store(true, Ordering::Relaxed);
    let _ = ticker_task.await;

    let joined = run.joined();
    let failed = run.failed.load(Ordering::Relaxed);
    let mut join_ms = lock(&run.join_ms).clone();
    let unstamped = run.meter.unstamped.load(Ordering::Relaxed);
    let mut report = json!({
        "target": target,
        "url": run.url,
        "label": args.label,
        "generator": generator,
        "light_engine": run.engine.as_ref().map(|e| e.stats_json()),
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "rooms": lock(&run.rooms).len(),
        "participants_per_room": args.participants,
        "joined": joined,
        "failed": failed,
        "joins_without_all_audio": run.incomplete.load(Ordering::Relaxed),
        "join_ms": {
            "p50": pct(&mut join_ms, 0.5),
            "p99": pct(&mut join_ms, 0.99),
            "max": pct(&mut join_ms, 1.0),
        },
        "unstamped_packets": unstamped,
        "server_rss_mb_idle": rss_idle,
        "server_rss_mb": rss_end,
        "server_rss_mb_per_participant": rss_end.zip(rss_idle).map(|(e, i)| (e - i) / joined.max(1) as f64),
        "generator_cpus": procstat::cpus_allowed(),
        "loadavg_1m_start": loadavg_start,
        "loadavg_1m_end": procstat::loadavg(),
        "steady": window_json(&steady, joined, fanout),
        "samples": *lock(&run.samples),
    });
    if args.find_capacity {
        report["capacity_steps"] = json!(steps);
        report["capacity"] = json!(capacity);
        report["capacity_stop_reason"] = json!(stop_reason);
    }
    print_table(&report, &steady);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("report: {}", p.display());
    }
    if let Some(p) = &args.plot {
        let title = format!(
            "{target}: rooms of {} participants, 50 pkt/s each {}",
            args.participants, args.label
        );
        match plot(&p.to_string_lossy(), &title, &lock(&run.points)) {
            Ok(()) => eprintln!("plot: {}", p.display()),
            Err(e) => eprintln!("plot failed: {e:#}"),
        }
    }

    let parts: Vec<Part> = std::mem::take(&mut *lock(&run.parts));
    futures::future::join_all(parts.into_iter().map(Part::leave)).await;
    if steady.forwarded < args.min_delivered {
        anyhow::bail!(
            "only {} packets forwarded in the measured window (< {})",
            steady.forwarded,
            args.min_delivered
        );
    }
    Ok(())
}

fn print_table(r: &Value, w: &Window) {
    let f = |v: &Value, d: usize| v.as_f64().map_or("-".to_string(), |x| format!("{x:.d$}"));
    let s = &r["steady"];
    println!(
        "\n{} {}: {} room(s) x {} participants ({} joined, {} failed), {:.1} s measured",
        r["target"].as_str().unwrap_or_default(),
        r["label"].as_str().unwrap_or_default(),
        r["rooms"],
        r["participants_per_room"],
        r["joined"],
        r["failed"],
        w.secs
    );
    println!(
        "  join        p50 {} ms   p99 {} ms   max {} ms",
        f(&r["join_ms"]["p50"], 0),
        f(&r["join_ms"]["p99"], 0),
        f(&r["join_ms"]["max"], 0)
    );
    println!(
        "  latency     p50 {} ms   p99 {} ms   max {} ms",
        f(&s["latency_ms"]["p50"], 2),
        f(&s["latency_ms"]["p99"], 2),
        f(&s["latency_ms"]["max"], 2)
    );
    println!(
        "  loss        {} %   delivery {} %",
        s["loss"]
            .as_f64()
            .map_or("-".into(), |l| format!("{:.3}", l * 100.0)),
        s["delivery_ratio"]
            .as_f64()
            .map_or("-".into(), |d| format!("{:.2}", d * 100.0))
    );
    println!(
        "  packets     sent {} /s   forwarded {} /s",
        f(&s["sent_pps"], 0),
        f(&s["forwarded_pps"], 0)
    );
    println!(
        "  server      cpu {} % of a core   {} pkt/s per core   {} us cpu per packet",
        f(&s["server_cpu_pct_of_one_core"], 1),
        f(&s["server_pps_per_core"], 0),
        f(&s["server_cpu_us_per_forwarded_packet"], 2)
    );
    println!(
        "  server rss  {} MB (idle {} MB, {} MB per participant)",
        f(&r["server_rss_mb"], 1),
        f(&r["server_rss_mb_idle"], 1),
        f(&r["server_rss_mb_per_participant"], 2)
    );
    println!(
        "  generator   cpu {} % of a core ({} cpu(s) allowed), {} us cpu per forwarded packet ({})",
        f(&s["generator_cpu_pct_of_one_core"], 1),
        r["generator_cpus"],
        f(&s["generator_cpu_us_per_forwarded_packet"], 2),
        r["generator"].as_str().unwrap_or_default()
    );
    println!(
        "  machine     cpu pressure {} % of the time, steal {} % (tasks waiting for a CPU, \
         time taken by the hypervisor: above a few %, other work disturbs the figures)",
        f(&s["machine_cpu_pressure_pct"], 1),
        f(&s["machine_cpu_steal_pct"], 1)
    );
    if let Some(c) = r.get("capacity") {
        println!(
            "  capacity    {} (stopped: {})",
            if c.is_null() {
                "not reached at the first step".to_string()
            } else {
                format!(
                    "{} rooms, {} participants, {} forwarded pkt/s",
                    c["rooms"],
                    c["participants"],
                    f(&c["forwarded_pps"], 0)
                )
            },
            r["capacity_stop_reason"].as_str().unwrap_or("-")
        );
    }
}
