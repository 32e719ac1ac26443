//! A SIP leg with WebRTC media shaped like FreeSWITCH's (`media_webrtc=true`): an ICE +
//! DTLS-SRTP offer with proto `RTP/SAVPF`, no `a=mid`, no BUNDLE, no direction and RTCP
//! candidates. The leg is aiortc (`tests/clients/sip_webrtc.py`, its SIP messages written by
//! hand), in a call with an aiortc `/ws` client: each must hear the other's tone, and the
//! answer must keep the offer's terms (no `a=mid`, `RTP/SAVPF`).

mod common;

use std::time::Duration;

use commhub::calls::NewCall;
use common::{finish_py, spawn_py};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeswitch_shaped_webrtc_leg_is_answered_and_bridged() {
    let srv = common::server(|_| {}).await;
    let sip = srv.state.sip.clone().expect("SIP on");
    let (call, _) = srv
        .state
        .calls
        .create(NewCall {
            kind: "hybrid".into(),
            direction: "inbound".into(),
            from_number: None,
            to_number: None,
            record: false,
        })
        .await;
    let browser = spawn_py(
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
            "1000",
            "--duration",
            "12",
        ]
        .map(str::to_string),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leg = tokio::process::Command::new(common::python())
        .args([
            "sip_webrtc.py",
            "--sip",
            &sip.local_addr().to_string(),
            "--user",
            &call.id.to_string(),
            "--tone",
            "440",
            "--duration",
            "8",
        ])
        .current_dir(common::repo().join("tests/clients"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let (code, leg_json, leg_err) = finish_py(leg, Duration::from_secs(40)).await;
    assert_eq!(code, 0, "leg: {leg_json}\n{leg_err}");
    assert_eq!(leg_json["answer_has_mid"], false, "{leg_json}");
    assert_eq!(leg_json["answer_proto"], "RTP/SAVPF", "{leg_json}");
    let heard = leg_json["received"]["dominant_hz"].as_f64().unwrap_or(0.0);
    assert!(
        (heard - 1000.0).abs() < 15.0,
        "the leg hears the browser: {leg_json}"
    );
    let (code, json, err) = finish_py(browser, Duration::from_secs(40)).await;
    assert_eq!(code, 0, "browser: {json}\n{err}");
    let received = json["received"].as_object().expect("received");
    assert!(
        received
            .values()
            .any(|r| (r["dominant_hz"].as_f64().unwrap_or(0.0) - 440.0).abs() < 15.0),
        "the browser hears the WebRTC leg: {json}"
    );
    srv.stop().await.expect("stop");
}
