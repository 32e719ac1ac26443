//! The light generator's media engine: one thread that sends and receives every participant's
//! packets itself, without webrtc-rs's per-packet tasks, so one core can drive a server to its
//! limit.
//!
//! **Handshake.** Joins are exactly those of the normal generator: the same signaling, the same
//! webrtc-rs peer connections doing ICE and DTLS-SRTP. Two public webrtc-rs extension points
//! let the engine take the media over afterwards, without patching webrtc-rs:
//!
//! - the connection's [`Runtime`] ([`PeerConnectionBuilder::with_runtime`]) is tokio's, except
//!   that the UDP socket it is given is kept by the engine: webrtc-rs gets a [`ProxySocket`]
//!   whose sends go straight to that socket and whose receives come from a queue the engine
//!   fills. The engine is the socket's only reader, from the first datagram on.
//! - the connection's crypto provider ([`SettingEngineBuilder::with_crypto_provider`]) is the
//!   default one (ring) wrapped by a [`KeyTap`]. webrtc-rs exposes neither the DTLS keying
//!   material nor its SRTP contexts; what the tap sees is the SRTP key derivation (RFC 3711
//!   §4.3) when the DTLS handshake completes: rtc-srtp derives each session key by encrypting
//!   one AES block with the **master key** as the key and the **master salt** (XOR the label)
//!   as the block. The local context is derived first, then the remote one, so the first two
//!   keys seen are the local and remote master keys, and the first block of each holds its
//!   salt (label 0, index 0). Every further block of the same key is checked against that salt.
//!   The negotiated profile is read from the connection's stats.
//!
//! **Media.** Once the keys and the profile are known, the engine builds its own rtc-srtp
//! contexts from them (the local one for what the participant publishes, the remote one, with
//! the same 64-packet replay window as webrtc-rs, for what it receives) and from then on:
//! RTP datagrams (RFC 7983 demultiplexing) are decrypted and handed to the same `on_rtp` hook
//! as in normal mode, and a publisher's packets (the same RTP header, payload and size as
//! webrtc-rs's `write_rtp` produces) are encrypted and sent from its socket every 20 ms.
//! Everything else (STUN consent checks, DTLS, SRTCP both ways) still goes through webrtc-rs via
//! the proxy socket, so ICE stays alive and RTCP is answered as before. A packet that fails
//! authentication or replay checks is counted and dropped, as webrtc-rs would.
//!
//! The thread waits in epoll (mio), reads each readable socket with `recvmmsg` (through nix's
//! safe wrapper) until it is drained, and sends with one `sendto` per packet: a publisher has
//! one packet per 20 ms on its own socket, so there is nothing to batch per socket.
//!
//! The same engine carries the floor's plain-UDP participants (`load --target floor`): no
//! crypto, the 16 bytes of an SRTP-GCM tag replaced by 16 bytes of RTP padding so datagrams
//! have the same size.
//!
//! [`PeerConnectionBuilder::with_runtime`]: webrtc::peer_connection::PeerConnectionBuilder::with_runtime
//! [`SettingEngineBuilder::with_crypto_provider`]: webrtc::peer_connection::SettingEngineBuilder::with_crypto_provider

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};
use rtc::rtp;
use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};
use rtc::srtp::context::Context as SrtpContext;
use rtc::srtp::option::srtp_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;
use serde_json::{Value, json};
use webrtc::peer_connection::{PeerConnection, StatsSelector};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

use crate::client::{PayloadFn, RtpFn};

/// Datagrams read per `recvmmsg`.
const BATCH: usize = 32;
/// The mio token of the engine's waker.
const WAKE: Token = Token(usize::MAX);
/// Bytes an SRTP AEAD-AES-128-GCM tag adds to a packet: the floor pads its packets by this much.
pub const FLOOR_PAD: usize = 16;
/// Datagrams kept for webrtc-rs at most per socket (it reads them at once; this only bounds a
/// connection that stopped reading).
const STACK_QUEUE: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of the engine, for the report.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub rtp_sent: AtomicU64,
    pub rtp_received: AtomicU64,
    pub recvmmsg_calls: AtomicU64,
    pub wakeups: AtomicU64,
    /// Datagrams handed to webrtc-rs (STUN, DTLS, SRTCP, and RTP before the take-over).
    pub to_webrtc: AtomicU64,
    pub decrypt_errors: AtomicU64,
    pub send_errors: AtomicU64,
    /// Connections whose media the engine took over.
    pub taken_over: AtomicU64,
    /// Take-overs that failed (the participant then neither sends nor receives through the
    /// engine: its loss shows).
    pub take_over_failed: AtomicU64,
    /// Connections per negotiated SRTP profile.
    pub profiles: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// What a publisher sends: packet `n` is `payload(n)` with SSRC `ssrc`, payload type 111,
/// sequence number `seq0 + n` (random start) and timestamp `960 n`, every 20 ms; `sent(n)` after
/// each packet the socket took.
pub struct Publish {
    pub ssrc: u32,
    pub payload: PayloadFn,
    pub sent: Option<Arc<dyn Fn(u32) + Send + Sync>>,
}

/// One UDP socket of a participant: a peer connection's (light mode) or a floor participant's.
pub struct Conn {
    token: usize,
    sock: UdpSocket,
    local: SocketAddr,
    stack: Mutex<StackQueue>,
    /// Where webrtc-rs sent DTLS: the remote end of the selected ICE pair, where media goes.
    media_peer: Mutex<Option<SocketAddr>>,
}

/// Datagrams for webrtc-rs, and its waker when it waits for one.
#[derive(Default)]
struct StackQueue {
    queue: VecDeque<(Vec<u8>, SocketAddr)>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("token", &self.token)
            .field("local", &self.local)
            .finish()
    }
}

impl Conn {
    fn to_stack(&self, data: &[u8], from: SocketAddr) {
        let mut s = lock(&self.stack);
        if s.queue.len() < STACK_QUEUE {
            s.queue.push_back((data.to_vec(), from));
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

struct SrtpPair {
    local: SrtpContext,
    remote: SrtpContext,
}

enum Cmd {
    Add(Arc<Conn>),
    Start {
        token: usize,
        srtp: Option<Box<SrtpPair>>,
        on_rtp: Option<RtpFn>,
        publish: Option<Publish>,
        dest: SocketAddr,
    },
    Remove(usize),
}

struct Shared {
    waker: mio::Waker,
    cmds: Mutex<Vec<Cmd>>,
    next_token: AtomicUsize,
    stats: EngineStats,
}

impl Shared {
    fn cmd(&self, c: Cmd) {
        lock(&self.cmds).push(c);
        let _ = self.waker.wake();
    }
}

/// The engine: one thread, started once per generator.
pub struct Engine {
    shared: Arc<Shared>,
    /// The crypto of the engine's own SRTP contexts (the built-in default, as webrtc-rs's).
    provider: Arc<dyn RTCCryptoProvider>,
}

impl Engine {
    pub fn start() -> anyhow::Result<Arc<Engine>> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let shared = Arc::new(Shared {
            waker,
            cmds: Mutex::default(),
            next_token: AtomicUsize::new(0),
            stats: EngineStats::default(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("light-media".into())
            .spawn(move || run(poll, &s))?;
        let provider =
            rtc::crypto::default_provider().map_err(|e| anyhow!("no crypto provider: {e}"))?;
        Ok(Arc::new(Engine { shared, provider }))
    }

    /// Hand a bound socket to the engine; it reads it from now on.
    pub fn add(&self, sock: UdpSocket) -> io::Result<Arc<Conn>> {
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        let conn = Arc::new(Conn {
            token: self.shared.next_token.fetch_add(1, Ordering::Relaxed),
            sock,
            local,
            stack: Mutex::default(),
            media_peer: Mutex::default(),
        });
        self.shared.cmd(Cmd::Add(conn.clone()));
        Ok(conn)
    }

    /// Plain UDP (the floor): RTP from `conn` goes to `on_rtp` unencrypted, `publish` (if any)
    /// sends to `dest`.
    pub fn start_plain(
        &self,
        conn: &Conn,
        dest: SocketAddr,
        on_rtp: Option<RtpFn>,
        publish: Option<Publish>,
    ) {
        self.shared.cmd(Cmd::Start {
            token: conn.token,
            srtp: None,
            on_rtp,
            publish,
            dest,
        });
    }

    pub fn remove(&self, conn: &Conn) {
        self.shared.cmd(Cmd::Remove(conn.token));
    }

    pub fn stats_json(&self) -> Value {
        let s = &self.shared.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "rtp_sent": g(&s.rtp_sent),
            "rtp_received": g(&s.rtp_received),
            "recvmmsg_calls": g(&s.recvmmsg_calls),
            "wakeups": g(&s.wakeups),
            "to_webrtc_rs": g(&s.to_webrtc),
            "decrypt_errors": g(&s.decrypt_errors),
            "send_errors": g(&s.send_errors),
            "connections_taken_over": g(&s.taken_over),
            "take_overs_failed": g(&s.take_over_failed),
            "srtp_profiles": *lock(&s.profiles),
        })
    }

    /// The runtime and crypto provider for one webrtc-rs peer connection, and the handle that
    /// takes its media over once DTLS is done.
    pub fn pc_parts(self: &Arc<Self>) -> (Arc<dyn Runtime>, Arc<dyn RTCCryptoProvider>, LightPc) {
        let slot = Arc::new(OnceLock::new());
        let tap = Arc::new(KeyTap {
            inner: self.provider.clone(),
            crypto: TapCrypto {
                inner: self.provider.clone(),
                blocks: Mutex::default(),
            },
        });
        let runtime = Arc::new(LightRuntime {
            tokio: TokioRuntime,
            engine: self.clone(),
            slot: slot.clone(),
        });
        (
            runtime,
            tap.clone(),
            LightPc {
                engine: self.clone(),
                slot,
                tap,
            },
        )
    }
}

/// The light side of one webrtc-rs peer connection.
pub struct LightPc {
    engine: Arc<Engine>,
    slot: Arc<OnceLock<Arc<Conn>>>,
    tap: Arc<KeyTap>,
}

impl LightPc {
    /// Wait for the DTLS handshake of `pc`, then move its media to the engine: received RTP
    /// to `on_rtp`, and `publish` sent from now on. Errors (and counts) when the handshake
    /// does not complete within 30 s or the keys cannot be read.
    pub async fn take_over(
        self,
        pc: Arc<dyn PeerConnection>,
        on_rtp: Option<RtpFn>,
        publish: Option<Publish>,
    ) -> anyhow::Result<()> {
        let res = self.take_over_inner(pc, on_rtp, publish).await;
        let stats = &self.engine.shared.stats;
        match &res {
            Ok(()) => stats.taken_over.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.take_over_failed.fetch_add(1, Ordering::Relaxed),
        };
        res
    }

    async fn take_over_inner(
        &self,
        pc: Arc<dyn PeerConnection>,
        on_rtp: Option<RtpFn>,
        publish: Option<Publish>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (conn, dest, keys, profile) = loop {
            if Instant::now() > deadline {
                bail!("no DTLS-SRTP keys within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let Some(conn) = self.slot.get() else {
                continue;
            };
            let Some(dest) = *lock(&conn.media_peer) else {
                continue;
            };
            let Some(keys) = self.tap.crypto.master_keys() else {
                continue;
            };
            // The profile is in the stats once the handshake completed (set with the keys).
            let report = pc
                .get_stats(std::time::Instant::now(), StatsSelector::None)
                .await;
            let cipher = report
                .transport()
                .map(|t| t.srtp_cipher.clone())
                .unwrap_or_default();
            if cipher.is_empty() {
                continue;
            }
            let profile = match cipher.as_str() {
                "SRTP_AEAD_AES_128_GCM" => ProtectionProfile::AeadAes128Gcm,
                "SRTP_AEAD_AES_256_GCM" => ProtectionProfile::AeadAes256Gcm,
                "SRTP_AES128_CM_HMAC_SHA1_80" => ProtectionProfile::Aes128CmHmacSha1_80,
                "SRTP_AES128_CM_HMAC_SHA1_32" => ProtectionProfile::Aes128CmHmacSha1_32,
                other => bail!("SRTP profile {other} not supported by the light generator"),
            };
            *lock(&self.engine.shared.stats.profiles)
                .entry(cipher)
                .or_default() += 1;
            break (conn.clone(), dest, keys, profile);
        };
        let crypto = self.engine.provider.crypto();
        let ctx = |(key, block): &(Vec<u8>, Vec<u8>), replay: bool| {
            anyhow::ensure!(
                key.len() == profile.key_len(),
                "master key of {} bytes for {profile:?}",
                key.len()
            );
            let salt = &block[..profile.salt_len()];
            self.tap.crypto.check_salt(key, salt)?;
            SrtpContext::new(
                key,
                salt,
                profile,
                replay.then(|| srtp_replay_protection(64)),
                None,
                crypto,
            )
            .map_err(|e| anyhow!("SRTP context: {e}"))
        };
        let pair = SrtpPair {
            local: ctx(&keys.0, false)?,
            remote: ctx(&keys.1, true)?,
        };
        self.engine.shared.cmd(Cmd::Start {
            token: conn.token,
            srtp: Some(Box::new(pair)),
            on_rtp,
            publish,
            dest,
        });
        Ok(())
    }
}

/// A crypto provider that is the default one, watching the SRTP key derivation: see the
/// module documentation.
struct KeyTap {
    inner: Arc<dyn RTCCryptoProvider>,
    crypto: TapCrypto,
}

struct TapCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    /// Every (key, input block) of `block_encrypt`, in order.
    blocks: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl TapCrypto {
    /// (key, first block) of the first two distinct keys: the local and remote master keys.
    #[allow(clippy::type_complexity)]
    fn master_keys(&self) -> Option<((Vec<u8>, Vec<u8>), (Vec<u8>, Vec<u8>))> {
        let b = lock(&self.blocks);
        let first = b.first()?.clone();
        let second = b.iter().find(|(k, _)| *k != first.0)?.clone();
        Some((first, second))
    }

    /// Every block derived with `key` must be `salt` XOR a label (byte 7) and an index (bytes
    /// 14..16, beyond a 12- or 14-byte salt).
    fn check_salt(&self, key: &[u8], salt: &[u8]) -> anyhow::Result<()> {
        let b = lock(&self.blocks);
        for (k, block) in b.iter().filter(|(k, _)| k == key) {
            let ok = salt
                .iter()
                .zip(block.iter())
                .enumerate()
                .all(|(i, (s, x))| i == 7 || s == x);
            anyhow::ensure!(
                ok && k.len() == key.len(),
                "a key derivation block does not match the master salt"
            );
        }
        Ok(())
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        "light-generator-key-tap"
    }
    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }
    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

impl RTCCrypto for TapCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }
    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }
    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        {
            let mut b = lock(&self.blocks);
            // Two contexts' derivations are a handful of blocks; nothing else encrypts single
            // blocks. Bounded anyway.
            if b.len() < 64 {
                b.push((key.to_vec(), block.to_vec()));
            }
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }
    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }
    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }
    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }
    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }
    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }
    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }
    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }
    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

/// tokio's runtime, except for the UDP socket (see the module documentation).
#[derive(Debug)]
struct LightRuntime {
    tokio: TokioRuntime,
    engine: Arc<Engine>,
    slot: Arc<OnceLock<Arc<Conn>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("light::Engine")
    }
}

impl Runtime for LightRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.tokio.spawn(future)
    }
    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.tokio.spawn_reactor(reactor_pool_size, future)
    }
    fn wrap_udp_socket(&self, socket: UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let conn = self.engine.add(socket)?;
        // One socket per connection (one bind address, no mDNS): a second one (an ICE restart)
        // would keep the first one's media path.
        let _ = self.slot.set(conn.clone());
        Ok(Arc::new(ProxySocket {
            conn,
            engine: self.engine.clone(),
        }))
    }
    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.tokio.wrap_tcp_listener(listener)
    }
    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.tokio.connect_tcp(remote_addr)
    }
    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }
    fn now(&self) -> Instant {
        self.tokio.now()
    }
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.sleep(duration)
    }
    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.tokio.interval(period)
    }
    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future)
    }
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }
    fn name(&self) -> &'static str {
        "light-generator"
    }
}

/// The socket webrtc-rs sees: sends go out at once, receives come from the engine.
#[derive(Debug)]
struct ProxySocket {
    conn: Arc<Conn>,
    engine: Arc<Engine>,
}

impl Drop for ProxySocket {
    fn drop(&mut self) {
        self.engine.remove(&self.conn);
    }
}

impl AsyncUdpSocket for ProxySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.conn.local)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, t: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // DTLS (RFC 7983: first byte 20..=63) goes to the selected pair's remote end.
        if t.contents.first().is_some_and(|b| (20..=63).contains(b)) {
            *lock(&self.conn.media_peer) = Some(t.destination);
        }
        match self.conn.sock.send_to(t.contents, t.destination) {
            Ok(n) => Poll::Ready(Ok(n)),
            // A full socket buffer drops the datagram, as the network would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(t.contents.len())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.conn.stack);
        if s.queue.is_empty() {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((d, from)) = s.queue.pop_front() else {
                break;
            };
            let len = d.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&d[..len]);
            let mut m = RecvMeta::default();
            m.addr = from;
            m.len = len;
            m.stride = len.max(1);
            m.dst_ip = Some(self.conn.local.ip());
            meta[n] = m;
            n += 1;
        }
        Poll::Ready(Ok(n))
    }
}

/// A publisher's state in the engine.
struct Sender {
    publish: Publish,
    seq0: u16,
    n: u32,
    next: Instant,
}

struct Slot {
    conn: Arc<Conn>,
    started: bool,
    srtp: Option<Box<SrtpPair>>,
    on_rtp: Option<RtpFn>,
    sender: Option<Sender>,
    dest: Option<SocketAddr>,
}

/// `recvmmsg` buffers.
struct RecvBatch {
    bufs: Vec<[u8; 2048]>,
    got: Vec<(usize, Option<SocketAddr>)>,
    headers: MultiHeaders<SockaddrStorage>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![[0u8; 2048]; BATCH],
            got: vec![(0, None); BATCH],
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    fn recv(&mut self, fd: RawFd) -> nix::Result<usize> {
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        let res = recvmmsg(
            fd,
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        let mut n = 0;
        for (slot, m) in self.got.iter_mut().zip(res) {
            let addr = m
                .address
                .and_then(|a: SockaddrStorage| a.as_sockaddr_in().map(|s| (*s).into()))
                .map(SocketAddr::V4);
            *slot = (m.bytes, addr);
            n += 1;
        }
        Ok(n)
    }
}

/// RTP, not RTCP (RFC 7983 first byte, RFC 5761 second byte).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && (128..=191).contains(&d[0]) && !(192..=223).contains(&d[1])
}

fn run(mut poll: mio::Poll, shared: &Shared) {
    let stats = &shared.stats;
    let mut events = Events::with_capacity(1024);
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut rx = RecvBatch::new();
    loop {
        let timeout = due
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("light: poll: {e}");
            }
            continue;
        }
        stats.wakeups.fetch_add(1, Ordering::Relaxed);
        let cmds = std::mem::take(&mut *lock(&shared.cmds));
        let mut added = Vec::new();
        for c in cmds {
            match c {
                Cmd::Add(conn) => {
                    let fd = conn.sock.as_raw_fd();
                    if let Err(e) = poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(conn.token),
                        Interest::READABLE,
                    ) {
                        eprintln!("light: register: {e}");
                        continue;
                    }
                    let token = conn.token;
                    slots.insert(
                        token,
                        Slot {
                            conn,
                            started: false,
                            srtp: None,
                            on_rtp: None,
                            sender: None,
                            dest: None,
                        },
                    );
                    added.push(token);
                }
                Cmd::Start {
                    token,
                    srtp,
                    on_rtp,
                    publish,
                    dest,
                } => {
                    let Some(s) = slots.get_mut(&token) else {
                        continue;
                    };
                    s.started = true;
                    s.srtp = srtp;
                    s.on_rtp = on_rtp;
                    s.dest = Some(dest);
                    if let Some(p) = publish {
                        let now = Instant::now();
                        s.sender = Some(Sender {
                            publish: p,
                            seq0: rand::random(),
                            n: 0,
                            next: now,
                        });
                        due.push(Reverse((now, token)));
                    }
                }
                Cmd::Remove(token) => {
                    if let Some(s) = slots.remove(&token) {
                        let fd = s.conn.sock.as_raw_fd();
                        let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    }
                }
            }
        }
        // Whatever arrived before the registration, once a `Start` in the same batch is applied.
        for token in added {
            if let Some(s) = slots.get_mut(&token) {
                drain(s, &mut rx, stats);
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            if let Some(s) = slots.get_mut(&ev.token().0) {
                drain(s, &mut rx, stats);
            }
        }
        // Sends that are due (in time order; 20 ms apart per publisher, catching up after a
        // late wake-up like tokio's interval).
        let now = Instant::now();
        while let Some(Reverse((t, token))) = due.peek().copied() {
            if t > now {
                break;
            }
            due.pop();
            let Some(s) = slots.get_mut(&token) else {
                continue;
            };
            if let Some(next) = send_one(s, stats) {
                due.push(Reverse((next, token)));
            }
        }
    }
}

/// Read `s`'s socket until it is empty.
fn drain(s: &mut Slot, rx: &mut RecvBatch, stats: &EngineStats) {
    let fd = s.conn.sock.as_raw_fd();
    loop {
        stats.recvmmsg_calls.fetch_add(1, Ordering::Relaxed);
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => return,
            // An ICMP error (a peer gone) is reported once; the socket goes on.
            Err(nix::errno::Errno::ECONNREFUSED) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("light: recvmmsg: {e}");
                return;
            }
        };
        for i in 0..n {
            let (len, from) = rx.got[i];
            let Some(from) = from else { continue };
            handle(s, &rx.bufs[i][..len], from, stats);
        }
        if n < BATCH {
            return;
        }
    }
}

fn handle(s: &mut Slot, d: &[u8], from: SocketAddr, stats: &EngineStats) {
    if s.started && is_rtp(d) {
        let Some(on_rtp) = &s.on_rtp else {
            return;
        };
        let plain = match &mut s.srtp {
            Some(p) => {
                let mut b = d;
                let dec = rtp::Header::unmarshal(&mut b)
                    .map_err(|e| e.to_string())
                    .and_then(|h| {
                        p.remote
                            .decrypt_rtp_with_header(d, &h)
                            .map_err(|e| e.to_string())
                    });
                match dec {
                    Ok(b) => b.freeze(),
                    Err(_) => {
                        stats.decrypt_errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            None => Bytes::copy_from_slice(d),
        };
        let mut b = plain;
        match rtp::Packet::unmarshal(&mut b) {
            Ok(pkt) => {
                stats.rtp_received.fetch_add(1, Ordering::Relaxed);
                on_rtp(&pkt);
            }
            Err(_) => {
                stats.decrypt_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    if s.srtp.is_none() && s.started {
        // A floor participant: nothing but RTP is for anyone.
        return;
    }
    stats.to_webrtc.fetch_add(1, Ordering::Relaxed);
    s.conn.to_stack(d, from);
}

/// Send the publisher's next packet; returns when the one after is due.
fn send_one(s: &mut Slot, stats: &EngineStats) -> Option<Instant> {
    let dest = s.dest?;
    let snd = s.sender.as_mut()?;
    let n = snd.n;
    snd.n = snd.n.wrapping_add(1);
    snd.next += Duration::from_millis(20);
    let payload = (snd.publish.payload)(n);
    let plain = s.srtp.is_none();
    let header = rtp::Header {
        version: 2,
        padding: plain,
        payload_type: 111,
        sequence_number: snd.seq0.wrapping_add(n as u16),
        timestamp: n.wrapping_mul(960),
        ssrc: snd.publish.ssrc,
        ..Default::default()
    };
    let hl = header.marshal_size();
    let pad = if plain { FLOOR_PAD } else { 0 };
    let mut pkt = vec![0u8; hl + payload.len() + pad];
    if header.marshal_to(&mut pkt[..hl]).is_err() {
        stats.send_errors.fetch_add(1, Ordering::Relaxed);
        return Some(snd.next);
    }
    pkt[hl..hl + payload.len()].copy_from_slice(&payload);
    let sent = match &mut s.srtp {
        Some(p) => match p.local.encrypt_rtp_with_header(&pkt, &header) {
            Ok(enc) => s.conn.sock.send_to(&enc, dest),
            Err(e) => Err(io::Error::other(e.to_string())),
        },
        None => {
            if let Some(last) = pkt.last_mut() {
                *last = FLOOR_PAD as u8;
            }
            s.conn.sock.send_to(&pkt, dest)
        }
    };
    match sent {
        Ok(_) => {
            stats.rtp_sent.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = &snd.publish.sent {
                f(n);
            }
        }
        Err(_) => {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    Some(snd.next)
}

/// The floor's control datagrams (`benches/src/bin/floor.rs`): a participant registers its
/// socket for a room and gets an ack; media is anything else (RTP's first byte is never `F`).
pub mod floor_proto {
    pub const REGISTER: &[u8; 5] = b"FLREG";
    pub const ACK: &[u8; 5] = b"FLACK";
    pub const BYE: &[u8; 5] = b"FLBYE";
}

/// A participant of the floor forwarder: a plain UDP socket registered for its room,
/// publishing and receiving through the engine.
pub struct FloorPart {
    engine: Arc<Engine>,
    conn: Arc<Conn>,
    server: SocketAddr,
}

impl FloorPart {
    /// Register a new socket for `room` with the forwarder at `server`, then publish `publish`
    /// and hand what arrives to `on_rtp`.
    pub async fn join(
        engine: &Arc<Engine>,
        server: SocketAddr,
        room: u32,
        on_rtp: RtpFn,
        publish: Publish,
    ) -> anyhow::Result<FloorPart> {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let mut reg = floor_proto::REGISTER.to_vec();
        reg.extend_from_slice(&room.to_be_bytes());
        let mut buf = [0u8; 64];
        let mut acked = false;
        for _ in 0..10 {
            sock.send_to(&reg, server).await?;
            match tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if from == server && buf[..n].starts_with(floor_proto::ACK) => {
                    acked = true;
                    break;
                }
                _ => continue,
            }
        }
        if !acked {
            bail!("the floor forwarder at {server} did not acknowledge");
        }
        let sock = sock.into_std().context("floor socket")?;
        let conn = engine.add(sock)?;
        engine.start_plain(&conn, server, Some(on_rtp), Some(publish));
        Ok(FloorPart {
            engine: engine.clone(),
            conn,
            server,
        })
    }

    pub fn leave(self) {
        let _ = self.conn.sock.send_to(floor_proto::BYE, self.server);
        self.engine.remove(&self.conn);
    }
}
