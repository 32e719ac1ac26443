//! TURN credentials from call-create: checked against an independent HMAC-SHA1 (openssl), and
//! accepted by a real coturn (`use-auth-secret`) through `turnutils_uclient`, which allocates a
//! relay and sends through it to `turnutils_peer`. Forged and expired credentials are refused.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::server;
use serde_json::json;

const SECRET: &str = "coturn-shared-secret-for-tests";
use common::{TEST_API_KEY as API_KEY, api_post};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl_hmac(secret: &str, data: &str) -> String {
    let mut c = Command::new("openssl")
        .args(["dgst", "-sha1", "-hmac", secret, "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    {
        use std::io::Write;
        c.stdin
            .take()
            .expect("stdin")
            .write_all(data.as_bytes())
            .expect("write");
    }
    let out = c.wait_with_output().expect("openssl output");
    let mut b64 = Command::new("base64")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("base64");
    {
        use std::io::Write;
        b64.stdin
            .take()
            .expect("stdin")
            .write_all(&out.stdout)
            .expect("write");
    }
    String::from_utf8_lossy(&b64.wait_with_output().expect("base64").stdout)
        .trim()
        .to_string()
}

/// Allocate a relay with the credentials and echo 5 messages through it.
fn uclient(turn_port: u16, peer_port: u16, user: &str, pass: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "turnutils_uclient"])
        .args(["-u", user, "-w", pass])
        .args(["-p", &turn_port.to_string(), "-r", &peer_port.to_string()])
        .args([
            "-n",
            "5",
            "-m",
            "1",
            "-l",
            "100",
            "-e",
            "127.0.0.1",
            "-X",
            "-g",
        ])
        .arg("127.0.0.1")
        .output()
        .expect("turnutils_uclient (apt install coturn)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_accepted_by_coturn() {
    let turn_port = free_udp_port();
    let peer_port = free_udp_port();
    let relay = 50000 + (rand::random::<u16>() % 100) * 100;
    let _turn = Kill(
        Command::new("turnserver")
            .args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--allow-loopback-peers",
            ])
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={turn_port}"))
            .arg(format!("--min-port={relay}"))
            .arg(format!("--max-port={}", relay + 99))
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
            ])
            .args(["--realm=commhub.test", "--log-file=stdout"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver (apt install coturn)"),
    );
    let _peer = Kill(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer"),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    let srv = server(move |c| {
        c.auth.enabled = true;
        c.auth.api_keys = vec![API_KEY.into()];
        c.turn.shared_secret = SECRET.into();
        c.turn.server_url = format!("turn:127.0.0.1:{turn_port}");
    })
    .await;
    let (st, created) = api_post(
        &format!("{}/functions/v1/call-create", srv.http_url()),
        &json!({"identity": "alice"}),
    );
    assert_eq!(st, 201, "{created}");
    let ice = &created["iceServers"][0];
    assert_eq!(ice["urls"], json!([format!("turn:127.0.0.1:{turn_port}")]));
    let user = ice["username"].as_str().expect("username").to_string();
    let pass = ice["credential"].as_str().expect("credential").to_string();
    // "{expiry}:{user}", about 600 s ahead.
    let (expiry, who) = user.split_once(':').expect("expiry:user");
    assert_eq!(who, "alice");
    let expiry: u64 = expiry.parse().expect("unix time");
    let now = commhub::auth::unix_now();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    assert_eq!(created["turn"]["ttl"], 600);
    // An independent HMAC-SHA1.
    assert_eq!(pass, openssl_hmac(SECRET, &user));

    // coturn accepts them: allocation, and 5 messages relayed to the peer and back.
    let (ok, out) = uclient(turn_port, peer_port, &user, &pass);
    assert!(ok, "coturn refused the issued credentials:\n{out}");
    assert!(
        out.contains("Total lost packets 0 (0.000000%)"),
        "relay works:\n{out}"
    );
    // Forged and expired credentials are refused by the same coturn.
    let (ok, out) = uclient(turn_port, peer_port, &user, "Zm9yZ2VkIGNyZWRlbnRpYWw=");
    assert!(
        !ok && out.contains("Cannot complete Allocation"),
        "a wrong password must fail:\n{out}"
    );
    let stale = format!("{}:alice", now - 60);
    let (ok, out) = uclient(turn_port, peer_port, &stale, &openssl_hmac(SECRET, &stale));
    assert!(!ok, "expired credentials must fail:\n{out}");

    // The same credentials reach WebSocket clients in `joined`.
    let token = created["token"].as_str().expect("token");
    let mut ws = common::Ws::connect(&srv.ws_url()).await.expect("ws");
    ws.send(
        json!({"type": "join", "room": created["room"], "display_name": "Alice",
        "token": token}),
    )
    .await
    .expect("send");
    let joined = ws.expect("joined").await.expect("joined");
    let s = &joined["ice_servers"][0];
    assert_eq!(s["urls"], ice["urls"]);
    assert!(s["username"].as_str().expect("u").ends_with(":alice"));
    drop(ws);
    srv.stop().await.expect("stop");
}
