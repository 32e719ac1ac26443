//! The SMPP bind(s): the IO around the pure [`crate::sms::smpp::session::Session`]. One loop
//! per bind connects (with a timeout), binds, then waits with `select!` on the SMSC's frames,
//! the sender's parts (pulled only while the session can submit), the gateway's acks of
//! inbound parts and receipts, the session's next timer and shutdown. It reconnects with
//! backoff (`reconnect_min_ms` doubling to `reconnect_max_ms`, ±20 % jitter, reset once a bind
//! has lasted 60 s). `sms.smpp.bind = "transmitter+receiver"` runs two binds: the transmitter
//! pulls parts, the receiver only receives.
//!
//! Privacy: nothing here logs a number, a text or the password, and it logs at most one line
//! per state change (never per PDU).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::SmsStats;
use super::link::{LinkEvent, OutPart, Retry};
use crate::config::SmppConfig;
use crate::sms::smpp::frame::FrameCodec;
use crate::sms::smpp::session::{Output, Role, Session, Settings};

/// A bind that lasted this long resets the reconnect backoff.
const STABLE_BIND: Duration = Duration::from_secs(60);

/// Start the SMPP link; it runs until `shutdown` turns true (or its sender is dropped), then
/// unbinds (waiting up to 2 s for unbind_resp), reports the parts in flight as `Lost`, and
/// returns.
pub fn spawn(
    cfg: SmppConfig,
    parts: mpsc::Receiver<OutPart>,
    events: mpsc::Sender<LinkEvent>,
    stats: Arc<SmsStats>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let bind = cfg.bind.trim().to_ascii_lowercase().replace(' ', "");
        match bind.as_str() {
            "transmitter+receiver" | "transmitter,receiver" | "receiver+transmitter" => {
                let tx = Link::new(&cfg, Role::Transmitter, &events, &stats);
                let rx = Link::new(&cfg, Role::Receiver, &events, &stats);
                tokio::join!(
                    tx.run(Some(parts), shutdown.clone()),
                    rx.run(None, shutdown)
                );
            }
            "transmitter" => {
                Link::new(&cfg, Role::Transmitter, &events, &stats)
                    .run(Some(parts), shutdown)
                    .await
            }
            "receiver" => {
                Link::new(&cfg, Role::Receiver, &events, &stats)
                    .run(None, shutdown)
                    .await
            }
            _ => {
                if bind != "transceiver" {
                    tracing::warn!(bind = %cfg.bind, "unknown sms.smpp.bind, using transceiver");
                }
                Link::new(&cfg, Role::Transceiver, &events, &stats)
                    .run(Some(parts), shutdown)
                    .await
            }
        }
    })
}

/// Resolves once shutdown is asked for (or can no longer be asked for).
async fn shutdown_asked(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn next_part(parts: &mut Option<mpsc::Receiver<OutPart>>) -> Option<OutPart> {
    match parts {
        Some(p) => p.recv().await,
        None => std::future::pending().await,
    }
}

type AckFuture = Pin<Box<dyn Future<Output = (u32, bool)> + Send>>;

/// How one connection ended.
struct Ended {
    /// How long the bind was up, if it came up.
    bound_for: Option<Duration>,
    shutdown: bool,
}

/// The parts of one event loop step.
enum Step {
    Shutdown,
    Frame(crate::sms::smpp::frame::Frame),
    Gone(&'static str),
    Ack(u32, bool),
    Part(OutPart),
    PartsClosed,
    Timer,
}

struct Link {
    cfg: SmppConfig,
    role: Role,
    events: mpsc::Sender<LinkEvent>,
    stats: Arc<SmsStats>,
    /// The last problem logged (so a repeating one is logged once).
    problem: Option<String>,
    /// The last bind state reported.
    state: Option<u8>,
}

impl Link {
    fn new(
        cfg: &SmppConfig,
        role: Role,
        events: &mpsc::Sender<LinkEvent>,
        stats: &Arc<SmsStats>,
    ) -> Link {
        Link {
            cfg: cfg.clone(),
            role,
            events: events.clone(),
            stats: stats.clone(),
            problem: None,
            state: None,
        }
    }

    async fn set_state(&mut self, state: u8) {
        if self.state == Some(state) {
            return;
        }
        self.state = Some(state);
        let gauge = match self.role {
            Role::Receiver => &self.stats.bind_state_rx,
            Role::Transceiver | Role::Transmitter => &self.stats.bind_state_tx,
        };
        gauge.store(state as u64, Ordering::Relaxed);
        let _ = self
            .events
            .send(LinkEvent::BindState {
                role: self.role.as_str(),
                state,
            })
            .await;
    }

    /// Log a problem once per change.
    fn problem(&mut self, key: String, what: &str) {
        if self.problem.as_deref() != Some(key.as_str()) {
            tracing::warn!(role = self.role.as_str(), problem = %key, "SMPP link: {what}");
            self.problem = Some(key);
        }
    }

    async fn run(
        mut self,
        mut parts: Option<mpsc::Receiver<OutPart>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let min = Duration::from_millis(self.cfg.reconnect_min_ms.max(1));
        let max = Duration::from_millis(self.cfg.reconnect_max_ms).max(min);
        let mut delay = min;
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.set_state(1).await;
            let ended = self.connection(&mut parts, &mut shutdown).await;
            self.set_state(0).await;
            if ended.shutdown {
                break;
            }
            if ended.bound_for.is_some_and(|d| d >= STABLE_BIND) {
                delay = min;
            }
            let wait = delay.mul_f64(rand::random_range(0.8..=1.2));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown_asked(&mut shutdown) => break,
            }
            delay = (delay * 2).min(max);
        }
        self.set_state(0).await;
        self.stats.in_flight.store(0, Ordering::Relaxed);
    }

    /// One connection, from connect to close.
    async fn connection(
        &mut self,
        parts: &mut Option<mpsc::Receiver<OutPart>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let failed = Ended {
            bound_for: None,
            shutdown: false,
        };
        let connect_timeout = Duration::from_secs(self.cfg.response_timeout_secs.clamp(1, 30));
        let connect = tokio::time::timeout(
            connect_timeout,
            TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)),
        );
        let stream = tokio::select! {
            r = connect => r,
            _ = shutdown_asked(shutdown) => return Ended { bound_for: None, shutdown: true },
        };
        let stream = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats.bind_failures.fetch_add(1, Ordering::Relaxed);
                self.problem(format!("connect: {:?}", e.kind()), "cannot connect");
                return failed;
            }
            Err(_) => {
                self.stats.bind_failures.fetch_add(1, Ordering::Relaxed);
                self.problem("connect: timeout".into(), "cannot connect");
                return failed;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, FrameCodec::new());
        let mut session = Session::new(Settings::new(&self.cfg, self.role), Instant::now());
        session.connected(Instant::now());
        let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        let mut bound_at: Option<Instant> = None;
        let mut shutting_down = false;
        let mut parts_closed = false;
        let mut refused = false;
        let gone: &'static str = loop {
            if let Some(reason) = self
                .outputs(
                    &mut session,
                    &mut framed,
                    &mut acks,
                    &mut bound_at,
                    &mut refused,
                )
                .await
            {
                break reason;
            }
            if self.role.sends() {
                self.stats
                    .in_flight
                    .store(session.in_flight() as u64, Ordering::Relaxed);
            }
            let now = Instant::now();
            let can_pull =
                !shutting_down && !parts_closed && parts.is_some() && session.can_submit(now);
            let deadline = session
                .next_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let step = tokio::select! {
                biased;
                _ = shutdown_asked(shutdown), if !shutting_down => Step::Shutdown,
                f = framed.next() => match f {
                    Some(Ok(frame)) => Step::Frame(frame),
                    Some(Err(_)) => Step::Gone("read error"),
                    None => Step::Gone("closed by the SMSC"),
                },
                Some((seq, ok)) = acks.next(), if !acks.is_empty() => Step::Ack(seq, ok),
                p = next_part(parts), if can_pull => match p {
                    Some(p) => Step::Part(p),
                    None => Step::PartsClosed,
                },
                _ = tokio::time::sleep_until(deadline) => Step::Timer,
            };
            let now = Instant::now();
            match step {
                Step::Shutdown => {
                    shutting_down = true;
                    session.unbind(now);
                }
                Step::Frame(f) => session.frame(f, now),
                Step::Gone(reason) => break reason,
                Step::Ack(seq, ok) => session.ack(seq, ok),
                Step::Part(p) => session.submit(p, now),
                Step::PartsClosed => parts_closed = true,
                Step::Timer => session.tick(now),
            }
        };
        // Whatever was in flight is lost; pending acks belong to this connection only.
        drop(acks);
        session.closed(Instant::now());
        let _ = self
            .outputs(
                &mut session,
                &mut framed,
                &mut FuturesUnordered::new(),
                &mut None,
                &mut refused,
            )
            .await;
        if self.role.sends() {
            self.stats.in_flight.store(0, Ordering::Relaxed);
        }
        let bound_for = bound_at.map(|t| t.elapsed());
        if !shutting_down && !refused {
            self.problem(format!("lost: {gone}"), "connection lost");
        }
        if shutting_down {
            tracing::info!(role = self.role.as_str(), "SMPP link closed for shutdown");
        }
        Ended {
            bound_for,
            shutdown: shutting_down,
        }
    }

    /// Carry out the session's outputs. `Some(reason)` when the connection must be dropped.
    async fn outputs(
        &mut self,
        session: &mut Session,
        framed: &mut Framed<TcpStream, FrameCodec>,
        acks: &mut FuturesUnordered<AckFuture>,
        bound_at: &mut Option<Instant>,
        refused: &mut bool,
    ) -> Option<&'static str> {
        let mut close = None;
        let mut wrote = false;
        let mut write_failed = false;
        while let Some(o) = session.pop() {
            match o {
                Output::Write(c) => {
                    // Written even when a close follows (unbind_resp before closing).
                    if !write_failed {
                        if framed.feed(c).await.is_err() {
                            write_failed = true;
                        } else {
                            wrote = true;
                        }
                    }
                }
                Output::Bound => {
                    *bound_at = Some(Instant::now());
                    tracing::info!(role = self.role.as_str(), "SMPP bound");
                    self.problem = None;
                    self.set_state(2).await;
                }
                Output::BindRefused { code } => {
                    *refused = true;
                    self.stats.bind_failures.fetch_add(1, Ordering::Relaxed);
                    self.problem(format!("bind refused: {code}"), "bind refused");
                }
                Output::Accepted {
                    message_id,
                    part,
                    carrier_message_id,
                    late,
                } => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    if late {
                        self.stats
                            .possible_duplicates
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // Receipts are matched on this id: keep it in one canonical form.
                    let carrier_message_id =
                        crate::sms::receipt::id_key(&carrier_message_id, &self.cfg.receipt_id);
                    let _ = self
                        .events
                        .send(LinkEvent::Accepted {
                            message_id,
                            part,
                            carrier_message_id,
                        })
                        .await;
                }
                Output::Failed {
                    message_id,
                    part,
                    retry,
                    code,
                    error,
                } => {
                    // Refusals by the SMSC; not a timeout, a lost link or our own check.
                    if retry != Retry::Lost && code != "timeout" && code != "invalid_part" {
                        self.stats.submit_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if retry == Retry::Throttled {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = self
                        .events
                        .send(LinkEvent::Failed {
                            message_id,
                            part,
                            retry,
                            code,
                            error,
                        })
                        .await;
                }
                Output::Receipt {
                    seq,
                    carrier_message_id,
                    status,
                    error_code,
                } => {
                    let (tx, rx) = oneshot::channel();
                    acks.push(Box::pin(async move { (seq, rx.await.unwrap_or(false)) }));
                    let mode = &self.cfg.receipt_id;
                    let carrier_message_id = crate::sms::receipt::id_key(
                        &crate::sms::receipt::normalize_id(&carrier_message_id, mode),
                        mode,
                    );
                    let _ = self
                        .events
                        .send(LinkEvent::Receipt {
                            carrier_message_id,
                            status,
                            error_code,
                            ack: Some(tx),
                        })
                        .await;
                }
                Output::Inbound { seq, part } => {
                    let (tx, rx) = oneshot::channel();
                    acks.push(Box::pin(async move { (seq, rx.await.unwrap_or(false)) }));
                    let _ = self
                        .events
                        .send(LinkEvent::Inbound {
                            part,
                            ack: Some(tx),
                        })
                        .await;
                }
                Output::BadFrame => {
                    self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                }
                Output::Unbound => {}
                Output::Close { reason } => close = Some(reason),
            }
        }
        if wrote && !write_failed && framed.flush().await.is_err() {
            write_failed = true;
        }
        if write_failed {
            return Some(close.unwrap_or("write error"));
        }
        close
    }
}
