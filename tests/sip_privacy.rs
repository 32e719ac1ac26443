//! Phone numbers stay out of the logs: the `commhub` binary runs at debug level (`RUST_LOG`,
//! which also asks for rsipstack's raw messages), takes an inbound sipp call from a known
//! number to a number that makes a new call, dials out to another through a sipp trunk, and
//! its whole log (stdout and stderr) is then searched for the digits of every number used.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::sipp::{free_udp_port, scenario, sipp, sipp_dir, tmpdir, trunk_args};

const CALLER: &str = "5550001111"; // the From of tests/sip/*.xml
const INBOUND: &str = "5557770009";
const OUTBOUND: &str = "5557654399";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_numbers_never_reach_the_log() {
    let root = tmpdir("sip-privacy");
    let (http, sip_port, trunk_port) = (free_tcp_port(), free_udp_port(), free_udp_port());
    let log = root.join("server.log");
    let media = 20000 + (rand::random::<u16>() % 390) * 100;
    let rtp = 40000 + (rand::random::<u16>() % 200) * 100;
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_commhub"))
        .args([
            "--config",
            "/dev/null",
            "--listen",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--media-ports", &format!("{media}-{}", media + 99)])
        .env("RUST_LOG", "debug,rsipstack=trace")
        .env("COMMHUB_RECORDING__ENABLED", "false")
        .env("COMMHUB_AUTH__ENABLED", "false")
        .env("COMMHUB_DATABASE__SQLITE_PATH", root.join("commhub.db"))
        .env("COMMHUB_DATABASE__OUTBOX_PATH", root.join("outbox.jsonl"))
        .env("COMMHUB_SIP__LISTEN", format!("127.0.0.1:{sip_port}"))
        .env("COMMHUB_SIP__RTP_PORT_MIN", rtp.to_string())
        .env("COMMHUB_SIP__RTP_PORT_MAX", (rtp + 99).to_string())
        .env("COMMHUB_SIP__INBOUND_NUMBERS", format!("[\"+1{INBOUND}\"]"))
        .env("COMMHUB_SIP__RING_TIMEOUT_SECS", "3")
        .env("SIP_TRUNK_URI", format!("sip:127.0.0.1:{trunk_port}"))
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("log"),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn commhub");
    let base = format!("http://127.0.0.1:{http}");
    let up = common::eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    })
    .await;
    assert!(up, "server up");

    // In: a new inbound call that rings until nobody answers (480).
    let dir = sipp_dir();
    let template = std::fs::read_to_string(scenario("uac_refused.xml")).expect("scenario");
    let file = dir.join("refused_480.xml");
    std::fs::write(&file, template.replace("EXPECT", "480")).expect("write");
    let args: Vec<String> = [
        format!("127.0.0.1:{sip_port}"),
        "-sf".into(),
        file.display().to_string(),
        "-s".into(),
        format!("+1{INBOUND}"),
        "-i".into(),
        "127.0.0.1".into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        free_udp_port().to_string(),
        "-m".into(),
        "1".into(),
        "-key".into(),
        "pt".into(),
        "0".into(),
        "-key".into(),
        "se".into(),
        "1800".into(),
    ]
    .to_vec();
    let (code, out) = sipp(&dir, &args).await;
    assert_eq!(code, 0, "inbound call rang out: {out}");

    // Out: through the trunk, answered, ended.
    let trunk = tokio::spawn({
        let (d, a) = (dir.clone(), trunk_args(trunk_port, &["-sn", "uas"]));
        async move { sipp(&d, &a).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = common::api_post(
        &format!("{base}/functions/v1/call-create"),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": format!("+1{OUTBOUND}"),
                            "from": format!("+1{CALLER}")}),
    );
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = common::api_post(
        &format!("{base}/functions/v1/call-end"),
        &serde_json::json!({"call_id": body["call"]["id"]}),
    );
    assert_eq!(status, 200);
    let (code, out) = trunk.await.expect("trunk");
    assert_eq!(code, 0, "outbound call: {out}");

    let _ = server.start_kill();
    let _ = server.wait().await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("SIP: dialing"),
        "the log has the calls: {text}"
    );
    for n in [CALLER, INBOUND, OUTBOUND] {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(n)).take(3).collect();
        assert!(hits.is_empty(), "{n} is in the log:\n{}", hits.join("\n"));
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&dir);
}
