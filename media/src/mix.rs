//! Mix-minus: each PSTN leg hears the sum of everyone else in its room (never its own voice),
//! plus the server's consent audio, in one 48 kHz mono frame per packet time.

/// One frame's sources: (source id, samples). All frames have the same length.
pub struct MixFrame<'a, K> {
    pub sources: Vec<(K, &'a [i16])>,
    /// Audio everyone hears (consent announcement, beeps), not tied to a participant.
    pub system: Option<&'a [i16]>,
}

impl<'a, K: PartialEq> MixFrame<'a, K> {
    /// The mix for `listener`: every source but its own, plus the system audio, saturated to
    /// 16 bits. `len` is the frame length; missing or short sources count as silence.
    pub fn mix_for(&self, listener: &K, len: usize, out: &mut Vec<i16>) {
        let mut acc = vec![0i32; len];
        let all = self
            .sources
            .iter()
            .filter(|(k, _)| k != listener)
            .map(|(_, s)| *s)
            .chain(self.system);
        for s in all {
            for (a, &x) in acc.iter_mut().zip(s) {
                *a += x as i32;
            }
        }
        out.clear();
        out.extend(
            acc.iter()
                .map(|&a| a.clamp(i16::MIN as i32, i16::MAX as i32) as i16),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leg_never_hears_itself() {
        let a = [1000i16; 4];
        let b = [200i16; 4];
        let c = [30i16; 4];
        let beep = [4i16; 4];
        let f = MixFrame {
            sources: vec![("a", &a[..]), ("b", &b[..]), ("c", &c[..])],
            system: Some(&beep[..]),
        };
        let mut out = Vec::new();
        f.mix_for(&"a", 4, &mut out);
        assert_eq!(out, vec![234; 4]);
        f.mix_for(&"c", 4, &mut out);
        assert_eq!(out, vec![1204; 4]);
        // Someone not in the frame (a listener that is silent) hears everyone.
        f.mix_for(&"z", 4, &mut out);
        assert_eq!(out, vec![1234; 4]);
    }

    #[test]
    fn loud_sums_saturate_and_short_sources_are_silence() {
        let a = [30_000i16; 3];
        let b = [20_000i16, -20_000, 0];
        let short = [-32_000i16];
        let f = MixFrame {
            sources: vec![("a", &a[..]), ("b", &b[..]), ("s", &short[..])],
            system: None,
        };
        let mut out = Vec::new();
        f.mix_for(&"x", 3, &mut out);
        assert_eq!(out, vec![18_000, 10_000, 30_000]);
        f.mix_for(&"s", 3, &mut out);
        assert_eq!(out, vec![i16::MAX, 10_000, 30_000]);
    }
}
