//! Inbound multipart messages: the concatenation UDH (3GPP TS 23.040 9.2.3.24.1, 8-bit
//! reference, and 9.2.3.24.8, 16-bit reference) is read from each part, and the parts of one
//! message (same sender, recipient, reference and count) are put back together in order once
//! all have arrived; duplicates are ignored and a message whose parts stop coming is given up
//! after a timeout (the caller stores what arrived). Pure: the caller passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A part's place in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Concat {
    pub reference: u16,
    pub total: u8,
    /// 1-based.
    pub index: u8,
}

/// Split a user data with a UDH (`esm_class` 0x40) into its concatenation info (if any) and the
/// payload after the header. `None` when the header does not fit in the data.
pub fn split_udh(data: &[u8]) -> Option<(Option<Concat>, &[u8])> {
    let udhl = *data.first()? as usize;
    let header = data.get(1..1 + udhl)?;
    let payload = &data[1 + udhl..];
    let mut concat = None;
    let mut i = 0;
    while i + 2 <= header.len() {
        let (iei, len) = (header[i], header[i + 1] as usize);
        let ie = header.get(i + 2..i + 2 + len)?;
        match (iei, ie) {
            (0x00, [r, t, n]) => {
                concat = Some(Concat {
                    reference: *r as u16,
                    total: *t,
                    index: *n,
                })
            }
            (0x08, [r1, r2, t, n]) => {
                concat = Some(Concat {
                    reference: u16::from_be_bytes([*r1, *r2]),
                    total: *t,
                    index: *n,
                })
            }
            _ => {}
        }
        i += 2 + len;
    }
    // A part numbered outside its count is not a usable concatenation header.
    let concat = concat.filter(|c| c.total >= 1 && c.index >= 1 && c.index <= c.total);
    Some((concat, payload))
}

/// Who a multipart message is between, and its reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub from: String,
    pub to: String,
    pub reference: u16,
    pub total: u8,
}

struct Pending {
    parts: Vec<Option<Vec<u8>>>,
    first: Instant,
}

/// What became of a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The message is whole: its payload, parts in order (decode it whole: a GSM escape or a
    /// UTF-16 surrogate pair may straddle two parts).
    Complete(Vec<u8>),
    /// Waiting for more parts.
    Waiting,
    /// This part had arrived already.
    Duplicate,
    /// Its index is 0 or past the total.
    Invalid,
}

/// Parts waiting for the rest of their message.
pub struct Reassembler {
    pending: HashMap<Key, Pending>,
    timeout: Duration,
    max_pending: usize,
}

impl Reassembler {
    pub fn new(timeout: Duration, max_pending: usize) -> Self {
        Reassembler {
            pending: HashMap::new(),
            timeout,
            max_pending: max_pending.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// One part's payload (UDH removed).
    pub fn add(&mut self, from: &str, to: &str, c: Concat, data: Vec<u8>, now: Instant) -> Outcome {
        if c.total <= 1 {
            return Outcome::Complete(data);
        }
        if c.index == 0 || c.index > c.total {
            return Outcome::Invalid;
        }
        let key = Key {
            from: from.to_string(),
            to: to.to_string(),
            reference: c.reference,
            total: c.total,
        };
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_pending {
            // Full: make room by giving up the oldest (its parts come back from `expire`'s
            // caller next time; here they are simply dropped from memory).
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.first)
                .map(|(k, _)| k.clone())
            {
                self.pending.remove(&oldest);
            }
        }
        let p = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            parts: vec![None; c.total as usize],
            first: now,
        });
        let slot = &mut p.parts[c.index as usize - 1];
        if slot.is_some() {
            return Outcome::Duplicate;
        }
        *slot = Some(data);
        if p.parts.iter().all(Option::is_some) {
            let whole = p.parts.iter().flatten().flatten().copied().collect();
            self.pending.remove(&key);
            return Outcome::Complete(whole);
        }
        Outcome::Waiting
    }

    /// Messages whose parts stopped coming: what arrived, in order, with the missing parts
    /// left out (the caller stores it rather than lose it).
    pub fn expire(&mut self, now: Instant) -> Vec<(Key, Vec<u8>)> {
        let timeout = self.timeout;
        let old: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.first) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        old.into_iter()
            .filter_map(|k| {
                let p = self.pending.remove(&k)?;
                Some((k, p.parts.into_iter().flatten().flatten().collect()))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn udh_headers() {
        let (c, p) = split_udh(&[5, 0, 3, 0xAB, 3, 2, b'h', b'i']).unwrap();
        assert_eq!(
            c,
            Some(Concat {
                reference: 0xAB,
                total: 3,
                index: 2
            })
        );
        assert_eq!(p, b"hi");
        let (c, _) = split_udh(&[6, 8, 4, 0x12, 0x34, 2, 1, b'x']).unwrap();
        assert_eq!(
            c,
            Some(Concat {
                reference: 0x1234,
                total: 2,
                index: 1
            })
        );
        // Another element first (a port address), then the concatenation one.
        let (c, p) = split_udh(&[9, 5, 2, 0x0B, 0x84, 0, 3, 7, 2, 2, b'z']).unwrap();
        assert_eq!((c.map(|c| c.reference), p), (Some(7), &b"z"[..]));
        assert_eq!(split_udh(&[9, 0, 3]), None, "header longer than the data");
        assert_eq!(split_udh(&[]), None);
        let (c, _) = split_udh(&[5, 0, 3, 1, 2, 3]).unwrap();
        assert_eq!(c, None, "part 3 of 2");
    }

    #[test]
    fn parts_are_joined_in_order_once() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 100);
        let c = |i| Concat {
            reference: 9,
            total: 3,
            index: i,
        };
        assert_eq!(r.add("+1", "+2", c(3), b"c".to_vec(), t0), Outcome::Waiting);
        assert_eq!(r.add("+1", "+2", c(1), b"a".to_vec(), t0), Outcome::Waiting);
        assert_eq!(
            r.add("+1", "+2", c(1), b"a".to_vec(), t0),
            Outcome::Duplicate
        );
        // Same reference from someone else is another message.
        assert_eq!(r.add("+9", "+2", c(2), b"X".to_vec(), t0), Outcome::Waiting);
        assert_eq!(
            r.add("+1", "+2", c(2), b"b".to_vec(), t0),
            Outcome::Complete(b"abc".to_vec())
        );
        assert_eq!(r.len(), 1);
        // The stranger's parts never complete: given up with what came.
        assert!(r.expire(t0 + Duration::from_secs(30)).is_empty());
        let gone = r.expire(t0 + Duration::from_secs(61));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1, b"X");
        assert!(r.is_empty());
        let single = Concat {
            reference: 1,
            total: 1,
            index: 1,
        };
        assert_eq!(
            r.add("+1", "+2", single, b"solo".to_vec(), t0),
            Outcome::Complete(b"solo".to_vec())
        );
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 3);
        for i in 0..10u16 {
            let c = Concat {
                reference: i,
                total: 2,
                index: 1,
            };
            r.add(
                "+1",
                "+2",
                c,
                b"x".to_vec(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn a_surrogate_pair_split_across_parts_is_joined_before_decoding() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(60), 10);
        let units: Vec<u8> = crate::sms::encoding::to_ucs2("a😀b");
        // "a" + the high surrogate in part 1, the low surrogate + "b" in part 2.
        let (p1, p2) = units.split_at(4);
        let c = |i| Concat {
            reference: 1,
            total: 2,
            index: i,
        };
        assert_eq!(r.add("+1", "+2", c(2), p2.to_vec(), t0), Outcome::Waiting);
        let Outcome::Complete(all) = r.add("+1", "+2", c(1), p1.to_vec(), t0) else {
            panic!("whole");
        };
        assert_eq!(crate::sms::encoding::from_ucs2(&all), "a😀b");
        assert_eq!(r.add("+1", "+2", c(0), vec![1], t0), Outcome::Invalid);
        assert_eq!(r.add("+1", "+2", c(3), vec![1], t0), Outcome::Invalid);
    }
}
