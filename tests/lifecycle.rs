//! Participants that close the tab or whose media never connects are removed and the others are
//! told; shutdown tells every client and stops promptly.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Ws, eventually};
use serde_json::json;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, Registry, register_default_interceptors,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_tab_is_removed_and_others_are_renegotiated() {
    let srv = common::server(|_| {}).await;
    let url = srv.ws_url();
    let a = Client::join(&url, "tabs", "A", 1).await.expect("a");
    let b = Client::join(&url, "tabs", "B", 2).await.expect("b");
    assert!(eventually(Duration::from_secs(20), || a.count_from(&b.id) > 20).await);
    let offers_before = a.messages_of("subscribe_offer").len();
    let b_id = b.id.clone();
    b.vanish().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            a.messages_of("participant_left")
                .iter()
                .any(|m| m["participant_id"] == b_id.as_str() && m["reason"] == "disconnected")
        })
        .await,
        "A learns that B disconnected"
    );
    assert!(
        eventually(Duration::from_secs(5), || a
            .messages_of("subscribe_offer")
            .len()
            > offers_before)
        .await,
        "A is renegotiated without B's track"
    );
    assert_eq!(srv.state.sfu.participant_count(), 1);
    a.leave().await;
    srv.stop().await.expect("stop");
}

struct Nop;
#[async_trait::async_trait]
impl PeerConnectionEventHandler for Nop {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_that_never_connects_times_out() {
    let srv = common::server(|c| c.media.media_timeout_secs = 2).await;
    let url = srv.ws_url();
    let watcher = Client::join(&url, "timeout", "W", 1).await.expect("w");
    let mut ws = Ws::connect(&url).await.expect("connect");
    ws.send(json!({"type":"join","room":"timeout","display_name":"Ghost"}))
        .await
        .expect("send");
    let joined = ws.expect("joined").await.expect("joined");
    let ghost = joined["participant_id"].as_str().expect("id").to_string();
    // A real offer from a peer connection that is closed right away: ICE can never complete.
    let mut me = MediaEngine::default();
    me.register_default_codecs().expect("codecs");
    let reg = register_default_interceptors(Registry::new(), &mut me).expect("interceptors");
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_interceptor_registry(reg)
        .with_handler(Arc::new(Nop))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("pc");
    pc.add_transceiver_from_kind(rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio, None)
        .await
        .expect("transceiver");
    let offer = pc.create_offer(None).await.expect("offer");
    pc.close().await.expect("close");
    let t0 = Instant::now();
    ws.send(json!({"type":"publish","sdp":offer.sdp}))
        .await
        .expect("send");
    ws.expect("publish_answer").await.expect("answer");
    let left = ws.expect("left").await.expect("left");
    assert_eq!(left["reason"], "media_timeout");
    let waited = t0.elapsed();
    eprintln!("media timeout after {waited:?}");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(3), || {
            watcher
                .messages_of("participant_left")
                .iter()
                .any(|m| m["participant_id"] == ghost.as_str() && m["reason"] == "media_timeout")
        })
        .await
    );
    // The session is back to idle and may join again.
    ws.send(json!({"type":"join","room":"timeout","display_name":"Ghost"}))
        .await
        .expect("send");
    ws.expect("joined").await.expect("rejoin");
    watcher.leave().await;
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_bye_and_closes_peers() {
    let srv = common::server(|_| {}).await;
    let url = srv.ws_url();
    let a = Client::join(&url, "bye", "A", 1).await.expect("a");
    let b = Client::join(&url, "bye", "B", 2).await.expect("b");
    let mut idle = Ws::connect(&url).await.expect("idle socket");
    assert!(eventually(Duration::from_secs(20), || a.count_from(&b.id) > 10).await);
    let t0 = Instant::now();
    let state = srv.state.clone();
    srv.stop().await.expect("stop");
    eprintln!("stopped in {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(6));
    // The bye was sent before the server stopped; the clients' readers may take a moment to
    // hand it over (a clean-clone CI run saw the server stop in 5 ms and read too early).
    for c in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(3), || c
                .messages_of("bye")
                .iter()
                .any(|m| m["reason"] == "server_shutdown"))
            .await,
            "client {} was told",
            c.index
        );
    }
    let bye = idle.expect("bye").await.expect("idle socket told too");
    assert_eq!(bye["reason"], "server_shutdown");
    assert_eq!(state.sfu.participant_count(), 0);
    assert_eq!(state.sfu.ports().0, 0, "every media port was released");
}
