//! The sender: one task owning the schedule of parts not yet accepted. It hands a part to the
//! carrier link when the link can take it (the bounded channel has room), the pacing allows it
//! and the part is due; results come back as link events and go to the store as ops, in order.
//! Time the link is down does not count as attempts; transient failures back off; permanent
//! ones, too many attempts or too much age fail the message with the carrier's error.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::link::{LinkEvent, OutPart, Retry};
use super::{OutMsg, Sms};
use crate::sms::pace::{Bucket, retry_delay};
use crate::store::StoreOp;
use crate::store::sms::SmsOp;

/// Schedule key: when, then arrival order.
type Slot = (Instant, u64);

struct Sender {
    gw: Sms,
    msgs: HashMap<Uuid, OutMsg>,
    due: BTreeMap<Slot, (Uuid, u8)>,
    /// Parts handed to the link and not answered.
    out: HashMap<(Uuid, u8), ()>,
    seq: u64,
    link: Bucket,
    campaign: Bucket,
}

impl Sender {
    fn schedule(&mut self, at: Instant, id: Uuid, part: u8) {
        self.seq += 1;
        self.due.insert((at, self.seq), (id, part));
    }

    fn add(&mut self, m: OutMsg) {
        let now = Instant::now();
        for &p in &m.parts {
            self.schedule(now, m.id, p);
        }
        self.msgs.insert(m.id, m);
    }

    /// Drop a message from memory (final).
    fn finish(&mut self, id: Uuid) {
        super::lock(&self.gw.inner.submitted).remove(&id);
        if self.msgs.remove(&id).is_some() {
            self.gw
                .inner
                .stats
                .queue_depth
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.due.retain(|_, (m, _)| *m != id);
    }

    fn give_up(&mut self, id: Uuid, attempts: u32, code: &str, error: &str) {
        self.gw.inner.store.send(StoreOp::Sms(SmsOp::Attempt {
            message_id: id,
            attempts,
            error_code: code.chars().take(64).collect(),
            error: error.chars().take(500).collect(),
            give_up: true,
            at: Utc::now(),
        }));
        self.gw.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.finish(id);
    }

    fn event(&mut self, ev: LinkEvent) {
        let stats = self.gw.inner.stats.clone();
        match ev {
            LinkEvent::Accepted {
                message_id,
                part,
                carrier_message_id,
            } => {
                // The link counts `sent` and `possible_duplicates`.
                let _ = self.out.remove(&(message_id, part));
                self.gw.inner.store.send(StoreOp::Sms(SmsOp::PartAccepted {
                    message_id,
                    part,
                    carrier: self.gw.inner.carrier.to_string(),
                    carrier_message_id,
                    at: Utc::now(),
                }));
                if let Some(m) = self.msgs.get_mut(&message_id) {
                    m.parts.retain(|&p| p != part);
                    // A late answer for a part already rescheduled: do not send it again.
                    self.due
                        .retain(|_, (id, p)| !(*id == message_id && *p == part));
                    if m.parts.is_empty() {
                        self.finish(message_id);
                    }
                }
            }
            LinkEvent::Failed {
                message_id,
                part,
                retry,
                code,
                error,
            } => {
                self.out.remove(&(message_id, part));
                let Some(m) = self.msgs.get_mut(&message_id) else {
                    return;
                };
                if !m.parts.contains(&part) {
                    return;
                }
                let now = Instant::now();
                match retry {
                    Retry::Lost => self.schedule(now, message_id, part),
                    // Counted by the link (commhub_sms_throttled_total).
                    Retry::Throttled => self.schedule(now, message_id, part),
                    Retry::Permanent => {
                        let attempts = m.attempts + 1;
                        tracing::info!(message = %message_id, code, "sms: the carrier refused a message for good");
                        self.give_up(message_id, attempts, &code, &error);
                    }
                    Retry::Transient { after } => {
                        m.attempts += 1;
                        let attempts = m.attempts;
                        let cfg = &self.gw.inner.cfg;
                        let too_old = m.created.elapsed()
                            >= Duration::from_secs(u64::from(cfg.max_age_hours) * 3600);
                        if attempts >= cfg.max_attempts || too_old {
                            let why = if too_old {
                                format!("expired before it could be sent: {error}")
                            } else {
                                format!("gave up after {attempts} attempts: {error}")
                            };
                            self.give_up(message_id, attempts, &code, &why);
                        } else {
                            stats.retries.fetch_add(1, Ordering::Relaxed);
                            self.gw.inner.store.send(StoreOp::Sms(SmsOp::Attempt {
                                message_id,
                                attempts,
                                error_code: code.chars().take(64).collect(),
                                error: error.chars().take(500).collect(),
                                give_up: false,
                                at: Utc::now(),
                            }));
                            let at = now + retry_delay(attempts, after);
                            self.schedule(at, message_id, part);
                        }
                    }
                }
            }
            other => self.gw.link_event(other),
        }
    }

    /// The next due part that may go now, taking the pacing tokens; or when to look again.
    fn next_part(&mut self) -> Result<OutPart, Option<Instant>> {
        let now = Instant::now();
        loop {
            let Some((&slot, &(id, part))) = self.due.iter().next() else {
                return Err(None);
            };
            if slot.0 > now {
                return Err(Some(slot.0));
            }
            let Some(m) = self.msgs.get(&id) else {
                self.due.remove(&slot);
                continue;
            };
            if !m.parts.contains(&part) || self.out.contains_key(&(id, part)) {
                self.due.remove(&slot);
                continue;
            }
            // A STOP that came while this waited.
            if !m.keyword_reply && self.gw.is_opted_out(&m.to) {
                self.gw.inner.store.send(StoreOp::Sms(SmsOp::Blocked {
                    message_id: id,
                    at: Utc::now(),
                }));
                self.gw.inner.stats.blocked.fetch_add(1, Ordering::Relaxed);
                self.finish(id);
                continue;
            }
            if let Some(at) = self.link.ready_at(now) {
                return Err(Some(at));
            }
            if m.campaign
                && let Some(at) = self.campaign.ready_at(now)
            {
                return Err(Some(at));
            }
            self.link.take(now);
            if m.campaign {
                self.campaign.take(now);
            }
            self.due.remove(&slot);
            let i = usize::from(part.saturating_sub(1));
            let smpp = self.gw.inner.carrier == "smpp";
            let p = OutPart {
                message_id: id,
                part,
                total: if smpp { m.seg.parts.len() as u8 } else { 1 },
                from: m.from.clone(),
                to: m.to.clone(),
                encoding: m.seg.encoding,
                payload: m.seg.parts.get(i).cloned().unwrap_or_default(),
                udh: if smpp {
                    m.seg.udh(m.concat_ref, i)
                } else {
                    None
                },
                text: m.text.clone(),
                media_urls: m.media_urls.clone(),
            };
            return Ok(p);
        }
    }
}

pub(super) async fn run(
    gw: Sms,
    mut jobs: mpsc::UnboundedReceiver<OutMsg>,
    link: mpsc::Sender<OutPart>,
    mut events: mpsc::Receiver<LinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let now = Instant::now();
    let cfg = gw.inner.cfg.clone();
    let rate = match cfg.mode {
        crate::config::SmsMode::Smpp => cfg.smpp.max_parts_per_sec,
        _ => cfg.http.max_per_sec,
    };
    let mut s = Sender {
        gw,
        msgs: HashMap::new(),
        due: BTreeMap::new(),
        out: HashMap::new(),
        seq: 0,
        link: Bucket::new(rate, now),
        campaign: Bucket::new(cfg.campaign_parts_per_sec, now),
    };
    loop {
        // Reserve room in the link's channel only when a part is due now.
        let next = s.next_part();
        let (ready, wake) = match next {
            Ok(p) => (Some(p), None),
            Err(w) => (None, w),
        };
        if let Some(p) = ready {
            tokio::select! {
                permit = link.reserve() => match permit {
                    Ok(permit) => {
                        s.out.insert((p.message_id, p.part), ());
                        permit.send(p);
                    }
                    Err(_) => return,
                },
                Some(m) = jobs.recv() => {
                    // Put the part back first, then take the new message.
                    s.schedule(Instant::now(), p.message_id, p.part);
                    s.add(m);
                }
                Some(ev) = events.recv() => {
                    s.schedule(Instant::now(), p.message_id, p.part);
                    s.event(ev);
                }
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(m) = jobs.recv() => s.add(m),
            Some(ev) = events.recv() => s.event(ev),
            _ = sleep => {}
            _ = shutdown.changed() => return,
        }
    }
}
