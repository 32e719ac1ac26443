//! Phone legs from baresip (Debian `baresip-core`), a real SIP user agent this project did not
//! write, in a call with an aiortc WebRTC client. Three legs at once, one per codec (PCMU at
//! 8 kHz, G.722 at 16 kHz, Opus at 48 kHz), each playing its own tone from a WAV file and
//! recording what it hears (baresip's sndfile module). Proves:
//! - mix-minus: each leg hears the browser's tone and the other legs' tones, never its own;
//! - the browser hears every leg (their uplinks are published into the room as Opus);
//! - the consent beeps reach the phone legs;
//! - each codec is negotiated as asked.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use commhub::calls::NewCall;
use common::{finish_py, spawn_py};

const CLIENT_HZ: f64 = 1000.0;
const BEEP_HZ: f64 = 1400.0;

struct Leg {
    codec: &'static str,
    account_codec: &'static str,
    hz: f64,
    /// baresip's media encryption (`srtp-mand`: SDES-SRTP, RTP/SAVP), if any.
    mediaenc: Option<&'static str>,
}

const LEGS: [Leg; 3] = [
    Leg {
        codec: "PCMU",
        account_codec: "PCMU/8000/1",
        hz: 440.0,
        mediaenc: None,
    },
    Leg {
        codec: "G722",
        account_codec: "G722/16000/1",
        hz: 660.0,
        mediaenc: None,
    },
    Leg {
        codec: "opus",
        account_codec: "opus/48000/2",
        hz: 880.0,
        mediaenc: None,
    },
];

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("commhub-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A baresip config directory: listens on a free port, plays `hz` from a WAV, dumps what it
/// hears to `out/`, offers only `codec`.
fn baresip_dir(leg: &Leg, rtp_base: u16) -> PathBuf {
    let d = tmpdir(&format!("baresip-{}", leg.codec));
    std::fs::create_dir_all(d.join("out")).expect("out dir");
    let wav = d.join("in.wav");
    let (ok, t) = run(
        "sox",
        &[
            "-n",
            "-r",
            "48000",
            "-c",
            "1",
            "-b",
            "16",
            &wav.display().to_string(),
            "synth",
            "20",
            "sine",
            &leg.hz.to_string(),
            "vol",
            "0.3",
        ],
    );
    assert!(ok, "sox: {t}");
    let config = format!(
        "sip_listen 127.0.0.1:{sip}\nnet_interface 127.0.0.1\naudio_player alsa,null\naudio_alert alsa,null\n\
         audio_source aufile,{wav}\nausrc_srate 48000\nausrc_channels 1\nsnd_path {out}\n\
         rtp_ports {rtp_base}-{rtp_end}\nmodule_path /usr/lib/baresip/modules\n\
         module g711.so\nmodule g722.so\nmodule opus.so\nmodule alsa.so\nmodule aufile.so\n\
         module sndfile.so\nmodule srtp.so\nmodule_app account.so\nmodule_app menu.so\n",
        sip = free_port(),
        wav = wav.display(),
        out = d.join("out").display(),
        rtp_end = rtp_base + 20,
    );
    std::fs::write(d.join("config"), config).expect("config");
    std::fs::write(
        d.join("accounts"),
        format!(
            "<sip:bs-{}@127.0.0.1>;regint=0;audio_codecs={}{}\n",
            leg.codec,
            leg.account_codec,
            leg.mediaenc
                .map(|m| format!(";mediaenc={m}"))
                .unwrap_or_default()
        ),
    )
    .expect("accounts");
    d
}

/// Goertzel power at `hz` of mono 16 kHz samples.
fn power(x: &[f64], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 16_000.0;
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (x.len() as f64).powi(2)
}

/// A WAV file as mono 16 kHz samples (through sox).
fn samples(wav: &Path) -> Vec<f64> {
    let raw = wav.with_extension("raw");
    let (ok, t) = run(
        "sox",
        &[
            &wav.display().to_string(),
            "-t",
            "raw",
            "-r",
            "16000",
            "-e",
            "signed",
            "-b",
            "16",
            "-c",
            "1",
            &raw.display().to_string(),
        ],
    );
    assert!(ok, "sox: {t}");
    let b = std::fs::read(&raw).expect("raw");
    b.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]) as f64 / 32768.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_legs_hear_everyone_but_themselves_in_each_codec() {
    let root = tmpdir("baresip-rec");
    let r2 = root.clone();
    let srv = common::server(move |c| {
        c.recording.enabled = true;
        c.recording.storage_root = r2;
        c.recording.announcement = false;
        c.recording.beep_interval_ms = 2_000;
    })
    .await;
    let sip = srv.state.sip.clone().expect("SIP on");
    let (call, _) = srv
        .state
        .calls
        .create(NewCall {
            kind: "hybrid".into(),
            direction: "outbound".into(),
            from_number: None,
            to_number: None,
            record: true,
        })
        .await;
    // The browser side: an aiortc client playing 1 kHz and recording each participant.
    let out = root.join("client.wav");
    let client = spawn_py(
        &[
            "tests/clients/ws_client.py",
            "--url",
            &srv.ws_url(),
            "--room",
            &call.room,
            "--name",
            "Agent",
            "--role",
            "agent",
            "--tone",
            &CLIENT_HZ.to_string(),
            "--duration",
            "16",
            "--record",
            &out.display().to_string(),
        ]
        .map(str::to_string),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dirs: Vec<PathBuf> = LEGS
        .iter()
        .enumerate()
        .map(|(i, l)| {
            baresip_dir(
                l,
                46_000 + (rand::random::<u16>() % 100) * 100 + i as u16 * 30,
            )
        })
        .collect();
    let target = format!("/dial sip:{}@{}", call.id, sip.local_addr());
    let mut phones = Vec::new();
    for d in &dirs {
        let child = tokio::process::Command::new("baresip")
            .args(["-f", &d.display().to_string(), "-e", &target, "-t", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("baresip runs (apt install baresip-core)");
        phones.push(child);
    }
    let mut logs = Vec::new();
    for p in phones {
        let o = tokio::time::timeout(Duration::from_secs(30), p.wait_with_output())
            .await
            .expect("baresip ends")
            .expect("baresip output");
        logs.push(String::from_utf8_lossy(&o.stdout).replace('\r', "\n"));
    }
    let (code, json, err) = finish_py(client, Duration::from_secs(40)).await;
    assert_eq!(code, 0, "client: {json}\n{err}");

    // The browser heard each leg's tone.
    let received = json["received"].as_object().expect("received");
    for leg in &LEGS {
        assert!(
            received
                .values()
                .any(|r| (r["dominant_hz"].as_f64().unwrap_or(0.0) - leg.hz).abs() < 15.0),
            "the browser hears the {} leg ({} Hz): {json}",
            leg.codec,
            leg.hz
        );
    }
    // Each leg: the codec it asked for; the browser, the other legs and the beeps; never itself.
    for ((leg, d), log) in LEGS.iter().zip(&dirs).zip(&logs) {
        assert!(
            log.contains(&format!("Set audio decoder: {}", leg.codec)),
            "{} negotiated: {log}",
            leg.codec
        );
        let dec = std::fs::read_dir(d.join("out"))
            .expect("out")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .unwrap_or_else(|| panic!("{}: no dump of what it heard: {log}", leg.codec));
        let x = samples(&dec);
        assert!(x.len() > 16_000 * 6, "{}: {} samples", leg.codec, x.len());
        // The middle of the call, past the start-up.
        let mid = &x[16_000 * 2..x.len() - 16_000];
        let own = power(mid, leg.hz);
        let browser = power(mid, CLIENT_HZ);
        assert!(
            browser > 1e-4,
            "{} hears the browser: power {browser:e}",
            leg.codec
        );
        assert!(
            own < browser / 100.0,
            "{} does not hear itself: own {own:e}, browser {browser:e}",
            leg.codec
        );
        for other in LEGS.iter().filter(|o| o.codec != leg.codec) {
            let p = power(mid, other.hz);
            assert!(
                p > browser / 30.0,
                "{} hears the {} leg: {p:e} vs browser {browser:e}",
                leg.codec,
                other.codec
            );
        }
        // Beeps: 100 ms windows where 1400 Hz carries a tenth of the energy (a beep is about
        // a fifth of the mix while it sounds; elsewhere 1400 Hz is absent).
        let shares: Vec<f64> = mid
            .chunks(1_600)
            .map(|w| {
                let total: f64 = w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
                power(w, BEEP_HZ) * 2.0 / total.max(1e-12)
            })
            .collect();
        let beeps = shares.iter().filter(|s| **s > 0.1).count();
        let top = shares.iter().cloned().fold(0.0, f64::max);
        assert!(
            beeps >= 1,
            "{} hears the consent beeps (best share {top:.3})",
            leg.codec
        );
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_dir_all(&root);
    srv.stop().await.expect("stop");
}

/// SDES-SRTP (RTP/SAVP with a=crypto): a baresip leg with `mediaenc=srtp-mand` and an aiortc
/// client hear each other, so both directions decrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdes_srtp_leg_is_bridged_both_ways() {
    let srv = common::server(|_| {}).await;
    let sip = srv.state.sip.clone().expect("SIP on");
    let (call, _) = srv
        .state
        .calls
        .create(NewCall {
            kind: "hybrid".into(),
            direction: "outbound".into(),
            from_number: None,
            to_number: None,
            record: false,
        })
        .await;
    let client = spawn_py(
        &[
            "tests/clients/ws_client.py",
            "--url",
            &srv.ws_url(),
            "--room",
            &call.room,
            "--name",
            "Agent",
            "--role",
            "agent",
            "--tone",
            &CLIENT_HZ.to_string(),
            "--duration",
            "12",
        ]
        .map(str::to_string),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leg = Leg {
        codec: "PCMU",
        account_codec: "PCMU/8000/1",
        hz: 440.0,
        mediaenc: Some("srtp-mand"),
    };
    let d = baresip_dir(&leg, 46_000 + (rand::random::<u16>() % 100) * 100);
    let target = format!("/dial sip:{}@{}", call.id, sip.local_addr());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("baresip")
            .args(["-f", &d.display().to_string(), "-e", &target, "-t", "8"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("baresip ends")
    .expect("baresip runs");
    let log = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(log.contains("Call established"), "{log}");
    let (code, json, err) = finish_py(client, Duration::from_secs(40)).await;
    assert_eq!(code, 0, "client: {json}\n{err}");
    let received = json["received"].as_object().expect("received");
    assert!(
        received
            .values()
            .any(|r| (r["dominant_hz"].as_f64().unwrap_or(0.0) - leg.hz).abs() < 15.0),
        "the browser hears the SRTP leg: {json}"
    );
    let dec = std::fs::read_dir(d.join("out"))
        .expect("out")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("no dump of what the leg heard: {log}"));
    let x = samples(&dec);
    let mid = &x[16_000 * 2..x.len().saturating_sub(16_000)];
    let browser = power(mid, CLIENT_HZ);
    assert!(
        browser > 1e-4,
        "the SRTP leg hears the browser: {browser:e}"
    );
    let st = sip.pstn_stats();
    assert_eq!(
        st.rtp_invalid.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every SRTP packet decrypted"
    );
    let _ = std::fs::remove_dir_all(&d);
    srv.stop().await.expect("stop");
}
