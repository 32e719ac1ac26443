//! PostgreSQL stops for 30 s in the middle of a recorded call. The call and the recording go
//! on, writes wait in the durable outbox, and once the database is back every row is there
//! exactly once.
//!
//! The test runs a PostgreSQL cluster of its own (initdb + pg_ctl of the installed server, on a
//! free port, loopback only) so stopping it disturbs no other test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, MediaHooks, curl, eventually, server, sha256sum};
use serde_json::{Value, json};

use common::{TEST_API_KEY as API_KEY, api_get, api_post as post};

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt install postgresql)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with pg_ctl")
}

impl Cluster {
    fn cmd(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        c.args(args).output().expect("run a PostgreSQL tool")
    }

    fn new() -> Cluster {
        let as_postgres =
            String::from_utf8_lossy(&Command::new("id").arg("-u").output().expect("id").stdout)
                .trim()
                == "0";
        let dir = std::env::temp_dir().join(format!("commhub-pg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        if as_postgres {
            // initdb refuses to run as root.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let c = Cluster {
            bin: pg_bin(),
            dir,
            port,
            as_postgres,
        };
        let out = c.cmd(
            "initdb",
            &[
                "-D",
                c.data().to_str().expect("p"),
                "-U",
                "commhub",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.start();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://commhub@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = self.cmd(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().expect("p"),
                "-l",
                log.to_str().expect("p"),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        let out = self.cmd(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().expect("p"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap_or(""),
                "-m",
                "immediate",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn metric(base: &str, name: &str) -> f64 {
    let (_, _, body) = curl(&[&format!("{base}/metrics")]);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn sidecar_consent(root: &Path, flac_key: &str) -> Vec<Value> {
    let p = root.join(flac_key).with_extension("json");
    let v: Value =
        serde_json::from_slice(&std::fs::read(&p).expect("sidecar")).expect("sidecar JSON");
    v["consent_events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_thirty_seconds_mid_call_loses_and_duplicates_nothing() {
    let pg = Cluster::new();
    let url = pg.url();
    let srv = server(move |c| {
        c.database.url = url;
        c.database.connect_timeout_secs = 2;
        c.database.retry_interval_ms = 500;
        c.auth.enabled = true;
        c.auth.api_keys = vec![API_KEY.into()];
        c.recording.enabled = true;
        c.recording.beep_interval_ms = 2000;
    })
    .await;
    let base = srv.http_url();
    let root = srv.state.cfg.recording.storage_root.clone();

    let (st, created) = post(
        &format!("{base}/functions/v1/call-create"),
        &json!({"identity": "agent-1", "role": "agent"}),
    );
    assert_eq!(st, 201, "{created}");
    let call_id = created["call_id"].as_str().expect("id").to_string();
    let room = created["room"].as_str().expect("room").to_string();
    let token = |who: &str, role: &str| {
        let (st, t) = post(
            &format!("{base}/api/v1/calls/{call_id}/tokens"),
            &json!({"identity": who, "role": role}),
        );
        assert_eq!(st, 201, "{t}");
        MediaHooks {
            token: t["token"].as_str().map(str::to_string),
            ..Default::default()
        }
    };
    let ws = srv.ws_url();
    let agent_hooks = MediaHooks {
        token: created["token"].as_str().map(str::to_string),
        ..Default::default()
    };
    let a = Client::join_with(&ws, &room, "Agent", 1, agent_hooks)
        .await
        .expect("agent");
    let b = Client::join_with(&ws, &room, "Customer", 2, token("cust-1", "customer"))
        .await
        .expect("customer");
    let c_hooks = token("supervisor-1", "supervisor");
    assert!(
        eventually(Duration::from_secs(10), || b.count_from(&a.id) > 20).await,
        "media flows"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            while srv.state.calls.call_of_room(&room).await.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .is_ok()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        srv.state.store.flush().await,
        0,
        "all written before the outage"
    );

    // PostgreSQL goes away for 30 s.
    pg.stop();
    let down = Instant::now();
    let heard_before = b.count_from(&a.id);
    // Someone joins and leaves while it is down.
    let c = Client::join_with(&ws, &room, "Supervisor", 3, c_hooks)
        .await
        .expect("a join works without the database");
    assert!(
        eventually(Duration::from_secs(10), || c.count_from(&a.id) > 20).await,
        "the late joiner hears the call"
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &base,
            "commhub_store_outbox_pending"
        ) > 0.0)
        .await,
        "writes wait in the outbox"
    );
    assert_eq!(metric(&base, "commhub_store_degraded"), 1.0);
    let (st, e) = api_get(&format!("{base}/api/v1/calls/{call_id}"));
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (503, Some("database_unavailable")),
        "{e}"
    );
    c.leave().await;
    let left = down.elapsed();
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(left)).await;
    let heard_during = b.count_from(&a.id) - heard_before;
    assert!(
        heard_during > 30 * 25,
        "the call went on during the outage: {heard_during} packets in 30 s"
    );
    assert!(
        srv.state.recorders.active(&room).is_some(),
        "still recording"
    );
    let pending = metric(&base, "commhub_store_outbox_pending");

    // Back.
    pg.start();
    assert!(
        eventually(Duration::from_secs(15), || metric(
            &base,
            "commhub_store_outbox_pending"
        ) == 0.0)
        .await,
        "the outbox ({pending} writes) empties once the database is back"
    );
    assert_eq!(metric(&base, "commhub_store_degraded"), 0.0);
    assert_eq!(metric(&base, "commhub_store_rejected_total"), 0.0);

    let (st, ended) = post(
        &format!("{base}/functions/v1/call-end"),
        &json!({"call_id": call_id}),
    );
    assert_eq!(st, 200, "{ended}");
    let (st, d) = api_get(&format!("{base}/api/v1/calls/{call_id}"));
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["call"]["status"], "ended");
    assert!(d["call"]["duration_sec"].as_i64().expect("duration") >= 30);
    let ps = d["participants"].as_array().expect("participants");
    assert_eq!(ps.len(), 3, "each participant exactly once: {ps:?}");
    let sup = ps
        .iter()
        .find(|p| p["identity"] == "supervisor-1")
        .expect("the participant who came and went during the outage");
    assert_eq!(sup["leave_reason"], "left");
    let recs = d["recordings"].as_array().expect("recordings");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r["status"], "ready");
    let flac_key = r["flac_key"].as_str().expect("key");
    assert_eq!(
        r["flac_sha256"].as_str(),
        Some(sha256sum(&root.join(flac_key)).as_str())
    );
    assert!(r["duration_sec"].as_f64().expect("d") >= 30.0);
    // Consent events: exactly the ones the recording rendered, once each.
    let from_file = sidecar_consent(&root, flac_key);
    let rows = d["consent_events"].as_array().expect("consent");
    assert!(
        from_file.len() >= 15,
        "beeps every 2 s for 30+ s: {}",
        from_file.len()
    );
    assert_eq!(rows.len(), from_file.len(), "one row per consent event");
    let mut offsets: Vec<i64> = rows
        .iter()
        .filter_map(|r| r["offset_ms"].as_i64())
        .collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), rows.len(), "no duplicates");

    a.leave().await;
    b.leave().await;
    srv.stop().await.expect("stop");
}

/// A call made, joined, recorded and ended while PostgreSQL is down, then the server stops:
/// every write is in the outbox file, and the next start (database back) writes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_during_an_outage_survive_a_restart() {
    let pg = Cluster::new();
    let root = std::env::temp_dir().join(format!("commhub-outbox-{}", rand::random::<u32>()));
    let tweak = {
        let (url, root) = (pg.url(), root.clone());
        move |c: &mut commhub::config::Config| {
            c.database.url = url;
            c.database.connect_timeout_secs = 2;
            c.database.retry_interval_ms = 500;
            c.database.outbox_path = root.join("outbox.jsonl");
            c.recording.storage_root = root;
            c.auth.enabled = true;
            c.auth.api_keys = vec![API_KEY.into()];
            c.auth.jwt_secret = "restart-test-secret".into();
            c.recording.enabled = true;
            c.recording.beep_interval_ms = 1000;
        }
    };
    let srv = server(tweak.clone()).await;
    let base = srv.http_url();
    pg.stop();

    let (st, created) = post(
        &format!("{base}/functions/v1/call-create"),
        &json!({"identity": "agent-1", "role": "agent", "to": "+14155550123"}),
    );
    assert_eq!(
        st, 201,
        "a call can be made while the database is down: {created}"
    );
    let call_id = created["call_id"].as_str().expect("id").to_string();
    let room = created["room"].as_str().expect("room").to_string();
    let (st, tok) = post(
        &format!("{base}/api/v1/calls/{call_id}/tokens"),
        &json!({"identity": "cust-1"}),
    );
    assert_eq!(st, 201, "tokens come from the live call: {tok}");
    let hooks = |t: &Value| MediaHooks {
        token: t["token"].as_str().map(str::to_string),
        ..Default::default()
    };
    let ws = srv.ws_url();
    let a = Client::join_with(&ws, &room, "Agent", 1, hooks(&created))
        .await
        .expect("agent");
    let b = Client::join_with(&ws, &room, "Customer", 2, hooks(&tok))
        .await
        .expect("customer");
    assert!(eventually(Duration::from_secs(10), || b.count_from(&a.id) > 100).await);
    let (st, ended) = post(
        &format!("{base}/functions/v1/call-end"),
        &json!({"call_id": call_id}),
    );
    assert_eq!(st, 200, "{ended}");
    assert_eq!(ended["queued"], true, "{ended}");
    a.leave().await;
    b.leave().await;
    srv.stop().await.expect("stop");
    let queued = std::fs::read_to_string(root.join("outbox.jsonl")).expect("outbox");
    let lines = queued.lines().count();
    assert!(
        lines >= 8,
        "call, participants, recording, consent, end: {lines} lines"
    );

    // The database is back; the next start writes the outbox.
    pg.start();
    let srv = server(tweak).await;
    assert_eq!(srv.state.store.flush().await, 0, "outbox written at start");
    let (st, d) = api_get(&format!("{}/api/v1/calls/{call_id}", srv.http_url()));
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["call"]["status"], "ended");
    assert_eq!(d["call"]["to_number"], "+14155550123");
    assert_eq!(d["participants"].as_array().map(Vec::len), Some(2), "{d}");
    let recs = d["recordings"].as_array().expect("recordings");
    assert_eq!(recs.len(), 1, "{d}");
    assert_eq!(recs[0]["status"], "ready");
    let key = recs[0]["flac_key"].as_str().expect("key");
    assert_eq!(
        d["consent_events"].as_array().map(Vec::len),
        Some(sidecar_consent(&root, key).len())
    );
    assert_eq!(
        std::fs::metadata(root.join("outbox.jsonl"))
            .expect("outbox")
            .len(),
        0,
        "the outbox is empty once written"
    );
    // This instance never saw the call, but its tokens (still unexpired) are refused: the
    // database says it ended.
    let mut ws = common::Ws::connect(&srv.ws_url()).await.expect("ws");
    ws.send(json!({"type": "join", "room": room, "display_name": "Late",
        "token": created["token"]}))
        .await
        .expect("send");
    let reply = loop {
        let v = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("reply")
            .expect("recv");
        if v["type"] == "error" || v["type"] == "joined" {
            break v;
        }
    };
    assert_eq!(reply["code"], "call_ended", "{reply}");
    drop(ws);
    srv.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&root);
}

/// SMS while PostgreSQL is down: sends are answered from the outbox and go out, an inbound
/// STOP is stored and acted on, receipts wait in the outbox too; once the database is back
/// every row is there once, in its final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_on_while_postgres_is_down_and_every_row_lands_once() {
    use common::sms::{Smsc, metric as sms_metric, sms_send, wait_for};
    let pg = Cluster::new();
    let smsc = Smsc::start().await;
    let root = std::env::temp_dir().join(format!("commhub-sms-outage-{}", rand::random::<u32>()));
    let srv = server({
        let (url, root, port) = (pg.url(), root.clone(), smsc.smpp_port);
        move |c: &mut commhub::config::Config| {
            c.database.url = url;
            c.database.connect_timeout_secs = 2;
            c.database.retry_interval_ms = 500;
            c.database.outbox_path = root.join("outbox.jsonl");
            c.recording.storage_root = root;
            c.auth.enabled = true;
            c.auth.api_keys = vec![API_KEY.into()];
            c.sms.mode = commhub::config::SmsMode::Smpp;
            c.sms.smpp.port = port;
            c.sms.smpp.system_id = "commhub".into();
            c.sms.smpp.password = "pw".into();
        }
    })
    .await;
    let base = srv.http_url();
    wait_for("bound", Duration::from_secs(10), || {
        sms_metric(&base, "commhub_sms_bind_state_tx") == 2.0
    })
    .await;
    pg.stop();
    let (us, them) = ("+15550001111", "+15550003333");
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let (st, m) = sms_send(
            &base,
            &json!({"from": us, "to": them, "body": format!("outage {i}")}),
        );
        assert_eq!((st, m["status"].as_str()), (201, Some("queued")), "{m}");
        // The first write finds the database gone (after database.connect_timeout_secs, 2 s
        // here); the rest go straight to the outbox behind it.
        let limit = Duration::from_secs(if i == 0 { 5 } else { 1 });
        assert!(
            t.elapsed() < limit,
            "send {i} answered in {:?}",
            t.elapsed()
        );
        ids.push(m["id"].as_str().expect("id").to_string());
    }
    // They reach the SMSC while the database is down.
    wait_for("sent during the outage", Duration::from_secs(10), || {
        smsc.messages()
            .iter()
            .filter(|m| m["text"].as_str().unwrap_or("").starts_with("outage "))
            .count()
            == 5
    })
    .await;
    // An inbound STOP: stored (outbox) before the SMSC's answer, and acted on.
    let r = smsc.mo(json!({"from": them, "to": us, "text": "STOP"}));
    assert_eq!(r["acked"], 1, "{r}");
    wait_for("the STOP confirmation", Duration::from_secs(10), || {
        smsc.messages()
            .iter()
            .any(|m| m["text"].as_str().unwrap_or("").contains("unsubscribed"))
    })
    .await;
    let (st, m) = sms_send(
        &base,
        &json!({"from": us, "to": them, "body": "after stop"}),
    );
    assert_eq!((st, m["status"].as_str()), (201, Some("blocked")), "{m}");
    assert!(sms_metric(&base, "commhub_store_outbox_pending") > 0.0);

    pg.start();
    wait_for("the outbox written", Duration::from_secs(30), || {
        sms_metric(&base, "commhub_store_outbox_pending") == 0.0
    })
    .await;
    for id in &ids {
        let (st, m) = api_get(&format!("{base}/api/v1/sms/messages/{id}"));
        assert_eq!((st, m["status"].as_str()), (200, Some("delivered")), "{m}");
    }
    let (_, all) = api_get(&format!("{base}/api/v1/sms/messages?limit=100"));
    // 5 sends, the STOP, its confirmation, the blocked send.
    assert_eq!(all["total"], 8, "{all}");
    let (_, conv) = api_get(&format!(
        "{base}/api/v1/sms/conversations?number={}",
        them.replace('+', "%2B")
    ));
    assert_eq!(conv["conversations"][0]["opted_out"], true, "{conv}");
    srv.stop().await.expect("stop");
}
