//! SMS test peers: the simulated SMSC (`tests/sms/smsc.js`, npm `smpp`), the HTTP carrier
//! simulator (`tests/clients/sms_carrier.py`), and helpers for the SMS API.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{TEST_API_KEY, curl_json, repo};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Wait for a child to print `ready` (its stderr is kept for failures).
async fn wait_ready(child: &mut Child, what: &str) {
    let out = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(out).lines();
    let ok = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.trim() == "ready" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(ok, "{what} did not print `ready`");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// The simulated SMSC.
pub struct Smsc {
    pub smpp_port: u16,
    pub control: String,
    child: Child,
}

impl Smsc {
    pub async fn start() -> Smsc {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(smpp_port: u16) -> Smsc {
        let control_port = free_port();
        let mut child = Command::new("node")
            .arg(repo().join("tests/sms/smsc.js"))
            .arg(smpp_port.to_string())
            .arg(control_port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs tests/sms/smsc.js (scripts/setup-test-deps.sh installs it)");
        wait_ready(&mut child, "smsc.js").await;
        Smsc {
            smpp_port,
            control: format!("http://127.0.0.1:{control_port}"),
            child,
        }
    }

    pub fn mode(&self, m: Value) {
        let (s, _) = curl_json(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &m.to_string(),
            &format!("{}/mode", self.control),
        ]);
        assert_eq!(s, 200, "smsc mode");
    }

    pub fn stats(&self) -> Value {
        curl_json(&[&format!("{}/stats", self.control)]).1
    }

    /// Send an MO; answers the simulator's `{"acked": n}`.
    pub fn mo(&self, m: Value) -> Value {
        curl_json(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &m.to_string(),
            &format!("{}/mo", self.control),
        ])
        .1
    }

    /// SIGKILL (an SMSC that crashes).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    /// The texts the SMSC received (decoded from the hex of each submit_sm, joined per
    /// multipart message is up to the test).
    pub fn messages(&self) -> Vec<Value> {
        self.stats()["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// The HTTP carrier simulator in one style.
pub struct Carrier {
    pub port: u16,
    pub url: String,
    /// Telnyx style: the public key (base64) commhub checks webhooks with.
    pub telnyx_public_key: String,
    _child: Child,
}

impl Carrier {
    /// Start on `port` (pick it with [`free_port`] before the server starts, so the server's
    /// config can point at it); `webhook_base` is the server's URL.
    pub async fn start(
        port: u16,
        style: &str,
        webhook_base: &str,
        token: &str,
        twilio_token: &str,
    ) -> Carrier {
        Self::start_with(port, style, webhook_base, token, twilio_token, &[]).await
    }

    /// As [`Carrier::start`], with extra arguments (e.g. `--tls-port`).
    pub async fn start_with(
        port: u16,
        style: &str,
        webhook_base: &str,
        token: &str,
        twilio_token: &str,
        extra: &[String],
    ) -> Carrier {
        let dir = std::env::temp_dir().join(format!("commhub-carrier-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key_file = dir.join("telnyx.pub");
        let mut cmd = Command::new(super::python());
        cmd.arg(repo().join("tests/clients/sms_carrier.py"))
            .args(["--port", &port.to_string(), "--style", style])
            .args(["--webhook-base", webhook_base, "--token", token]);
        match style {
            "twilio" => {
                cmd.args(["--twilio-token", twilio_token]);
            }
            "telnyx" => {
                cmd.args(["--telnyx-key-out", key_file.to_str().expect("path")]);
            }
            _ => {}
        }
        cmd.args(extra);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs tests/clients/sms_carrier.py");
        wait_ready(&mut child, "sms_carrier.py").await;
        let telnyx_public_key = std::fs::read_to_string(&key_file)
            .unwrap_or_default()
            .trim()
            .to_string();
        Carrier {
            port,
            url: format!("http://127.0.0.1:{port}"),
            telnyx_public_key,
            _child: child,
        }
    }

    pub fn control(&self, path: &str, body: Value) -> (u16, Value) {
        curl_json(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &format!("{}/_control/{path}", self.url),
        ])
    }

    pub fn sent(&self) -> Vec<Value> {
        let v = curl_json(&[&format!("{}/_control/sent", self.url)]).1;
        match v {
            Value::Array(a) => a,
            other => other["sent"].as_array().cloned().unwrap_or_default(),
        }
    }
}

/// POST /functions/v1/sms-send.
pub fn sms_send(base: &str, body: &Value) -> (u16, Value) {
    curl_json(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {TEST_API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
        &format!("{base}/functions/v1/sms-send"),
    ])
}

/// GET /api/v1/sms/messages/{id}.
pub fn sms_get(base: &str, id: &str) -> Value {
    curl_json(&[
        "-H",
        &format!("Authorization: Bearer {TEST_API_KEY}"),
        &format!("{base}/api/v1/sms/messages/{id}"),
    ])
    .1
}

/// GET /api/v1/sms/messages?query.
pub fn sms_list(base: &str, query: &str) -> Value {
    curl_json(&[
        "-H",
        &format!("Authorization: Bearer {TEST_API_KEY}"),
        &format!("{base}/api/v1/sms/messages?{query}"),
    ])
    .1
}

/// One metric's value from /metrics.
pub fn metric(base: &str, name: &str) -> f64 {
    let (_, _, body) = super::curl(&[&format!("{base}/metrics")]);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(f64::NAN)
}

/// Wait until `f` holds (blocking curl inside is fine on a multi-threaded runtime).
pub async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    assert!(
        super::eventually(within, &mut f).await,
        "timed out waiting for {what}"
    );
}
