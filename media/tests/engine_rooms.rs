//! 30 webrtc-rs participants in 3 rooms on ONE worker socket: each sends 50 packets whose
//! payload names the sender and the packet; every receiver gets all 50 of every other
//! same-room sender, byte for byte, and nothing from the other rooms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine_common::{Client, eventually, phase, worker};

const ROOMS: usize = 3;
const PER_ROOM: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_participants_in_three_rooms_on_one_socket() {
    let w = worker();
    let t0 = Instant::now();
    let mut clients: Vec<(usize, Client)> = Vec::new();
    for i in 0..ROOMS * PER_ROOM {
        let room = i % ROOMS;
        let name = format!("p{i}");
        let c = Client::join(&w, &format!("room{room}"), &name, i as u8, true).await;
        clients.push((room, c));
    }
    println!("30 joins issued in {:?}", t0.elapsed());
    let peers = |room: usize, me: &str| -> Vec<String> {
        (0..ROOMS * PER_ROOM)
            .filter(|i| i % ROOMS == room)
            .map(|i| format!("p{i}"))
            .filter(|n| n != me)
            .collect()
    };
    let all_hear = || {
        clients.iter().all(|(room, c)| {
            let p = peers(*room, &c.name);
            c.hears(&p.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    assert!(
        eventually(Duration::from_secs(20), all_hear).await,
        "not everyone hears their room: {:?}; counters {:?}",
        clients
            .iter()
            .map(|(_, c)| (c.name.clone(), c.heard().len()))
            .collect::<Vec<_>>(),
        w.counters().snapshot()
    );
    println!(
        "everyone hears their room {:?} after the first join",
        t0.elapsed()
    );

    for (_, c) in &clients {
        c.phase.store(phase::MEASURE, Ordering::Relaxed);
    }
    let complete = || {
        clients.iter().all(|(room, c)| {
            peers(*room, &c.name)
                .iter()
                .all(|p| c.marked_from(p).len() >= 50)
        })
    };
    let ok = eventually(Duration::from_secs(20), complete).await;
    let want: Vec<u32> = (0..50).collect();
    let mut missing = Vec::new();
    for (room, c) in &clients {
        assert_eq!(c.sent.load(Ordering::Relaxed), 50, "{} sent", c.name);
        for p in peers(*room, &c.name) {
            let got = c.marked_from(&p);
            if got != want {
                missing.push(format!("{} from {p}: {} packets", c.name, got.len()));
            }
        }
        // Nothing from another room, nothing damaged.
        let own: Vec<String> = peers(*room, &c.name);
        for h in c.heard() {
            assert!(own.contains(&h), "{} (room {room}) heard {h}", c.name);
        }
        assert_eq!(c.stats.damaged.load(Ordering::Relaxed), 0, "{}", c.name);
    }
    let s = w.counters().snapshot();
    println!(
        "counters: {s:?}; worker cpu {:?} over {:?}",
        w.cpu_time(),
        t0.elapsed()
    );
    assert!(ok && missing.is_empty(), "incomplete: {missing:?}");
    assert_eq!(
        s.junk + s.bad_stun + s.unknown_source + s.stun_unknown_ufrag,
        0
    );
    assert_eq!(s.srtp_failures, 0);
    for (_, c) in clients {
        c.close().await;
    }
}
