//! SMS rows and writes (issue 12). The message row is the send queue's durable record; its
//! parts carry the carrier's ids and receipts, and the message's status is derived from them,
//! forward only (queued -> sent -> delivered or failed). Every op is idempotent, so the outbox
//! may replay it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{ConnRef, Db, RowExt, Store, StoreOp, ts_text};

/// A message as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmsMessage {
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub from_number: String,
    pub to_number: String,
    pub body: String,
    /// queued, sent, delivered, failed, blocked (opted out), received (inbound).
    pub status: String,
    /// The carrier's id (of the first part, for multipart outbound messages).
    pub carrier_message_id: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub segments: i32,
    /// `gsm7` or `ucs2`.
    pub encoding: Option<String>,
    /// `smpp`, `generic`, `twilio` or `telnyx`.
    pub carrier: Option<String>,
    /// `api`, `keyword` (a STOP/START/HELP reply) or `carrier` (inbound).
    pub origin: String,
    pub idempotency_key: Option<String>,
    pub ten_dlc_brand_id: Option<String>,
    pub ten_dlc_campaign_id: Option<String>,
    /// The UDH reference of a multipart message (resent parts reuse it).
    pub concat_ref: Option<i32>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One part of an outbound message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmsPart {
    pub message_id: Uuid,
    pub part: i32,
    pub carrier: String,
    pub carrier_message_id: Option<String>,
    pub status: String,
    pub error_code: Option<String>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub receipt_at: Option<DateTime<Utc>>,
}

/// An MMS item stored under `sms-media/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmsMedia {
    pub id: Uuid,
    pub message_id: Uuid,
    pub position: i32,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub storage_key: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation with its opt-out state and latest message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmsConversation {
    pub id: Uuid,
    pub our_number: String,
    pub their_number: String,
    pub created_at: DateTime<Utc>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub opted_out: bool,
    pub message_count: i64,
}

/// An inbound part waiting for the rest of its message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboundPartRow {
    pub from_number: String,
    pub to_number: String,
    pub reference: i32,
    pub total: i32,
    pub seq: i32,
    pub data_coding: i32,
    pub payload: Vec<u8>,
    pub received_at: DateTime<Utc>,
}

/// SMS writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "sms", rename_all = "snake_case")]
pub enum SmsOp {
    /// Upsert the conversation, insert the message (and `parts` queued part rows, and its
    /// media). Used for outbound sends (queued or blocked) and whole inbound messages; a
    /// repeat (same id, or an inbound carrier id seen before) does nothing.
    Insert {
        message: SmsMessage,
        parts: u8,
        media: Vec<SmsMedia>,
    },
    /// The carrier took a part: queued -> sent with its id; receipts that came first apply.
    PartAccepted {
        message_id: Uuid,
        part: u8,
        carrier: String,
        carrier_message_id: String,
        at: DateTime<Utc>,
    },
    /// A failed attempt: count it; `give_up` fails the message and its unsent parts.
    Attempt {
        message_id: Uuid,
        attempts: u32,
        error_code: String,
        error: String,
        give_up: bool,
        at: DateTime<Utc>,
    },
    /// A queued message whose recipient opted out before it went.
    Blocked {
        message_id: Uuid,
        at: DateTime<Utc>,
    },
    /// A delivery receipt (status sent, delivered or failed); kept pending when no part has
    /// that id yet.
    Receipt {
        carrier: String,
        carrier_message_id: String,
        status: String,
        error_code: Option<String>,
        at: DateTime<Utc>,
    },
    /// One inbound part of a multipart message.
    InboundPart(InboundPartRow),
    /// The whole inbound message: insert it and forget its parts.
    InboundJoined {
        message: SmsMessage,
        reference: i32,
        total: i32,
    },
    OptOut {
        number: String,
        keyword: String,
        at: DateTime<Utc>,
    },
    OptIn {
        number: String,
    },
    /// Forget pending receipts older than `before`.
    ExpireReceipts {
        before: DateTime<Utc>,
    },
}

impl SmsOp {
    pub fn name(&self) -> &'static str {
        match self {
            SmsOp::Insert { .. } => "sms_insert",
            SmsOp::PartAccepted { .. } => "sms_part_accepted",
            SmsOp::Attempt { .. } => "sms_attempt",
            SmsOp::Blocked { .. } => "sms_blocked",
            SmsOp::Receipt { .. } => "sms_receipt",
            SmsOp::InboundPart(_) => "sms_inbound_part",
            SmsOp::InboundJoined { .. } => "sms_inbound_joined",
            SmsOp::OptOut { .. } => "sms_opt_out",
            SmsOp::OptIn { .. } => "sms_opt_in",
            SmsOp::ExpireReceipts { .. } => "sms_expire_receipts",
        }
    }
}

impl From<SmsOp> for StoreOp {
    fn from(op: SmsOp) -> StoreOp {
        StoreOp::Sms(op)
    }
}

/// The conversation of two numbers has a fixed id, so writes need no read.
pub fn conversation_id(our: &str, their: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("commhub:sms-conversation:{our}|{their}").as_bytes(),
    )
}

/// Rank of a status in the forward-only order (`blocked` and `received` are final).
pub fn rank(status: &str) -> u8 {
    match status {
        "queued" => 0,
        "sent" => 1,
        _ => 2,
    }
}

/// A message's status from its parts: failed if any failed, delivered if all were, sent if all
/// were accepted, else queued.
pub fn status_from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> &'static str {
    let (mut n, mut sent, mut delivered, mut failed) = (0, 0, 0, 0);
    for s in parts {
        n += 1;
        match s {
            "sent" => sent += 1,
            "delivered" => delivered += 1,
            "failed" => failed += 1,
            _ => {}
        }
    }
    if failed > 0 {
        "failed"
    } else if n > 0 && delivered == n {
        "delivered"
    } else if n > 0 && sent + delivered == n {
        "sent"
    } else {
        "queued"
    }
}

/// Filters of the message listing.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SmsFilter {
    /// Matches from_number or to_number.
    pub number: Option<String>,
    pub status: Option<String>,
    pub direction: Option<String>,
    pub conversation_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u64,
}

const MESSAGE_COLS: &str = "id, conversation_id, direction, from_number, to_number, body, status, \
     carrier_message_id, error, error_code, CAST(segments AS integer) AS segments, encoding, \
     carrier, origin, idempotency_key, ten_dlc_brand_id, ten_dlc_campaign_id, concat_ref, \
     attempts, created_at, updated_at";

fn message_from<R: RowExt>(r: &R) -> Result<SmsMessage, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i32>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SmsMessage {
        id: r.id("id")?,
        conversation_id: r.id("conversation_id")?,
        direction: r.try_get("direction")?,
        from_number: r.try_get("from_number")?,
        to_number: r.try_get("to_number")?,
        body: r.try_get("body")?,
        status: r.try_get("status")?,
        carrier_message_id: r.try_get("carrier_message_id")?,
        error: r.try_get("error")?,
        error_code: r.try_get("error_code")?,
        segments: r.try_get("segments")?,
        encoding: r.try_get("encoding")?,
        carrier: r.try_get("carrier")?,
        origin: r.try_get("origin")?,
        idempotency_key: r.try_get("idempotency_key")?,
        ten_dlc_brand_id: r.try_get("ten_dlc_brand_id")?,
        ten_dlc_campaign_id: r.try_get("ten_dlc_campaign_id")?,
        concat_ref: r.try_get("concat_ref")?,
        attempts: r.try_get("attempts")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn part_from<R: RowExt>(r: &R) -> Result<SmsPart, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SmsPart {
        message_id: r.id("message_id")?,
        part: r.try_get("part")?,
        carrier: r.try_get("carrier")?,
        carrier_message_id: r.try_get("carrier_message_id")?,
        status: r.try_get("status")?,
        error_code: r.try_get("error_code")?,
        submitted_at: r.ts_opt("submitted_at")?,
        receipt_at: r.ts_opt("receipt_at")?,
    })
}

/// Run `$body` inside one transaction `$tx` on the connection (a savepoint when the connection
/// is in a transaction already), with `$id`/`$ts`/`$wrap` as in `on_conn!`.
macro_rules! in_tx {
    ($conn:expr, |$tx:ident, $pg:ident, $id:ident, $ts:ident, $wrap:ident| $body:block) => {
        on_conn!($conn, |conn, $pg, $id, $ts, $wrap| {
            use sqlx::Connection;
            let mut $tx = conn.begin().await?;
            $body
            $tx.commit().await?;
            Ok(())
        })
    };
}

/// Derive the message's status from its parts and move it forward (inside `$tx`).
macro_rules! recompute {
    ($tx:ident, $pg:ident, $mid:expr, $at:expr) => {{
        let mid = $mid;
        let rows =
            sqlx::query("SELECT status, error_code FROM sms_message_parts WHERE message_id = $1")
                .bind(mid.clone())
                .fetch_all(&mut *$tx)
                .await?;
        let mut statuses = Vec::with_capacity(rows.len());
        let mut code: Option<String> = None;
        for r in &rows {
            let s: String = r.try_get("status")?;
            if s == "failed" && code.is_none() {
                code = r.try_get("error_code")?;
            }
            statuses.push(s);
        }
        let new = status_from_parts(statuses.iter().map(String::as_str));
        if new != "queued" {
            sqlx::query(
                "UPDATE sms_messages SET status = $2, updated_at = $3, \
                 error_code = CASE WHEN $2 = 'failed' THEN COALESCE($4, error_code) ELSE error_code END, \
                 error = CASE WHEN $2 = 'failed' THEN COALESCE(error, 'the carrier could not deliver it') ELSE error END \
                 WHERE id = $1 AND (CASE status WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END) < \
                 (CASE $2 WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END)",
            )
            .bind(mid)
            .bind(new)
            .bind($at)
            .bind(code)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

impl Store {
    /// Apply one SMS write (in one transaction).
    pub(super) async fn apply_sms(&self, conn: ConnRef<'_>, op: &SmsOp) -> Result<(), sqlx::Error> {
        in_tx!(conn, |tx, pg, id, ts, wrap| {
            match op {
                SmsOp::Insert {
                    message: m,
                    parts,
                    media,
                } => {
                    let (our, their) = if m.direction == "outbound" {
                        (&m.from_number, &m.to_number)
                    } else {
                        (&m.to_number, &m.from_number)
                    };
                    let later = if pg { "GREATEST" } else { "max" };
                    let sql = format!(
                        "INSERT INTO sms_conversations (id, our_number, their_number, created_at, \
                         last_message_at) VALUES ($1, $2, $3, $4, $4) \
                         ON CONFLICT (our_number, their_number) DO UPDATE SET last_message_at = \
                         {later}(COALESCE(sms_conversations.last_message_at, excluded.last_message_at), \
                         excluded.last_message_at)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id(&m.conversation_id))
                        .bind(our)
                        .bind(their)
                        .bind(ts(&m.created_at))
                        .execute(&mut *tx)
                        .await?;
                    let done = sqlx::query(
                        "INSERT INTO sms_messages (id, conversation_id, direction, from_number, \
                         to_number, body, status, carrier_message_id, error, error_code, segments, \
                         encoding, carrier, origin, idempotency_key, ten_dlc_brand_id, \
                         ten_dlc_campaign_id, concat_ref, attempts, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                         $16, $17, $18, $19, $20, $21) ON CONFLICT DO NOTHING",
                    )
                    .bind(id(&m.id))
                    .bind(id(&m.conversation_id))
                    .bind(&m.direction)
                    .bind(&m.from_number)
                    .bind(&m.to_number)
                    .bind(&m.body)
                    .bind(&m.status)
                    .bind(&m.carrier_message_id)
                    .bind(&m.error)
                    .bind(&m.error_code)
                    .bind(m.segments)
                    .bind(&m.encoding)
                    .bind(&m.carrier)
                    .bind(&m.origin)
                    .bind(&m.idempotency_key)
                    .bind(&m.ten_dlc_brand_id)
                    .bind(&m.ten_dlc_campaign_id)
                    .bind(m.concat_ref)
                    .bind(m.attempts)
                    .bind(ts(&m.created_at))
                    .bind(ts(&m.updated_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done == 1 {
                        let carrier = m.carrier.clone().unwrap_or_default();
                        for p in 1..=i32::from(*parts) {
                            sqlx::query(
                                "INSERT INTO sms_message_parts (message_id, part, carrier, status) \
                                 VALUES ($1, $2, $3, 'queued') ON CONFLICT DO NOTHING",
                            )
                            .bind(id(&m.id))
                            .bind(p)
                            .bind(&carrier)
                            .execute(&mut *tx)
                            .await?;
                        }
                        for x in media {
                            sqlx::query(
                                "INSERT INTO sms_media (id, message_id, position, content_type, \
                                 size_bytes, sha256, storage_key, created_at) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                            )
                            .bind(id(&x.id))
                            .bind(id(&x.message_id))
                            .bind(x.position)
                            .bind(&x.content_type)
                            .bind(x.size_bytes)
                            .bind(&x.sha256)
                            .bind(&x.storage_key)
                            .bind(ts(&x.created_at))
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
                SmsOp::PartAccepted {
                    message_id,
                    part,
                    carrier,
                    carrier_message_id,
                    at,
                } => {
                    sqlx::query(
                        "UPDATE sms_message_parts SET status = 'sent', carrier_message_id = $4, \
                         submitted_at = $5 WHERE message_id = $1 AND part = $2 AND carrier = $3 \
                         AND status = 'queued'",
                    )
                    .bind(id(message_id))
                    .bind(i32::from(*part))
                    .bind(carrier)
                    .bind(carrier_message_id)
                    .bind(ts(at))
                    .execute(&mut *tx)
                    .await?;
                    if *part == 1 {
                        sqlx::query(
                            "UPDATE sms_messages SET carrier_message_id = $2 \
                             WHERE id = $1 AND carrier_message_id IS NULL",
                        )
                        .bind(id(message_id))
                        .bind(carrier_message_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // Receipts that overtook this answer.
                    let pending = sqlx::query(
                        "SELECT status, error_code, received_at FROM sms_receipts_pending \
                         WHERE carrier = $1 AND carrier_message_id = $2",
                    )
                    .bind(carrier)
                    .bind(carrier_message_id)
                    .fetch_all(&mut *tx)
                    .await?;
                    for r in &pending {
                        let status: String = r.try_get("status")?;
                        let code: Option<String> = r.try_get("error_code")?;
                        let when = r.ts("received_at")?;
                        sqlx::query(sqlx::AssertSqlSafe(receipt_sql(pg)))
                            .bind(id(message_id))
                            .bind(i32::from(*part))
                            .bind(&status)
                            .bind(&code)
                            .bind(ts(&when))
                            .execute(&mut *tx)
                            .await?;
                    }
                    if !pending.is_empty() {
                        sqlx::query(
                            "DELETE FROM sms_receipts_pending \
                             WHERE carrier = $1 AND carrier_message_id = $2",
                        )
                        .bind(carrier)
                        .bind(carrier_message_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let mid = id(message_id);
                    recompute!(tx, pg, mid, ts(at));
                }
                SmsOp::Attempt {
                    message_id,
                    attempts,
                    error_code,
                    error,
                    give_up,
                    at,
                } => {
                    let n = i32::try_from(*attempts).unwrap_or(i32::MAX);
                    sqlx::query(
                        "UPDATE sms_messages SET attempts = $2, error_code = $3, error = $4, \
                         updated_at = $5 WHERE id = $1 AND attempts < $2 AND status = 'queued'",
                    )
                    .bind(id(message_id))
                    .bind(n)
                    .bind(error_code)
                    .bind(error)
                    .bind(ts(at))
                    .execute(&mut *tx)
                    .await?;
                    if *give_up {
                        sqlx::query(
                            "UPDATE sms_message_parts SET status = 'failed', error_code = $2 \
                             WHERE message_id = $1 AND status = 'queued'",
                        )
                        .bind(id(message_id))
                        .bind(error_code)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "UPDATE sms_messages SET status = 'failed', error_code = $2, \
                             error = $3, updated_at = $4 \
                             WHERE id = $1 AND status IN ('queued', 'sent')",
                        )
                        .bind(id(message_id))
                        .bind(error_code)
                        .bind(error)
                        .bind(ts(at))
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                SmsOp::Blocked { message_id, at } => {
                    sqlx::query(
                        "UPDATE sms_messages SET status = 'blocked', updated_at = $2, \
                         error = 'the recipient opted out' WHERE id = $1 AND status = 'queued'",
                    )
                    .bind(id(message_id))
                    .bind(ts(at))
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE sms_message_parts SET status = 'failed', error_code = 'opted_out' \
                         WHERE message_id = $1 AND status = 'queued'",
                    )
                    .bind(id(message_id))
                    .execute(&mut *tx)
                    .await?;
                }
                SmsOp::Receipt {
                    carrier,
                    carrier_message_id,
                    status,
                    error_code,
                    at,
                } => {
                    // The most recent part with this id (ids may be reused by the carrier).
                    let part = sqlx::query(
                        "SELECT message_id, CAST(part AS integer) AS part FROM sms_message_parts \
                         WHERE carrier = $1 AND carrier_message_id = $2 \
                         ORDER BY submitted_at DESC LIMIT 1",
                    )
                    .bind(carrier)
                    .bind(carrier_message_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match part {
                        Some(row) => {
                            let mid = row.id("message_id")?;
                            let pno: i32 = row.try_get("part")?;
                            sqlx::query(sqlx::AssertSqlSafe(receipt_sql(pg)))
                                .bind(id(&mid))
                                .bind(pno)
                                .bind(status)
                                .bind(error_code)
                                .bind(ts(at))
                                .execute(&mut *tx)
                                .await?;
                            let mid = id(&mid);
                            recompute!(tx, pg, mid, ts(at));
                        }
                        None => {
                            sqlx::query(
                                "INSERT INTO sms_receipts_pending (carrier, carrier_message_id, \
                                 status, error_code, received_at) VALUES ($1, $2, $3, $4, $5) \
                                 ON CONFLICT DO NOTHING",
                            )
                            .bind(carrier)
                            .bind(carrier_message_id)
                            .bind(status)
                            .bind(error_code)
                            .bind(ts(at))
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
                SmsOp::InboundPart(p) => {
                    sqlx::query(
                        "INSERT INTO sms_inbound_parts (from_number, to_number, reference, total, \
                         seq, data_coding, payload, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    )
                    .bind(&p.from_number)
                    .bind(&p.to_number)
                    .bind(p.reference)
                    .bind(p.total)
                    .bind(p.seq)
                    .bind(p.data_coding)
                    .bind(&p.payload)
                    .bind(ts(&p.received_at))
                    .execute(&mut *tx)
                    .await?;
                }
                SmsOp::InboundJoined {
                    message,
                    reference,
                    total,
                } => {
                    Box::pin(self.apply_sms(
                        wrap(&mut tx),
                        &SmsOp::Insert {
                            message: message.clone(),
                            parts: 0,
                            media: Vec::new(),
                        },
                    ))
                    .await?;
                    sqlx::query(
                        "DELETE FROM sms_inbound_parts WHERE from_number = $1 AND to_number = $2 \
                         AND reference = $3 AND total = $4",
                    )
                    .bind(&message.from_number)
                    .bind(&message.to_number)
                    .bind(reference)
                    .bind(total)
                    .execute(&mut *tx)
                    .await?;
                }
                SmsOp::OptOut {
                    number,
                    keyword,
                    at,
                } => {
                    sqlx::query(
                        "INSERT INTO sms_optouts (phone_number, keyword, opted_out_at) \
                         VALUES ($1, $2, $3) ON CONFLICT (phone_number) DO NOTHING",
                    )
                    .bind(number)
                    .bind(keyword)
                    .bind(ts(at))
                    .execute(&mut *tx)
                    .await?;
                }
                SmsOp::OptIn { number } => {
                    sqlx::query("DELETE FROM sms_optouts WHERE phone_number = $1")
                        .bind(number)
                        .execute(&mut *tx)
                        .await?;
                }
                SmsOp::ExpireReceipts { before } => {
                    sqlx::query("DELETE FROM sms_receipts_pending WHERE received_at < $1")
                        .bind(ts(before))
                        .execute(&mut *tx)
                        .await?;
                }
            }
        })
    }

    /// One message.
    pub async fn sms_message(&self, mid: &Uuid) -> Result<Option<SmsMessage>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let sql = format!("SELECT {MESSAGE_COLS} FROM sms_messages WHERE id = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id(mid))
                .fetch_optional(pool)
                .await?;
            row.map(|r| message_from(&r)).transpose()
        })
    }

    /// A message's parts, in order.
    pub async fn sms_parts(&self, mid: &Uuid) -> Result<Vec<SmsPart>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query(
                "SELECT message_id, CAST(part AS integer) AS part, carrier, carrier_message_id, \
                 status, error_code, submitted_at, receipt_at FROM sms_message_parts \
                 WHERE message_id = $1 ORDER BY part",
            )
            .bind(id(mid))
            .fetch_all(pool)
            .await?;
            rows.iter().map(part_from).collect()
        })
    }

    /// A page of messages, newest first, and the total matching.
    pub async fn list_sms(&self, f: &SmsFilter) -> Result<(Vec<SmsMessage>, i64), sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let mut where_sql = "WHERE ($1 IS NULL OR from_number = $1 OR to_number = $1) \
                 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR direction = $3) \
                 AND ($4 IS NULL OR conversation_id = $4) AND ($5 IS NULL OR created_at >= $5)"
                .to_string();
            if pg {
                where_sql = where_sql
                    .replace("$1 IS NULL", "$1::text IS NULL")
                    .replace("$2 IS NULL", "$2::text IS NULL")
                    .replace("$3 IS NULL", "$3::text IS NULL")
                    .replace("$4 IS NULL", "$4::uuid IS NULL")
                    .replace("$5 IS NULL", "$5::timestamptz IS NULL");
            }
            let list = format!(
                "SELECT {MESSAGE_COLS} FROM sms_messages {where_sql} \
                 ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
            );
            let count = format!("SELECT COUNT(*) AS n FROM sms_messages {where_sql}");
            macro_rules! binds {
                ($q:expr) => {
                    $q.bind(&f.number)
                        .bind(&f.status)
                        .bind(&f.direction)
                        .bind(f.conversation_id.as_ref().map(id))
                        .bind(f.since.as_ref().map(ts))
                };
            }
            let rows = binds!(sqlx::query(sqlx::AssertSqlSafe(list)))
                .bind(i64::from(f.limit))
                .bind(f.offset as i64)
                .fetch_all(pool)
                .await?;
            let total: i64 = binds!(sqlx::query(sqlx::AssertSqlSafe(count)))
                .fetch_one(pool)
                .await?
                .try_get("n")?;
            let list = rows
                .iter()
                .map(message_from)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((list, total))
        })
    }

    /// Conversations, most recent first, optionally those with one number.
    pub async fn list_sms_conversations(
        &self,
        number: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<SmsConversation>, i64), sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let cond = if pg {
                "($1::text IS NULL OR c.our_number = $1 OR c.their_number = $1)"
            } else {
                "($1 IS NULL OR c.our_number = $1 OR c.their_number = $1)"
            };
            let list = format!(
                "SELECT c.id, c.our_number, c.their_number, c.created_at, c.last_message_at, \
                 (SELECT COUNT(*) FROM sms_optouts o WHERE o.phone_number = c.their_number) AS optout, \
                 (SELECT COUNT(*) FROM sms_messages m WHERE m.conversation_id = c.id) AS n \
                 FROM sms_conversations c WHERE {cond} \
                 ORDER BY c.last_message_at DESC, c.id LIMIT $2 OFFSET $3"
            );
            let count = format!("SELECT COUNT(*) AS n FROM sms_conversations c WHERE {cond}");
            let rows = sqlx::query(sqlx::AssertSqlSafe(list))
                .bind(number)
                .bind(i64::from(limit))
                .bind(offset as i64)
                .fetch_all(pool)
                .await?;
            let total: i64 = sqlx::query(sqlx::AssertSqlSafe(count))
                .bind(number)
                .fetch_one(pool)
                .await?
                .try_get("n")?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let optout: i64 = r.try_get("optout")?;
                out.push(SmsConversation {
                    id: r.id("id")?,
                    our_number: r.try_get("our_number")?,
                    their_number: r.try_get("their_number")?,
                    created_at: r.ts("created_at")?,
                    last_message_at: r.ts_opt("last_message_at")?,
                    opted_out: optout > 0,
                    message_count: r.try_get("n")?,
                });
            }
            Ok((out, total))
        })
    }

    /// Every opted-out number.
    pub async fn sms_optouts(&self) -> Result<Vec<String>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query("SELECT phone_number FROM sms_optouts")
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| r.try_get("phone_number")).collect()
        })
    }

    /// Outbound messages still queued, oldest first, with their parts not yet accepted.
    pub async fn sms_queued(&self) -> Result<Vec<(SmsMessage, Vec<i32>)>, sqlx::Error> {
        let msgs = with_db!(self, |pool, pg, id, ts| {
            let sql = format!(
                "SELECT {MESSAGE_COLS} FROM sms_messages \
                 WHERE status = 'queued' AND direction = 'outbound' ORDER BY created_at, id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?;
            rows.iter().map(message_from).collect::<Result<Vec<_>, _>>()
        })?;
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let parts = self
                .sms_parts(&m.id)
                .await?
                .into_iter()
                .filter(|p| p.status == "queued")
                .map(|p| p.part)
                .collect();
            out.push((m, parts));
        }
        Ok(out)
    }

    /// Inbound parts waiting for the rest of their message.
    pub async fn sms_inbound_parts(&self) -> Result<Vec<InboundPartRow>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query(
                "SELECT from_number, to_number, CAST(reference AS integer) AS reference, \
                 CAST(total AS integer) AS total, CAST(seq AS integer) AS seq, \
                 CAST(data_coding AS integer) AS data_coding, payload, received_at \
                 FROM sms_inbound_parts ORDER BY received_at",
            )
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(InboundPartRow {
                    from_number: r.try_get("from_number")?,
                    to_number: r.try_get("to_number")?,
                    reference: r.try_get("reference")?,
                    total: r.try_get("total")?,
                    seq: r.try_get("seq")?,
                    data_coding: r.try_get("data_coding")?,
                    payload: r.try_get("payload")?,
                    received_at: r.ts("received_at")?,
                });
            }
            Ok(out)
        })
    }

    /// Whether an inbound message with this id exists (webhook repeats).
    pub async fn sms_exists(&self, mid: &Uuid) -> Result<bool, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let row = sqlx::query("SELECT 1 AS one FROM sms_messages WHERE id = $1")
                .bind(id(mid))
                .fetch_optional(pool)
                .await?;
            Ok(row.is_some())
        })
    }

    /// The media of a message.
    pub async fn sms_media(&self, mid: &Uuid) -> Result<Vec<SmsMedia>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query(
                "SELECT id, message_id, CAST(position AS integer) AS position, content_type, \
                 CAST(size_bytes AS bigint) AS size_bytes, sha256, storage_key, created_at \
                 FROM sms_media WHERE message_id = $1 ORDER BY position",
            )
            .bind(id(mid))
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(SmsMedia {
                    id: r.id("id")?,
                    message_id: r.id("message_id")?,
                    position: r.try_get("position")?,
                    content_type: r.try_get("content_type")?,
                    size_bytes: r.try_get("size_bytes")?,
                    sha256: r.try_get("sha256")?,
                    storage_key: r.try_get("storage_key")?,
                    created_at: r.ts("created_at")?,
                });
            }
            Ok(out)
        })
    }
}

/// Move a part forward to a receipt's status (never back).
fn receipt_sql(_pg: bool) -> String {
    "UPDATE sms_message_parts SET status = $3, error_code = COALESCE($4, error_code), \
     receipt_at = $5 WHERE message_id = $1 AND part = $2 AND \
     (CASE status WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END) < \
     (CASE $3 WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END)"
        .to_string()
}

// Keep the unused-import lint quiet when only one backend's code uses a helper.
#[allow(dead_code)]
fn _db_is_used(_: &Db) {}
