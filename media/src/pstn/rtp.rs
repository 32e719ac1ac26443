//! RTP (RFC 3550) header reading and writing for legs, total on any input.

/// A parsed RTP packet borrowing its datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtp<'a> {
    pub pt: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// RTCP (RFC 5761 section 4): packet types 192-223 where RTP would have its payload type.
pub fn is_rtcp(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] >> 6 == 2 && (192..=223).contains(&b[1])
}

/// Parse an RTP packet: version 2, CSRCs, header extension and padding skipped. `None` for
/// anything else.
pub fn parse(b: &[u8]) -> Option<Rtp<'_>> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let cc = (b[0] & 0x0f) as usize;
    let mut off = 12 + cc * 4;
    if b[0] & 0x10 != 0 {
        let ext = b.get(off..off + 4)?;
        let words = u16::from_be_bytes([ext[2], ext[3]]) as usize;
        off += 4 + words * 4;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        let pad = *b.last()? as usize;
        if pad == 0 {
            return None;
        }
        end = end.checked_sub(pad)?;
    }
    let payload = b.get(off..end)?;
    Some(Rtp {
        pt: b[1] & 0x7f,
        marker: b[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([b[2], b[3]]),
        timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload,
    })
}

/// Build a packet with a plain 12-byte header.
pub fn build(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + payload.len());
    v.push(0x80);
    v.push((pt & 0x7f) | if marker { 0x80 } else { 0 });
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_extensions() {
        let p = build(8, true, 7, 240, 0xdee0ee8f, &[1, 2, 3]);
        let r = parse(&p).unwrap();
        assert_eq!(
            (r.pt, r.marker, r.sequence, r.timestamp, r.ssrc),
            (8, true, 7, 240, 0xdee0ee8f)
        );
        assert_eq!(r.payload, &[1, 2, 3]);
        // One CSRC, a one-word extension and two bytes of padding.
        let mut q = vec![0x80 | 0x10 | 0x20 | 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        q.extend_from_slice(&[9, 9, 9, 9]);
        q.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
        q.extend_from_slice(&[5, 6, 0, 2]);
        assert_eq!(parse(&q).unwrap().payload, &[5, 6]);
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(!is_rtcp(&p));
    }

    #[test]
    fn truncated_and_hostile_headers_are_none() {
        let p = build(0, false, 1, 2, 3, &[0; 20]);
        for i in 0..12 {
            assert!(parse(&p[..i]).is_none());
        }
        assert!(parse(&[0x40; 20]).is_none(), "version 1");
        assert!(
            parse(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_none(),
            "15 CSRCs missing"
        );
        let mut pad = build(0, false, 1, 2, 3, &[1]);
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert!(parse(&pad).is_none(), "padding longer than the packet");
        for b in 0..=255u8 {
            let mut x = build(0, false, 1, 2, 3, &[b; 6]);
            x[0] = b;
            let _ = parse(&x);
        }
    }
}
