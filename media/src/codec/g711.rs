//! G.711 (ITU-T, 1988): 8-bit logarithmic companding of 14-bit (µ-law) or 13-bit (A-law) linear
//! samples. Samples here are 16-bit linear PCM; the low bits the codec cannot carry are dropped.
//!
//! µ-law (PCMU, RTP payload type 0): a bias of 0x84 is added to the magnitude, which then falls
//! in one of eight segments (exponent) with four mantissa bits; the code is inverted on the wire.
//! A-law (PCMA, payload type 8): 13-bit magnitude, segment 0 linear, the code XORed with 0x55.

/// The bias µ-law adds to magnitudes so that every segment starts at a power of two (16-bit
/// scale; 0x21 at the codec's 14-bit scale).
const ULAW_BIAS: i32 = 0x84;
/// The largest 14-bit magnitude µ-law represents (before the bias).
const ULAW_CLIP_14: i32 = 8_159;

/// One 16-bit linear sample to µ-law: rounded to the codec's 14 bits, then companded.
pub fn ulaw_encode(sample: i16) -> u8 {
    let v = (sample as i32 + 2) >> 2;
    let (mask, magnitude) = if v < 0 { (0x7F, -v) } else { (0xFF, v) };
    let m = magnitude.min(ULAW_CLIP_14) + (ULAW_BIAS >> 2);
    // Segment: how far the magnitude's highest bit is above bit 5 (segment ends 0x3F..0x1FFF).
    let segment = (32 - (m as u32).leading_zeros() as i32 - 6).max(0);
    if segment >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mantissa = (m >> (segment + 1)) & 0x0F;
    (((segment << 4) | mantissa) ^ mask) as u8
}

/// One µ-law code to 16-bit linear.
pub fn ulaw_decode(code: u8) -> i16 {
    let c = !code as i32;
    let exponent = (c >> 4) & 0x07;
    let mantissa = c & 0x0F;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if c & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// One 16-bit linear sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // Rounded to the codec's 13 bits; negative values are folded so that -1 and 0 share a
    // magnitude.
    let v = ((sample as i32 + 4) >> 3).min(4_095);
    let (mask, magnitude) = if v >= 0 { (0xD5, v) } else { (0x55, -v - 1) };
    // Segment ends: 0x1F, 0x3F, ..., 0xFFF (each doubles).
    let segment = match magnitude {
        m if m <= 0x1F => 0,
        m => (32 - (m as u32).leading_zeros() as i32 - 5).min(8),
    };
    if segment >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mantissa = if segment < 2 {
        (magnitude >> 1) & 0x0F
    } else {
        (magnitude >> segment) & 0x0F
    };
    (((segment << 4) | mantissa) ^ mask) as u8
}

/// One A-law code to 16-bit linear.
pub fn alaw_decode(code: u8) -> i16 {
    let c = (code ^ 0x55) as i32;
    let mantissa = (c & 0x0F) << 4;
    let segment = (c & 0x70) >> 4;
    let magnitude = match segment {
        0 => mantissa + 8,
        1 => mantissa + 0x108,
        s => (mantissa + 0x108) << (s - 1),
    };
    if c & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Encode a frame of samples (µ-law).
pub fn ulaw_encode_frame(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| ulaw_encode(s)));
}

/// Decode a frame of codes (µ-law).
pub fn ulaw_decode_frame(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_decode(c)));
}

/// Encode a frame of samples (A-law).
pub fn alaw_encode_frame(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| alaw_encode(s)));
}

/// Decode a frame of codes (A-law).
pub fn alaw_decode_frame(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_decode(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_extremes_have_their_well_known_codes() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_survives_a_round_trip() {
        for c in 0..=255u8 {
            // µ-law has two zeros (0xFF and 0x7F); the encoder uses 0xFF.
            let back = ulaw_encode(ulaw_decode(c));
            if c == 0x7F {
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, c, "µ-law {c:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "A-law {c:#04x}");
        }
    }

    #[test]
    fn decoding_is_monotonic_and_the_error_is_within_a_step() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_decode(ulaw_encode(x));
            let a = alaw_decode(alaw_encode(x));
            assert!(u >= prev_u && a >= prev_a, "monotonic at {x}");
            prev_u = u;
            prev_a = a;
            // The quantisation step grows with the magnitude: at most 1/16 of it, plus the
            // smallest step, and saturation at the ends.
            let mag = (x as i32).abs().min(32_124);
            let tol = mag / 16 + 16;
            assert!(
                (u as i32 - x as i32).abs() <= tol + (x as i32).abs() - mag,
                "µ-law {x} -> {u}"
            );
            let mag_a = (x as i32).abs().min(32_256);
            let tol_a = mag_a / 16 + 16;
            assert!(
                (a as i32 - x as i32).abs() <= tol_a + (x as i32).abs() - mag_a,
                "A-law {x} -> {a}"
            );
        }
    }
}
