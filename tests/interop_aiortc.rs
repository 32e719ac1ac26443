//! Clients this project did not write: aiortc (Python) through `/ws`, and aiortc as a WHIP
//! publisher and WHEP subscriber. Each carries a tone end to end; the received audio's dominant
//! frequency proves the right stream reached the right peer.

mod common;

use common::run_py;

use std::time::Duration;

use serde_json::Value;

fn hz(v: &Value) -> f64 {
    v["dominant_hz"].as_f64().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_clients_hear_each_others_tone() {
    let srv = common::server(|_| {}).await;
    let url = srv.ws_url();
    let client = |name: &str, role: &str, tone: &str| -> Vec<String> {
        [
            "tests/clients/ws_client.py",
            "--url",
            &url,
            "--room",
            "aiortc-tones",
            "--name",
            name,
            "--role",
            role,
            "--tone",
            tone,
            "--duration",
            "10",
            "--expect-peers",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = client("Agent", "agent", "440");
    let b = client("Customer", "customer", "880");
    let limit = Duration::from_secs(60);
    let ((ca, ja, ea), (cb, jb, eb)) = tokio::join!(run_py(&a, limit), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_py(&b, limit).await
    });
    assert_eq!(ca, 0, "client A failed: {ja}\n{ea}");
    assert_eq!(cb, 0, "client B failed: {jb}\n{eb}");
    let a_id = ja["participant_id"].as_str().expect("a id");
    let b_id = jb["participant_id"].as_str().expect("b id");
    let a_heard = &ja["received"][b_id];
    let b_heard = &jb["received"][a_id];
    eprintln!("A heard {a_heard}\nB heard {b_heard}");
    // Join timing (printed, not asserted): B joined second, so its first audio from A is a
    // join's latency (ms after opening its WebSocket).
    eprintln!(
        "aiortc join B: connected {} first audio {}",
        jb["connected_ms"], jb["first_audio_ms"]
    );
    assert!(
        (hz(a_heard) - 880.0).abs() < 10.0,
        "A hears B's 880 Hz: {a_heard}"
    );
    assert!(
        (hz(b_heard) - 440.0).abs() < 10.0,
        "B hears A's 440 Hz: {b_heard}"
    );
    assert!(
        a_heard["seconds"].as_f64().unwrap_or(0.0) > 3.0,
        "{a_heard}"
    );
    assert!(
        b_heard["seconds"].as_f64().unwrap_or(0.0) > 3.0,
        "{b_heard}"
    );
    // Audio levels (RFC 6464 from aiortc) reached the clients, with an active speaker.
    assert!(
        ja["levels_max"][b_id].as_f64().unwrap_or(0.0) > 0.05,
        "{ja}"
    );
    assert!(!ja["active_speakers"].as_array().expect("list").is_empty());
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publish_and_whep_subscribe_with_aiortc() {
    let srv = common::server(|_| {}).await;
    let args: Vec<String> = [
        "tests/clients/whip_whep.py",
        "both",
        "--url",
        &format!("{}/whip/whip-room", srv.http_url()),
        "--tone",
        "600",
        "--duration",
        "6",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, j, err) = run_py(&args, Duration::from_secs(60)).await;
    assert_eq!(code, 0, "whip/whep client failed: {j}\n{err}");
    eprintln!("{j}");
    assert_eq!(j["publish"]["status"], 201);
    assert_eq!(j["subscribe"]["status"], 201);
    assert!((hz(&j["subscribe"]) - 600.0).abs() < 10.0, "{j}");
    assert_eq!(j["publish"]["delete_status"], 200);
    assert_eq!(j["subscribe"]["delete_status"], 200);
    // DELETE removed the publisher: the room is gone.
    assert!(common::eventually(Duration::from_secs(5), || srv.state.sfu.rooms().is_empty()).await);
    srv.stop().await.expect("stop");
}
