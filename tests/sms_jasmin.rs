//! SMS end to end through Jasmin (docs/sms-design.md section 2): commhub binds to Jasmin's SMPP
//! server as a Jasmin user, Jasmin's client connector forwards to the simulated SMSC
//! (`tests/sms/smsc.js`, the upstream), and receipts and MOs come back the same way. Sends end
//! `delivered` with Jasmin's UUIDs as carrier ids; STOP/START/HELP and a reversed multipart MO
//! work through Jasmin; Jasmin's own throttling (`smpps_throughput`) delays but loses nothing.
//!
//! Needs the test Jasmin (`scripts/jasmin.sh start`, run by `scripts/setup-test-deps.sh`); its
//! ports come from `$JASMIN_DIR/env` (default `/tmp/commhub-jasmin/env`). Jasmin's default MT
//! and MO routes are global, so the tests of this binary take a file lock and run one at a time
//! even when nextest starts them in parallel.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sms::{Smsc, metric, sms_get, sms_list, sms_send, wait_for};
use common::{TEST_API_KEY, repo, server};
use serde_json::{Value, json};

const US: &str = "+15550001111";
const THEM: &str = "+15550002222";

/// Where the test Jasmin listens, from the env file `scripts/jasmin.sh start` writes.
struct JasminEnv {
    smpp_port: u16,
    jcli_port: u16,
    jcli_user: String,
    jcli_password: String,
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

fn jasmin_env() -> JasminEnv {
    let dir = std::env::var("JASMIN_DIR").unwrap_or_else(|_| "/tmp/commhub-jasmin".into());
    let file = PathBuf::from(&dir).join("env");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "Jasmin is not running: cannot read {} ({e}). Run scripts/setup-test-deps.sh \
             (or scripts/jasmin.sh start) before the Jasmin tests.",
            file.display()
        )
    });
    let vars: HashMap<&str, &str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let port = |k: &str, d: u16| vars.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let env = JasminEnv {
        smpp_port: port("JASMIN_SMPP_PORT", 12775),
        jcli_port: port("JASMIN_JCLI_PORT", 18990),
        jcli_user: vars
            .get("JASMIN_JCLI_USER")
            .unwrap_or(&"jcliadmin")
            .to_string(),
        jcli_password: vars
            .get("JASMIN_JCLI_PASSWORD")
            .unwrap_or(&"jclipwd")
            .to_string(),
    };
    for (what, p) in [("SMPP server", env.smpp_port), ("jcli", env.jcli_port)] {
        assert!(
            port_open(p),
            "Jasmin is not running: its {what} on 127.0.0.1:{p} (from {}) does not accept \
             connections. Run scripts/setup-test-deps.sh (or scripts/jasmin.sh start); \
             scripts/jasmin.sh status shows what runs.",
            file.display()
        );
    }
    env
}

/// One test's piece of Jasmin: an upstream connector to the test's simulator, a user for
/// commhub, the default MT and MO routes pointing at them. Removed again on drop (also when
/// the test fails); the lock that serialises the Jasmin tests is held until then.
struct JasminSetup {
    env: JasminEnv,
    connector: String,
    user: String,
    password: String,
    torn_down: bool,
    _lock: std::fs::File,
}

impl JasminSetup {
    fn jcli(&self, args: &[&str]) -> Result<String, String> {
        jcli(&self.env, args)
    }

    async fn new(smsc: &Smsc) -> JasminSetup {
        let env = jasmin_env();
        // One Jasmin test at a time on this machine (the default routes are Jasmin-wide).
        let lock_path = std::env::temp_dir().join("commhub-jasmin-tests.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .expect("lock file");
        let t0 = Instant::now();
        let lock = tokio::task::spawn_blocking(move || {
            lock.lock().expect("lock");
            lock
        })
        .await
        .unwrap();
        eprintln!("jasmin lock taken after {:?}", t0.elapsed());
        let tag = rand::random::<u32>();
        let s = JasminSetup {
            env,
            connector: format!("up{tag:08x}"),
            user: format!("ch{tag:08x}"),
            password: format!("p{:07x}", rand::random::<u32>() & 0x0fff_ffff),
            torn_down: false,
            _lock: lock,
        };
        let port = smsc.smpp_port.to_string();
        let t0 = Instant::now();
        let out = s
            .jcli(&[
                "setup",
                "--connector",
                &s.connector,
                "--upstream-port",
                &port,
                "--user",
                &s.user,
                "--password",
                &s.password,
            ])
            .unwrap_or_else(|e| panic!("jcli setup failed: {e}"));
        eprintln!("{} ({:?})", out.trim(), t0.elapsed());
        s
    }

    fn smpp(&self, cfg: &mut commhub::config::Config) {
        cfg.auth.enabled = true;
        cfg.auth.api_keys = vec![TEST_API_KEY.into()];
        cfg.sms.mode = commhub::config::SmsMode::Smpp;
        cfg.sms.brand = "Acme".into();
        cfg.sms.contact = "acme.example".into();
        cfg.sms.smpp.host = "127.0.0.1".into();
        cfg.sms.smpp.port = self.env.smpp_port;
        cfg.sms.smpp.system_id = self.user.clone();
        cfg.sms.smpp.password = self.password.clone();
        cfg.sms.smpp.reconnect_min_ms = 200;
        cfg.sms.smpp.reconnect_max_ms = 1000;
    }

    fn teardown(&mut self) {
        self.torn_down = true;
        let out = self
            .jcli(&[
                "teardown",
                "--connector",
                &self.connector,
                "--user",
                &self.user,
            ])
            .unwrap_or_else(|e| panic!("jcli teardown failed: {e}"));
        eprintln!("{}", out.trim());
    }
}

impl Drop for JasminSetup {
    fn drop(&mut self) {
        if !self.torn_down {
            let r = self.jcli(&[
                "teardown",
                "--connector",
                &self.connector,
                "--user",
                &self.user,
            ]);
            eprintln!("jcli teardown (on drop): {r:?}");
        }
    }
}

fn jcli(env: &JasminEnv, args: &[&str]) -> Result<String, String> {
    let out = Command::new("python3")
        .arg(repo().join("tests/sms/jcli.py"))
        .args(["--port", &env.jcli_port.to_string()])
        .args(["--login", &env.jcli_user])
        .args(["--jcli-password", &env.jcli_password])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run python3 tests/sms/jcli.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "jcli.py {} exited {}: {}{}",
            args.first().unwrap_or(&""),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn status_of(base: &str, id: &str) -> String {
    sms_get(base, id)["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn wait_bound(base: &str) {
    wait_for(
        "commhub bound to Jasmin (commhub_sms_bind_state_tx 2)",
        Duration::from_secs(15),
        || metric(base, "commhub_sms_bind_state_tx") == 2.0,
    )
    .await;
}

fn is_jasmin_uuid(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::parse_str(id).is_ok()
}

fn texts(smsc: &Smsc) -> Vec<String> {
    smsc.messages()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_jasmin_end_delivered_with_jasmin_ids_and_udh_parts() {
    let smsc = Smsc::start().await;
    let mut jasmin = JasminSetup::new(&smsc).await;
    let srv = server(|c| jasmin.smpp(c)).await;
    let base = srv.http_url();
    wait_bound(&base).await;

    let t0 = Instant::now();
    let (s, m) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "Hello through Jasmin"}),
    );
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        (m["segments"].as_i64(), m["encoding"].as_str()),
        (Some(1), Some("gsm7"))
    );
    let single = m["id"].as_str().unwrap().to_string();
    // 400 GSM characters: 3 parts of 153.
    let long: String = "abcdefghij".repeat(40);
    let (s, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": long}));
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["segments"], 3, "{m}");
    let long_id = m["id"].as_str().unwrap().to_string();
    // 100 UCS-2 characters: 2 parts of 67.
    let emoji: String = "é😀".repeat(35);
    let (s, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": emoji}));
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        (m["segments"].as_i64(), m["encoding"].as_str()),
        (Some(2), Some("ucs2")),
        "{m}"
    );
    let ucs_id = m["id"].as_str().unwrap().to_string();

    for (id, parts) in [(&single, 1), (&long_id, 3), (&ucs_id, 2)] {
        wait_for("delivered through Jasmin", Duration::from_secs(15), || {
            status_of(&base, id) == "delivered"
        })
        .await;
        let got = sms_get(&base, id);
        let ps = got["parts"].as_array().unwrap();
        assert_eq!(ps.len(), parts, "{got}");
        let ids: HashSet<String> = ps
            .iter()
            .map(|p| p["carrier_message_id"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(ids.len(), parts, "each part has its own id: {got}");
        assert!(
            ids.iter().all(|i| is_jasmin_uuid(i)),
            "Jasmin's UUIDs: {got}"
        );
        assert!(
            got["carrier_message_id"]
                .as_str()
                .is_some_and(is_jasmin_uuid),
            "{got}"
        );
    }
    eprintln!("all three delivered after {:?}", t0.elapsed());

    // What the upstream got from Jasmin's connector: 6 submits, UDH and data_coding intact.
    let msgs = smsc.messages();
    assert_eq!(msgs.len(), 6, "1 + 3 + 2 parts: {msgs:?}");
    assert!(
        msgs.iter().all(|m| m["has_message_payload"] == false),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .all(|m| m["destination"] == THEM.trim_start_matches('+')),
        "{msgs:?}"
    );
    let single_part: Vec<&Value> = msgs.iter().filter(|m| m["udh"].is_null()).collect();
    assert_eq!(single_part.len(), 1, "{msgs:?}");
    assert_eq!(single_part[0]["text"], "Hello through Jasmin");
    assert_eq!(single_part[0]["data_coding"], 0);
    let mut gsm: Vec<&Value> = msgs
        .iter()
        .filter(|m| !m["udh"].is_null() && m["data_coding"] == 0)
        .collect();
    let mut ucs: Vec<&Value> = msgs.iter().filter(|m| m["data_coding"] == 8).collect();
    assert_eq!((gsm.len(), ucs.len()), (3, 2), "{msgs:?}");
    for (parts, total) in [(&mut gsm, 3usize), (&mut ucs, 2)] {
        parts.sort_by_key(|m| m["udh"].as_str().unwrap_or("").to_string());
        let refs: HashSet<&str> = parts
            .iter()
            .map(|m| &m["udh"].as_str().unwrap()[6..8])
            .collect();
        assert_eq!(refs.len(), 1, "one reference per message: {parts:?}");
        for (i, m) in parts.iter().enumerate() {
            let udh = m["udh"].as_str().unwrap();
            assert_eq!(udh.len(), 12, "{m}");
            assert!(udh.starts_with("050003"), "{m}");
            assert_eq!(&udh[8..], format!("{total:02x}{:02x}", i + 1), "{m}");
            assert!(m["esm_class"].as_u64().unwrap() & 0x40 != 0, "{m}");
        }
    }
    let joined: String = gsm.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(joined, long);
    let joined: String = ucs.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(joined, emoji);

    srv.stop().await.unwrap();
    jasmin.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_through_jasmin_opts_out_answers_keywords_and_joins_parts() {
    let smsc = Smsc::start().await;
    let mut jasmin = JasminSetup::new(&smsc).await;
    let srv = server(|c| jasmin.smpp(c)).await;
    let base = srv.http_url();
    wait_bound(&base).await;

    // " stop " at the upstream reaches commhub through Jasmin; the number is opted out and one
    // confirmation goes back out through Jasmin to the upstream.
    let t0 = Instant::now();
    let r = smsc.mo(json!({"from": THEM, "to": US, "text": " stop "}));
    assert_eq!(r["acked"], 1, "Jasmin took the MO: {r}");
    let conv_url = format!(
        "{base}/api/v1/sms/conversations?number={}",
        THEM.replace('+', "%2B")
    );
    wait_for(
        "the opt-out through Jasmin",
        Duration::from_secs(10),
        || common::api_get(&conv_url).1["conversations"][0]["opted_out"] == true,
    )
    .await;
    wait_for(
        "the STOP confirmation at the upstream",
        Duration::from_secs(10),
        || texts(&smsc).iter().any(|t| t.contains("unsubscribed")),
    )
    .await;
    eprintln!("STOP handled and confirmed after {:?}", t0.elapsed());
    // A second STOP: no second confirmation.
    let r = smsc.mo(json!({"from": THEM, "to": US, "text": "STOP"}));
    assert_eq!(r["acked"], 1, "{r}");
    let submits = smsc.stats()["submits"].as_i64().unwrap();
    let (s, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "promo"}));
    assert_eq!((s, m["status"].as_str()), (201, Some("blocked")), "{m}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        smsc.stats()["submits"].as_i64().unwrap(),
        submits,
        "nothing more reached the upstream: {:?}",
        texts(&smsc)
    );
    let confirmations = texts(&smsc)
        .iter()
        .filter(|t| t.contains("unsubscribed"))
        .count();
    assert_eq!(
        confirmations,
        1,
        "exactly one confirmation: {:?}",
        texts(&smsc)
    );
    assert_eq!(metric(&base, "commhub_sms_blocked_total"), 1.0);

    // START and HELP, answered through Jasmin.
    smsc.mo(json!({"from": THEM, "to": US, "text": "Start"}));
    smsc.mo(json!({"from": THEM, "to": US, "text": "help"}));
    wait_for(
        "START and HELP replies at the upstream",
        Duration::from_secs(10),
        || {
            let t = texts(&smsc);
            t.iter().any(|x| x.contains("subscribed again"))
                && t.iter().any(|x| {
                    x.contains("Reply STOP to opt out")
                        && x.contains("Msg & data rates may apply")
                        && x.contains("acme.example")
                })
        },
    )
    .await;
    assert_eq!(
        common::api_get(&conv_url).1["conversations"][0]["opted_out"],
        false
    );
    let (s, m) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "welcome back"}),
    );
    assert_eq!((s, m["status"].as_str()), (201, Some("queued")), "{m}");
    let back = m["id"].as_str().unwrap().to_string();
    wait_for(
        "the send after START delivered",
        Duration::from_secs(15),
        || status_of(&base, &back) == "delivered",
    )
    .await;

    // A 3-part UCS-2 reply sent in reverse order: Jasmin forwards the parts one by one, as
    // they came; commhub stores one message.
    let text = "Grüße 😀 ".repeat(20);
    let r = smsc.mo(
        json!({"from": THEM, "to": US, "text": text, "ucs2": true, "parts": 3,
        "reverse": true}),
    );
    assert_eq!(r["acked"], 3, "{r}");
    wait_for("the joined reply", Duration::from_secs(10), || {
        sms_list(&base, "direction=inbound&limit=50")["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["body"] == text.as_str())
    })
    .await;
    let l = sms_list(&base, "direction=inbound&limit=50");
    let joined = l["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"] == text.as_str())
        .count();
    assert_eq!(joined, 1, "stored once: {l}");
    // The inbound rows: " stop ", STOP, Start, help and the joined reply.
    assert_eq!(l["total"], 5, "{l}");

    srv.stop().await.unwrap();
    jasmin.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jasmin_throttling_delays_sends_but_loses_none() {
    let smsc = Smsc::start().await;
    let mut jasmin = JasminSetup::new(&smsc).await;
    let out = jasmin
        .jcli(&["quota", "--user", &jasmin.user, "--throughput", "5"])
        .unwrap_or_else(|e| panic!("jcli quota failed: {e}"));
    eprintln!("{}", out.trim());
    let srv = server(|c| jasmin.smpp(c)).await;
    let base = srv.http_url();
    wait_bound(&base).await;

    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..30 {
        let (s, m) = sms_send(
            &base,
            &json!({"from": US, "to": THEM, "body": format!("throttled {i}")}),
        );
        assert_eq!(s, 201, "{m}");
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    wait_for("all 30 delivered", Duration::from_secs(120), || {
        ids.iter().all(|id| status_of(&base, id) == "delivered")
    })
    .await;
    eprintln!("30 delivered after {:?}", t0.elapsed());
    let throttled = metric(&base, "commhub_sms_throttled_total");
    assert!(
        throttled > 0.0,
        "Jasmin throttled some submits: {throttled}"
    );
    let statuses: Vec<String> = ids.iter().map(|id| status_of(&base, id)).collect();
    assert!(statuses.iter().all(|s| s != "failed"), "{statuses:?}");
    // Every text reached the upstream exactly once.
    let t = texts(&smsc);
    for i in 0..30 {
        let n = t.iter().filter(|x| **x == format!("throttled {i}")).count();
        assert_eq!(n, 1, "throttled {i} reached the upstream once: {t:?}");
    }
    eprintln!("commhub_sms_throttled_total {throttled}");

    srv.stop().await.unwrap();
    jasmin.teardown();
}
