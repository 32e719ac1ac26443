//! G.711 against an independent implementation: sox encodes every 16-bit value to µ-law and
//! A-law and decodes every code, and commhub's codec must agree with it bit for bit.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use media::codec::g711;

fn sox(args: &[&str]) {
    let out = Command::new("sox")
        .args(args)
        .output()
        .expect("sox is installed (scripts/setup-test-deps.sh)");
    assert!(
        out.status.success(),
        "sox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn g711_matches_sox_for_every_sample_and_code() {
    let dir = std::env::temp_dir().join(format!("commhub-g711-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = dir.join("all.raw");
    let samples: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    std::fs::write(
        &all,
        samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let codes_file = dir.join("codes.raw");
    std::fs::write(&codes_file, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let pcm_in = [
        "-D", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1",
    ];
    for (law, encode, decode) in [
        (
            "u-law",
            g711::ulaw_encode as fn(i16) -> u8,
            g711::ulaw_decode as fn(u8) -> i16,
        ),
        ("a-law", g711::alaw_encode, g711::alaw_decode),
    ] {
        // Encode every sample.
        let enc = dir.join(format!("{law}.raw"));
        let mut args: Vec<&str> = pcm_in.to_vec();
        let (all_s, enc_s) = (all.display().to_string(), enc.display().to_string());
        args.extend([all_s.as_str(), "-t", "raw", "-e", law, enc_s.as_str()]);
        sox(&args);
        let theirs = std::fs::read(&enc).unwrap();
        let ours: Vec<u8> = samples.iter().map(|&s| encode(s)).collect();
        let differ: Vec<(i16, u8, u8)> = samples
            .iter()
            .zip(theirs.iter().zip(&ours))
            .filter(|(_, (t, o))| t != o)
            .map(|(s, (t, o))| (*s, *t, *o))
            .take(5)
            .collect();
        assert!(
            differ.is_empty(),
            "{law} encoding differs (sample, sox, ours): {differ:?}"
        );
        // Decode every code.
        let dec = dir.join(format!("{law}-dec.raw"));
        let (codes_s, dec_s) = (codes_file.display().to_string(), dec.display().to_string());
        sox(&[
            "-D",
            "-t",
            "raw",
            "-r",
            "8000",
            "-e",
            law,
            "-c",
            "1",
            codes_s.as_str(),
            "-t",
            "raw",
            "-e",
            "signed",
            "-b",
            "16",
            dec_s.as_str(),
        ]);
        let theirs: Vec<i16> = std::fs::read(&dec)
            .unwrap()
            .chunks(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let ours: Vec<i16> = (0..=255u8).map(decode).collect();
        assert_eq!(theirs, ours, "{law} decoding");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
