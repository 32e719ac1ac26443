//! A fixed-delay jitter buffer for a PSTN leg's uplink: RTP frames go in as they arrive (out of
//! order, duplicated, late), and come out one per packet time in sequence order, with a
//! [`Playout::Missing`] in place of a lost frame so the decoder can conceal it.
//!
//! Pure: the caller's ptime clock calls [`JitterBuffer::pop`]; nothing here reads a clock.
//! Playout starts once `depth` frames are buffered (the delay that absorbs jitter) and starts
//! over the same way after the buffer runs dry or the sender's numbering jumps (a new stream).

use std::collections::BTreeMap;

/// What one packet time plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout<T> {
    /// The next frame in order.
    Frame(T),
    /// The next frame is missing (lost, or later than its turn): conceal it.
    Missing,
    /// Not playing (filling up before the start, or after running dry): play silence.
    Idle,
}

/// Why a frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Accepted,
    /// Already buffered or played.
    Duplicate,
    /// Its turn has passed.
    Late,
    /// Dropped: the buffer holds its maximum.
    Overflow,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub played: u64,
    pub missing: u64,
    pub late: u64,
    pub duplicate: u64,
    pub overflow: u64,
    pub restarts: u64,
}

#[derive(Debug, Clone)]
pub struct JitterBuffer<T> {
    depth: usize,
    max: usize,
    frames: BTreeMap<u64, T>,
    /// The extended sequence number of the next frame to play, once playing.
    next: Option<u64>,
    /// The first frame not yet due: everything before it was played or passed over. Kept when
    /// the buffer runs dry, so a straggler that arrives meanwhile is still late.
    due: Option<u64>,
    /// The highest extended sequence number seen (for extending 16-bit numbers).
    highest: Option<u64>,
    stats: JitterStats,
}

/// A jump this large (in frames) is a new stream, not loss.
const RESTART_JUMP: u64 = 3_000;
/// A frame this far behind the playout point (2-3 s) is not late but a sender that started
/// its numbering over (a PBX re-anchoring media, a replayed stream): a new stream.
const RESTART_BACK: u64 = 100;

impl<T> JitterBuffer<T> {
    /// Play after `depth` frames (e.g. 3 frames of 20 ms: 60 ms); hold at most `max`.
    pub fn new(depth: usize, max: usize) -> Self {
        JitterBuffer {
            depth: depth.max(1),
            max: max.max(depth.max(1)),
            frames: BTreeMap::new(),
            next: None,
            due: None,
            highest: None,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The 16-bit RTP sequence number as a 64-bit one that keeps counting across wrap-around.
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            // Start high enough that a few reordered earlier frames do not go below zero.
            let e = (1u64 << 16) + seq as u64;
            self.highest = Some(e);
            return e;
        };
        let base = h & !0xFFFF;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        let e = candidates
            .iter()
            .map(|b| b + seq as u64)
            .min_by_key(|e| e.abs_diff(h))
            .unwrap_or(base + seq as u64);
        if e > h {
            self.highest = Some(e);
        }
        e
    }

    pub fn push(&mut self, seq: u16, frame: T) -> Push {
        let e = self.extend(seq);
        if let Some(h) = self.highest
            && h.abs_diff(e) > RESTART_JUMP
        {
            self.restart();
            return self.push(seq, frame);
        }
        if let Some(next) = self.next.or(self.due) {
            if e < next {
                // Played already, or its turn passed.
                if next - e > RESTART_BACK {
                    self.restart();
                    return self.push(seq, frame);
                }
                self.stats.late += 1;
                return Push::Late;
            }
            if e - next > RESTART_JUMP {
                self.restart();
                return self.push(seq, frame);
            }
        }
        if self.frames.contains_key(&e) {
            self.stats.duplicate += 1;
            return Push::Duplicate;
        }
        if self.frames.len() >= self.max {
            self.stats.overflow += 1;
            return Push::Overflow;
        }
        self.frames.insert(e, frame);
        Push::Accepted
    }

    fn restart(&mut self) {
        self.frames.clear();
        self.next = None;
        self.due = None;
        self.highest = None;
        self.stats.restarts += 1;
    }

    /// What this packet time plays.
    pub fn pop(&mut self) -> Playout<T> {
        let next = match self.next {
            Some(n) => n,
            None => {
                if self.frames.len() < self.depth {
                    return Playout::Idle;
                }
                match self.frames.keys().next() {
                    Some(&first) => first,
                    None => return Playout::Idle,
                }
            }
        };
        if self.frames.is_empty() {
            // Ran dry: fill up again before playing on.
            self.next = None;
            return Playout::Idle;
        }
        self.next = Some(next + 1);
        self.due = Some(next + 1);
        match self.frames.remove(&next) {
            Some(f) => {
                self.stats.played += 1;
                Playout::Frame(f)
            }
            None => {
                self.stats.missing += 1;
                Playout::Missing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(j: &mut JitterBuffer<u16>, n: usize) -> Vec<Playout<u16>> {
        (0..n).map(|_| j.pop()).collect()
    }

    #[test]
    fn fills_up_then_plays_in_order_through_reordering() {
        let mut j = JitterBuffer::new(3, 50);
        assert_eq!(j.push(10, 10), Push::Accepted);
        assert_eq!(j.pop(), Playout::Idle);
        assert_eq!(j.push(12, 12), Push::Accepted);
        assert_eq!(j.push(11, 11), Push::Accepted);
        assert_eq!(j.push(11, 11), Push::Duplicate);
        assert_eq!(
            drain(&mut j, 3),
            vec![Playout::Frame(10), Playout::Frame(11), Playout::Frame(12)]
        );
        // Dry: idle until three frames are there again.
        assert_eq!(j.pop(), Playout::Idle);
        j.push(13, 13);
        j.push(14, 14);
        assert_eq!(j.pop(), Playout::Idle);
        j.push(15, 15);
        assert_eq!(j.pop(), Playout::Frame(13));
    }

    #[test]
    fn a_lost_frame_is_missing_and_a_late_one_is_refused() {
        let mut j = JitterBuffer::new(2, 50);
        for s in [1u16, 2, 4, 5] {
            j.push(s, s);
        }
        assert_eq!(
            drain(&mut j, 4),
            vec![
                Playout::Frame(1),
                Playout::Frame(2),
                Playout::Missing,
                Playout::Frame(4)
            ]
        );
        assert_eq!(j.push(3, 3), Push::Late);
        assert_eq!(j.pop(), Playout::Frame(5));
        let s = j.stats();
        assert_eq!((s.played, s.missing, s.late), (4, 1, 1));
    }

    #[test]
    fn a_straggler_after_running_dry_is_still_late() {
        let mut j = JitterBuffer::new(1, 50);
        j.push(10, 10);
        j.push(12, 12);
        assert_eq!(
            drain(&mut j, 3),
            vec![Playout::Frame(10), Playout::Missing, Playout::Frame(12)]
        );
        assert_eq!(j.pop(), Playout::Idle, "dry");
        // 11 was passed over before the buffer ran dry: it must not be played now.
        assert_eq!(j.push(11, 11), Push::Late);
        j.push(13, 13);
        assert_eq!(j.pop(), Playout::Frame(13));
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut j = JitterBuffer::new(2, 50);
        for s in [65_534u16, 65_535, 0, 1] {
            assert_eq!(j.push(s, s), Push::Accepted);
        }
        assert_eq!(
            drain(&mut j, 4),
            vec![
                Playout::Frame(65_534),
                Playout::Frame(65_535),
                Playout::Frame(0),
                Playout::Frame(1)
            ]
        );
    }

    #[test]
    fn random_arrivals_never_break_order_or_bounds() {
        // A small LCG: reordering, loss, duplicates, wrap-around and jumps in any mix.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as u32
        };
        let mut j = JitterBuffer::new(3, 32);
        let mut seq: u16 = 65_000;
        let mut last: Option<u16> = None;
        let mut restarts = 0;
        for _ in 0..200_000 {
            match rnd() % 10 {
                0 => seq = seq.wrapping_add((rnd() % 40_000) as u16),
                1..=6 => {
                    let s = seq.wrapping_add((rnd() % 8) as u16).wrapping_sub(3);
                    j.push(s, s);
                    seq = seq.wrapping_add(1);
                }
                _ => {
                    let played = j.pop();
                    // In order within a stream; a restart (a new stream) may start anywhere.
                    if j.stats().restarts != restarts {
                        restarts = j.stats().restarts;
                        last = None;
                    }
                    if let Playout::Frame(f) = played {
                        if let Some(l) = last {
                            assert!(f != l && f.wrapping_sub(l) < 0x8000, "{l} then {f}");
                        }
                        last = Some(f);
                    }
                }
            }
            assert!(j.len() <= 32);
        }
        let s = j.stats();
        assert!(
            s.played > 0 && s.missing > 0 && s.late > 0 && s.duplicate > 0,
            "{s:?}"
        );
    }

    #[test]
    fn a_new_stream_restarts_and_a_flood_overflows() {
        let mut j = JitterBuffer::new(1, 4);
        j.push(100, 100);
        assert_eq!(j.pop(), Playout::Frame(100));
        // The sender restarted with other numbers: not 30 000 missing frames.
        assert_eq!(j.push(30_100, 1), Push::Accepted);
        assert_eq!(j.pop(), Playout::Frame(1));
        assert_eq!(j.stats().restarts, 1);
        for s in 30_101..30_105u16 {
            assert_eq!(j.push(s, s), Push::Accepted);
        }
        assert_eq!(j.push(30_105, 0), Push::Overflow);
        assert_eq!(j.len(), 4);
    }

    #[test]
    fn a_replayed_stream_restarts_instead_of_being_late() {
        // sipp replays its pcap with the same numbers: 235 frames back is a new stream.
        let mut j = JitterBuffer::new(1, 8);
        for s in 7_000..7_236u16 {
            j.push(s, s);
            assert_eq!(j.pop(), Playout::Frame(s));
        }
        assert_eq!(j.push(7_000, 1), Push::Accepted);
        assert_eq!(j.pop(), Playout::Frame(1));
        assert_eq!(j.stats().restarts, 1);
        // A frame a few behind is still just late.
        assert_eq!(j.push(6_990, 2), Push::Late);
    }
}
