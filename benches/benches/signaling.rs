//! Signaling messages: parsing what clients send ([`signaling::parse_client_message`], with
//! its validation) and serialising what the server sends ([`signaling::ServerMessage::to_json`]).
//! The messages are the ones a call exchanges: a publish offer and a subscribe answer with real
//! SDP, trickled candidates, keepalives, and the audio levels every room broadcasts five times
//! a second.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use signaling::{ServerMessage, parse_client_message};

const SDP: &str = "v=0\r\no=- 734592279174578574 389712105 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 68:9F:5D:13:AC:AC:4B:5A:56:7E:ED:40:8D:4B:E9:D0:D8:4C:57:09:BC:C4:36:51:F6:A5:8A:44:ED:01:99:DE\r\n\
a=extmap-allow-mixed\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
a=setup:actpass\r\na=mid:0\r\na=ice-ufrag:nUwifMtSjkBaTTrp\r\na=ice-pwd:YmiFcnDXfyqLMklRzHawdewecUBbFyAv\r\n\
a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtcp-fb:111 transport-cc\r\na=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=msid:client-1 mic-1\r\na=ssrc:3190820468 cname:client-1\r\na=sendonly\r\n";

fn client_messages() -> Vec<(&'static str, String)> {
    vec![
        (
            "join",
            json!({"type":"join","room":"standup-42","display_name":"Ada","role":"customer"})
                .to_string(),
        ),
        ("publish", json!({"type":"publish","sdp":SDP}).to_string()),
        (
            "subscribe_answer",
            json!({"type":"subscribe_answer","sdp":SDP,"revision":3}).to_string(),
        ),
        (
            "ice_candidate",
            json!({"type":"ice_candidate","target":"publish","candidate":{
                "candidate":"candidate:2693830880 1 udp 2130706431 127.0.0.1 34035 typ host",
                "sdpMid":"0","sdpMLineIndex":0}})
            .to_string(),
        ),
        ("ping", json!({"type":"ping","id":17}).to_string()),
    ]
}

fn server_messages() -> Vec<(&'static str, ServerMessage)> {
    let levels: Vec<_> = (0..10)
        .map(|i| json!({"participant_id": format!("8c0f6a4e-2b7d-4a51-9d3e-5f0c1b2a3d{i:02}"), "level": 0.25}))
        .collect();
    let tracks: Vec<_> = (0..9)
        .map(|i| {
            let id = format!("8c0f6a4e-2b7d-4a51-9d3e-5f0c1b2a3d{i:02}");
            json!({"participant_id": id, "stream_id": id, "track_id": format!("audio-{i}")})
        })
        .collect();
    [
        (
            "audio_levels_10",
            json!({"type":"audio_levels","levels":levels,
                   "active_speaker":"8c0f6a4e-2b7d-4a51-9d3e-5f0c1b2a3d03"}),
        ),
        (
            "subscribe_offer_9_tracks",
            json!({"type":"subscribe_offer","sdp":SDP,"revision":4,"tracks":tracks}),
        ),
        (
            "ice_candidate",
            json!({"type":"ice_candidate","target":"subscribe","candidate":{
                "candidate":"candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host",
                "sdpMid":"0","sdpMLineIndex":0}}),
        ),
        ("pong", json!({"type":"pong","id":17})),
    ]
    .into_iter()
    .map(|(n, v)| (n, serde_json::from_value::<ServerMessage>(v).unwrap()))
    .collect()
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_client_message");
    g.throughput(Throughput::Elements(1));
    for (name, text) in client_messages() {
        assert!(parse_client_message(&text).is_ok(), "{name}: {text}");
        g.bench_function(name, |b| {
            b.iter(|| black_box(parse_client_message(black_box(&text))))
        });
    }
    g.finish();
}

fn serialise(c: &mut Criterion) {
    let mut g = c.benchmark_group("server_message_to_json");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in server_messages() {
        g.bench_function(name, |b| b.iter(|| black_box(black_box(&msg).to_json())));
    }
    g.finish();
}

criterion_group!(benches, parse, serialise);
criterion_main!(benches);
