//! `POST /functions/v1/recording-upload`, the PBX's webhook, exactly as the platform document's
//! "Test Recording Upload" curl sends it, with real audio made by ffmpeg and sox, checked by
//! flac and ffprobe; and every way it can be wrong, each with its own error and nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Backend, curl_json, server, sha256sum, test_config, use_backend};
use serde_json::{Value, json};

const PBX_TOKEN: &str = "test-pbx-token-123";
use common::{TEST_API_KEY as API_KEY, api_get, api_post};

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A 6-second 440 Hz tone as `codec`.
fn audio(dir: &Path, codec: &str) -> PathBuf {
    let path = dir.join(format!("pbx.{codec}"));
    let p = path.to_str().expect("path");
    match codec {
        // What a PBX typically sends as MP3: stereo 48 kHz with a Xing header.
        "mp3" => run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=6:sample_rate=48000",
                "-ac",
                "2",
                "-c:a",
                "libmp3lame",
                "-b:a",
                "64k",
                p,
            ],
        ),
        "flac" => run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=6:sample_rate=48000",
                "-ac",
                "2",
                p,
            ],
        ),
        // FreeSWITCH's narrowband WAV: 8 kHz mono.
        _ => run(
            "sox",
            &[
                "-n", "-r", "8000", "-c", "1", "-b", "16", p, "synth", "6", "sine", "440",
            ],
        ),
    };
    path
}

fn duration(path: &Path) -> f64 {
    run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            path.to_str().expect("path"),
        ],
    )
    .trim()
    .parse()
    .expect("a duration")
}

/// The upload body as the document shows it, written to a file for `curl -d @file`.
fn body_file(dir: &Path, fields: &Value) -> PathBuf {
    let p = dir.join(format!("body-{}.json", rand::random::<u32>()));
    std::fs::write(&p, fields.to_string()).expect("write body");
    p
}

fn upload(base: &str, token: &str, body: &Path) -> (u16, Value) {
    // The document's command: curl -X POST .../functions/v1/recording-upload
    //   -H "Authorization: Bearer YOUR_PBX_AUTH_TOKEN" -H "Content-Type: application/json" -d '...'
    curl_json(&[
        "-X",
        "POST",
        &format!("{base}/functions/v1/recording-upload"),
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!("@{}", body.display()),
    ])
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

async fn upload_suite(backend: Backend) {
    let mut cfg = test_config();
    use_backend(&mut cfg, backend).await;
    let root = cfg.recording.storage_root.clone();
    let srv = server(move |c| {
        *c = cfg;
        c.auth.enabled = true;
        c.auth.api_keys = vec![API_KEY.into()];
        c.auth.pbx_token = PBX_TOKEN.into();
        c.api.max_upload_bytes = 2 * 1024 * 1024;
    })
    .await;
    let base = srv.http_url();
    let dir = root.join("inputs");
    std::fs::create_dir_all(&dir).expect("dir");
    // The PBX's call exists.
    let (st, created) = api_post(
        &format!("{base}/functions/v1/call-create"),
        &json!({"kind": "pstn", "direction": "inbound", "from": "+14155550199",
            "to": "+14155550100"}),
    );
    assert_eq!(st, 201, "{created}");
    let call_id = created["call_id"].as_str().expect("call").to_string();

    let mp3 = audio(&dir, "mp3");
    let b64 = run("base64", &["-w0", mp3.to_str().expect("p")]);
    let sum = sha256sum(&mp3);
    let good = json!({
        "call_id": call_id, "codec": "mp3", "duration_sec": 6, "channels": 2,
        "sample_rate": 48000, "file_data": b64, "checksum": sum,
    });

    // Every way to get it wrong: its own error, and nothing written.
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let stored = root.join("call-recordings");
    let big = "A".repeat(3 * 1024 * 1024);
    for (what, token, body, status, code) in [
        ("wrong token", "nope", good.clone(), 401, "unauthorized"),
        ("no token", "", good.clone(), 401, "unauthorized"),
        (
            "bad base64",
            PBX_TOKEN,
            with("file_data", json!("@@not base64@@")),
            400,
            "bad_base64",
        ),
        (
            "checksum mismatch",
            PBX_TOKEN,
            with("checksum", json!("0".repeat(64))),
            400,
            "checksum_mismatch",
        ),
        (
            "unknown call",
            PBX_TOKEN,
            with("call_id", json!(uuid::Uuid::new_v4())),
            404,
            "unknown_call",
        ),
        (
            "not a uuid",
            PBX_TOKEN,
            with("call_id", json!("uuid-here")),
            400,
            "invalid_call_id",
        ),
        (
            "oversized",
            PBX_TOKEN,
            with("file_data", json!(big)),
            413,
            "too_large",
        ),
        (
            "wrong channels",
            PBX_TOKEN,
            with("channels", json!(1)),
            422,
            "metadata_mismatch",
        ),
        (
            "wrong duration",
            PBX_TOKEN,
            with("duration_sec", json!(45)),
            422,
            "metadata_mismatch",
        ),
        (
            "not the codec",
            PBX_TOKEN,
            with("codec", json!("flac")),
            422,
            "bad_audio",
        ),
        (
            "missing field",
            PBX_TOKEN,
            json!({"call_id": call_id}),
            400,
            "bad_request",
        ),
    ] {
        let (st, e) = upload(&base, token, &body_file(&dir, &body));
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {e}"
        );
        assert!(files_under(&stored).is_empty(), "{what}: nothing stored");
        assert!(
            files_under(&root.join("tmp")).is_empty(),
            "{what}: no leftovers"
        );
    }
    let count = |srv: &commhub::server::ServerHandle| {
        let store = srv.state.store.store.clone();
        async move {
            store
                .counts()
                .await
                .expect("counts")
                .into_iter()
                .find(|(t, _)| t == "call_recordings")
                .map(|(_, n)| n)
                .unwrap_or(-1)
        }
    };
    assert_eq!(count(&srv).await, 0, "no row from a failed upload");

    // The document's upload with a real MP3.
    let (st, r) = upload(&base, PBX_TOKEN, &body_file(&dir, &good));
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["duplicate"], false);
    let flac = root.join(r["flac_key"].as_str().expect("flac_key"));
    let mp3_kept = root.join(r["mp3_key"].as_str().expect("mp3_key"));
    assert!(
        r["flac_key"]
            .as_str()
            .expect("k")
            .starts_with("call-recordings/")
    );
    assert_eq!(
        sha256sum(&mp3_kept),
        sum,
        "the uploaded MP3 is kept as it came"
    );
    run("flac", &["-t", "-s", flac.to_str().expect("p")]);
    assert!(
        (duration(&flac) - duration(&mp3)).abs() < 0.1,
        "the made FLAC lasts as long"
    );
    assert_eq!(r["flac_sha256"].as_str(), Some(sha256sum(&flac).as_str()));
    assert_eq!(count(&srv).await, 1);
    // The same file again: the existing recording, nothing new.
    let (st, again) = upload(&base, PBX_TOKEN, &body_file(&dir, &good));
    assert_eq!(
        (st, again["duplicate"].as_bool()),
        (200, Some(true)),
        "{again}"
    );
    assert_eq!(again["recording_id"], r["recording_id"]);
    assert_eq!(count(&srv).await, 1);

    // FLAC in: the MP3 preview is made. WAV (8 kHz mono) in: both are made.
    for (codec, channels, rate) in [("flac", 2, 48000), ("wav", 1, 8000)] {
        let f = audio(&dir, codec);
        let body = json!({
            "call_id": call_id, "codec": codec, "duration_sec": 6.0, "channels": channels,
            "sample_rate": rate, "file_data": run("base64", &["-w0", f.to_str().expect("p")]),
            "checksum": format!("sha256:{}", sha256sum(&f)),
        });
        let (st, r) = upload(&base, PBX_TOKEN, &body_file(&dir, &body));
        assert_eq!(st, 201, "{codec}: {r}");
        let flac = root.join(r["flac_key"].as_str().expect("k"));
        let mp3 = root.join(r["mp3_key"].as_str().expect("k"));
        run("flac", &["-t", "-s", flac.to_str().expect("p")]);
        for out in [&flac, &mp3] {
            let d = duration(out);
            assert!(
                (d - 6.0).abs() < 0.15,
                "{codec}: {} lasts {d}",
                out.display()
            );
        }
        assert_eq!(r["channels"], channels);
        assert_eq!(r["sample_rate"], rate);
    }
    let (st, detail) = api_get(&format!("{base}/api/v1/calls/{call_id}"));
    assert_eq!(st, 200);
    let recs = detail["recordings"].as_array().expect("recordings");
    assert_eq!(recs.len(), 3, "{detail}");
    assert!(
        recs.iter()
            .all(|r| r["source"] == "pbx-upload" && r["status"] == "ready")
    );
    let codecs: Vec<&str> = recs.iter().filter_map(|r| r["codec"].as_str()).collect();
    for c in ["mp3", "flac", "wav"] {
        assert!(codecs.contains(&c), "{codecs:?}");
    }
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_recording_upload_on_sqlite() {
    upload_suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_recording_upload_on_postgres() {
    upload_suite(Backend::Postgres).await;
}
