//! The forwarding path per packet, without sockets: one published packet fanned out to N
//! subscribers' queues ([`media::fan_out`]), then on each subscriber's side dequeued, routed
//! through its [`media::ConsumerSet`] (SSRC/sequence/timestamp rewrite) and turned into the RTP
//! packet the writer hands to webrtc-rs, marshalled. Throughput is in forwarded packets
//! ("elements"), so `thrpt` reads as forwarded packets per second on one core for this part.
//!
//! For scale, the same per-packet work that webrtc-rs then does is measured too: SRTP
//! encryption of one such packet with the two profiles WebRTC peers negotiate (AES-GCM, which
//! webrtc-rs prefers, and AES-CM + HMAC-SHA1-80, which every peer supports).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use media::{ConsumerSet, MediaPacket, MediaStats, Routes, SinkMsg, SubscriberSink, fan_out};
use rtc::rtp;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use tokio::sync::mpsc;

/// A stamped 20 ms Opus frame, as the load generator sends.
fn opus_payload() -> Bytes {
    let tone = commhub_benches::stamp::OpusTone::encode(1).unwrap();
    tone.packet(&commhub_benches::stamp::Stamp {
        sender: 1,
        seq: 0,
        sent_ns: 0,
    })
}

struct Room {
    routes: Routes,
    rxs: Vec<mpsc::Receiver<SinkMsg>>,
    sets: Vec<ConsumerSet<u8>>,
}

/// A room where participant "p0" publishes and `n` others subscribe to it.
fn room(n: usize) -> Room {
    let mut sinks = Vec::new();
    let mut rxs = Vec::new();
    let mut sets = Vec::new();
    for i in 0..=n {
        let (tx, rx) = mpsc::channel(512);
        sinks.push(SubscriberSink {
            subscriber: Arc::from(format!("p{i}")),
            only: None,
            tx,
            engine_room: None,
        });
        if i > 0 {
            rxs.push(rx);
            let mut set = ConsumerSet::new(48_000);
            set.add(Arc::from("p0"), 111u8, 0x1000 + i as u32);
            sets.push(set);
        }
    }
    Room {
        routes: Routes {
            sinks,
            taps: vec![],
        },
        rxs,
        sets,
    }
}

fn packet(seq: u16, payload: &Bytes) -> Arc<MediaPacket> {
    Arc::new(MediaPacket {
        producer: Arc::from("p0"),
        ssrc: 0xABCD,
        payload_type: 111,
        sequence: seq,
        timestamp: u32::from(seq) * 960,
        marker: false,
        audio_level: None,
        arrival: Instant::now(),
        arrival_wall: SystemTime::now(),
        payload: payload.clone(),
        system: false,
        only_to: None,
        in_engine: false,
    })
}

fn forwarding(c: &mut Criterion) {
    let payload = opus_payload();
    let stats = MediaStats::default();
    let mut g = c.benchmark_group("forward");
    for n in [1usize, 4, 9, 49] {
        g.throughput(Throughput::Elements(n as u64));
        let mut r = room(n);
        let mut seq = 0u16;
        g.bench_with_input(BenchmarkId::new("fan_out+route+marshal", n), &n, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let p = packet(seq, &payload);
                let f = fan_out(&r.routes, &p, &stats);
                debug_assert_eq!(f.queued, n);
                let mut bytes = 0;
                for (rx, set) in r.rxs.iter_mut().zip(r.sets.iter_mut()) {
                    let Ok(SinkMsg::Packet(p)) = rx.try_recv() else {
                        panic!("queued")
                    };
                    let Some((pt, h)) = set.route(&p) else {
                        panic!("routed")
                    };
                    let out = rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            marker: p.marker,
                            payload_type: *pt,
                            sequence_number: h.sequence,
                            timestamp: h.timestamp,
                            ssrc: h.ssrc,
                            ..Default::default()
                        },
                        payload: p.payload.clone(),
                    };
                    bytes += out.marshal().unwrap().len();
                }
                black_box(bytes)
            })
        });
        let mut r = room(n);
        g.bench_with_input(BenchmarkId::new("fan_out_only", n), &n, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let p = packet(seq, &payload);
                let f = fan_out(&r.routes, &p, &stats);
                for rx in r.rxs.iter_mut() {
                    let _ = rx.try_recv();
                }
                black_box(f)
            })
        });
    }
    g.finish();
}

fn srtp(c: &mut Criterion) {
    let payload = opus_payload();
    let provider = rtc::crypto::default_provider().unwrap();
    let mut g = c.benchmark_group("srtp_encrypt");
    g.throughput(Throughput::Elements(1));
    for (name, profile) in [
        ("aead_aes_128_gcm", ProtectionProfile::AeadAes128Gcm),
        (
            "aes128_cm_hmac_sha1_80",
            ProtectionProfile::Aes128CmHmacSha1_80,
        ),
    ] {
        let key = vec![7u8; profile.key_len()];
        let salt = vec![9u8; profile.salt_len()];
        let mut ctx = Context::new(&key, &salt, profile, None, None, provider.crypto()).unwrap();
        let mut seq = 0u16;
        g.bench_function(name, |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let pkt = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        payload_type: 111,
                        sequence_number: seq,
                        timestamp: u32::from(seq) * 960,
                        ssrc: 0x1234,
                        ..Default::default()
                    },
                    payload: payload.clone(),
                };
                let raw = pkt.marshal().unwrap();
                black_box(ctx.encrypt_rtp(&raw).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forwarding, srtp);
criterion_main!(benches);
