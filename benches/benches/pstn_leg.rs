//! The per-leg media work of a PSTN leg in a room with one WebRTC participant, both directions
//! transcoded, per 20 ms packet time, without sockets (the transcoding budget behind issue 11's
//! "legs per core" goal):
//!
//! - uplink: G.711 payload -> 8 kHz -> 48 kHz ([`media::codec::LegCodec::decode`]) -> Opus
//!   encode (what the room forwards to browsers and the recorder taps);
//! - downlink: the browser's Opus packet decoded to 48 kHz, mixed with the consent audio
//!   ([`media::mix::MixFrame`], mix-minus), -> 8 kHz -> G.711 ([`media::codec::LegCodec::encode`]).
//!
//! Throughput is in packet times ("elements"): `thrpt / 50` is how many legs one core can
//! transcode in real time, before any RTP, socket or SRTP work.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use media::codec::{LegCodec, LegCodecKind};
use media::mix::MixFrame;

fn tone(hz: f64, rate: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin() * 6_000.0) as i16)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pstn_leg");
    g.throughput(Throughput::Elements(1));
    for kind in [LegCodecKind::Pcma, LegCodecKind::Pcmu] {
        let mut leg = LegCodec::new(kind, 20).unwrap();
        // What the PBX sends: 20 ms of G.711.
        let mut caller = LegCodec::new(kind, 20).unwrap();
        let mut uplink_payload = Vec::new();
        caller.encode(&tone(300.0, 48_000.0, 960), &mut uplink_payload);
        // What the browser sends: 20 ms of Opus.
        let mut browser_enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        browser_enc
            .set_bitrate(opus::Bitrate::Bits(32_000))
            .unwrap();
        let browser_packet = browser_enc
            .encode_vec(&tone(440.0, 48_000.0, 960), 1_500)
            .unwrap();
        let mut up_enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        up_enc.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
        let mut down_dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let beep = vec![0i16; 960];
        let (mut wide, mut opus_out, mut browser_pcm, mut mixed, mut g711_out) = (
            Vec::with_capacity(960),
            vec![0u8; 1_500],
            vec![0i16; 960],
            Vec::with_capacity(960),
            Vec::with_capacity(160),
        );
        g.bench_function(format!("{}_both_directions_20ms", kind.name()), |b| {
            b.iter(|| {
                // Uplink.
                wide.clear();
                leg.decode(black_box(&uplink_payload), &mut wide);
                let n = up_enc.encode(&wide, &mut opus_out).unwrap();
                black_box(&opus_out[..n]);
                // Downlink.
                let got = down_dec
                    .decode(black_box(&browser_packet), &mut browser_pcm, false)
                    .unwrap();
                let frame = MixFrame {
                    sources: vec![(1u8, &browser_pcm[..got]), (2u8, &wide[..])],
                    system: Some(&beep[..]),
                };
                frame.mix_for(&2, 960, &mut mixed);
                g711_out.clear();
                leg.encode(&mixed, &mut g711_out);
                black_box(&g711_out);
            })
        });
    }
    // The parts, to see where the time goes.
    let pcm = tone(300.0, 48_000.0, 960);
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    let mut out = vec![0u8; 1_500];
    g.bench_function("opus_encode_48k_20ms", |b| {
        b.iter(|| enc.encode(black_box(&pcm), &mut out).unwrap())
    });
    // The uplink is narrowband: SILK in narrowband mode is enough for what the PSTN carries.
    let mut nb = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    nb.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    nb.set_bandwidth(opus::Bandwidth::Narrowband).unwrap();
    g.bench_function("opus_encode_48k_narrowband_20ms", |b| {
        b.iter(|| nb.encode(black_box(&pcm), &mut out).unwrap())
    });
    // ... or opened at 8 kHz, fed the leg's own samples (no upsampling).
    let pcm8 = tone(300.0, 8_000.0, 160);
    let mut enc8 =
        opus::Encoder::new(8_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc8.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    g.bench_function("opus_encode_8k_20ms", |b| {
        b.iter(|| enc8.encode(black_box(&pcm8), &mut out).unwrap())
    });
    // ... or at a lower complexity (libopus defaults to 10 of 10).
    for complexity in [5, 3] {
        let mut e =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        e.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
        e.set_complexity(complexity).unwrap();
        g.bench_function(
            format!("opus_encode_48k_complexity{complexity}_20ms"),
            |b| b.iter(|| e.encode(black_box(&pcm), &mut out).unwrap()),
        );
    }
    let mut leg = LegCodec::new(LegCodecKind::Pcma, 20).unwrap();
    let mut payload = Vec::new();
    leg.encode(&pcm, &mut payload);
    let mut wide = Vec::with_capacity(960);
    g.bench_function("g711_decode_and_upsample_20ms", |b| {
        b.iter(|| {
            wide.clear();
            leg.decode(black_box(&payload), &mut wide);
        })
    });
    let mut narrow = Vec::with_capacity(160);
    g.bench_function("downsample_and_g711_encode_20ms", |b| {
        b.iter(|| {
            narrow.clear();
            leg.encode(black_box(&pcm), &mut narrow);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
