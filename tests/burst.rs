//! Burst acceptance test: the real server (recording on, SQLite store, auth off, everything on
//! 127.0.0.1) takes 200 two-party rooms (an agent and a customer, each a webrtc-rs WHIP
//! publisher: real ICE, DTLS and SRTP, real Opus from the load generator's tone) that open,
//! carry 2.5 s of audio each way into the recorder and close, in overlapping waves. Afterwards,
//! with the server still running (a shutdown would finalise and drain what the burst left
//! behind, hiding it):
//!
//! - the store holds exactly 200 calls, 400 participants and 200 recordings: one call per room,
//!   two participants and one recording per call;
//! - every call is `ended`, every participant has `left_at`, every recording is `ready` with
//!   both files present at the sizes its row gives, and holds both parties' audio;
//! - every FLAC passes `flac -t`, every MP3 decodes with `ffprobe -count_frames`;
//! - no log line of the run (every target, captured from before the server starts) says
//!   "missed": neither the call registry nor the recorder may lose a room event.
//!
//! The second test runs the same burst with recording finalisation slowed by a slow disk (see
//! [`SlowDisk`]): the recordings go to a throttled loop device, the database stays on the
//! ordinary disk. It needs root or passwordless `sudo`.
//!
//! What a burst costs on a 2-core machine, and why it takes ~30-50 s rather than a few
//! seconds in this debug build: see [`MAX_OPEN`].
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use commhub::store::Db;
use commhub_benches::stamp::{OpusTone, Stamp, now_ns};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use sqlx::Row;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder, register_default_interceptors,
};

/// Two-party rooms in a burst.
const ROOMS: usize = 200;
/// Rooms opened per second, at most ...
const ROOMS_PER_SEC: f64 = 15.0;
/// ... and rooms open at once (the waves): a room is opened when one of the last `MAX_OPEN`
/// has closed.
///
/// What was measured on the machine this was written on (2 vCPUs shared with other work,
/// debug build, server and clients in this one process):
///
/// - A `/ws` participant (`commhub_benches::client::Client`: publish and subscribe
///   connection, hears the other party and the consent announcement) costs this process about
///   0.45 CPU-s per recorded two-party room (10 rooms: 4.5 CPU-s, joins 1.4-1.6 s). A WHIP
///   publisher per party (one connection each, nothing forwarded) costs about 0.25 CPU-s
///   (10 rooms: 2.5 CPU-s, connected in 0.2-0.3 s); one of each, 0.40. The recorder is most of
///   it: unoptimised, its resampler and filters (the top of a `perf` profile) take about
///   0.08 CPU-s per second of recorded call, on a thread per recording.
/// - Without a cap on open rooms the burst does not complete: 200 `/ws` rooms at 5/s piled up
///   to 160 open rooms, whose recorder threads starved the runtime, and 166 rooms failed in
///   152 s; 200 WHIP rooms at 10/s piled up to 182 open rooms and nothing finished in 3 min.
/// - With WHIP parties, 10 rooms/s and at most 12 open: all 200 rooms open and close in
///   33-35 s (52-55 CPU-s, about 1.6 cores), both parties connected after 0.2-0.7 s (p50
///   0.33 s), the store is final within 0.5 s, and decoding the 400 files takes 10 s; the
///   whole test takes 43 s. It cannot go much faster here: 200 recorded rooms are about
///   50 CPU-s of work for 2 cores in this build, so the burst takes ~30-50 s (more on a
///   busier machine: the cap keeps it from collapsing), not the few seconds of the issue.
/// - With only the recorder optimised (`cargo nextest run --config
///   'profile.dev.package.recorder.opt-level=3'`), 25 rooms/s and 60 open: 200 rooms in
///   13 s, 25 CPU-s, both connected after 0.3-2.4 s, the whole test in 25 s. The workspace now
///   builds the recorder that way in the dev profile (`Cargo.toml`). At 60 open rooms a busy
///   CI machine took up to 6.9 s to connect both parties and once the server had not started
///   reading one party's track before its 1.5 s of audio ended (a recording with one side
///   silent), so the burst keeps 30 rooms open at 15/s and talks for 2.5 s.
const MAX_OPEN: usize = 30;
/// How long both parties send once both are connected.
const TALK: Duration = Duration::from_millis(2500);

/// Every log line of the process, from before the server starts.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        tracing_subscriber::fmt()
            // The server's crates at debug, everything else (webrtc-rs, sqlx, hyper, and `log`
            // records through tracing-log) at info.
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,commhub=debug,media=debug,recorder=debug,signaling=debug",
            ))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init()
            .expect("this test's log capture is the process's only subscriber");
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    let buf = logs();
    let b = buf.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&b).to_string()
}

/// The two tests share the process under `cargo test` (nextest runs each in its own): one
/// burst at a time, and the slow one's cgroup must not catch the other.
fn one_at_a_time() -> &'static tokio::sync::Mutex<()> {
    static M: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    M.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// Run a command as root: directly when we are root, else through `sudo -n`.
fn root_cmd(args: &[&str]) -> Result<String, String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let out = if root {
        Command::new(args[0]).args(&args[1..]).output()
    } else {
        Command::new("sudo").arg("-n").args(args).output()
    }
    .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Write `value` to a cgroup file as root.
fn root_write(path: &Path, value: &str) -> Result<(), String> {
    if std::fs::write(path, value).is_ok() {
        return Ok(());
    }
    let mut child = Command::new("sudo")
        .args(["-n", "tee", &path.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("sudo tee {}: {e}", path.display()))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .map_err(|e| e.to_string())?;
    let ok = child.wait().map(|s| s.success()).unwrap_or(false);
    ok.then_some(())
        .ok_or_else(|| format!("writing {value:?} to {}", path.display()))
}

/// 400 participants need about 5 descriptors each in this process (two UDP sockets of the
/// client, two of the server, both ends of the WebSocket), more than the usual soft limit of
/// 1024: raise the soft limit to the hard one.
fn raise_fd_limit() {
    let pid = std::process::id().to_string();
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "HARD",
            "--noheadings",
        ])
        .output()
        .expect("prlimit (util-linux)");
    let hard = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
}

/// The block-I/O throttle the slow disk is held to: a volume at its limit of 50 write
/// operations and 1 MiB written per second (a small cloud volume out of burst credit, or a
/// busy spinning disk). Reads are not limited, so the checks afterwards read at full speed.
/// A burst writes about 32 MB (some 160 KB per recording: FLAC, MP3, sidecar, journal) with
/// thousands of fsyncs in about 35 s: at these limits the disk is saturated for the whole
/// burst and finalisations queue behind each other; at 2 MiB/s and 100 operations per second
/// it kept up here and slowed nothing.
const SLOW_WRITE_IOPS: u32 = 50;
const SLOW_WRITE_BPS: u32 = 1 << 20;

/// A slow disk for `recording.storage_root`: a sparse image file on a loop device, formatted
/// ext4 and mounted, and this process moved into a block-I/O cgroup that limits its writes to
/// that device (cgroup v2 `io.max`, or v1 `blkio.throttle.*` where `blkio` is a v1
/// hierarchy, as in this sandbox). Only writes of this process to that device are held back:
/// the database, the clients and the checks run at full speed. The recorder `fsync`s its
/// journal every second and each file when it finalises, so its writes are issued by its own
/// threads and throttled under both cgroup versions.
///
/// Needs root or passwordless sudo, `losetup`/`mount` (util-linux, mount), `mkfs.ext4`
/// (e2fsprogs): all in every Debian install. Device-mapper `dm-delay` would be the classic
/// tool, but this sandbox's kernel has no device-mapper (no /dev/mapper/control); a FUSE
/// passthrough would need a FUSE program this project does not have. Undone on drop.
struct SlowDisk {
    image: PathBuf,
    device: String,
    mount: PathBuf,
    cgroup: PathBuf,
    /// The cgroup.procs file to move back to.
    home: PathBuf,
}

impl SlowDisk {
    fn new() -> Result<SlowDisk, String> {
        let tag = format!(
            "commhub-burst-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let image = std::env::temp_dir().join(format!("{tag}.img"));
        let mount = std::env::temp_dir().join(format!("{tag}-mnt"));
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(1 << 30).map_err(|e| e.to_string())?;
        drop(f);
        let device = root_cmd(&["losetup", "-f", "--show", &image.display().to_string()])?;
        let mut disk = SlowDisk {
            image,
            device: device.clone(),
            mount: mount.clone(),
            cgroup: PathBuf::new(),
            home: PathBuf::new(),
        };
        root_cmd(&["mkfs.ext4", "-q", "-F", &device])?;
        root_cmd(&["mount", &device, &mount.display().to_string()])?;
        let me = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .map_err(|e| e.to_string())?;
        root_cmd(&["chown", &me, &mount.display().to_string()])?;
        let majmin = root_cmd(&["lsblk", "-dno", "MAJ:MIN", &device])?
            .trim()
            .to_string();
        let pid = std::process::id().to_string();
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if v2 {
            // Unified hierarchy: a cgroup right under the root (the root is the one cgroup
            // that may have processes and delegate controllers at once).
            let base = Path::new("/sys/fs/cgroup");
            let sub = std::fs::read_to_string(base.join("cgroup.subtree_control"))
                .map_err(|e| e.to_string())?;
            // `memory` too: under v2, writeback of a page is charged to the cgroup whose memory
            // controller dirtied it, so without it our writes would be the root's, unthrottled.
            for ctrl in ["io", "memory"] {
                if !sub.split_whitespace().any(|c| c == ctrl) {
                    root_write(&base.join("cgroup.subtree_control"), &format!("+{ctrl}"))?;
                }
            }
            let home = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 line in /proc/self/cgroup")?;
            disk.home = base.join(home.trim_start_matches('/')).join("cgroup.procs");
            disk.cgroup = base.join(&tag);
            root_cmd(&["mkdir", &disk.cgroup.display().to_string()])?;
            root_write(
                &disk.cgroup.join("io.max"),
                &format!("{majmin} wbps={SLOW_WRITE_BPS} wiops={SLOW_WRITE_IOPS}"),
            )?;
        } else {
            let base = Path::new("/sys/fs/cgroup/blkio");
            if !base.join("blkio.throttle.write_bps_device").exists() {
                return Err("neither cgroup v2 io.max nor a v1 blkio hierarchy".into());
            }
            let home = own
                .lines()
                .find_map(|l| {
                    let (_, rest) = l.split_once(':')?;
                    let (ctrls, path) = rest.split_once(':')?;
                    ctrls.split(',').any(|c| c == "blkio").then_some(path)
                })
                .ok_or("no blkio line in /proc/self/cgroup")?;
            disk.home = base.join(home.trim_start_matches('/')).join("cgroup.procs");
            disk.cgroup = base.join(&tag);
            root_cmd(&["mkdir", &disk.cgroup.display().to_string()])?;
            root_write(
                &disk.cgroup.join("blkio.throttle.write_bps_device"),
                &format!("{majmin} {SLOW_WRITE_BPS}"),
            )?;
            root_write(
                &disk.cgroup.join("blkio.throttle.write_iops_device"),
                &format!("{majmin} {SLOW_WRITE_IOPS}"),
            )?;
        }
        root_write(&disk.cgroup.join("cgroup.procs"), &pid)?;
        Ok(disk)
    }

    /// Write 1 MiB with an fsync per 64 KiB to the slow disk: how long it takes (checks the
    /// throttle is on: at the limits above, about 1 s; unthrottled, a few ms).
    fn probe(&self) -> Duration {
        let t0 = Instant::now();
        let p = self.mount.join("probe");
        let mut f = std::fs::File::create(&p).expect("probe file");
        for _ in 0..16 {
            f.write_all(&[7u8; 64 << 10]).expect("probe write");
            f.sync_data().expect("probe fsync");
        }
        let _ = std::fs::remove_file(&p);
        t0.elapsed()
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        if !self.home.as_os_str().is_empty() {
            let _ = root_write(&self.home, &pid);
        }
        if !self.cgroup.as_os_str().is_empty() {
            let _ = root_cmd(&["rmdir", &self.cgroup.display().to_string()]);
        }
        // Lazily: after a failed assertion the server's threads may still hold files there.
        let _ = root_cmd(&["umount", "-l", &self.mount.display().to_string()]);
        let _ = root_cmd(&["losetup", "-d", &self.device]);
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// A WHIP publisher (RFC 9725) on webrtc-rs: one peer connection with one sendonly Opus track,
/// the complete offer (every candidate gathered) POSTed to `/whip/{room}`, the answer set, then
/// a packet every 20 ms until it leaves with DELETE on the session's `Location`. A PBX or
/// gateway leg publishes like this; it is lighter than a `/ws` participant (no subscribe
/// connection, nothing forwarded to it).
struct Whip {
    base: String,
    location: String,
    pc: Arc<dyn PeerConnection>,
    sender: tokio::task::JoinHandle<()>,
    connected: Arc<AtomicBool>,
}

struct WhipEvents {
    gathered: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    connected: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for WhipEvents {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete
            && let Some(tx) = self.gathered.lock().expect("lock").take()
        {
            let _ = tx.send(());
        }
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        if s == RTCPeerConnectionState::Connected {
            self.connected.store(true, Ordering::Relaxed);
        }
    }
}

/// A small HTTP/1.1 exchange: status, the `Location` header, body.
async fn http_exchange(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, Option<String>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.strip_prefix("http://").unwrap_or(base);
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    Ok((status, location, body.to_string()))
}

impl Whip {
    async fn publish(
        base: &str,
        room: &str,
        name: &str,
        role: &str,
        payload: common::PayloadFn,
    ) -> anyhow::Result<Whip> {
        let mut me = MediaEngine::default();
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: common::opus(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )?;
        let reg = register_default_interceptors(Registry::new(), &mut me)?;
        let (gathered_tx, gathered) = tokio::sync::oneshot::channel();
        let connected = Arc::new(AtomicBool::new(false));
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_interceptor_registry(reg)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_handler(Arc::new(WhipEvents {
                gathered: Mutex::new(Some(gathered_tx)),
                connected: connected.clone(),
            }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let (track, ssrc) = common::opus_track(&format!("whip-{name}"), "mic");
        pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        // No trickle in WHIP: the offer goes out with every candidate.
        tokio::time::timeout(Duration::from_secs(10), gathered).await??;
        let offer = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow::anyhow!("no local description"))?;
        let path = format!("/whip/{room}?name={name}&role={role}");
        let (status, location, answer) = http_exchange(base, "POST", &path, &offer.sdp).await?;
        let Some(location) = location.filter(|_| status == 201) else {
            let _ = pc.close().await;
            anyhow::bail!("WHIP POST {path}: {status} {answer}");
        };
        pc.set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        let sender = common::spawn_opus_sender(track, ssrc, move |n| payload(n), |_| {});
        Ok(Whip {
            base: base.to_string(),
            location,
            pc,
            sender,
            connected,
        })
    }

    /// End the session (DELETE) and close the connection.
    async fn leave(self) -> anyhow::Result<()> {
        let res = http_exchange(&self.base, "DELETE", &self.location, "").await;
        self.sender.abort();
        let _ = self.pc.close().await;
        match res? {
            (200, _, _) => Ok(()),
            (s, _, b) => anyhow::bail!("WHIP DELETE {}: {s} {b}", self.location),
        }
    }
}

/// What the clients saw of one burst.
#[derive(Debug, Default)]
struct Burst {
    /// From the first join to the last leave.
    secs: f64,
    /// Rooms whose two parties both connected, sent for `TALK` and left.
    rooms_ok: usize,
    errors: Vec<String>,
    /// Most rooms open at once.
    peak_rooms: usize,
    /// From the POSTs until both parties are connected, per room (ms).
    connect_ms: Vec<f64>,
}

/// Open `ROOMS` two-party rooms at `ROOMS_PER_SEC`, at most `MAX_OPEN` at once. In each, both
/// parties publish at once, wait until both are connected, send for `TALK`, and leave.
async fn burst(base: &str, label: &str) -> Burst {
    let tone = Arc::new(OpusTone::encode(250).expect("opus tone"));
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN));
    let t0 = Instant::now();
    let ticker = {
        let (live, done, label) = (live.clone(), done.clone(), label.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                eprintln!(
                    "[{label}] {:5.1} s: {} rooms open, {} done, process CPU {:.1} s",
                    t0.elapsed().as_secs_f64(),
                    live.load(Ordering::Relaxed),
                    done.load(Ordering::Relaxed),
                    commhub_benches::procstat::cpu_secs(None).unwrap_or(0.0)
                );
            }
        })
    };
    let gap = Duration::from_secs_f64(1.0 / ROOMS_PER_SEC);
    let mut tasks = Vec::new();
    for r in 0..ROOMS {
        tokio::time::sleep_until((t0 + gap * r as u32).into()).await;
        let permit = open.clone().acquire_owned().await.expect("semaphore");
        let (base, tone) = (base.to_string(), tone.clone());
        let (live, peak, done) = (live.clone(), peak.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let up = live.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(up, Ordering::Relaxed);
            let res = one_room(&base, r, &tone).await;
            live.fetch_sub(1, Ordering::Relaxed);
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            res
        }));
    }
    let mut out = Burst::default();
    for t in tasks {
        match t.await {
            Ok(Ok(ms)) => {
                out.rooms_ok += 1;
                out.connect_ms.push(ms);
            }
            Ok(Err(e)) => out.errors.push(e),
            Err(e) => out.errors.push(format!("room task: {e}")),
        }
    }
    ticker.abort();
    out.secs = t0.elapsed().as_secs_f64();
    out.peak_rooms = peak.load(Ordering::Relaxed);
    out
}

/// One room, `burst-{r}`: an agent and a customer publish over WHIP. Returns the time until
/// both were connected (ms).
async fn one_room(base: &str, r: usize, tone: &Arc<OpusTone>) -> Result<f64, String> {
    let room = format!("burst-{r}");
    let payload = |me: usize| -> common::PayloadFn {
        let sender = (2 * r + me) as u32;
        let tone = tone.clone();
        Arc::new(move |seq| {
            tone.packet(&Stamp {
                sender,
                seq,
                sent_ns: now_ns(),
            })
        })
    };
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        Whip::publish(base, &room, "Agent", "agent", payload(0)),
        Whip::publish(base, &room, "Customer", "customer", payload(1)),
    );
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let mut why = Vec::new();
            for p in [a, b] {
                match p {
                    Ok(p) => {
                        let _ = p.leave().await;
                    }
                    Err(e) => why.push(format!("{e:#}")),
                }
            }
            return Err(format!("{room}: publish failed: {}", why.join("; ")));
        }
    };
    let up = common::eventually(Duration::from_secs(20), || {
        a.connected.load(Ordering::Relaxed) && b.connected.load(Ordering::Relaxed)
    })
    .await;
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if up {
        tokio::time::sleep(TALK).await;
    }
    let (la, lb) = tokio::join!(a.leave(), b.leave());
    if !up {
        return Err(format!("{room}: not connected within 20 s"));
    }
    la.and(lb).map_err(|e| format!("{room}: leave: {e:#}"))?;
    Ok(connect_ms)
}

/// What the store says after a burst.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rows {
    calls: i64,
    calls_ended: i64,
    rooms: i64,
    participants: i64,
    participants_left: i64,
    recordings: i64,
    recordings_ready: i64,
    calls_without_two_participants: i64,
    calls_without_one_recording: i64,
}

impl Rows {
    fn done(&self) -> bool {
        let n = ROOMS as i64;
        self.calls == n
            && self.calls_ended == n
            && self.participants == 2 * n
            && self.participants_left == 2 * n
            && self.recordings == n
            && self.recordings_ready == n
    }
}

async fn count(pool: &sqlx::SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn rows(pool: &sqlx::SqlitePool) -> Rows {
    Rows {
        calls: count(pool, "SELECT COUNT(*) FROM calls").await,
        calls_ended: count(pool, "SELECT COUNT(*) FROM calls WHERE status = 'ended'").await,
        rooms: count(pool, "SELECT COUNT(DISTINCT room) FROM calls").await,
        participants: count(pool, "SELECT COUNT(*) FROM call_participants").await,
        participants_left: count(
            pool,
            "SELECT COUNT(*) FROM call_participants WHERE left_at IS NOT NULL",
        )
        .await,
        recordings: count(pool, "SELECT COUNT(*) FROM call_recordings").await,
        recordings_ready: count(
            pool,
            "SELECT COUNT(*) FROM call_recordings WHERE status = 'ready'",
        )
        .await,
        calls_without_two_participants: count(
            pool,
            "SELECT COUNT(*) FROM calls c WHERE \
             (SELECT COUNT(*) FROM call_participants p WHERE p.call_id = c.id) != 2",
        )
        .await,
        calls_without_one_recording: count(
            pool,
            "SELECT COUNT(*) FROM calls c WHERE \
             (SELECT COUNT(*) FROM call_recordings r WHERE r.call_id = c.id) != 1",
        )
        .await,
    }
}

/// `(label, count)` rows of a GROUP BY query, for the report.
async fn groups(pool: &sqlx::SqlitePool, sql: &'static str) -> BTreeMap<String, i64> {
    sqlx::query(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            (
                r.try_get::<Option<String>, _>(0)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "NULL".into()),
                r.try_get::<i64, _>(1).unwrap_or(-1),
            )
        })
        .collect()
}

/// A finished recording as the store lists it.
#[derive(Clone)]
struct RecFile {
    /// The FLAC; the MP3 and the JSON sidecar sit next to it.
    flac: PathBuf,
    mp3: PathBuf,
    flac_bytes: i64,
    mp3_bytes: i64,
    duration: f64,
}

async fn recording_files(pool: &sqlx::SqlitePool, root: &Path) -> Vec<RecFile> {
    sqlx::query(
        "SELECT flac_key, mp3_key, flac_bytes, mp3_bytes, duration_sec FROM call_recordings",
    )
    .fetch_all(pool)
    .await
    .expect("recordings")
    .iter()
    .map(|r| RecFile {
        flac: root.join(
            r.try_get::<Option<String>, _>(0)
                .ok()
                .flatten()
                .unwrap_or_default(),
        ),
        mp3: root.join(
            r.try_get::<Option<String>, _>(1)
                .ok()
                .flatten()
                .unwrap_or_default(),
        ),
        flac_bytes: r.try_get::<Option<i64>, _>(2).ok().flatten().unwrap_or(-1),
        mp3_bytes: r.try_get::<Option<i64>, _>(3).ok().flatten().unwrap_or(-1),
        duration: r
            .try_get::<Option<f64>, _>(4)
            .ok()
            .flatten()
            .unwrap_or(-1.0),
    })
    .collect()
}

/// `flac -t` on every FLAC (in batches; a failing batch is retried file by file to name the
/// file), `ffprobe -count_frames` (demux and decode every frame) on every MP3. Returns the
/// failures.
fn decode_all(files: &[RecFile]) -> Vec<String> {
    let mut bad = Vec::new();
    for chunk in files.chunks(40) {
        let mut args = vec!["-t".to_string(), "-s".to_string(), "--".to_string()];
        args.extend(chunk.iter().map(|f| f.flac.display().to_string()));
        let ok = Command::new("flac")
            .args(&args)
            .output()
            .expect("flac is installed (scripts/setup-test-deps.sh)")
            .status
            .success();
        if !ok {
            for f in chunk {
                let out = Command::new("flac")
                    .args(["-t", "-s", "--", &f.flac.display().to_string()])
                    .output()
                    .expect("flac");
                if !out.status.success() {
                    bad.push(format!(
                        "flac -t {}: {}",
                        f.flac.display(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
    }
    // Two ffprobes at a time.
    let mut next = files.iter();
    loop {
        let batch: Vec<&RecFile> = next.by_ref().take(2).collect();
        if batch.is_empty() {
            break;
        }
        let children: Vec<_> = batch
            .iter()
            .map(|f| {
                let c = Command::new("ffprobe")
                    .args([
                        "-v",
                        "error",
                        "-count_frames",
                        "-select_streams",
                        "a:0",
                        "-show_entries",
                        "stream=codec_name,channels,sample_rate,nb_read_frames",
                        "-of",
                        "json",
                    ])
                    .arg(&f.mp3)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("ffprobe is installed (scripts/setup-test-deps.sh)");
                (f, c)
            })
            .collect();
        for (f, c) in children {
            let out = c.wait_with_output().expect("ffprobe");
            let j: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let s = &j["streams"][0];
            let frames: u64 = s["nb_read_frames"]
                .as_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let good = out.status.success()
                && out.stderr.is_empty()
                && s["codec_name"] == "mp3"
                && s["channels"] == 2
                && s["sample_rate"]
                    .as_str()
                    .and_then(|r| r.parse::<u32>().ok())
                    .unwrap_or(0)
                    > 0
                && frames > 0;
            if !good {
                bad.push(format!(
                    "ffprobe {}: {} {}",
                    f.mp3.display(),
                    j,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    bad
}

fn quantiles(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let q = |x: f64| v[((v.len() - 1) as f64 * x).round() as usize];
    format!(
        "min {:.0} p50 {:.0} p90 {:.0} max {:.0}",
        q(0.0),
        q(0.5),
        q(0.9),
        q(1.0)
    )
}

/// The whole acceptance run: start the server with recordings under `storage_root` (the test
/// config's own directory when `None`), burst, wait for the store, check rows, files and logs.
async fn burst_test(label: &str, storage_root: Option<PathBuf>, settle: Duration, stall: Duration) {
    let logs_from = log_text().len();
    raise_fd_limit();
    // Media ports: one per WHIP party (a `/ws` participant takes two, publish and subscribe),
    // so 400 if every room were open at once, 800 with `/ws` clients: a window of 2000 (ports
    // are leased round-robin). Below the kernel's ephemeral range (32768 and up), where the
    // clients' own sockets live.
    let base = 20000 + (rand::random::<u16>() % 5) * 2000;
    let srv = common::server(|c| {
        c.recording.enabled = true;
        if let Some(root) = storage_root {
            c.recording.storage_root = root;
        }
        c.media.port_min = base;
        c.media.port_max = base + 1999;
        c.media.bind_ip = "127.0.0.1".parse().expect("ip");
        // Joins are quick but 400 of them share two cores with the server.
        c.media.media_timeout_secs = 10;
        c.media.ice_disconnected_secs = 5;
    })
    .await;
    assert!(srv.addr.ip().is_loopback(), "the server binds 127.0.0.1");
    let root = srv.state.recorders.config().storage_root.clone();
    let Db::Sqlite(pool) = srv.state.store.store.db().clone() else {
        panic!("the test config uses SQLite")
    };

    let cpu0 = commhub_benches::procstat::cpu_secs(None);
    let b = burst(&srv.http_url(), label).await;
    let cpu1 = commhub_benches::procstat::cpu_secs(None);
    let mut connect = b.connect_ms.clone();
    eprintln!(
        "[{label}] burst: {} rooms in {:.1} s, {} ok, {} failed, peak {} rooms up at once; \
         until both parties connected (ms): {}; process CPU {:.1} s",
        ROOMS,
        b.secs,
        b.rooms_ok,
        b.errors.len(),
        b.peak_rooms,
        quantiles(&mut connect),
        cpu1.zip(cpu0).map_or(f64::NAN, |(a, z)| a - z)
    );
    for e in b.errors.iter().take(10) {
        eprintln!("[{label}]   {e}");
    }

    // Wait for the server to settle: every row final, until `settle` passes, or earlier when
    // the rows have not changed for `stall` and no room is open (the slow disk's backlog keeps
    // changing them while it drains; a lost event leaves them still).
    let t_settle = Instant::now();
    let deadline = t_settle + settle;
    let open_rooms = || {
        (0..ROOMS)
            .filter(|r| srv.state.sfu.participants(&format!("burst-{r}")).is_some())
            .count()
    };
    let mut now = rows(&pool).await;
    let mut changed = Instant::now();
    while !now.done()
        && Instant::now() < deadline
        && (changed.elapsed() < stall || open_rooms() > 0)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next = rows(&pool).await;
        if next != now {
            changed = Instant::now();
            now = next;
        }
    }
    let settled_in = t_settle.elapsed().as_secs_f64();
    eprintln!("[{label}] store after {settled_in:.1} s: {now:?}");
    eprintln!(
        "[{label}]   end reasons {:?}; leave reasons {:?}; recording status {:?}",
        groups(&pool, "SELECT end_reason, COUNT(*) FROM calls GROUP BY 1").await,
        groups(
            &pool,
            "SELECT leave_reason, COUNT(*) FROM call_participants GROUP BY 1"
        )
        .await,
        groups(
            &pool,
            "SELECT status, COUNT(*) FROM call_recordings GROUP BY 1"
        )
        .await,
    );
    // Nothing is still open in the server either.
    let still_open: Vec<String> = (0..ROOMS)
        .map(|r| format!("burst-{r}"))
        .filter(|room| {
            srv.state.sfu.participants(room).is_some() || srv.state.recorders.active(room).is_some()
        })
        .collect();

    // Files: present, at the row's sizes, decodable.
    let files = recording_files(&pool, &root).await;
    let mut missing = Vec::new();
    for f in &files {
        for (p, n) in [(&f.flac, f.flac_bytes), (&f.mp3, f.mp3_bytes)] {
            match std::fs::metadata(p) {
                Ok(m) if m.len() as i64 == n && n > 0 => {}
                Ok(m) => missing.push(format!("{}: {} bytes, row says {n}", p.display(), m.len())),
                Err(e) => missing.push(format!("{}: {e}", p.display())),
            }
        }
    }
    // Both parties' audio is in each recording (the sidecar lists who was decoded).
    let mut one_sided = Vec::new();
    for f in &files {
        let side: serde_json::Value = std::fs::read(f.flac.with_extension("json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let decoded: Vec<u64> = side["participants"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| p["decoded"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        if decoded.len() != 2 || decoded.contains(&0) {
            one_sided.push(format!("{}: decoded packets {decoded:?}", f.flac.display()));
        }
    }
    let t_dec = Instant::now();
    let bad = {
        let files = files.clone();
        tokio::task::spawn_blocking(move || decode_all(&files))
            .await
            .expect("decode")
    };
    let mut durations: Vec<f64> = files.iter().map(|f| f.duration * 1000.0).collect();
    eprintln!(
        "[{label}] decoded {} FLAC (flac -t) and {} MP3 (ffprobe -count_frames) in {:.1} s: \
         {} failed; recording durations (ms): {}",
        files.len(),
        files.len(),
        t_dec.elapsed().as_secs_f64(),
        bad.len(),
        quantiles(&mut durations)
    );

    let text = log_text();
    let text = &text[logs_from.min(text.len())..];
    // COMMHUB_BURST_LOG=<file>: keep this run's server log for a closer look.
    if let Ok(path) = std::env::var("COMMHUB_BURST_LOG") {
        let _ = std::fs::write(format!("{path}.{}", label.replace(' ', "-")), text);
    }
    let missed: Vec<&str> = text
        .lines()
        .filter(|l| l.to_lowercase().contains("missed"))
        .collect();
    // The server's own warnings (webrtc-rs warns a lot about every connection in its setup).
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| {
            ["commhub", "media", "recorder", "signaling"]
                .iter()
                .any(|t| l.contains(&format!(" {t}::")) || l.contains(&format!(" {t}:")))
        })
        .collect();
    eprintln!(
        "[{label}] {} log lines, {} warnings or errors, {} saying \"missed\"",
        text.lines().count(),
        warnings.len(),
        missed.len()
    );
    for w in warnings.iter().take(20) {
        eprintln!("[{label}]   {w}");
    }

    // The verdict, checked with the server still running.
    assert!(b.errors.is_empty(), "clients failed: {:?}", b.errors);
    assert!(missed.is_empty(), "log lines saying missed: {missed:#?}");
    let n = ROOMS as i64;
    assert_eq!(
        now,
        Rows {
            calls: n,
            calls_ended: n,
            rooms: n,
            participants: 2 * n,
            participants_left: 2 * n,
            recordings: n,
            recordings_ready: n,
            calls_without_two_participants: 0,
            calls_without_one_recording: 0,
        },
        "rows {settled_in:.1} s after the burst (see the server's warnings above)"
    );
    assert!(still_open.is_empty(), "rooms still open: {still_open:?}");
    assert_eq!(files.len(), ROOMS);
    assert!(missing.is_empty(), "recording files: {missing:#?}");
    assert!(bad.is_empty(), "undecodable files: {bad:#?}");
    assert!(
        one_sided.is_empty(),
        "recordings without both parties: {one_sided:#?}"
    );
    // Each room lasted its parties' connection plus `TALK`; a recording much shorter than
    // that started late and lost the start of the call.
    let short: Vec<String> = files
        .iter()
        .filter(|f| f.duration < 1.0)
        .map(|f| format!("{}: {:.2} s", f.flac.display(), f.duration))
        .collect();
    assert!(
        short.is_empty(),
        "recordings shorter than 1 s of a call of at least {TALK:?}: {short:#?}"
    );
    // ... and a recording longer than its call went on after the call ended (a recorder that
    // fell behind, e.g. on the slow disk, must not render past the stop).
    let long: Vec<String> = sqlx::query(
        "SELECT r.id, r.duration_sec, \
                (julianday(c.ended_at) - julianday(c.created_at)) * 86400.0 AS call_sec \
         FROM call_recordings r JOIN calls c ON c.id = r.call_id \
         WHERE r.duration_sec > (julianday(c.ended_at) - julianday(c.created_at)) * 86400.0 + 1.0",
    )
    .fetch_all(&pool)
    .await
    .expect("durations")
    .iter()
    .map(|r| {
        format!(
            "recording {}: {:.2} s of a {:.2} s call",
            r.try_get::<String, _>(0).unwrap_or_default(),
            r.try_get::<f64, _>(1).unwrap_or_default(),
            r.try_get::<f64, _>(2).unwrap_or_default()
        )
    })
    .collect();
    assert!(
        long.is_empty(),
        "recordings longer than their calls: {long:#?}"
    );
    let db_dir = srv
        .state
        .cfg
        .database
        .sqlite_path
        .parent()
        .map(Path::to_path_buf);
    srv.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&root);
    if let Some(d) = db_dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_recorded_rooms_ends_every_call_and_recording() {
    logs();
    let _one = one_at_a_time().lock().await;
    burst_test(
        "burst",
        None,
        Duration::from_secs(60),
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_onto_a_slow_disk_ends_every_call_and_recording() {
    logs();
    let _one = one_at_a_time().lock().await;
    let disk = SlowDisk::new().unwrap_or_else(|e| {
        panic!(
            "the slow disk needs root or passwordless sudo, a loop device and a block-I/O \
             cgroup (v2 io.max or v1 blkio): {e}"
        )
    });
    let probe = disk.probe();
    eprintln!(
        "[slow disk] {} on {}: 1 MiB in 16 fsynced writes took {:.2} s",
        disk.mount.display(),
        disk.device,
        probe.as_secs_f64()
    );
    assert!(
        probe >= Duration::from_millis(300),
        "the throttle is not in effect ({probe:?})"
    );
    burst_test(
        "slow disk",
        Some(disk.mount.join("recordings")),
        // The throttled disk drains the finished recordings' files at 1 MiB/s after the
        // burst: the first may take longer than 15 s to become final.
        Duration::from_secs(120),
        Duration::from_secs(45),
    )
    .await;
    drop(disk);
}
