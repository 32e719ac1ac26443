//! Every bad input from outside gets a typed error, never a panic or a hang, and the session
//! (and server) keep working afterwards.

mod common;

use std::time::Duration;

use common::Ws;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let v = ws.next_significant().await.expect("a reply");
    assert_eq!(v["type"], "error", "expected error {code}, got {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    v
}

async fn still_alive(ws: &mut Ws) {
    ws.send(json!({"type":"ping","id":42})).await.expect("send");
    let v = ws.next_significant().await.expect("pong");
    assert_eq!(v, json!({"type":"pong","id":42}));
}

async fn joined(url: &str, room: &str) -> Ws {
    let mut ws = Ws::connect(url).await.expect("connect");
    ws.send(json!({"type":"join","room":room,"display_name":"X"}))
        .await
        .expect("send");
    ws.expect("joined").await.expect("joined");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_oversized_and_binary_frames() {
    let srv = common::server(|_| {}).await;
    let mut ws = Ws::connect(&srv.ws_url()).await.expect("connect");
    for (text, code) in [
        ("{not json", "malformed"),
        ("[]", "malformed"),
        (r#"{"no_type":1}"#, "malformed"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (
            r#"{"type":"join","room":"bad room!","display_name":"x"}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"join","room":"r","display_name":"x","protocol":99}"#,
            "unsupported_version",
        ),
        (r#"{"type":"join","room":"r"}"#, "invalid_field"),
    ] {
        ws.send_raw(Message::Text(text.into())).await.expect("send");
        let e = expect_error(&mut ws, code).await;
        eprintln!("{text} -> {e}");
    }
    let big = format!(
        r#"{{"type":"publish","sdp":"v=0 {}"}}"#,
        "a".repeat(70 * 1024)
    );
    ws.send_raw(Message::Text(big.into())).await.expect("send");
    expect_error(&mut ws, "too_large").await;
    ws.send_raw(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    expect_error(&mut ws, "unsupported_frame").await;
    still_alive(&mut ws).await;

    // A frame beyond the transport limit closes that socket, and only that one.
    let huge = "x".repeat(2 * 1024 * 1024);
    let mut ws2 = Ws::connect(&srv.ws_url()).await.expect("connect");
    let _ = ws2.send_raw(Message::Text(huge.into())).await;
    assert!(
        ws2.recv().await.is_err(),
        "socket closed after a 2 MiB frame"
    );
    still_alive(&mut ws).await;
    let health = common::http(
        "GET",
        &format!("{}/healthz", srv.http_url()),
        "text/plain",
        "",
    )
    .await;
    assert_eq!(health.0, 200);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_messages() {
    let srv = common::server(|_| {}).await;
    let mut ws = Ws::connect(&srv.ws_url()).await.expect("connect");
    for m in [
        json!({"type":"publish","sdp":"v=0\r\n"}),
        json!({"type":"subscribe_answer","sdp":"v=0\r\n","revision":1}),
        json!({"type":"ice_candidate","target":"publish","candidate":null}),
        json!({"type":"leave"}),
    ] {
        ws.send(m.clone()).await.expect("send");
        let e = expect_error(&mut ws, "out_of_order").await;
        assert_eq!(e["in_reply_to"], m["type"]);
    }
    ws.send(json!({"type":"join","room":"ooo","display_name":"X"}))
        .await
        .expect("send");
    ws.expect("joined").await.expect("joined");
    ws.send(json!({"type":"join","room":"ooo","display_name":"X"}))
        .await
        .expect("send");
    expect_error(&mut ws, "out_of_order").await;
    // No subscribe offer is outstanding.
    ws.send(json!({"type":"subscribe_answer","sdp":"v=0\r\n","revision":7}))
        .await
        .expect("send");
    expect_error(&mut ws, "out_of_order").await;
    // Candidates for a connection that does not exist yet.
    ws.send(json!({"type":"ice_candidate","target":"subscribe","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0"}}))
        .await
        .expect("send");
    expect_error(&mut ws, "out_of_order").await;
    ws.send(json!({"type":"leave"})).await.expect("send");
    let v = ws.next_significant().await.expect("left");
    assert_eq!(v["type"], "left");
    still_alive(&mut ws).await;
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sdp_and_bad_candidates() {
    let srv = common::server(|_| {}).await;
    let mut ws = joined(&srv.ws_url(), "bad-sdp").await;
    let video_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n";
    let pcmu_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\n";
    let garbage_opus = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
        this is not sdp\r\n";
    for sdp in ["hello", "v=0\r\n", video_only, pcmu_only, garbage_opus] {
        ws.send(json!({"type":"publish","sdp":sdp}))
            .await
            .expect("send");
        let e = expect_error(&mut ws, "bad_sdp").await;
        eprintln!("{:?} -> {}", &sdp[..sdp.len().min(20)], e["message"]);
    }
    still_alive(&mut ws).await;
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_closes_silent_sessions() {
    let srv = common::server(|c| {
        c.signaling.keepalive_secs = 1;
        c.signaling.missed_keepalives = 2;
    })
    .await;
    let mut ws = joined(&srv.ws_url(), "silent").await;
    let t0 = std::time::Instant::now();
    let bye = ws.expect("bye").await.expect("bye");
    assert_eq!(bye["reason"], "keepalive_timeout");
    assert!(t0.elapsed() < Duration::from_secs(8));
    assert!(
        common::eventually(Duration::from_secs(3), || srv.state.sfu.rooms().is_empty()).await,
        "the silent participant was removed"
    );
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_whep_http_errors() {
    let srv = common::server(|_| {}).await;
    let base = srv.http_url();
    let offer_ct = "application/sdp";
    let cases: Vec<(&str, String, &str, String, u16, &str)> = vec![
        (
            "POST",
            format!("{base}/whip/room1"),
            "text/plain",
            "v=0\r\n".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            format!("{base}/whip/room1"),
            offer_ct,
            "not sdp".into(),
            400,
            "bad_sdp",
        ),
        (
            "POST",
            format!("{base}/whip/room1"),
            offer_ct,
            "v=0\r\nm=video 9 RTP/AVP 96\r\n".into(),
            400,
            "bad_sdp",
        ),
        (
            "POST",
            format!("{base}/whip/bad%20room"),
            offer_ct,
            "v=0\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("{base}/whip/room1?role=king"),
            offer_ct,
            "v=0\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("{base}/whip/room1"),
            offer_ct,
            format!("v=0\r\n{}", "a=x\r\n".repeat(15_000)),
            413,
            "too_large",
        ),
        (
            "POST",
            format!("{base}/whep/nosuchroom/nobody"),
            offer_ct,
            "v=0\r\n".into(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("{base}/whip/room1/nobody"),
            offer_ct,
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("{base}/whep/room1/nobody/x"),
            offer_ct,
            String::new(),
            404,
            "not_found",
        ),
        (
            "PATCH",
            format!("{base}/whip/room1/nobody"),
            "application/trickle-ice-sdpfrag",
            "a=x".into(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            format!("{base}/nope"),
            offer_ct,
            String::new(),
            404,
            "not_found",
        ),
    ];
    for (method, url, ct, body, status, code) in cases {
        let (got, text) = common::http(method, &url, ct, &body).await;
        assert_eq!(got, status, "{method} {url}: {text}");
        let v: Value = common::json_body(&text);
        assert_eq!(v["error"]["code"], code, "{method} {url}: {text}");
    }
    srv.stop().await.expect("stop");
}
