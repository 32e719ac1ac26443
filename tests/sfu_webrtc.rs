//! Three (then four) webrtc-rs clients in one room through the real `/ws` endpoint: every
//! payload arrives intact, in sequence, on its own SSRC per destination; a leaver stops being
//! heard; a late joiner is heard by everyone and hears everyone.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, check_payload, eventually};

fn assert_intact(rx: &Client, from: &Client) {
    let pkts = rx.packets_from(&from.id);
    assert!(
        !pkts.is_empty(),
        "client {} got nothing from {}",
        rx.index,
        from.index
    );
    let mut offsets = HashSet::new();
    let mut ssrcs = HashSet::new();
    let mut seen = HashSet::new();
    for p in &pkts {
        let (sender, n) = check_payload(&p.payload)
            .unwrap_or_else(|| panic!("corrupt payload from {} at seq {}", from.index, p.seq));
        assert_eq!(sender, from.index, "payload from the wrong sender");
        offsets.insert(p.seq.wrapping_sub(n as u16));
        ssrcs.insert(p.ssrc);
        seen.insert(n);
    }
    assert_eq!(
        offsets.len(),
        1,
        "sequence numbers must map 1:1 to sent packets"
    );
    assert_eq!(ssrcs.len(), 1, "one SSRC per consumed stream");
    assert_eq!(seen.len(), pkts.len(), "no duplicates");
}

fn ssrc_of(rx: &Client, from: &Client) -> u32 {
    rx.packets_from(&from.id)
        .first()
        .map(|p| p.ssrc)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_then_leave_then_late_joiner() {
    let srv = common::server(|_| {}).await;
    let url = srv.ws_url();
    let room = "sfu-three";
    let t0 = std::time::Instant::now();
    let a = Client::join(&url, room, "A", 1).await.expect("a joins");
    let b = Client::join(&url, room, "B", 2).await.expect("b joins");
    let c = Client::join(&url, room, "C", 3).await.expect("c joins");
    let clients = [&a, &b, &c];
    let ok = eventually(Duration::from_secs(25), || {
        clients.iter().all(|rx| {
            clients
                .iter()
                .filter(|tx| tx.id != rx.id)
                .all(|tx| rx.count_from(&tx.id) >= 50)
        })
    })
    .await;
    for rx in clients {
        for tx in clients.iter().filter(|tx| tx.id != rx.id) {
            eprintln!(
                "client {} received {} packets from {}",
                rx.index,
                rx.count_from(&tx.id),
                tx.index
            );
        }
    }
    assert!(ok, "everyone hears the other two");
    eprintln!("three-way audio established in {:?}", t0.elapsed());
    for rx in clients {
        for tx in clients.iter().filter(|tx| tx.id != rx.id) {
            assert_intact(rx, tx);
            assert_eq!(rx.count_from(&rx.id), 0, "no echo");
        }
    }
    // The SFU rewrites SSRCs per destination.
    assert_ne!(ssrc_of(&a, &c), ssrc_of(&b, &c));

    // C leaves: A and B are told, and stop receiving C.
    let c_id = c.id.clone();
    c.leave().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            a.saw("participant_left", "participant_id", &c_id)
                && b.saw("participant_left", "participant_id", &c_id)
        })
        .await,
        "participant_left for C"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ac, bc) = (a.count_from(&c_id), b.count_from(&c_id));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.count_from(&c_id), ac, "A still receives C after it left");
    assert_eq!(b.count_from(&c_id), bc, "B still receives C after it left");
    let (ab, ba) = (a.count_from(&b.id), b.count_from(&a.id));
    assert!(
        eventually(Duration::from_secs(3), || a.count_from(&b.id) > ab + 20
            && b.count_from(&a.id) > ba + 20)
        .await,
        "A and B still hear each other"
    );

    // D joins late: heard by A and B, hears both.
    let d = Client::join(&url, room, "D", 4).await.expect("d joins");
    let ok = eventually(Duration::from_secs(20), || {
        a.count_from(&d.id) >= 50
            && b.count_from(&d.id) >= 50
            && d.count_from(&a.id) >= 50
            && d.count_from(&b.id) >= 50
    })
    .await;
    assert!(ok, "late joiner D heard by all and hears all");
    assert_intact(&a, &d);
    assert_intact(&d, &b);
    assert_eq!(d.count_from(&c_id), 0, "D never hears C");

    let stats = srv.state.sfu.stats().snapshot();
    assert!(stats.packets_out > 0 && stats.packets_in > 0);
    // webrtc-rs offers AES-GCM first: every connection (4 clients x publish + subscribe)
    // negotiated it, none fell back to AES-CM.
    assert!(stats.srtp_aead_gcm >= 8, "{stats:?}");
    assert_eq!(stats.srtp_aes_cm, 0, "{stats:?}");
    a.leave().await;
    b.leave().await;
    d.leave().await;
    assert!(
        eventually(Duration::from_secs(5), || srv.state.sfu.rooms().is_empty()).await,
        "the room closes after the last leave"
    );
    srv.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_see_every_publisher_and_metrics_count_the_traffic() {
    let srv = common::server(|c| c.media.tap_queue = 64).await;
    let url = srv.ws_url();
    let a = Client::join(&url, "tapped", "A", 1).await.expect("a");
    let b = Client::join(&url, "tapped", "B", 2).await.expect("b");
    let mut tap = srv.state.sfu.add_tap("tapped", "test").expect("tap");
    // A second tap nobody reads: it fills up and drops, and forwarding does not notice.
    let _stuck = srv.state.sfu.add_tap("tapped", "stuck").expect("tap");
    assert!(eventually(Duration::from_secs(20), || a.count_from(&b.id) > 30).await);
    let mut from = std::collections::HashMap::<String, usize>::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while from.len() < 2 || from.values().any(|n| *n < 50) {
        let p = tokio::time::timeout_at(deadline, tap.rx.recv())
            .await
            .expect("tap packets in time")
            .expect("tap open");
        let (sender, _) = check_payload(&p.payload).expect("intact payload in the tap");
        let expect = if p.participant.as_ref() == a.id { 1 } else { 2 };
        assert_eq!(
            sender, expect,
            "tap packet attributed to the right participant"
        );
        *from.entry(p.participant.to_string()).or_default() += 1;
    }
    let before = a.count_from(&b.id);
    assert!(
        eventually(Duration::from_secs(3), || a.count_from(&b.id) > before + 50).await,
        "forwarding goes on while a tap is full"
    );
    let stats = srv.state.sfu.stats().snapshot();
    assert!(stats.tap_drops > 0, "the stuck tap's drops are counted");

    let (_, body) = common::http(
        "GET",
        &format!("{}/metrics", srv.http_url()),
        "text/plain",
        "",
    )
    .await;
    for name in [
        "commhub_rooms 1",
        "commhub_participants 2",
        "commhub_rtp_packets_in_total",
        "commhub_rtp_packets_out_total",
        "commhub_tap_drops_total",
    ] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }
    let out: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("commhub_rtp_packets_out_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("packets out value");
    assert!(out > 100);
    let (status, ready) = common::http(
        "GET",
        &format!("{}/readyz", srv.http_url()),
        "text/plain",
        "",
    )
    .await;
    assert_eq!((status, ready.trim()), (200, "ready"));
    a.leave().await;
    b.leave().await;
    srv.stop().await.expect("stop");
}
