//! Mixing a phone leg's downlink: the sum of everyone it hears (the room's routing already
//! leaves out its own voice: that is the mix-minus), saturated to 16 bits. Pure.

/// Add `src` into `acc` sample by sample; a short source is silence for the rest.
pub fn add(acc: &mut [i32], src: impl IntoIterator<Item = i16>) {
    for (a, x) in acc.iter_mut().zip(src) {
        *a += x as i32;
    }
}

/// The sum as 16-bit samples, clipped at full scale.
pub fn saturate(acc: &[i32], out: &mut Vec<i16>) {
    out.clear();
    out.extend(
        acc.iter()
            .map(|&a| a.clamp(i16::MIN as i32, i16::MAX as i32) as i16),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate_and_short_sources_are_silence() {
        let mut acc = vec![0i32; 3];
        add(&mut acc, [30_000i16; 3]);
        add(&mut acc, [20_000i16, -20_000, 0]);
        add(&mut acc, [-32_000i16]);
        let mut out = Vec::new();
        saturate(&acc, &mut out);
        assert_eq!(out, vec![18_000, 10_000, 30_000]);
        add(&mut acc, [30_000i16; 3]);
        saturate(&acc, &mut out);
        assert_eq!(out, vec![i16::MAX, i16::MAX, i16::MAX]);
        let mut neg = vec![0i32; 1];
        add(&mut neg, [-30_000i16]);
        add(&mut neg, [-30_000i16]);
        saturate(&neg, &mut out);
        assert_eq!(out, vec![i16::MIN]);
    }
}
