//! Audio levels (RFC 6464) and active-speaker detection. Pure: time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The URI of the client-to-mixer audio level header extension.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Parse the one-byte body of an RFC 6464 extension: the level in -dBov (0 loudest, 127 silence)
/// and the voice-activity flag.
pub fn parse_audio_level(ext: &[u8]) -> Option<(u8, bool)> {
    let b = *ext.first()?;
    Some((b & 0x7f, b & 0x80 != 0))
}

/// -dBov (0..=127) to a linear amplitude in 0.0..=1.0; 127 is silence (0.0).
pub fn dbov_to_linear(dbov: u8) -> f32 {
    if dbov >= 127 {
        0.0
    } else {
        10f32.powf(-f32::from(dbov) / 20.0)
    }
}

/// Tracks each participant's recent level and picks the active speaker with hysteresis, so the
/// speaker does not flap between two people talking at similar levels.
#[derive(Debug)]
pub struct SpeakerDetector<K> {
    entries: HashMap<K, Entry>,
    current: Option<K>,
    /// A level older than this counts as silence.
    stale_after: Duration,
    /// Levels below this linear amplitude count as silence for speaker selection.
    threshold: f32,
    /// A challenger must be this many times louder than the current speaker to take over.
    switch_ratio: f32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    smoothed: f32,
    last: Instant,
}

impl<K: Clone + Eq + Hash + Ord> SpeakerDetector<K> {
    pub fn new() -> Self {
        SpeakerDetector {
            entries: HashMap::new(),
            current: None,
            stale_after: Duration::from_millis(600),
            // -40 dBov.
            threshold: 0.01,
            switch_ratio: 1.5,
        }
    }

    /// Record one packet's level (-dBov) for `who`.
    pub fn observe(&mut self, who: &K, dbov: u8, now: Instant) {
        let lin = dbov_to_linear(dbov);
        let e = self.entries.entry(who.clone()).or_insert(Entry {
            smoothed: lin,
            last: now,
        });
        // Fast attack, slow release.
        let alpha = if lin > e.smoothed { 0.5 } else { 0.1 };
        e.smoothed += alpha * (lin - e.smoothed);
        e.last = now;
    }

    pub fn remove(&mut self, who: &K) {
        self.entries.remove(who);
        if self.current.as_ref() == Some(who) {
            self.current = None;
        }
    }

    /// Current levels (sorted by key) and the active speaker; `changed` is true when the speaker
    /// differs from the previous call.
    pub fn tick(&mut self, now: Instant) -> (Vec<(K, f32)>, Option<K>, bool) {
        let mut levels: Vec<(K, f32)> = self
            .entries
            .iter()
            .map(|(k, e)| {
                let l = if now.saturating_duration_since(e.last) > self.stale_after {
                    0.0
                } else {
                    e.smoothed
                };
                (k.clone(), l)
            })
            .collect();
        levels.sort_by(|a, b| a.0.cmp(&b.0));
        let loudest = levels
            .iter()
            .filter(|(_, l)| *l >= self.threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .cloned();
        let current_level = self
            .current
            .as_ref()
            .and_then(|c| levels.iter().find(|(k, _)| k == c).map(|(_, l)| *l))
            .unwrap_or(0.0);
        let next = match loudest {
            None => None,
            Some((k, l)) => {
                if current_level >= self.threshold
                    && self.current.as_ref() != Some(&k)
                    && l < current_level * self.switch_ratio
                {
                    self.current.clone()
                } else {
                    Some(k)
                }
            }
        };
        let changed = next != self.current;
        self.current = next.clone();
        (levels, next, changed)
    }
}

impl<K: Clone + Eq + Hash + Ord> Default for SpeakerDetector<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc6464_byte() {
        assert_eq!(parse_audio_level(&[0x80 | 30]), Some((30, true)));
        assert_eq!(parse_audio_level(&[127]), Some((127, false)));
        assert_eq!(parse_audio_level(&[]), None);
        assert_eq!(dbov_to_linear(127), 0.0);
        assert!((dbov_to_linear(0) - 1.0).abs() < 1e-6);
        assert!((dbov_to_linear(20) - 0.1).abs() < 1e-4);
    }

    #[test]
    fn loudest_speaker_wins_with_hysteresis_and_silence_clears() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new();
        for i in 0..10 {
            let t = t0 + Duration::from_millis(i * 20);
            d.observe(&"a", 10, t);
            d.observe(&"b", 60, t);
        }
        let (levels, speaker, changed) = d.tick(t0 + Duration::from_millis(200));
        assert_eq!(speaker, Some("a"));
        assert!(changed);
        assert_eq!(levels.len(), 2);
        assert!(levels[0].1 > levels[1].1);
        // b becomes slightly louder than a: not enough to switch.
        for i in 10..30 {
            let t = t0 + Duration::from_millis(i * 20);
            d.observe(&"a", 12, t);
            d.observe(&"b", 11, t);
        }
        let (_, speaker, changed) = d.tick(t0 + Duration::from_millis(600));
        assert_eq!(speaker, Some("a"));
        assert!(!changed);
        // a goes silent: b takes over.
        for i in 30..60 {
            let t = t0 + Duration::from_millis(i * 20);
            d.observe(&"a", 127, t);
            d.observe(&"b", 11, t);
        }
        let (_, speaker, changed) = d.tick(t0 + Duration::from_millis(1200));
        assert_eq!(speaker, Some("b"));
        assert!(changed);
        // Nobody sends anything for a second: levels go stale, no speaker.
        let (levels, speaker, _) = d.tick(t0 + Duration::from_millis(2500));
        assert_eq!(speaker, None);
        assert!(levels.iter().all(|(_, l)| *l == 0.0));
    }

    #[test]
    fn removing_the_speaker_clears_it() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new();
        d.observe(&"a", 0, t0);
        assert_eq!(d.tick(t0).1, Some("a"));
        d.remove(&"a");
        assert_eq!(d.tick(t0).1, None);
    }
}
