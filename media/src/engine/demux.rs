//! Which connection a datagram on a shared UDP socket belongs to (pure).
//!
//! - [`classify`]: the RFC 7983 first-byte ranges (STUN 0-3, DTLS 20-63, RTP/RTCP 128-191;
//!   anything else is junk).
//! - [`stun_local_ufrag`]: the local (server-side) ufrag of a STUN Binding request, read from its
//!   USERNAME attribute (`local:remote`, RFC 8445 §7.2.2) as a slice of the datagram: no
//!   allocation.
//! - [`DemuxTable`]: ufrag -> connection and address -> connection. An address is learned only
//!   from a STUN Binding request whose ufrag is known; DTLS and SRTP are accepted only from a
//!   learned address. [`DemuxTable::route`] says what to do with one datagram; the caller counts
//!   the outcomes (nothing here logs).
//!
//! Learning an address from a request before its MESSAGE-INTEGRITY is checked is safe here: the
//! connection's ICE agent still checks the request, and DTLS/SRTP from that address must still
//! pass the agent's own check of the remote candidate, DTLS and SRTP authentication. A connection
//! keeps at most [`MAX_ADDRS_PER_CONN`] addresses (oldest forgotten first), so a sender that knows
//! a ufrag cannot grow the table without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

/// STUN Binding request message type.
const BINDING_REQUEST: u16 = 0x0001;
/// STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;
/// STUN header length.
const STUN_HEADER: usize = 20;
/// Addresses remembered per connection (a client's candidates that sent checks).
pub const MAX_ADDRS_PER_CONN: usize = 8;

/// A datagram's protocol by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    /// RTP or RTCP (SRTP/SRTCP once keyed).
    Rtp,
    /// Empty, or a first byte outside the three ranges (ZRTP, TURN channels, garbage).
    Junk,
}

/// Classify a datagram by its first byte.
pub fn classify(d: &[u8]) -> Kind {
    match d.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Junk,
    }
}

/// What a STUN datagram is, as far as demultiplexing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stun<'a> {
    /// A Binding request with a USERNAME; the slice is the part before the first `:`.
    Request { local_ufrag: &'a [u8] },
    /// A well-formed STUN message that is not a Binding request with a USERNAME (a response,
    /// an indication, a request without USERNAME).
    Other,
    /// Too short, bad cookie, bad length, or attributes that overrun the message.
    Malformed,
}

/// Parse just enough of a STUN message to demultiplex it.
pub fn parse_stun(d: &[u8]) -> Stun<'_> {
    if d.len() < STUN_HEADER {
        return Stun::Malformed;
    }
    let ty = u16::from_be_bytes([d[0], d[1]]);
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let cookie = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    if ty & 0xC000 != 0 || cookie != MAGIC_COOKIE || len % 4 != 0 || STUN_HEADER + len > d.len() {
        return Stun::Malformed;
    }
    let body = &d[STUN_HEADER..STUN_HEADER + len];
    let mut at = 0;
    while at + 4 <= body.len() {
        let a_ty = u16::from_be_bytes([body[at], body[at + 1]]);
        let a_len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let start = at + 4;
        let end = start + a_len;
        if end > body.len() {
            return Stun::Malformed;
        }
        if a_ty == ATTR_USERNAME {
            if ty != BINDING_REQUEST {
                return Stun::Other;
            }
            let user = &body[start..end];
            let local = match user.iter().position(|&b| b == b':') {
                Some(i) => &user[..i],
                None => user,
            };
            if local.is_empty() {
                return Stun::Malformed;
            }
            return Stun::Request { local_ufrag: local };
        }
        // Attributes are padded to a multiple of 4 bytes.
        at = start + a_len.div_ceil(4) * 4;
    }
    if at != body.len() {
        return Stun::Malformed;
    }
    Stun::Other
}

/// STUN attribute USE-CANDIDATE (RFC 8445): the controlling agent nominates the pair.
const ATTR_USE_CANDIDATE: u16 = 0x0025;

/// Whether a datagram is a STUN Binding request carrying USE-CANDIDATE.
pub fn is_nomination(d: &[u8]) -> bool {
    if d.len() < STUN_HEADER || u16::from_be_bytes([d[0], d[1]]) != BINDING_REQUEST {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let Some(body) = d.get(STUN_HEADER..STUN_HEADER + len) else {
        return false;
    };
    let mut at = 0;
    while at + 4 <= body.len() {
        let a_ty = u16::from_be_bytes([body[at], body[at + 1]]);
        let a_len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        if a_ty == ATTR_USE_CANDIDATE {
            return true;
        }
        at += 4 + a_len.div_ceil(4) * 4;
    }
    false
}

/// The local ufrag of a STUN Binding request, or `None` for anything else.
pub fn stun_local_ufrag(d: &[u8]) -> Option<&[u8]> {
    match parse_stun(d) {
        Stun::Request { local_ufrag } => Some(local_ufrag),
        _ => None,
    }
}

/// Where one datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<K> {
    /// Hand it to this connection.
    Conn(K),
    /// First byte in no RFC 7983 range.
    Junk,
    /// A STUN-range datagram that does not parse.
    BadStun,
    /// A Binding request for a ufrag no connection has.
    UnknownUfrag,
    /// DTLS, RTP/RTCP, or STUN without a known ufrag, from an address no connection has learned.
    UnknownSource,
}

/// ufrag -> connection and address -> connection.
#[derive(Debug)]
pub struct DemuxTable<K> {
    by_ufrag: HashMap<Box<[u8]>, K>,
    by_addr: HashMap<SocketAddr, K>,
    /// Addresses learned per connection, oldest first.
    addrs: HashMap<K, Vec<SocketAddr>>,
}

impl<K> Default for DemuxTable<K> {
    fn default() -> Self {
        DemuxTable {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> DemuxTable<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a connection's local ufrag. Returns false (and changes nothing) when another
    /// connection already has it.
    pub fn insert_ufrag(&mut self, ufrag: &str, conn: K) -> bool {
        if self.by_ufrag.contains_key(ufrag.as_bytes()) {
            return false;
        }
        self.by_ufrag.insert(ufrag.as_bytes().into(), conn);
        true
    }

    pub fn has_ufrag(&self, ufrag: &str) -> bool {
        self.by_ufrag.contains_key(ufrag.as_bytes())
    }

    /// Forget a connection: its ufrag and every address it learned.
    pub fn remove(&mut self, conn: K) {
        self.by_ufrag.retain(|_, c| *c != conn);
        if let Some(addrs) = self.addrs.remove(&conn) {
            for a in addrs {
                if self.by_addr.get(&a) == Some(&conn) {
                    self.by_addr.remove(&a);
                }
            }
        }
    }

    /// The connection an address belongs to.
    pub fn by_addr(&self, from: &SocketAddr) -> Option<K> {
        self.by_addr.get(from).copied()
    }

    pub fn by_ufrag(&self, ufrag: &[u8]) -> Option<K> {
        self.by_ufrag.get(ufrag).copied()
    }

    /// Bind `from` to `conn` (a later check from the same address for another connection moves
    /// it). Keeps at most [`MAX_ADDRS_PER_CONN`] per connection.
    pub fn learn(&mut self, from: SocketAddr, conn: K) {
        match self.by_addr.insert(from, conn) {
            Some(prev) if prev == conn => return,
            Some(prev) => {
                if let Some(v) = self.addrs.get_mut(&prev) {
                    v.retain(|a| *a != from);
                }
            }
            None => {}
        }
        let v = self.addrs.entry(conn).or_default();
        v.push(from);
        if v.len() > MAX_ADDRS_PER_CONN {
            let old = v.remove(0);
            if self.by_addr.get(&old) == Some(&conn) {
                self.by_addr.remove(&old);
            }
        }
    }

    /// Route one datagram from `from`, learning `from` when it is a Binding request for a
    /// known ufrag.
    pub fn route(&mut self, d: &[u8], from: SocketAddr) -> Route<K> {
        match classify(d) {
            Kind::Junk => Route::Junk,
            Kind::Stun => match parse_stun(d) {
                Stun::Malformed => Route::BadStun,
                Stun::Request { local_ufrag } => match self.by_ufrag(local_ufrag) {
                    Some(c) => {
                        self.learn(from, c);
                        Route::Conn(c)
                    }
                    None => Route::UnknownUfrag,
                },
                Stun::Other => match self.by_addr(&from) {
                    Some(c) => Route::Conn(c),
                    None => Route::UnknownSource,
                },
            },
            Kind::Dtls | Kind::Rtp => match self.by_addr(&from) {
                Some(c) => Route::Conn(c),
                None => Route::UnknownSource,
            },
        }
    }

    /// Number of learned addresses (for tests and metrics).
    pub fn addr_count(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request with `attrs` (type, value) in order.
    fn stun(ty: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut d = Vec::new();
        d.extend_from_slice(&ty.to_be_bytes());
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        d.extend_from_slice(&[7; 12]);
        d.extend_from_slice(&body);
        d
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[]), Kind::Junk);
        for b in 0..=3u8 {
            assert_eq!(classify(&[b]), Kind::Stun);
        }
        for b in 4..=19u8 {
            assert_eq!(classify(&[b]), Kind::Junk);
        }
        for b in 20..=63u8 {
            assert_eq!(classify(&[b]), Kind::Dtls);
        }
        for b in 64..=127u8 {
            assert_eq!(classify(&[b]), Kind::Junk);
        }
        for b in 128..=191u8 {
            assert_eq!(classify(&[b]), Kind::Rtp);
        }
        for b in 192..=255u8 {
            assert_eq!(classify(&[b]), Kind::Junk);
        }
    }

    #[test]
    fn reads_the_local_ufrag_of_a_binding_request() {
        let d = stun(
            BINDING_REQUEST,
            &[
                (0x0024, &[0, 0, 0, 1]), // PRIORITY first
                (ATTR_USERNAME, b"srvUfrag:cli"),
                (0x0008, &[0; 20]),
            ],
        );
        assert_eq!(stun_local_ufrag(&d), Some(&b"srvUfrag"[..]));
        // No colon: the whole username.
        let d = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"abc")]);
        assert_eq!(stun_local_ufrag(&d), Some(&b"abc"[..]));
        // A response carries no request ufrag.
        let d = stun(0x0101, &[(ATTR_USERNAME, b"a:b")]);
        assert_eq!(parse_stun(&d), Stun::Other);
        // A request without USERNAME.
        let d = stun(BINDING_REQUEST, &[(0x0024, &[0, 0, 0, 1])]);
        assert_eq!(parse_stun(&d), Stun::Other);
    }

    #[test]
    fn rejects_malformed_stun() {
        let good = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"u:v")]);
        // Truncated anywhere.
        for n in 0..good.len() {
            assert_ne!(
                parse_stun(&good[..n]),
                Stun::Request { local_ufrag: b"u" },
                "prefix {n}"
            );
        }
        assert_eq!(parse_stun(&good[..19]), Stun::Malformed);
        assert_eq!(parse_stun(&good[..good.len() - 4]), Stun::Malformed);
        // Bad cookie.
        let mut d = good.clone();
        d[4] ^= 1;
        assert_eq!(parse_stun(&d), Stun::Malformed);
        // Attribute length overruns the message.
        let mut d = good.clone();
        d[STUN_HEADER + 3] = 200;
        assert_eq!(parse_stun(&d), Stun::Malformed);
        // Empty local part.
        let d = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b":v")]);
        assert_eq!(parse_stun(&d), Stun::Malformed);
        // Top two bits set: not STUN.
        let mut d = good;
        d[0] = 0xC0;
        assert_eq!(parse_stun(&d), Stun::Malformed);
    }

    #[test]
    fn nominations_are_recognised() {
        let plain = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"aaaa:c")]);
        let nominate = stun(
            BINDING_REQUEST,
            &[(ATTR_USERNAME, b"aaaa:c"), (ATTR_USE_CANDIDATE, b"")],
        );
        assert!(!is_nomination(&plain));
        assert!(is_nomination(&nominate));
        assert!(!is_nomination(&nominate[..nominate.len() - 4]));
        assert!(!is_nomination(&[0u8; 3]));
    }

    #[test]
    fn routes_by_ufrag_then_by_learned_address() {
        let mut t = DemuxTable::<u32>::new();
        assert!(t.insert_ufrag("aaaa", 1));
        assert!(t.insert_ufrag("bbbb", 2));
        assert!(!t.insert_ufrag("aaaa", 3));
        let rtp = [0x80u8, 111, 0, 1];
        let dtls = [22u8, 0xfe, 0xfd];
        // Media before any check: unknown source.
        assert_eq!(t.route(&rtp, addr(5000)), Route::UnknownSource);
        assert_eq!(t.route(&dtls, addr(5000)), Route::UnknownSource);
        // A check for an unknown ufrag teaches nothing.
        let req_x = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"xxxx:c")]);
        assert_eq!(t.route(&req_x, addr(5000)), Route::UnknownUfrag);
        assert_eq!(t.route(&rtp, addr(5000)), Route::UnknownSource);
        // A check for a known ufrag binds the address.
        let req_a = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"aaaa:c")]);
        assert_eq!(t.route(&req_a, addr(5000)), Route::Conn(1));
        assert_eq!(t.route(&rtp, addr(5000)), Route::Conn(1));
        assert_eq!(t.route(&dtls, addr(5000)), Route::Conn(1));
        let resp = stun(0x0101, &[]);
        assert_eq!(t.route(&resp, addr(5000)), Route::Conn(1));
        assert_eq!(t.route(&resp, addr(5001)), Route::UnknownSource);
        assert_eq!(t.route(&[0x50, 1], addr(5000)), Route::Junk);
        assert_eq!(t.route(&[0x00, 1], addr(5000)), Route::BadStun);
        // The same address checking another ufrag moves to that connection.
        let req_b = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"bbbb:c")]);
        assert_eq!(t.route(&req_b, addr(5000)), Route::Conn(2));
        assert_eq!(t.route(&rtp, addr(5000)), Route::Conn(2));
        // Removing a connection forgets its ufrag and addresses.
        t.remove(2);
        assert_eq!(t.route(&rtp, addr(5000)), Route::UnknownSource);
        assert_eq!(t.route(&req_b, addr(5000)), Route::UnknownUfrag);
        assert_eq!(t.route(&req_a, addr(5002)), Route::Conn(1));
    }

    #[test]
    fn bounds_addresses_per_connection() {
        let mut t = DemuxTable::<u32>::new();
        t.insert_ufrag("aaaa", 1);
        let req = stun(BINDING_REQUEST, &[(ATTR_USERNAME, b"aaaa:c")]);
        for p in 0..100 {
            assert_eq!(t.route(&req, addr(6000 + p)), Route::Conn(1));
        }
        assert_eq!(t.addr_count(), MAX_ADDRS_PER_CONN);
        // The newest are kept.
        assert_eq!(t.by_addr(&addr(6099)), Some(1));
        assert_eq!(t.by_addr(&addr(6000)), None);
    }
}
