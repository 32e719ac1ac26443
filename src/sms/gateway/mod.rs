//! The SMS gateway: the IO around the pure rules of `crate::sms`.
//!
//! - this file: the [`Sms`] handle the HTTP layer calls (send, inbound messages, receipts),
//!   opt-out state, keyword replies, and start-up (reload of the durable queue).
//! - `queue.rs`: the sender task: schedule, pacing, retries, results into the store.
//! - `link.rs`: what the sender and a carrier link exchange (parts out, events in).
//! - `smpp.rs`: the SMPP bind(s) driving `crate::sms::smpp::Session`.
//! - `http.rs`: HTTP carriers (generic JSON, Twilio-style, Telnyx-style).
//!
//! Durability: a send is answered only once its row is durable (database or the store's
//! outbox); the row is the queue, reloaded at start. An inbound message or receipt is durable
//! before the carrier gets its answer (deliver_sm_resp or the webhook's 2xx).

pub mod http;
pub mod link;
mod queue;
pub mod smpp;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use self::link::{InboundPart, LinkEvent};
use crate::config::{SmsConfig, SmsMode};
use crate::sms::encoding::{Encoding, from_septets, from_ucs2};
use crate::sms::keywords::{self, Brand, Keyword};
use crate::sms::reassemble::{Concat, Outcome, Reassembler};
use crate::sms::segment::{Segmented, segment};
use crate::store::StoreOp;
use crate::store::sms::{InboundPartRow, SmsMedia, SmsMessage, SmsOp, conversation_id};
use crate::store::writer::{Durable, StoreHandle};

/// Counters for /metrics (`commhub_sms_*`).
#[derive(Debug, Default)]
pub struct SmsStats {
    /// Parts the carrier accepted.
    pub sent: AtomicU64,
    /// Parts the carrier refused (any reason).
    pub submit_errors: AtomicU64,
    pub receipts: AtomicU64,
    /// Receipts for an id we do not know (yet): kept in sms_receipts_pending.
    pub receipts_orphaned: AtomicU64,
    /// Whole inbound messages stored.
    pub inbound: AtomicU64,
    /// Inbound parts (multipart) received.
    pub inbound_parts: AtomicU64,
    /// Sends refused because the number opted out.
    pub blocked: AtomicU64,
    /// Transient failures that will be retried.
    pub retries: AtomicU64,
    /// ESME_RTHROTTLED / ESME_RMSGQFUL / HTTP 429 answers.
    pub throttled: AtomicU64,
    /// A late OK for a part that was already resent.
    pub possible_duplicates: AtomicU64,
    /// Inbound messages or receipts seen before (stored once).
    pub duplicates: AtomicU64,
    /// Bind attempts refused (bad credentials, bind_fail) or failed to connect.
    pub bind_failures: AtomicU64,
    /// Frames that could not be decoded (answered generic_nack).
    pub bad_frames: AtomicU64,
    /// Bind state per role: 0 down, 1 binding, 2 bound (transceiver or transmitter, receiver).
    pub bind_state_tx: AtomicU64,
    pub bind_state_rx: AtomicU64,
    /// Parts submitted and not yet answered.
    pub in_flight: AtomicU64,
    /// Messages accepted by sms-send and not final yet.
    pub queue_depth: AtomicU64,
    /// Messages that failed for good.
    pub failed: AtomicU64,
    /// Webhook requests refused (token, signature, body).
    pub webhook_refused: AtomicU64,
}

/// A send as the API takes it (already base64-decoded media).
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub from: String,
    pub to: String,
    pub body: String,
    pub media: Vec<(String, Vec<u8>)>,
    pub idempotency_key: Option<String>,
}

/// Why a send or an inbound message was refused.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the idempotency key was used for a different message")]
    IdempotencyConflict,
    #[error("SMS is off (sms.mode = off)")]
    Off,
    #[error("the message could not be stored; nothing was sent")]
    Store,
}

/// The whole message a webhook or the SMSC delivered.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub from: String,
    pub to: String,
    pub text: String,
    pub carrier_message_id: Option<String>,
}

/// What an inbound message did.
#[derive(Debug, Clone)]
pub struct InboundResult {
    pub message: SmsMessage,
    pub duplicate: bool,
    pub keyword: Option<Keyword>,
}

/// An outbound message the sender works on.
#[derive(Debug)]
pub(crate) struct OutMsg {
    pub id: Uuid,
    pub from: String,
    pub to: String,
    pub text: String,
    pub seg: Segmented,
    pub concat_ref: u8,
    pub media_urls: Vec<String>,
    pub keyword_reply: bool,
    pub campaign: bool,
    /// Parts (1-based) not accepted yet.
    pub parts: Vec<u8>,
    pub attempts: u32,
    pub created: Instant,
}

struct Inner {
    cfg: SmsConfig,
    carrier: &'static str,
    store: StoreHandle,
    stats: Arc<SmsStats>,
    optouts: Mutex<HashSet<String>>,
    jobs: mpsc::UnboundedSender<OutMsg>,
    /// Messages in the sender now (a repeated idempotency key while the database cannot
    /// answer must not send twice); removed when final, so it stays as small as the queue.
    pub(crate) submitted: Mutex<HashSet<Uuid>>,
    reassembler: Mutex<Reassembler>,
    storage_root: PathBuf,
    public_base: String,
    media_key: Vec<u8>,
    brand: Brand,
}

/// The SMS side of the server. Cheap to clone.
#[derive(Clone)]
pub struct Sms {
    inner: Arc<Inner>,
}

/// How long a multipart inbound message waits for its missing parts.
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Sms {
    /// Start the gateway: load the opt-outs and the queued messages, start the carrier link
    /// and the sender. `public_base` is our URL as carriers see it.
    pub async fn start(
        cfg: &crate::config::Config,
        store: StoreHandle,
        shutdown: watch::Receiver<bool>,
        public_base: String,
    ) -> anyhow::Result<Sms> {
        let sms = cfg.sms.clone();
        let carrier = match sms.mode {
            SmsMode::Smpp => "smpp",
            SmsMode::Http => match sms.http.style.as_str() {
                "twilio" => "twilio",
                "telnyx" => "telnyx",
                _ => "generic",
            },
            SmsMode::Off => "none",
        };
        let stats = Arc::new(SmsStats::default());
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (parts_tx, parts_rx) = mpsc::channel(1);
        let (events_tx, events_rx) = mpsc::channel(1024);
        // Media links survive a restart when a JWT secret is configured (they are derived from
        // it); otherwise they last as long as the process.
        let media_key = if cfg.auth.jwt_secret.is_empty() {
            let mut k = vec![0u8; 32];
            rand::fill(&mut k[..]);
            k
        } else {
            use sha2::{Digest, Sha256};
            Sha256::digest(format!("commhub:sms-media:{}", cfg.auth.jwt_secret).as_bytes()).to_vec()
        };
        let public_base = if sms.http.public_base_url.is_empty() {
            public_base
        } else {
            sms.http.public_base_url.trim_end_matches('/').to_string()
        };
        let inner = Arc::new(Inner {
            carrier,
            store: store.clone(),
            stats: stats.clone(),
            optouts: Mutex::new(HashSet::new()),
            jobs: jobs_tx,
            submitted: Mutex::new(HashSet::new()),
            reassembler: Mutex::new(Reassembler::new(REASSEMBLY_TIMEOUT, 10_000)),
            storage_root: cfg.recording.storage_root.clone(),
            public_base,
            media_key,
            brand: Brand {
                name: sms.brand.clone(),
                contact: sms.contact.clone(),
            },
            cfg: sms.clone(),
        });
        let gw = Sms { inner };
        // State from the database (when it is down at start, the opt-outs and the queue come
        // back with the next start; the outbox still holds every write).
        match store.store.sms_optouts().await {
            Ok(list) => lock(&gw.inner.optouts).extend(list),
            Err(e) => tracing::warn!(error = %e, "sms: could not load the opt-out list"),
        }
        match store.store.sms_inbound_parts().await {
            Ok(parts) => {
                let now = Instant::now();
                for p in parts {
                    gw.add_part_memory(&p, now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sms: could not load pending inbound parts"),
        }
        let mut reloaded = 0;
        if sms.mode != SmsMode::Off {
            match store.store.sms_queued().await {
                Ok(list) => {
                    for (m, parts) in list {
                        if let Some(mut job) = gw.job_from_row(&m, parts) {
                            if let Ok(media) = store.store.sms_media(&m.id).await {
                                job.media_urls =
                                    media.iter().map(|x| gw.media_url(&x.storage_key)).collect();
                            }
                            lock(&gw.inner.submitted).insert(m.id);
                            stats.queue_depth.fetch_add(1, Ordering::Relaxed);
                            let _ = gw.inner.jobs.send(job);
                            reloaded += 1;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sms: could not reload the send queue"),
            }
        }
        match sms.mode {
            SmsMode::Smpp => {
                smpp::spawn(
                    sms.smpp.clone(),
                    parts_rx,
                    events_tx.clone(),
                    stats.clone(),
                    shutdown.clone(),
                );
            }
            SmsMode::Http => {
                http::spawn(
                    sms.http.clone(),
                    parts_rx,
                    events_tx.clone(),
                    stats.clone(),
                    shutdown.clone(),
                );
            }
            SmsMode::Off => drop(parts_rx),
        }
        if sms.mode != SmsMode::Off {
            tokio::spawn(queue::run(
                gw.clone(),
                jobs_rx,
                parts_tx,
                events_rx,
                shutdown.clone(),
            ));
            tracing::info!(
                mode = carrier,
                reloaded,
                "sms: gateway started ({reloaded} queued messages reloaded)"
            );
        }
        // Forget pending receipts nobody claimed.
        let hours = i64::from(sms.pending_receipt_hours);
        let st = store.clone();
        let mut sd = shutdown;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = sd.changed() => return,
                }
                st.send(StoreOp::Sms(SmsOp::ExpireReceipts {
                    before: Utc::now() - chrono::Duration::hours(hours),
                }));
            }
        });
        Ok(gw)
    }

    pub fn stats(&self) -> &Arc<SmsStats> {
        &self.inner.stats
    }

    pub fn mode(&self) -> SmsMode {
        self.inner.cfg.mode
    }

    pub fn carrier(&self) -> &'static str {
        self.inner.carrier
    }

    pub fn config(&self) -> &SmsConfig {
        &self.inner.cfg
    }

    pub fn storage_root(&self) -> &PathBuf {
        &self.inner.storage_root
    }

    pub fn public_base(&self) -> &str {
        &self.inner.public_base
    }

    pub fn is_opted_out(&self, number: &str) -> bool {
        lock(&self.inner.optouts).contains(number)
    }

    /// The HMAC key of signed media links (per process).
    pub fn media_key(&self) -> &[u8] {
        &self.inner.media_key
    }

    /// `sms-send`: validate, store (durably) and queue; answer with the stored message.
    pub async fn send(&self, req: SendRequest) -> Result<(SmsMessage, bool), SmsError> {
        let cfg = &self.inner.cfg;
        if cfg.mode == SmsMode::Off {
            return Err(SmsError::Off);
        }
        if !crate::domain::valid_e164(&req.from) || !crate::domain::valid_e164(&req.to) {
            return Err(SmsError::Invalid(
                "`from` and `to` must be E.164 numbers (+ and 2 to 15 digits)".into(),
            ));
        }
        if req.from == req.to {
            return Err(SmsError::Invalid(
                "`from` and `to` are the same number".into(),
            ));
        }
        if !req.media.is_empty() && cfg.mode == SmsMode::Smpp {
            return Err(SmsError::Unprocessable(
                "MMS needs an HTTP carrier (SMS_MODE=HTTP); SMPP carries text only".into(),
            ));
        }
        if req.media.len() > crate::sms::carrier::MAX_MEDIA {
            return Err(SmsError::Invalid(format!(
                "at most {} media items",
                crate::sms::carrier::MAX_MEDIA
            )));
        }
        if req.body.is_empty() && req.media.is_empty() {
            return Err(SmsError::Invalid(
                "`body` is empty and there is no media".into(),
            ));
        }
        if req.body.chars().any(|c| c == '\0') {
            return Err(SmsError::Invalid("`body` contains a NUL character".into()));
        }
        let seg = if req.body.is_empty() {
            Segmented {
                encoding: Encoding::Gsm7,
                parts: vec![Vec::new()],
            }
        } else {
            segment(&req.body).map_err(|e| SmsError::Invalid(e.to_string()))?
        };
        let max = u64::from(cfg.mms_media_max_mb) * 1024 * 1024;
        let mut kinds = Vec::new();
        for (declared, bytes) in &req.media {
            if bytes.len() as u64 > max {
                return Err(SmsError::TooLarge(format!(
                    "a media item is {} bytes; the limit is {} MB (MMS_MEDIA_MAX_MB)",
                    bytes.len(),
                    cfg.mms_media_max_mb
                )));
            }
            let Some(kind) = crate::sms::media::sniff(bytes) else {
                return Err(SmsError::Unprocessable(
                    "a media item is not a supported type (JPEG, PNG, GIF, WebP, MP4/3GPP, MP3, AMR, PDF, vCard)".into(),
                ));
            };
            if !crate::sms::media::declared_matches(declared, kind) {
                return Err(SmsError::Unprocessable(format!(
                    "a media item was declared `{declared}` but its bytes are {}",
                    kind.mime
                )));
            }
            kinds.push(kind);
        }
        let id = match &req.idempotency_key {
            Some(k) => {
                if k.is_empty() || k.len() > 255 {
                    return Err(SmsError::Invalid(
                        "`idempotency_key` must be 1 to 255 characters".into(),
                    ));
                }
                Uuid::new_v5(
                    &Uuid::NAMESPACE_URL,
                    format!("commhub:sms-send:{k}").as_bytes(),
                )
            }
            None => Uuid::new_v4(),
        };
        if req.idempotency_key.is_some() {
            if let Ok(Some(m)) = self.inner.store.store.sms_message(&id).await {
                if m.from_number != req.from || m.to_number != req.to || m.body != req.body {
                    return Err(SmsError::IdempotencyConflict);
                }
                return Ok((m, true));
            }
            if lock(&self.inner.submitted).contains(&id) {
                // Stored through the outbox while the database is down: answer from memory.
                return Ok((self.row(id, &req, &seg, "queued").0, true));
            }
        }
        let blocked = self.is_opted_out(&req.to);
        let status = if blocked { "blocked" } else { "queued" };
        // Media files first: a row never points at a file that is not there.
        let mut media = Vec::new();
        for (i, ((_, bytes), kind)) in req.media.iter().zip(&kinds).enumerate() {
            let m = store_file(&self.inner.storage_root, id, i, *kind, bytes)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "sms: could not store a media item");
                    SmsError::Store
                })?;
            media.push(m);
        }
        let (row, parts) = self.row(id, &req, &seg, status);
        let urls = media
            .iter()
            .map(|m| self.media_url(&m.storage_key))
            .collect();
        let op = SmsOp::Insert {
            message: row.clone(),
            parts: if blocked { 0 } else { parts },
            media,
        };
        match self.inner.store.write(StoreOp::Sms(op)).await {
            Durable::Written | Durable::Queued => {}
            Durable::Rejected => return Err(SmsError::Store),
        }
        if blocked {
            self.inner.stats.blocked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.submit(&row, seg, false, urls);
        }
        Ok((row, false))
    }

    /// Build the row of an outbound message, and how many part rows it has.
    fn row(&self, id: Uuid, req: &SendRequest, seg: &Segmented, status: &str) -> (SmsMessage, u8) {
        let now = Utc::now();
        let segments = seg.parts.len().max(1) as i32;
        let multipart = segments > 1 && self.inner.carrier == "smpp";
        let cfg = &self.inner.cfg;
        let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let row = SmsMessage {
            id,
            conversation_id: conversation_id(&req.from, &req.to),
            direction: "outbound".into(),
            from_number: req.from.clone(),
            to_number: req.to.clone(),
            body: req.body.clone(),
            status: status.into(),
            carrier_message_id: None,
            error: (status == "blocked").then(|| "the recipient opted out".to_string()),
            error_code: (status == "blocked").then(|| "opted_out".to_string()),
            segments,
            encoding: Some(seg.encoding.as_str().to_string()),
            carrier: Some(self.inner.carrier.to_string()),
            origin: "api".into(),
            idempotency_key: req.idempotency_key.clone(),
            ten_dlc_brand_id: none_if_empty(&cfg.ten_dlc_brand_id),
            ten_dlc_campaign_id: none_if_empty(&cfg.ten_dlc_campaign_id),
            concat_ref: multipart.then(|| i32::from(rand::random::<u8>())),
            attempts: 0,
            created_at: now,
            updated_at: now,
        };
        // HTTP carriers split on their side: one request, one part row.
        let parts = if self.inner.carrier == "smpp" {
            segments as u8
        } else {
            1
        };
        (row, parts)
    }

    /// A link to a media item the carrier can fetch for an hour.
    pub fn media_url(&self, key: &str) -> String {
        let exp = Utc::now().timestamp() + 3600;
        let sig = crate::sms::media::sign(&self.inner.media_key, key, exp);
        format!("{}/{key}?exp={exp}&sig={sig}", self.inner.public_base)
    }

    fn submit(
        &self,
        row: &SmsMessage,
        seg: Segmented,
        keyword_reply: bool,
        media_urls: Vec<String>,
    ) {
        let parts: Vec<u8> = if self.inner.carrier == "smpp" {
            (1..=seg.parts.len() as u8).collect()
        } else {
            vec![1]
        };
        let job = OutMsg {
            id: row.id,
            from: row.from_number.clone(),
            to: row.to_number.clone(),
            text: row.body.clone(),
            seg,
            concat_ref: row.concat_ref.unwrap_or(0) as u8,
            media_urls,
            keyword_reply,
            campaign: row.ten_dlc_campaign_id.is_some(),
            parts,
            attempts: 0,
            created: Instant::now(),
        };
        lock(&self.inner.submitted).insert(row.id);
        self.inner.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.jobs.send(job);
    }

    /// A queued row from the database back into the sender (start-up).
    fn job_from_row(&self, m: &SmsMessage, parts: Vec<i32>) -> Option<OutMsg> {
        let seg = if m.body.is_empty() {
            Segmented {
                encoding: Encoding::Gsm7,
                parts: vec![Vec::new()],
            }
        } else {
            segment(&m.body).ok()?
        };
        let parts: Vec<u8> = parts
            .into_iter()
            .filter_map(|p| u8::try_from(p).ok())
            .collect();
        if parts.is_empty() {
            return None;
        }
        let age = (Utc::now() - m.created_at).to_std().unwrap_or_default();
        Some(OutMsg {
            id: m.id,
            from: m.from_number.clone(),
            to: m.to_number.clone(),
            text: m.body.clone(),
            seg,
            concat_ref: m.concat_ref.unwrap_or(0) as u8,
            media_urls: Vec::new(),
            keyword_reply: m.origin == "keyword",
            campaign: m.ten_dlc_campaign_id.is_some(),
            parts,
            attempts: m.attempts.max(0) as u32,
            created: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        })
    }

    /// A STOP/START/HELP confirmation: bypasses the opt-out check (a STOP's confirmation goes
    /// to a number that just opted out).
    async fn send_reply(&self, from: &str, to: &str, text: String) {
        let Ok(seg) = segment(&text) else { return };
        let req = SendRequest {
            from: from.to_string(),
            to: to.to_string(),
            body: text,
            media: Vec::new(),
            idempotency_key: None,
        };
        let (mut row, parts) = self.row(Uuid::new_v4(), &req, &seg, "queued");
        row.origin = "keyword".into();
        let op = SmsOp::Insert {
            message: row.clone(),
            parts,
            media: Vec::new(),
        };
        if self.inner.store.write(StoreOp::Sms(op)).await != Durable::Rejected {
            self.submit(&row, seg, true, Vec::new());
        }
    }

    /// A whole inbound message (webhook, or SMPP after reassembly): stored once, then its
    /// keyword acted on. Errors mean the carrier should send it again.
    pub async fn inbound(&self, m: Inbound) -> Result<InboundResult, SmsError> {
        if !crate::domain::valid_e164(&m.from) || !crate::domain::valid_e164(&m.to) {
            return Err(SmsError::Invalid(
                "`from` and `to` must be E.164 numbers".into(),
            ));
        }
        let id = match &m.carrier_message_id {
            Some(cid) => Uuid::new_v5(
                &Uuid::NAMESPACE_URL,
                format!("commhub:sms-mo:{}:{cid}", self.inner.carrier).as_bytes(),
            ),
            None => Uuid::new_v4(),
        };
        let encoding = crate::sms::encoding::encoding_of(&m.text).as_str();
        let row = self.inbound_row(id, &m, encoding, 1);
        if m.carrier_message_id.is_some()
            && matches!(self.inner.store.store.sms_exists(&id).await, Ok(true))
        {
            self.inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            let stored = self.inner.store.store.sms_message(&id).await.ok().flatten();
            return Ok(InboundResult {
                message: stored.unwrap_or(row),
                duplicate: true,
                keyword: None,
            });
        }
        self.store_inbound(row, None).await
    }

    async fn store_inbound(
        &self,
        row: SmsMessage,
        joined: Option<(i32, i32)>,
    ) -> Result<InboundResult, SmsError> {
        let op = match joined {
            Some((reference, total)) => SmsOp::InboundJoined {
                message: row.clone(),
                reference,
                total,
            },
            None => SmsOp::Insert {
                message: row.clone(),
                parts: 0,
                media: Vec::new(),
            },
        };
        if self.inner.store.write(StoreOp::Sms(op)).await == Durable::Rejected {
            return Err(SmsError::Store);
        }
        self.inner.stats.inbound.fetch_add(1, Ordering::Relaxed);
        let keyword = keywords::classify(&row.body);
        let (us, them) = (row.to_number.clone(), row.from_number.clone());
        match keyword {
            Some(Keyword::Stop) => {
                let changed = lock(&self.inner.optouts).insert(them.clone());
                if changed {
                    let word = row.body.trim().to_uppercase();
                    let op = SmsOp::OptOut {
                        number: them.clone(),
                        keyword: word.chars().take(32).collect(),
                        at: Utc::now(),
                    };
                    if self.inner.store.write(StoreOp::Sms(op)).await == Durable::Rejected {
                        lock(&self.inner.optouts).remove(&them);
                        return Err(SmsError::Store);
                    }
                    tracing::info!(number = %crate::redact::redact(&them), "sms: opted out");
                    self.send_reply(
                        &us,
                        &them,
                        keywords::reply(Keyword::Stop, &self.inner.brand),
                    )
                    .await;
                }
            }
            Some(Keyword::Start) => {
                let changed = lock(&self.inner.optouts).remove(&them);
                if changed {
                    let op = SmsOp::OptIn {
                        number: them.clone(),
                    };
                    if self.inner.store.write(StoreOp::Sms(op)).await == Durable::Rejected {
                        lock(&self.inner.optouts).insert(them.clone());
                        return Err(SmsError::Store);
                    }
                    tracing::info!(number = %crate::redact::redact(&them), "sms: opted in");
                    self.send_reply(
                        &us,
                        &them,
                        keywords::reply(Keyword::Start, &self.inner.brand),
                    )
                    .await;
                }
            }
            Some(Keyword::Help) => {
                self.send_reply(
                    &us,
                    &them,
                    keywords::reply(Keyword::Help, &self.inner.brand),
                )
                .await;
            }
            None => {}
        }
        Ok(InboundResult {
            message: row,
            duplicate: false,
            keyword,
        })
    }

    /// A delivery receipt (webhook or SMPP): durable before the caller answers.
    pub async fn receipt(
        &self,
        carrier_message_id: &str,
        status: crate::sms::receipt::MessageStatus,
        error_code: Option<String>,
    ) -> Result<(), SmsError> {
        use crate::sms::receipt::MessageStatus as S;
        let status = match status {
            S::Delivered => "delivered",
            S::Failed => "failed",
            S::Sent => "sent",
            _ => return Ok(()),
        };
        if carrier_message_id.is_empty() || carrier_message_id.len() > 128 {
            return Err(SmsError::Invalid(
                "the receipt's message id is empty or too long".into(),
            ));
        }
        self.inner.stats.receipts.fetch_add(1, Ordering::Relaxed);
        let op = SmsOp::Receipt {
            carrier: self.inner.carrier.to_string(),
            carrier_message_id: carrier_message_id.to_string(),
            status: status.to_string(),
            error_code: error_code.map(|c| c.chars().take(64).collect()),
            at: Utc::now(),
        };
        if self.inner.store.write(StoreOp::Sms(op)).await == Durable::Rejected {
            return Err(SmsError::Store);
        }
        Ok(())
    }

    /// The row of a whole inbound message.
    fn inbound_row(&self, id: Uuid, m: &Inbound, encoding: &str, segments: i32) -> SmsMessage {
        let now = Utc::now();
        SmsMessage {
            id,
            conversation_id: conversation_id(&m.to, &m.from),
            direction: "inbound".into(),
            from_number: m.from.clone(),
            to_number: m.to.clone(),
            body: m.text.clone(),
            status: "received".into(),
            carrier_message_id: m.carrier_message_id.clone(),
            error: None,
            error_code: None,
            segments,
            encoding: Some(encoding.to_string()),
            carrier: Some(self.inner.carrier.to_string()),
            origin: "carrier".into(),
            idempotency_key: None,
            ten_dlc_brand_id: None,
            ten_dlc_campaign_id: None,
            concat_ref: None,
            attempts: 0,
            created_at: now,
            updated_at: now,
        }
    }

    /// An inbound SMPP part: single parts become messages; parts of a multipart message are
    /// stored until the message is whole.
    async fn inbound_part(&self, p: InboundPart) -> Result<(), SmsError> {
        let Some(c) = p.concat.filter(|c| c.total > 1) else {
            let text = decode(p.data_coding, &p.payload);
            return self
                .inbound(Inbound {
                    from: p.from,
                    to: p.to,
                    text,
                    carrier_message_id: p.carrier_message_id,
                })
                .await
                .map(|_| ());
        };
        if !crate::domain::valid_e164(&p.from) || !crate::domain::valid_e164(&p.to) {
            return Err(SmsError::Invalid("bad numbers in an inbound part".into()));
        }
        self.inner
            .stats
            .inbound_parts
            .fetch_add(1, Ordering::Relaxed);
        let row = InboundPartRow {
            from_number: p.from.clone(),
            to_number: p.to.clone(),
            reference: i32::from(c.reference),
            total: i32::from(c.total),
            seq: i32::from(c.index),
            data_coding: i32::from(p.data_coding),
            payload: p.payload.clone(),
            received_at: Utc::now(),
        };
        if self
            .inner
            .store
            .write(StoreOp::Sms(SmsOp::InboundPart(row.clone())))
            .await
            == Durable::Rejected
        {
            return Err(SmsError::Store);
        }
        if let Some((data, dc)) = self.add_part_memory(&row, Instant::now()) {
            let m = Inbound {
                from: p.from,
                to: p.to,
                text: decode(dc, &data),
                carrier_message_id: None,
            };
            let encoding = if dc == 8 { "ucs2" } else { "gsm7" };
            let msg = self.inbound_row(Uuid::new_v4(), &m, encoding, i32::from(c.total));
            self.store_inbound(msg, Some((i32::from(c.reference), i32::from(c.total))))
                .await?;
        }
        Ok(())
    }

    /// Add a part to the in-memory reassembly; the joined payload and data coding when whole.
    fn add_part_memory(&self, p: &InboundPartRow, now: Instant) -> Option<(Vec<u8>, u8)> {
        let c = Concat {
            reference: u16::try_from(p.reference).ok()?,
            total: u8::try_from(p.total).ok()?,
            index: u8::try_from(p.seq).ok()?,
        };
        let dc = u8::try_from(p.data_coding).unwrap_or(0);
        let mut r = lock(&self.inner.reassembler);
        match r.add(&p.from_number, &p.to_number, c, p.payload.clone(), now) {
            Outcome::Complete(data) => Some((data, dc)),
            Outcome::Duplicate => {
                self.inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => None,
        }
    }

    /// Everything a link reports, except what the sender handles itself.
    pub(crate) fn link_event(&self, ev: LinkEvent) {
        let gw = self.clone();
        match ev {
            LinkEvent::Receipt {
                carrier_message_id,
                status,
                error_code,
                ack,
            } => {
                tokio::spawn(async move {
                    let ok = gw
                        .receipt(&carrier_message_id, status, error_code)
                        .await
                        .is_ok();
                    if let Some(a) = ack {
                        let _ = a.send(ok);
                    }
                });
            }
            LinkEvent::Inbound { part, ack } => {
                tokio::spawn(async move {
                    let r = gw.inbound_part(part).await;
                    // A part we can never store (bad numbers) is answered OK and counted, so
                    // the SMSC does not resend it forever.
                    let ok = !matches!(r, Err(SmsError::Store));
                    if let Err(SmsError::Invalid(_)) = r {
                        gw.inner
                            .stats
                            .webhook_refused
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(a) = ack {
                        let _ = a.send(ok);
                    }
                });
            }
            LinkEvent::BindState { role, state } => {
                let s = &self.inner.stats;
                match role {
                    "receiver" => s.bind_state_rx.store(u64::from(state), Ordering::Relaxed),
                    _ => s.bind_state_tx.store(u64::from(state), Ordering::Relaxed),
                }
            }
            LinkEvent::Accepted { .. } | LinkEvent::Failed { .. } => {}
        }
    }
}

/// Decode an inbound payload by its SMPP data_coding.
pub fn decode(data_coding: u8, payload: &[u8]) -> String {
    match data_coding {
        8 => from_ucs2(payload),
        3 => payload.iter().map(|&b| char::from(b)).collect(),
        // 0 (SMSC default: GSM unpacked septets), 1 (IA5/ASCII) and anything else.
        _ => from_septets(payload),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write a media item under the storage root (fsynced), before its row.
async fn store_file(
    root: &std::path::Path,
    message: Uuid,
    position: usize,
    kind: crate::sms::media::Kind,
    bytes: &[u8],
) -> std::io::Result<SmsMedia> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;
    let now = Utc::now();
    let key = crate::sms::media::storage_key(now.date_naive(), message, position, kind);
    let path = root.join(&key);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut f = tokio::fs::File::create(&path).await?;
    f.write_all(bytes).await?;
    f.sync_all().await?;
    let sha: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(SmsMedia {
        id: Uuid::new_v4(),
        message_id: message,
        position: position as i32,
        content_type: kind.mime.to_string(),
        size_bytes: bytes.len() as i64,
        sha256: sha,
        storage_key: key,
        created_at: now,
    })
}
