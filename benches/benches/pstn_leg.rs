//! The per-leg media work of a phone leg in a room with one WebRTC participant, both
//! directions transcoded, per 20 ms packet time, without sockets: what `media::pstn`'s engine
//! does for each leg, at the leg's own rate (8 kHz for G.711, 16 kHz for G.722):
//!
//! - uplink: the leg's payload decoded ([`media::codec::WireCodec`]) and encoded as Opus at the
//!   leg's rate (what the room forwards to browsers and the recorder taps);
//! - downlink: the browser's Opus packet decoded at the leg's rate, mixed
//!   ([`media::mix`]), and encoded in the leg's codec.
//!
//! Throughput is in packet times ("elements"): `thrpt / 50` is how many legs one core can
//! transcode in real time, before any RTP, socket or SRTP work. `benches/pstn.sh` measures the
//! whole server with sipp legs.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use media::codec::{WireCodec, WireKind};

fn tone(hz: f64, rate: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin() * 6_000.0) as i16)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pstn_leg");
    g.throughput(Throughput::Elements(1));
    // What the browser sends: 20 ms of Opus at 48 kHz.
    let mut browser_enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    browser_enc
        .set_bitrate(opus::Bitrate::Bits(32_000))
        .unwrap();
    let browser_packet = browser_enc
        .encode_vec(&tone(440.0, 48_000.0, 960), 1_500)
        .unwrap();
    for (kind, complexity) in [
        (WireKind::Pcma, 3),
        (WireKind::Pcma, 1),
        (WireKind::Pcmu, 3),
        (WireKind::G722, 3),
    ] {
        let rate = kind.sample_rate();
        let frame = (rate / 50) as usize;
        let mut leg = WireCodec::new(kind).unwrap();
        // What the PBX sends: 20 ms in the leg's codec.
        let mut caller = WireCodec::new(kind).unwrap();
        let mut uplink_payload = Vec::new();
        caller.encode(&tone(300.0, rate as f64, frame), &mut uplink_payload);
        let mut up_enc =
            opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).unwrap();
        up_enc.set_bitrate(opus::Bitrate::Bits(20_000)).unwrap();
        up_enc.set_complexity(complexity).unwrap();
        let mut down_dec = opus::Decoder::new(rate, opus::Channels::Mono).unwrap();
        let (mut pcm, mut opus_out, mut browser_pcm, mut acc, mut mixed, mut wire_out) = (
            Vec::with_capacity(frame),
            vec![0u8; 1_500],
            vec![0i16; frame * 6],
            vec![0i32; frame],
            Vec::with_capacity(frame),
            Vec::with_capacity(frame),
        );
        g.bench_function(
            format!("{}_c{complexity}_both_directions_20ms", kind.name()),
            |b| {
                b.iter(|| {
                    // Uplink.
                    pcm.clear();
                    leg.decode(black_box(&uplink_payload), &mut pcm).unwrap();
                    let n = up_enc.encode(&pcm, &mut opus_out).unwrap();
                    black_box(&opus_out[..n]);
                    // Downlink.
                    let got = down_dec
                        .decode(black_box(&browser_packet), &mut browser_pcm, false)
                        .unwrap();
                    acc.iter_mut().for_each(|a| *a = 0);
                    media::mix::add(&mut acc, browser_pcm[..got].iter().copied());
                    media::mix::saturate(&acc, &mut mixed);
                    leg.encode(&mixed, &mut wire_out);
                    black_box(&wire_out);
                })
            },
        );
    }
    // The parts, to see where the time goes.
    let pcm8 = tone(300.0, 8_000.0, 160);
    let mut out = vec![0u8; 1_500];
    for complexity in [0, 1, 3, 5] {
        let mut enc8 =
            opus::Encoder::new(8_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc8.set_bitrate(opus::Bitrate::Bits(20_000)).unwrap();
        enc8.set_complexity(complexity).unwrap();
        g.bench_function(format!("opus_encode_8k_c{complexity}_20ms"), |b| {
            b.iter(|| enc8.encode(black_box(&pcm8), &mut out).unwrap())
        });
    }
    let mut dec8 = opus::Decoder::new(8_000, opus::Channels::Mono).unwrap();
    let mut pcm_out = vec![0i16; 960];
    g.bench_function("opus_decode_48k_packet_at_8k_20ms", |b| {
        b.iter(|| {
            dec8.decode(black_box(&browser_packet), &mut pcm_out, false)
                .unwrap()
        })
    });
    let mut g711 = WireCodec::new(WireKind::Pcma).unwrap();
    let mut payload = Vec::new();
    g.bench_function("pcma_encode_20ms", |b| {
        b.iter(|| g711.encode(black_box(&pcm8), &mut payload))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
