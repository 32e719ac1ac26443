//! Two webrtc-rs participants on one engine worker hear each other, every payload intact; a
//! third joiner is heard by and hears both; a leaver stops being heard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use engine_common::{Client, eventually, phase, worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_hear_each_other() {
    let w = worker();
    let a = Client::join(&w, "r1", "alice", 1, true).await;
    let b = Client::join(&w, "r1", "bob", 2, true).await;
    assert!(
        eventually(Duration::from_secs(10), || a.hears(&["bob"])
            && b.hears(&["alice"]))
        .await,
        "no audio both ways: a heard {:?}, b heard {:?}, counters {:?}",
        a.heard(),
        b.heard(),
        w.counters().snapshot()
    );
    println!(
        "join latency: bob (offer -> first packet from alice) {:?}",
        b.join_latency(&["alice"]).unwrap()
    );
    for c in [&a, &b] {
        c.phase.store(phase::MEASURE, Ordering::Relaxed);
    }
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

    // A third participant: heard by both, hears both (renegotiation of the first two).
    for c in [&a, &b] {
        c.phase.store(phase::PROBE, Ordering::Relaxed);
    }
    let c = Client::join(&w, "r1", "carol", 3, true).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            c.hears(&["alice", "bob"]) && a.hears(&["carol"]) && b.hears(&["carol"])
        })
        .await,
        "carol heard {:?}; a heard {:?}; b heard {:?}",
        c.heard(),
        a.heard(),
        b.heard()
    );
    println!(
        "join latency: carol (offer -> first packet from alice and bob) {:?}",
        c.join_latency(&["alice", "bob"]).unwrap()
    );

    let s = w.counters().snapshot();
    println!("counters before the leave: {s:?}");
    assert_eq!(s.unknown_source, 0);
    assert_eq!(
        s.junk + s.bad_stun + s.stun_unknown_ufrag + s.srtp_failures,
        0
    );

    // Bob leaves: nothing more from him (his client is closed too; datagrams it still had in
    // flight count as unknown-source drops).
    assert!(w.leave("bob").await.unwrap());
    b.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = a.stats.got.lock().unwrap().get("bob").map_or(0, Vec::len);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = a.stats.got.lock().unwrap().get("bob").map_or(0, Vec::len);
    assert_eq!(before, after, "alice still hears bob after he left");
    println!("counters: {:?}", w.counters().snapshot());
    a.close().await;
    c.close().await;
}
