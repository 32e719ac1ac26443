//! One SMPP bind as a pure state machine: frames, parts, acks and the clock go in; commands to
//! write and events come out ([`Output`], taken with [`Session::pop`]). The IO task
//! (`sms::gateway::smpp`) owns the socket and calls [`Session::tick`] at
//! [`Session::next_timeout`].
//!
//! Rules (design note 1.5):
//! - bind as transceiver, transmitter or receiver with `interface_version` 0x34; no answer
//!   within the response timeout closes;
//! - at most `window` submits in flight; sequence numbers run 1..=0x7FFFFFFF and wrap;
//! - a submit unanswered within the response timeout fails as transient (`timeout`) and its
//!   sequence number is remembered for 5 minutes: a late ESME_ROK still yields `Accepted`
//!   (flagged `late`: a possible duplicate);
//! - enquire_link after `enquire_link` of silence (nothing received); unanswered for 10 s
//!   closes; the SMSC's enquire_link and unbind are answered at once;
//! - ESME_RTHROTTLED / ESME_RMSGQFUL pause submits for the throttle pause, doubling (up to
//!   16 s) while throttling continues, reset by a success; each throttling pause also halves
//!   the window in use, and each success grows it by one back to `window`;
//! - a deliver_sm (receipt or inbound part) is answered only when the gateway acks it: ESME_ROK
//!   when stored, ESME_RX_T_APPN (temporary) when not;
//! - a frame that does not decode is answered `generic_nack` (when it is a request).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rusmpp::pdus::{BindReceiver, BindTransceiver, BindTransmitter, DeliverSm, DeliverSmResp};
use rusmpp::types::COctetString;
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use uuid::Uuid;

use super::frame::Frame;
use super::pdu::{self, Delivered, StatusClass, classify, status_name};
use crate::config::SmppConfig;
use crate::sms::gateway::link::{InboundPart, OutPart, Retry};
use crate::sms::receipt::MessageStatus;

/// The highest sequence number (SMPP 3.4 3.2).
pub const MAX_SEQ: u32 = 0x7FFF_FFFF;

/// What a bind is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Transceiver,
    Transmitter,
    Receiver,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Transceiver => "transceiver",
            Role::Transmitter => "transmitter",
            Role::Receiver => "receiver",
        }
    }

    /// Whether this bind submits.
    pub fn sends(self) -> bool {
        !matches!(self, Role::Receiver)
    }
}

/// A session's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: Role,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub window: usize,
    /// For bind, submit and unbind answers.
    pub response_timeout: Duration,
    /// enquire_link after this much silence.
    pub enquire_link: Duration,
    /// Close when an enquire_link is unanswered this long.
    pub enquire_link_timeout: Duration,
    pub throttle_pause: Duration,
    pub throttle_max: Duration,
    /// How long a timed-out submit's sequence number is remembered for a late answer.
    pub late_keep: Duration,
    /// How long to wait for unbind_resp.
    pub unbind_timeout: Duration,
}

impl Settings {
    pub fn new(cfg: &SmppConfig, role: Role) -> Settings {
        Settings {
            role,
            system_id: cfg.system_id.clone(),
            password: cfg.password.clone(),
            system_type: cfg.system_type.clone(),
            window: cfg.window.max(1) as usize,
            response_timeout: Duration::from_secs(cfg.response_timeout_secs.max(1)),
            enquire_link: Duration::from_secs(cfg.enquire_link_secs.max(1)),
            enquire_link_timeout: Duration::from_secs(10),
            throttle_pause: Duration::from_millis(cfg.throttle_pause_ms.max(1)),
            throttle_max: Duration::from_secs(16),
            late_keep: Duration::from_secs(300),
            unbind_timeout: Duration::from_secs(2),
        }
    }
}

/// Where the bind is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection yet.
    Connecting,
    Binding,
    Bound,
    Unbinding,
    Closed,
}

/// What the session asks of the IO task, in order.
#[derive(Debug)]
pub enum Output {
    /// Write this PDU.
    Write(Command),
    /// The bind was accepted.
    Bound,
    /// The bind was refused (status name) or could not be built; `Close` follows.
    BindRefused { code: String },
    /// The SMSC took the part. `late`: the answer came after the response timeout (the part
    /// may have been sent again: a possible duplicate).
    Accepted {
        message_id: Uuid,
        part: u8,
        carrier_message_id: String,
        late: bool,
    },
    Failed {
        message_id: Uuid,
        part: u8,
        retry: Retry,
        code: String,
        error: String,
    },
    /// A delivery receipt; answer with [`Session::ack`]`(seq, ..)`.
    Receipt {
        seq: u32,
        carrier_message_id: String,
        status: MessageStatus,
        error_code: Option<String>,
    },
    /// An inbound part; answer with [`Session::ack`]`(seq, ..)`.
    Inbound { seq: u32, part: InboundPart },
    /// A frame did not decode (count it).
    BadFrame,
    /// unbind_resp came (after [`Session::unbind`]); `Close` follows.
    Unbound,
    /// Drop the connection, then call [`Session::closed`].
    Close { reason: &'static str },
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    message_id: Uuid,
    part: u8,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Late {
    message_id: Uuid,
    part: u8,
    until: Instant,
}

/// The state machine (see the module doc).
#[derive(Debug)]
pub struct Session {
    s: Settings,
    state: State,
    next_seq: u32,
    bind_seq: u32,
    unbind_seq: Option<u32>,
    /// Bind or unbind deadline.
    deadline: Option<Instant>,
    in_flight: HashMap<u32, InFlight>,
    late: HashMap<u32, Late>,
    last_rx: Instant,
    enquire: Option<(u32, Instant)>,
    paused_until: Option<Instant>,
    /// The next throttling pause.
    pause: Duration,
    /// The window in use: halved by each throttling answer, grown by one per success up to
    /// `window` (so a throttling SMSC is met near its rate instead of with full windows).
    cwnd: usize,
    /// deliver_sm sequence numbers waiting for the gateway's ack.
    unacked: HashSet<u32>,
    out: VecDeque<Output>,
}

fn settings_window(s: &Settings) -> usize {
    s.window.max(1)
}

impl Session {
    pub fn new(settings: Settings, now: Instant) -> Session {
        let pause = settings.throttle_pause;
        let cwnd = settings_window(&settings);
        Session {
            s: settings,
            state: State::Connecting,
            next_seq: 1,
            bind_seq: 0,
            unbind_seq: None,
            deadline: None,
            in_flight: HashMap::new(),
            late: HashMap::new(),
            last_rx: now,
            enquire: None,
            paused_until: None,
            pause,
            cwnd,
            unacked: HashSet::new(),
            out: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn role(&self) -> Role {
        self.s.role
    }

    /// Submits in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a part may be submitted now: bound, a sending role, window not full, not
    /// paused.
    pub fn can_submit(&self, now: Instant) -> bool {
        self.state == State::Bound
            && self.s.role.sends()
            && self.in_flight.len() < self.cwnd.min(self.s.window)
            && self.paused_until.is_none_or(|p| now >= p)
    }

    /// The next output, if any.
    pub fn pop(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn seq(&mut self) -> u32 {
        loop {
            let s = self.next_seq;
            self.next_seq = if s >= MAX_SEQ { 1 } else { s + 1 };
            if !self.in_flight.contains_key(&s) && !self.late.contains_key(&s) {
                return s;
            }
        }
    }

    fn write(&mut self, status: CommandStatus, seq: u32, pdu: Pdu) {
        self.out
            .push_back(Output::Write(Command::new(status, seq, pdu)));
    }

    fn close(&mut self, reason: &'static str) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.out.push_back(Output::Close { reason });
        }
    }

    /// The connection is up: send the bind.
    pub fn connected(&mut self, now: Instant) {
        self.last_rx = now;
        self.enquire = None;
        let ids = (
            COctetString::<1, 16>::from_string(self.s.system_id.clone()),
            COctetString::<1, 9>::from_string(self.s.password.clone()),
            COctetString::<1, 13>::from_string(self.s.system_type.clone()),
        );
        let (Ok(system_id), Ok(password), Ok(system_type)) = ids else {
            self.out.push_back(Output::BindRefused {
                code: "invalid_credentials".into(),
            });
            self.close("bind not built");
            return;
        };
        let v = InterfaceVersion::Smpp3_4;
        let pdu = match self.s.role {
            Role::Transceiver => Pdu::BindTransceiver(BindTransceiver::new(
                system_id,
                password,
                system_type,
                v,
                Ton::Unknown,
                Npi::Unknown,
                COctetString::empty(),
            )),
            Role::Transmitter => Pdu::BindTransmitter(BindTransmitter::new(
                system_id,
                password,
                system_type,
                v,
                Ton::Unknown,
                Npi::Unknown,
                COctetString::empty(),
            )),
            Role::Receiver => Pdu::BindReceiver(BindReceiver::new(
                system_id,
                password,
                system_type,
                v,
                Ton::Unknown,
                Npi::Unknown,
                COctetString::empty(),
            )),
        };
        let seq = self.seq();
        self.bind_seq = seq;
        self.state = State::Binding;
        self.deadline = Some(now + self.s.response_timeout);
        self.write(CommandStatus::EsmeRok, seq, pdu);
    }

    /// Submit a part. Call only when [`Session::can_submit`]; otherwise the part comes back at
    /// once as `Failed { retry: Lost }`.
    pub fn submit(&mut self, part: OutPart, now: Instant) {
        if !self.can_submit(now) {
            self.out.push_back(Output::Failed {
                message_id: part.message_id,
                part: part.part,
                retry: Retry::Lost,
                code: "not_bound".into(),
                error: "the link cannot submit now".into(),
            });
            return;
        }
        let sm = match pdu::submit_sm(&part) {
            Ok(sm) => sm,
            Err(e) => {
                self.out.push_back(Output::Failed {
                    message_id: part.message_id,
                    part: part.part,
                    retry: Retry::Permanent,
                    code: "invalid_part".into(),
                    error: e.to_string(),
                });
                return;
            }
        };
        let seq = self.seq();
        self.in_flight.insert(
            seq,
            InFlight {
                message_id: part.message_id,
                part: part.part,
                sent: now,
            },
        );
        self.write(CommandStatus::EsmeRok, seq, Pdu::SubmitSm(sm));
    }

    /// The gateway stored (true) or could not store (false) the deliver_sm `seq`.
    pub fn ack(&mut self, seq: u32, ok: bool) {
        if self.unacked.remove(&seq) && self.state != State::Closed {
            let status = if ok {
                CommandStatus::EsmeRok
            } else {
                CommandStatus::EsmeRxTAppn
            };
            self.write(status, seq, Pdu::DeliverSmResp(DeliverSmResp::default()));
        }
    }

    /// Ask the SMSC to unbind (shutdown). `Unbound` and `Close` follow the answer, or `Close`
    /// after the unbind timeout.
    pub fn unbind(&mut self, now: Instant) {
        match self.state {
            State::Binding | State::Bound => {
                let seq = self.seq();
                self.unbind_seq = Some(seq);
                self.state = State::Unbinding;
                self.deadline = Some(now + self.s.unbind_timeout);
                self.write(CommandStatus::EsmeRok, seq, Pdu::Unbind);
            }
            State::Unbinding => {}
            State::Connecting | State::Closed => self.close("shutdown"),
        }
    }

    /// The connection is gone: every part in flight is reported `Lost`.
    pub fn closed(&mut self, _now: Instant) {
        self.state = State::Closed;
        self.deadline = None;
        self.enquire = None;
        self.unacked.clear();
        let mut lost: Vec<(u32, InFlight)> = self.in_flight.drain().collect();
        lost.sort_by_key(|(seq, f)| (f.sent, *seq));
        for (_, f) in lost {
            self.out.push_back(Output::Failed {
                message_id: f.message_id,
                part: f.part,
                retry: Retry::Lost,
                code: "connection_lost".into(),
                error: "the SMPP connection closed before the answer".into(),
            });
        }
    }

    /// A frame from the SMSC.
    pub fn frame(&mut self, frame: Frame, now: Instant) {
        self.last_rx = now;
        let command = match frame {
            Frame::Bad { seq, command_id } => {
                self.out.push_back(Output::BadFrame);
                if command_id & 0x8000_0000 == 0 {
                    self.write(CommandStatus::EsmeRinvcmdlen, seq, Pdu::GenericNack);
                } else if let Some(f) = self.in_flight.remove(&seq) {
                    self.out.push_back(Output::Failed {
                        message_id: f.message_id,
                        part: f.part,
                        retry: Retry::Transient { after: None },
                        code: "bad_response".into(),
                        error: "the SMSC's answer could not be decoded".into(),
                    });
                }
                return;
            }
            Frame::Command(c) => *c,
        };
        let seq = command.sequence_number();
        let status = command.status();
        match command.id() {
            CommandId::BindTransceiverResp
            | CommandId::BindTransmitterResp
            | CommandId::BindReceiverResp
                if self.state == State::Binding && seq == self.bind_seq =>
            {
                self.bind_answer(status, now)
            }
            CommandId::GenericNack if self.state == State::Binding && seq == self.bind_seq => {
                self.bind_answer(status, now)
            }
            CommandId::SubmitSmResp => {
                let id = match command.pdu() {
                    Some(Pdu::SubmitSmResp(r)) => r.message_id().as_str().to_string(),
                    _ => String::new(),
                };
                self.submit_answer(seq, status, id, now);
            }
            CommandId::GenericNack => {
                if let Some(f) = self.in_flight.remove(&seq) {
                    self.out.push_back(Output::Failed {
                        message_id: f.message_id,
                        part: f.part,
                        retry: Retry::Transient { after: None },
                        code: "generic_nack".into(),
                        error: format!("generic_nack {}", status_name(status)),
                    });
                } else if self.enquire.is_some_and(|(s, _)| s == seq) {
                    // The SMSC does not know enquire_link: it is alive all the same.
                    self.enquire = None;
                }
            }
            CommandId::DeliverSm => match command.pdu() {
                Some(Pdu::DeliverSm(d)) => self.deliver(seq, d),
                _ => self.write(CommandStatus::EsmeRinvcmdlen, seq, Pdu::GenericNack),
            },
            CommandId::EnquireLink => self.write(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp),
            CommandId::EnquireLinkResp => {
                if self.enquire.is_some_and(|(s, _)| s == seq) {
                    self.enquire = None;
                }
            }
            CommandId::Unbind => {
                self.write(CommandStatus::EsmeRok, seq, Pdu::UnbindResp);
                self.close("unbind from the SMSC");
            }
            CommandId::UnbindResp => {
                if self.state == State::Unbinding && self.unbind_seq == Some(seq) {
                    self.out.push_back(Output::Unbound);
                    self.close("unbound");
                }
            }
            CommandId::AlertNotification | CommandId::Outbind => {}
            id => {
                // Another request we do not serve: say so. Stray responses are ignored.
                if u32::from(id) & 0x8000_0000 == 0 {
                    self.write(CommandStatus::EsmeRinvcmdid, seq, Pdu::GenericNack);
                }
            }
        }
    }

    fn bind_answer(&mut self, status: CommandStatus, _now: Instant) {
        self.deadline = None;
        if status == CommandStatus::EsmeRok {
            self.state = State::Bound;
            self.pause = self.s.throttle_pause;
            self.paused_until = None;
            self.cwnd = settings_window(&self.s);
            self.out.push_back(Output::Bound);
        } else {
            self.out.push_back(Output::BindRefused {
                code: status_name(status),
            });
            self.close("bind refused");
        }
    }

    fn submit_answer(&mut self, seq: u32, status: CommandStatus, id: String, now: Instant) {
        let Some(f) = self.in_flight.remove(&seq) else {
            if status == CommandStatus::EsmeRok
                && let Some(l) = self.late.remove(&seq)
            {
                self.out.push_back(Output::Accepted {
                    message_id: l.message_id,
                    part: l.part,
                    carrier_message_id: id,
                    late: true,
                });
            }
            return;
        };
        let class = classify(status);
        let (retry, error) = match class {
            StatusClass::Ok => {
                self.pause = self.s.throttle_pause;
                self.cwnd = (self.cwnd + 1).min(settings_window(&self.s));
                self.out.push_back(Output::Accepted {
                    message_id: f.message_id,
                    part: f.part,
                    carrier_message_id: id,
                    late: false,
                });
                return;
            }
            StatusClass::Throttled => {
                // Answers to submits sent before the pause began do not extend or double it.
                if self.paused_until.is_none_or(|p| now >= p) {
                    self.paused_until = Some(now + self.pause);
                    self.pause = (self.pause * 2).min(self.s.throttle_max);
                    self.cwnd = (self.cwnd / 2).max(1);
                }
                (Retry::Throttled, "the SMSC is throttling")
            }
            StatusClass::Transient => (
                Retry::Transient { after: None },
                "temporary error from the SMSC",
            ),
            StatusClass::Permanent => (Retry::Permanent, "the SMSC refused the message"),
        };
        self.out.push_back(Output::Failed {
            message_id: f.message_id,
            part: f.part,
            retry,
            code: status_name(status),
            error: error.into(),
        });
    }

    fn deliver(&mut self, seq: u32, d: &DeliverSm) {
        match pdu::deliver(d) {
            Delivered::Receipt {
                carrier_message_id,
                status,
                error_code,
            } => {
                self.unacked.insert(seq);
                self.out.push_back(Output::Receipt {
                    seq,
                    carrier_message_id,
                    status,
                    error_code,
                });
            }
            Delivered::Inbound(part) => {
                self.unacked.insert(seq);
                self.out.push_back(Output::Inbound { seq, part });
            }
            Delivered::Unusable => self.write(
                CommandStatus::EsmeRok,
                seq,
                Pdu::DeliverSmResp(DeliverSmResp::default()),
            ),
        }
    }

    /// Handle the timers due at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.late.retain(|_, l| l.until > now);
        if self.paused_until.is_some_and(|p| now >= p) {
            self.paused_until = None;
        }
        match self.state {
            State::Binding | State::Unbinding => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.deadline = None;
                    let reason = if self.state == State::Binding {
                        "no bind answer"
                    } else {
                        "no unbind answer"
                    };
                    self.close(reason);
                    return;
                }
            }
            State::Connecting | State::Closed => return,
            State::Bound => {}
        }
        let timeout = self.s.response_timeout;
        let mut expired: Vec<(u32, InFlight)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now >= f.sent + timeout)
            .map(|(s, f)| (*s, *f))
            .collect();
        expired.sort_by_key(|(seq, f)| (f.sent, *seq));
        for (seq, f) in expired {
            self.in_flight.remove(&seq);
            self.late.insert(
                seq,
                Late {
                    message_id: f.message_id,
                    part: f.part,
                    until: now + self.s.late_keep,
                },
            );
            self.out.push_back(Output::Failed {
                message_id: f.message_id,
                part: f.part,
                retry: Retry::Transient { after: None },
                code: "timeout".into(),
                error: "no answer from the SMSC in time".into(),
            });
        }
        if self.state != State::Bound {
            return;
        }
        match self.enquire {
            Some((_, sent)) if now >= sent + self.s.enquire_link_timeout => {
                self.close("enquire_link unanswered")
            }
            Some(_) => {}
            None if now >= self.last_rx + self.s.enquire_link => {
                let seq = self.seq();
                self.enquire = Some((seq, now));
                self.write(CommandStatus::EsmeRok, seq, Pdu::EnquireLink);
            }
            None => {}
        }
    }

    /// When [`Session::tick`] must next run (`None`: nothing is pending).
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connecting | State::Closed => None,
            State::Binding => self.deadline,
            State::Unbinding => {
                let oldest = self
                    .in_flight
                    .values()
                    .map(|f| f.sent + self.s.response_timeout)
                    .min();
                [self.deadline, oldest].into_iter().flatten().min()
            }
            State::Bound => {
                let oldest = self
                    .in_flight
                    .values()
                    .map(|f| f.sent + self.s.response_timeout)
                    .min();
                let enquire = Some(match self.enquire {
                    Some((_, sent)) => sent + self.s.enquire_link_timeout,
                    None => self.last_rx + self.s.enquire_link,
                });
                [oldest, enquire, self.paused_until]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    #[cfg(test)]
    fn set_next_seq(&mut self, seq: u32) {
        self.next_seq = seq;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sms::encoding::Encoding;
    use rusmpp::pdus::SubmitSmResp;
    use rusmpp::types::OctetString;
    use rusmpp::values::EsmClass;

    fn settings(window: usize) -> Settings {
        let cfg = SmppConfig {
            system_id: "commhub".into(),
            password: "secret".into(),
            window: window as u32,
            ..SmppConfig::default()
        };
        Settings::new(&cfg, Role::Transceiver)
    }

    fn part(n: u8) -> OutPart {
        OutPart {
            message_id: Uuid::from_u128(n as u128),
            part: 1,
            total: 1,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            encoding: Encoding::Gsm7,
            payload: b"hi".to_vec(),
            udh: None,
            text: "hi".into(),
            media_urls: vec![],
        }
    }

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    fn writes(outs: &[Output]) -> Vec<&Command> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Write(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn bound(window: usize, t0: Instant) -> Session {
        let mut s = Session::new(settings(window), t0);
        s.connected(t0);
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(w.len(), 1);
        let Some(Pdu::BindTransceiver(b)) = w[0].pdu() else {
            panic!("{:?}", w[0])
        };
        assert_eq!(u8::from(b.interface_version), 0x34);
        assert_eq!(b.system_id.as_str(), "commhub");
        let seq = w[0].sequence_number();
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRok,
                seq,
                Pdu::BindTransceiverResp(Default::default()),
            ))),
            t0,
        );
        assert!(matches!(drain(&mut s).as_slice(), [Output::Bound]));
        assert_eq!(s.state(), State::Bound);
        s
    }

    fn resp(seq: u32, status: CommandStatus, id: &str) -> Frame {
        let r = SubmitSmResp::builder()
            .message_id(COctetString::from_string(id.into()).unwrap())
            .build();
        Frame::Command(Box::new(Command::new(status, seq, Pdu::SubmitSmResp(r))))
    }

    fn submit(s: &mut Session, n: u8, now: Instant) -> u32 {
        assert!(s.can_submit(now));
        s.submit(part(n), now);
        let outs = drain(s);
        let w = writes(&outs);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].id(), CommandId::SubmitSm);
        w[0].sequence_number()
    }

    #[test]
    fn bind_refused_and_bind_timeout() {
        let t0 = Instant::now();
        let mut s = Session::new(settings(1), t0);
        assert!(!s.can_submit(t0));
        s.connected(t0);
        let seq = writes(&drain(&mut s))[0].sequence_number();
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRbindfail,
                seq,
                Pdu::GenericNack,
            ))),
            t0,
        );
        let outs = drain(&mut s);
        assert!(matches!(&outs[0], Output::BindRefused { code } if code == "ESME_RBINDFAIL"));
        assert!(matches!(outs[1], Output::Close { .. }));
        // No answer at all.
        let mut s = Session::new(settings(1), t0);
        s.connected(t0);
        drain(&mut s);
        assert_eq!(s.next_timeout(), Some(t0 + Duration::from_secs(10)));
        s.tick(t0 + Duration::from_secs(10));
        assert!(matches!(drain(&mut s).as_slice(), [Output::Close { .. }]));
        // A password over 8 characters cannot be sent.
        let mut st = settings(1);
        st.password = "123456789".into();
        let mut s = Session::new(st, t0);
        s.connected(t0);
        let outs = drain(&mut s);
        assert!(matches!(&outs[0], Output::BindRefused { code } if code == "invalid_credentials"));
        // Transmitter and receiver binds.
        for (role, id) in [
            (Role::Transmitter, CommandId::BindTransmitter),
            (Role::Receiver, CommandId::BindReceiver),
        ] {
            let mut st = settings(1);
            st.role = role;
            let mut s = Session::new(st, t0);
            s.connected(t0);
            assert_eq!(writes(&drain(&mut s))[0].id(), id);
        }
    }

    #[test]
    fn window_is_never_exceeded() {
        let t0 = Instant::now();
        let mut s = bound(3, t0);
        let seqs: Vec<u32> = (0..3).map(|n| submit(&mut s, n, t0)).collect();
        assert!(!s.can_submit(t0));
        assert_eq!(s.in_flight(), 3);
        // Forced anyway: refused as Lost, nothing written.
        s.submit(part(9), t0);
        let outs = drain(&mut s);
        assert!(matches!(
            outs.as_slice(),
            [Output::Failed {
                retry: Retry::Lost,
                ..
            }]
        ));
        assert_eq!(s.in_flight(), 3);
        s.frame(resp(seqs[1], CommandStatus::EsmeRok, "id1"), t0);
        let outs = drain(&mut s);
        assert!(
            matches!(&outs[0], Output::Accepted { carrier_message_id, late: false, message_id, .. } if carrier_message_id == "id1" && *message_id == Uuid::from_u128(1))
        );
        assert!(s.can_submit(t0));
        submit(&mut s, 4, t0);
        assert!(!s.can_submit(t0));
        // Not bound: never.
        let r = Session::new(settings(3), t0);
        assert!(!r.can_submit(t0));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut s = bound(10, t0);
        s.set_next_seq(MAX_SEQ - 1);
        assert_eq!(submit(&mut s, 1, t0), MAX_SEQ - 1);
        assert_eq!(submit(&mut s, 2, t0), MAX_SEQ);
        assert_eq!(submit(&mut s, 3, t0), 1);
        // A number still in flight is skipped.
        s.set_next_seq(MAX_SEQ);
        assert_eq!(submit(&mut s, 4, t0), 2);
    }

    #[test]
    fn timeout_then_late_ok() {
        let t0 = Instant::now();
        let mut s = bound(2, t0);
        let seq = submit(&mut s, 1, t0);
        let seq2 = submit(&mut s, 2, t0 + Duration::from_secs(1));
        assert_eq!(s.next_timeout(), Some(t0 + Duration::from_secs(10)));
        s.tick(t0 + Duration::from_secs(9));
        assert!(drain(&mut s).is_empty());
        s.tick(t0 + Duration::from_secs(10));
        let outs = drain(&mut s);
        assert!(
            matches!(outs.as_slice(), [Output::Failed { retry: Retry::Transient { after: None }, code, message_id, .. }] if code == "timeout" && *message_id == Uuid::from_u128(1))
        );
        assert_eq!(s.in_flight(), 1);
        // The late OK still gives the carrier id, flagged.
        s.frame(
            resp(seq, CommandStatus::EsmeRok, "late-1"),
            t0 + Duration::from_secs(30),
        );
        let outs = drain(&mut s);
        assert!(
            matches!(&outs[0], Output::Accepted { late: true, carrier_message_id, .. } if carrier_message_id == "late-1")
        );
        // Only once.
        s.frame(
            resp(seq, CommandStatus::EsmeRok, "late-1"),
            t0 + Duration::from_secs(31),
        );
        assert!(drain(&mut s).is_empty());
        // After 5 minutes a late answer is forgotten.
        s.tick(t0 + Duration::from_secs(11));
        drain(&mut s);
        s.tick(t0 + Duration::from_secs(11 + 301));
        drain(&mut s);
        s.frame(
            resp(seq2, CommandStatus::EsmeRok, "x"),
            t0 + Duration::from_secs(312),
        );
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn enquire_link_on_silence_and_close_when_unanswered() {
        let t0 = Instant::now();
        let mut s = bound(1, t0);
        let el = Duration::from_secs(30);
        assert_eq!(s.next_timeout(), Some(t0 + el));
        // Traffic pushes it back.
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRok,
                77,
                Pdu::EnquireLink,
            ))),
            t0 + Duration::from_secs(20),
        );
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(
            (w[0].id(), w[0].sequence_number()),
            (CommandId::EnquireLinkResp, 77)
        );
        s.tick(t0 + el);
        assert!(drain(&mut s).is_empty());
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(s.next_timeout(), Some(t1));
        s.tick(t1);
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(w[0].id(), CommandId::EnquireLink);
        let seq = w[0].sequence_number();
        // Answered: fine.
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRok,
                seq,
                Pdu::EnquireLinkResp,
            ))),
            t1 + Duration::from_secs(1),
        );
        s.tick(t1 + Duration::from_secs(12));
        assert!(drain(&mut s).is_empty());
        // Next one unanswered: closes 10 s later.
        let t2 = t1 + Duration::from_secs(31);
        s.tick(t2);
        assert_eq!(writes(&drain(&mut s))[0].id(), CommandId::EnquireLink);
        assert_eq!(s.next_timeout(), Some(t2 + Duration::from_secs(10)));
        s.tick(t2 + Duration::from_secs(9));
        assert!(drain(&mut s).is_empty());
        s.tick(t2 + Duration::from_secs(10));
        assert!(
            matches!(drain(&mut s).as_slice(), [Output::Close { reason }] if reason.contains("enquire"))
        );
        assert!(!s.can_submit(t2 + Duration::from_secs(10)));
    }

    #[test]
    fn smsc_unbind_is_answered_and_closes() {
        let t0 = Instant::now();
        let mut s = bound(2, t0);
        submit(&mut s, 1, t0);
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRok,
                5,
                Pdu::Unbind,
            ))),
            t0,
        );
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(
            (w[0].id(), w[0].sequence_number()),
            (CommandId::UnbindResp, 5)
        );
        assert!(matches!(outs.last(), Some(Output::Close { .. })));
        s.closed(t0);
        let outs = drain(&mut s);
        assert!(
            matches!(outs.as_slice(), [Output::Failed { retry: Retry::Lost, message_id, .. }] if *message_id == Uuid::from_u128(1))
        );
    }

    #[test]
    fn our_unbind() {
        let t0 = Instant::now();
        let mut s = bound(2, t0);
        s.unbind(t0);
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(w[0].id(), CommandId::Unbind);
        let seq = w[0].sequence_number();
        assert!(!s.can_submit(t0));
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRok,
                seq,
                Pdu::UnbindResp,
            ))),
            t0,
        );
        let outs = drain(&mut s);
        assert!(matches!(
            outs.as_slice(),
            [Output::Unbound, Output::Close { .. }]
        ));
        // Unanswered: closes after 2 s.
        let mut s = bound(2, t0);
        s.unbind(t0);
        drain(&mut s);
        assert_eq!(s.next_timeout(), Some(t0 + Duration::from_secs(2)));
        s.tick(t0 + Duration::from_secs(2));
        assert!(matches!(drain(&mut s).as_slice(), [Output::Close { .. }]));
    }

    #[test]
    fn throttle_pause_doubles_and_resets() {
        let t0 = Instant::now();
        let mut s = bound(10, t0);
        let sec = Duration::from_secs(1);
        let throttle = |s: &mut Session, now: Instant| {
            let seq = submit(s, 1, now);
            s.frame(resp(seq, CommandStatus::EsmeRthrottled, ""), now);
            let outs = drain(s);
            assert!(
                matches!(outs.as_slice(), [Output::Failed { retry: Retry::Throttled, code, .. }] if code == "ESME_RTHROTTLED")
            );
        };
        throttle(&mut s, t0);
        assert!(!s.can_submit(t0 + sec / 2));
        assert_eq!(s.next_timeout(), Some(t0 + sec));
        assert!(s.can_submit(t0 + sec));
        // Again: 2 s, 4, 8, 16, 16.
        let mut t = t0 + sec;
        for p in [2, 4, 8, 16, 16] {
            throttle(&mut s, t);
            assert!(!s.can_submit(t + Duration::from_secs(p) - Duration::from_millis(1)));
            t += Duration::from_secs(p);
            assert!(s.can_submit(t), "pause {p}");
        }
        // The window is down to 1 now; a success grows it to 2 (and resets the pause to 1 s).
        let ok = submit(&mut s, 9, t);
        s.frame(resp(ok, CommandStatus::EsmeRok, "ok"), t);
        drain(&mut s);
        // An answer to a submit sent before the pause does not double it.
        let a = submit(&mut s, 1, t);
        let b = submit(&mut s, 2, t);
        s.frame(resp(a, CommandStatus::EsmeRmsgqful, ""), t);
        s.frame(resp(b, CommandStatus::EsmeRthrottled, ""), t);
        drain(&mut s);
        assert!(!s.can_submit(t + sec - Duration::from_millis(1)));
        assert!(
            s.can_submit(t + sec),
            "paused 1 s, not doubled by the second answer"
        );
        t += sec;
        // A success resets it.
        let seq = submit(&mut s, 3, t);
        s.frame(resp(seq, CommandStatus::EsmeRok, "ok"), t);
        drain(&mut s);
        throttle(&mut s, t);
        assert!(s.can_submit(t + sec));
    }

    #[test]
    fn other_errors_are_classified() {
        let t0 = Instant::now();
        let mut s = bound(10, t0);
        let seq = submit(&mut s, 1, t0);
        s.frame(resp(seq, CommandStatus::EsmeRinvdstadr, ""), t0);
        assert!(
            matches!(drain(&mut s).as_slice(), [Output::Failed { retry: Retry::Permanent, code, .. }] if code == "ESME_RINVDSTADR")
        );
        let seq = submit(&mut s, 1, t0);
        s.frame(resp(seq, CommandStatus::EsmeRsyserr, ""), t0);
        assert!(
            matches!(drain(&mut s).as_slice(), [Output::Failed { retry: Retry::Transient { .. }, code, .. }] if code == "ESME_RSYSERR")
        );
        let seq = submit(&mut s, 1, t0);
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRinvcmdlen,
                seq,
                Pdu::GenericNack,
            ))),
            t0,
        );
        assert!(
            matches!(drain(&mut s).as_slice(), [Output::Failed { retry: Retry::Transient { .. }, code, .. }] if code == "generic_nack")
        );
        assert!(s.can_submit(t0), "no pause for these");
        // An error status with no body at all (decoded without a PDU).
        let seq = submit(&mut s, 1, t0);
        let mut raw = bytes::BytesMut::new();
        raw.extend_from_slice(&[0, 0, 0, 16, 0x80, 0, 0, 4, 0, 0, 0, 0x45]);
        raw.extend_from_slice(&seq.to_be_bytes());
        let f = tokio_util::codec::Decoder::decode(
            &mut super::super::frame::FrameCodec::new(),
            &mut raw,
        )
        .unwrap()
        .unwrap();
        s.frame(f, t0);
        assert!(
            matches!(drain(&mut s).as_slice(), [Output::Failed { retry: Retry::Permanent, code, .. }] if code == "ESME_RSUBMITFAIL")
        );
    }

    fn deliver_frame(seq: u32, esm: u8, sm: &[u8]) -> Frame {
        let d = DeliverSm::builder()
            .esm_class(EsmClass::from(esm))
            .source_addr_ton(Ton::International)
            .source_addr(COctetString::from_string("15550002222".into()).unwrap())
            .destination_addr(COctetString::from_string("15550001111".into()).unwrap())
            .short_message(OctetString::from_slice(sm).unwrap())
            .build();
        Frame::Command(Box::new(Command::new(
            CommandStatus::EsmeRok,
            seq,
            Pdu::DeliverSm(d),
        )))
    }

    #[test]
    fn deliver_sm_is_answered_only_after_ack() {
        let t0 = Instant::now();
        let mut s = bound(1, t0);
        s.frame(deliver_frame(40, 0, b"hello"), t0);
        let outs = drain(&mut s);
        assert_eq!(outs.len(), 1);
        assert!(
            matches!(&outs[0], Output::Inbound { seq: 40, part } if part.payload == b"hello" && part.from == "+15550002222")
        );
        s.frame(deliver_frame(41, 0x04, b"id:A1 stat:DELIVRD err:000"), t0);
        let outs = drain(&mut s);
        assert!(
            matches!(&outs[..], [Output::Receipt { seq: 41, carrier_message_id, status: MessageStatus::Delivered, .. }] if carrier_message_id == "A1")
        );
        // Not stored: temporary error, so the SMSC resends.
        s.ack(41, false);
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(
            (w[0].id(), w[0].sequence_number(), w[0].status()),
            (CommandId::DeliverSmResp, 41, CommandStatus::EsmeRxTAppn)
        );
        s.ack(40, true);
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(
            (w[0].id(), w[0].sequence_number(), w[0].status()),
            (CommandId::DeliverSmResp, 40, CommandStatus::EsmeRok)
        );
        // Twice, or unknown: nothing.
        s.ack(40, true);
        s.ack(99, true);
        assert!(drain(&mut s).is_empty());
        // After the connection closed, an ack is not written on the next one.
        s.frame(deliver_frame(42, 0, b"x"), t0);
        drain(&mut s);
        s.closed(t0);
        s.ack(42, true);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn bad_frame_gets_generic_nack() {
        let t0 = Instant::now();
        let mut s = bound(2, t0);
        s.frame(
            Frame::Bad {
                seq: 12,
                command_id: 0x0000_0005,
            },
            t0,
        );
        let outs = drain(&mut s);
        assert!(matches!(outs[0], Output::BadFrame));
        let w = writes(&outs);
        assert_eq!(
            (w[0].id(), w[0].sequence_number(), w[0].status()),
            (CommandId::GenericNack, 12, CommandStatus::EsmeRinvcmdlen)
        );
        // A bad answer to a submit fails that part (transient), and is not nacked.
        let seq = submit(&mut s, 1, t0);
        s.frame(
            Frame::Bad {
                seq,
                command_id: 0x8000_0004,
            },
            t0,
        );
        let outs = drain(&mut s);
        assert!(writes(&outs).is_empty());
        assert!(matches!(
            outs[1],
            Output::Failed {
                retry: Retry::Transient { .. },
                ..
            }
        ));
        // An unknown request: generic_nack ESME_RINVCMDID.
        s.frame(
            Frame::Command(Box::new(Command::new(
                CommandStatus::EsmeRok,
                13,
                Pdu::CancelSm(Default::default()),
            ))),
            t0,
        );
        let outs = drain(&mut s);
        let w = writes(&outs);
        assert_eq!(
            (w[0].id(), w[0].status()),
            (CommandId::GenericNack, CommandStatus::EsmeRinvcmdid)
        );
    }

    #[test]
    fn closing_reports_in_flight_as_lost() {
        let t0 = Instant::now();
        let mut s = bound(5, t0);
        for n in 1..=3 {
            submit(&mut s, n, t0 + Duration::from_millis(n as u64));
        }
        s.closed(t0);
        let outs = drain(&mut s);
        let ids: Vec<Uuid> = outs
            .iter()
            .map(|o| match o {
                Output::Failed {
                    retry: Retry::Lost,
                    message_id,
                    ..
                } => *message_id,
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(ids, (1..=3).map(Uuid::from_u128).collect::<Vec<_>>());
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.next_timeout(), None);
    }

    #[test]
    fn throttling_halves_the_window_and_successes_grow_it_back() {
        let t0 = Instant::now();
        let mut s = bound(8, t0);
        let mut seqs: Vec<u32> = (0..8).map(|_| submit(&mut s, 1, t0)).collect();
        assert!(!s.can_submit(t0));
        // One throttled answer: pause, and the window is 4.
        let first = seqs.remove(0);
        s.frame(resp(first, CommandStatus::EsmeRthrottled, ""), t0);
        drain(&mut s);
        for q in seqs.drain(..) {
            s.frame(resp(q, CommandStatus::EsmeRok, "x"), t0);
        }
        drain(&mut s);
        let after = t0 + Duration::from_secs(2);
        let mut n = 0;
        while s.can_submit(after) {
            submit(&mut s, 1, after);
            n += 1;
        }
        // Seven successes after the halving grew it back to the full 8.
        assert_eq!(n, 8);
        let mut s = bound(8, t0);
        let q = submit(&mut s, 1, t0);
        s.frame(resp(q, CommandStatus::EsmeRthrottled, ""), t0);
        drain(&mut s);
        let mut n = 0;
        while s.can_submit(after) {
            submit(&mut s, 1, after);
            n += 1;
        }
        assert_eq!(n, 4, "halved");
    }
}
