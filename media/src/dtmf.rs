//! RFC 4733 telephone events (DTMF digits sent as RTP, "telephone-event" payload).
//!
//! Each event is a run of packets with the same SSRC and RTP timestamp (the event's start; some
//! senders, sipp among them, send events on an SSRC of their own): a 4-byte
//! payload of event code, End bit, volume and duration. The first packet should carry the RTP
//! marker bit, but it may be lost; the last packets carry the End bit and are usually sent three
//! times. [`DtmfReceiver`] reports each digit once, when its first packet arrives (marker or
//! not), and ignores retransmissions and later packets of the same event.

/// A DTMF key: `0`-`9`, `*`, `#`, `A`-`D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digit(pub char);

/// Event codes 0-15 (RFC 4733 section 3.2); other events (flash, tones) are not digits.
pub fn digit_of(event: u8) -> Option<Digit> {
    const KEYS: &[u8; 16] = b"0123456789*#ABCD";
    KEYS.get(event as usize).map(|&k| Digit(k as char))
}

/// The event code of a digit (for sending).
pub fn event_of(d: Digit) -> Option<u8> {
    b"0123456789*#ABCD"
        .iter()
        .position(|&k| k as char == d.0.to_ascii_uppercase())
        .map(|p| p as u8)
}

/// One telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    /// In RTP timestamp units since the event's start.
    pub duration: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("telephone-event payload of {0} bytes (at least 4)")]
    Short(usize),
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        let [event, flags, d0, d1, ..] = *payload else {
            return Err(DtmfError::Short(payload.len()));
        };
        Ok(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }
}

/// Turns a leg's telephone-event packets into digits, each once.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    /// The (SSRC, RTP timestamp) of the event seen last, and whether its end was seen.
    current: Option<((u32, u32), bool)>,
}

impl DtmfReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// One telephone-event packet: its SSRC, RTP timestamp and payload. Returns the digit when
    /// this packet starts a new event (with or without the marker bit), `None` for the rest of
    /// an event, its retransmitted ends, and events that are not digits.
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<Digit>, DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        let key = (ssrc, timestamp);
        match self.current {
            Some((k, ended)) if k == key => {
                self.current = Some((k, ended || ev.end));
                Ok(None)
            }
            _ => {
                self.current = Some((key, ev.end));
                Ok(digit_of(ev.event))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn one_digit_per_event_with_retransmitted_ends() {
        let mut r = DtmfReceiver::new();
        let ts = 16_000;
        assert_eq!(
            r.on_packet(7, ts, &pkt(1, false, 160)),
            Ok(Some(Digit('1')))
        );
        assert_eq!(r.on_packet(7, ts, &pkt(1, false, 320)), Ok(None));
        for _ in 0..3 {
            assert_eq!(r.on_packet(7, ts, &pkt(1, true, 640)), Ok(None));
        }
        // The same key again is a new event (a new timestamp).
        assert_eq!(
            r.on_packet(7, ts + 1_600, &pkt(1, false, 160)),
            Ok(Some(Digit('1')))
        );
        // Another stream's event with the same timestamp is another event.
        assert_eq!(
            r.on_packet(8, ts + 1_600, &pkt(2, false, 160)),
            Ok(Some(Digit('2')))
        );
    }

    #[test]
    fn a_lost_start_still_reports_the_digit_once() {
        let mut r = DtmfReceiver::new();
        // Only the end packets arrived (marker and first packets lost).
        assert_eq!(
            r.on_packet(7, 800, &pkt(11, true, 800)),
            Ok(Some(Digit('#')))
        );
        assert_eq!(r.on_packet(7, 800, &pkt(11, true, 800)), Ok(None));
        assert_eq!(
            r.on_packet(7, 8_000, &pkt(10, false, 160)),
            Ok(Some(Digit('*')))
        );
    }

    #[test]
    fn any_payload_is_a_digit_an_error_or_nothing() {
        let mut r = DtmfReceiver::new();
        let mut x: u32 = 12_345;
        for n in 0..50_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = (x >> 28) as usize;
            let payload: Vec<u8> = (0..len).map(|i| (x >> (i % 24)) as u8).collect();
            match r.on_packet(x & 3, n / 3, &payload) {
                Ok(Some(d)) => assert!("0123456789*#ABCD".contains(d.0)),
                Ok(None) => {}
                Err(DtmfError::Short(l)) => assert!(l < 4),
            }
        }
    }

    #[test]
    fn non_digits_and_short_payloads() {
        let mut r = DtmfReceiver::new();
        assert_eq!(r.on_packet(7, 1, &pkt(16, false, 160)), Ok(None), "flash");
        assert_eq!(r.on_packet(7, 2, &[1, 2]), Err(DtmfError::Short(2)));
        assert_eq!(digit_of(15), Some(Digit('D')));
        assert_eq!(event_of(Digit('d')), Some(15));
        assert_eq!(event_of(Digit('x')), None);
        let e = TelephoneEvent::parse(&pkt(5, true, 1234)).expect("parse");
        assert_eq!((e.event, e.end, e.volume, e.duration), (5, true, 10, 1234));
    }
}
