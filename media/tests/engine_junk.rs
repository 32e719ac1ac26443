//! Junk, truncated STUN, STUN for an unknown ufrag, DTLS- and RTP-looking datagrams from an
//! unknown address, and a flood from one source: each counted in its bucket, none handed to a
//! connection, and two participants in a room keep hearing each other intact meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use engine_common::{Client, eventually, phase, worker};

/// A STUN Binding request with USERNAME `user`.
fn binding_request(user: &[u8]) -> Vec<u8> {
    let mut attr = Vec::new();
    attr.extend_from_slice(&0x0006u16.to_be_bytes());
    attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attr.extend_from_slice(user);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut d = vec![0x00, 0x01];
    d.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    d.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    d.extend_from_slice(&[9; 12]);
    d.extend_from_slice(&attr);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_a_flood_are_counted_and_harmless() {
    let w = worker();
    let a = Client::join(&w, "r", "alice", 1, true).await;
    let b = Client::join(&w, "r", "bob", 2, true).await;
    assert!(
        eventually(Duration::from_secs(10), || a.hears(&["bob"])
            && b.hears(&["alice"]))
        .await
    );
    let before = w.counters().snapshot();

    let target = w.local_addr();
    assert!(target.ip().is_loopback());
    let evil = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let req = binding_request(b"nosuchufrag:x");
    let rtp_like = {
        let mut v = vec![0x80, 111, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        v.extend_from_slice(&[0x55; 60]);
        v
    };
    let dtls_like = {
        // A ClientHello record header and some bytes.
        let mut v = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40];
        v.extend_from_slice(&[1; 40]);
        v
    };
    let sends: Vec<(&str, Vec<u8>)> = vec![
        ("junk empty", vec![]),
        ("junk 0x50", vec![0x50; 30]),
        ("junk 0xff", vec![0xff; 200]),
        ("stun truncated header", req[..10].to_vec()),
        ("stun truncated body", req[..req.len() - 4].to_vec()),
        ("stun unknown ufrag", req.clone()),
        ("dtls-looking", dtls_like.clone()),
        ("rtp-looking", rtp_like.clone()),
    ];
    for (_, d) in &sends {
        evil.send_to(d, target).unwrap();
    }

    // A flood from one source while the participants send their measured packets.
    for c in [&a, &b] {
        c.phase.store(phase::MEASURE, Ordering::Relaxed);
    }
    const FLOOD: u64 = 20_000;
    let flood = std::thread::spawn(move || {
        for i in 0..FLOOD {
            let d: &[u8] = match i % 4 {
                0 => &rtp_like,
                1 => &dtls_like,
                2 => &req,
                _ => &[0x42; 100],
            };
            let _ = evil.send_to(d, target);
            if i % 500 == 0 {
                // Loopback has no pacing: a short pause keeps the flood from simply
                // overflowing the kernel buffer (which would test the kernel, not the worker), and
                // spreads it over the second the measured packets take.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    flood.join().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            a.marked_from("bob").len() == 50 && b.marked_from("alice").len() == 50
        })
        .await,
        "a got {} from bob, b got {} from alice",
        a.marked_from("bob").len(),
        b.marked_from("alice").len()
    );
    assert_eq!(a.marked_from("bob"), (0..50).collect::<Vec<_>>());
    assert_eq!(b.marked_from("alice"), (0..50).collect::<Vec<_>>());
    assert_eq!(a.stats.damaged.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats.damaged.load(Ordering::Relaxed), 0);
    // Let the worker drain whatever is left of the flood.
    let want_unknown = 2 + FLOOD / 2;
    assert!(
        eventually(Duration::from_secs(5), || {
            w.counters().snapshot().unknown_source - before.unknown_source >= want_unknown
        })
        .await
    );
    let s = w.counters().snapshot();
    println!("counters: {s:?}");
    assert_eq!(s.junk - before.junk, 3 + FLOOD / 4);
    assert_eq!(s.bad_stun - before.bad_stun, 2);
    assert_eq!(
        s.stun_unknown_ufrag - before.stun_unknown_ufrag,
        1 + FLOOD / 4
    );
    assert_eq!(s.unknown_source - before.unknown_source, want_unknown);
    assert_eq!(s.srtp_failures, 0, "nothing reached a connection");
    a.close().await;
    b.close().await;
}
