//! Splitting a message into SMS parts (3GPP TS 23.040 concatenation): GSM 7-bit texts up to 160
//! septets go in one part, longer ones in parts of 153 (the 6-byte UDH takes 7 septets); UCS-2
//! texts up to 70 code units in one, longer ones in parts of 67. An extension character (ESC +
//! code) or a UTF-16 surrogate pair is never split across parts. Pure.

use super::encoding::{ESC, Encoding, encoding_of, to_septets, to_ucs2};

pub const GSM_SINGLE: usize = 160;
pub const GSM_PART: usize = 153;
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_PART: usize = 67;
/// More parts than this is refused (TS 23.040 allows 255; carriers stop far sooner).
pub const MAX_PARTS: usize = 10;

/// A message ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segmented {
    pub encoding: Encoding,
    /// Each part's payload without UDH: unpacked septets (GSM) or UTF-16BE bytes (UCS-2).
    pub parts: Vec<Vec<u8>>,
}

impl Segmented {
    /// The 6-byte concatenation UDH for part `index` (0-based) with reference `reference`, or
    /// `None` for a single-part message.
    pub fn udh(&self, reference: u8, index: usize) -> Option<[u8; 6]> {
        (self.parts.len() > 1).then(|| {
            [
                0x05,
                0x00,
                0x03,
                reference,
                self.parts.len() as u8,
                (index + 1) as u8,
            ]
        })
    }
}

/// Why a text cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("the message is empty")]
    Empty,
    #[error("the message needs {0} parts; the limit is {MAX_PARTS}")]
    TooLong(usize),
}

/// Split GSM septets into parts of at most `n`, never between ESC and its code.
fn split_septets(s: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let mut end = (i + n).min(s.len());
        // An ESC as the part's last septet would be cut from its code: move it to the next.
        if end < s.len() && s[end - 1] == ESC {
            // Count the run of ESC septets: only an unpaired one at the end is a problem.
            let run = s[i..end].iter().rev().take_while(|&&b| b == ESC).count();
            if run % 2 == 1 {
                end -= 1;
            }
        }
        parts.push(s[i..end].to_vec());
        i = end;
    }
    parts
}

/// Split UTF-16 code units into parts of at most `n`, never inside a surrogate pair.
fn split_units(u: &[u16], n: usize) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < u.len() {
        let mut end = (i + n).min(u.len());
        if end < u.len() && (0xD800..0xDC00).contains(&u[end - 1]) {
            end -= 1;
        }
        parts.push(u[i..end].iter().flat_map(|x| x.to_be_bytes()).collect());
        i = end;
    }
    parts
}

/// Encode and split a text.
pub fn segment(text: &str) -> Result<Segmented, SegmentError> {
    if text.is_empty() {
        return Err(SegmentError::Empty);
    }
    let encoding = encoding_of(text);
    let parts = match encoding {
        Encoding::Gsm7 => {
            let s = to_septets(text).unwrap_or_default();
            if s.len() <= GSM_SINGLE {
                vec![s]
            } else {
                split_septets(&s, GSM_PART)
            }
        }
        Encoding::Ucs2 => {
            let units: Vec<u16> = text.encode_utf16().collect();
            if units.len() <= UCS2_SINGLE {
                vec![to_ucs2(text)]
            } else {
                split_units(&units, UCS2_PART)
            }
        }
    };
    if parts.len() > MAX_PARTS {
        return Err(SegmentError::TooLong(parts.len()));
    }
    Ok(Segmented { encoding, parts })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sms::encoding::{from_septets, from_ucs2};

    fn counts(t: &str) -> (Encoding, usize) {
        let s = segment(t).unwrap();
        (s.encoding, s.parts.len())
    }

    #[test]
    fn boundaries() {
        assert_eq!(counts(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(counts(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(counts(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(counts(&"a".repeat(307)), (Encoding::Gsm7, 3));
        // Extension characters take two septets: 80 euros fill one part exactly.
        assert_eq!(counts(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(counts(&"€".repeat(81)), (Encoding::Gsm7, 2));
        assert_eq!(counts(&"é".repeat(160)), (Encoding::Gsm7, 1), "é is GSM");
        assert_eq!(counts(&"ï".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(counts(&"ï".repeat(71)), (Encoding::Ucs2, 2));
        assert_eq!(counts(&"ï".repeat(134)), (Encoding::Ucs2, 2));
        assert_eq!(counts(&"ï".repeat(135)), (Encoding::Ucs2, 3));
        // One emoji makes the whole text UCS-2, and it counts two code units.
        assert_eq!(
            counts(&format!("{}😀", "a".repeat(68))),
            (Encoding::Ucs2, 1)
        );
        assert_eq!(
            counts(&format!("{}😀", "a".repeat(69))),
            (Encoding::Ucs2, 2)
        );
        assert_eq!(segment(""), Err(SegmentError::Empty));
        assert_eq!(segment(&"a".repeat(1531)), Err(SegmentError::TooLong(11)));
    }

    #[test]
    fn no_part_splits_an_escape_or_a_surrogate_pair_and_parts_rejoin() {
        // 152 plain septets, then a euro: the ESC would be septet 153 of part 1.
        let t = format!("{}€{}", "a".repeat(152), "b".repeat(10));
        let s = segment(&t).unwrap();
        assert_eq!(s.parts[0].len(), 152);
        assert_eq!(s.parts[1][..2], [0x1B, 0x65]);
        let joined: String = s.parts.iter().map(|p| from_septets(p)).collect();
        assert_eq!(joined, t);
        // 66 units, then an emoji (a surrogate pair) across the 67 boundary.
        let t = format!("{}😀{}", "ï".repeat(66), "x".repeat(10));
        let s = segment(&t).unwrap();
        assert_eq!(s.parts[0].len(), 66 * 2);
        let joined: String = s.parts.iter().map(|p| from_ucs2(p)).collect();
        assert_eq!(joined, t);
        assert!(s.parts.iter().all(|p| p.len() <= UCS2_PART * 2));
        assert_eq!(s.udh(7, 1), Some([5, 0, 3, 7, 2, 2]));
        assert_eq!(segment("hi").unwrap().udh(7, 0), None);
    }
}
