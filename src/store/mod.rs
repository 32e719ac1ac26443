//! Call state in a database: PostgreSQL when `database.url` is set, the embedded SQLite file
//! otherwise. Same tables, checks and behaviour on both (one test suite runs against both).
//!
//! - Migrations are embedded in the binary (`migrations/postgres`, `migrations/sqlite`) and
//!   run at start and by `commhub migrate`.
//! - Writes are [`StoreOp`]s, each idempotent (insert with a fixed id, `ON CONFLICT DO
//!   NOTHING`; updates guarded by the state they move from), so a write replayed after a crash
//!   or an outage lands exactly once. The [`writer`] task applies them in order; the SFU only
//!   ever hands it ops and never waits.
//! - Reads (the API's listings) go straight to the database.
//!
//! Queries are written once for both backends: `$n` placeholders work on both; ids and times
//! are bound as `uuid`/`timestamptz` on Postgres and as text on SQLite (see [`with_db!`]).

pub mod outbox;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, migrate::Migrator};
use uuid::Uuid;

use crate::config::DatabaseConfig;

static PG_MIGRATIONS: Migrator = sqlx::migrate!("src/store/migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("src/store/migrations/sqlite");

/// One of the two backends.
#[derive(Clone, Debug)]
pub enum Db {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// The store's handle (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

/// Fixed-width UTC text (sorts and compares as text on SQLite).
pub fn ts_text(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Run `$body` with `$pool` bound to the backend's pool, `$pg` to whether it is Postgres, and
/// `$id` / `$ts` to functions turning a `&Uuid` / `&DateTime<Utc>` into the backend's bind type.
macro_rules! with_db {
    ($store:expr, |$pool:ident, $pg:ident, $id:ident, $ts:ident| $body:expr) => {
        match &$store.db {
            Db::Pg($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                #[allow(unused_variables)]
                let $id = |u: &Uuid| *u;
                #[allow(unused_variables)]
                let $ts = |t: &DateTime<Utc>| *t;
                $body
            }
            Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                #[allow(unused_variables)]
                let $id = |u: &Uuid| u.hyphenated().to_string();
                #[allow(unused_variables)]
                let $ts = |t: &DateTime<Utc>| ts_text(t);
                $body
            }
        }
    };
}

/// A connection (or a transaction's connection) of either backend: writes run on one, so a
/// batch of them can share a transaction.
pub enum ConnRef<'a> {
    Pg(&'a mut sqlx::PgConnection),
    Sqlite(&'a mut sqlx::SqliteConnection),
}

pub(crate) fn wrap_pg(c: &mut sqlx::PgConnection) -> ConnRef<'_> {
    ConnRef::Pg(c)
}

pub(crate) fn wrap_sqlite(c: &mut sqlx::SqliteConnection) -> ConnRef<'_> {
    ConnRef::Sqlite(c)
}

/// As `with_db!`, on a [`ConnRef`]: `$pool` is the `&mut` connection (use it once per path),
/// `$wrap` turns a reborrow of it back into a `ConnRef`.
macro_rules! on_conn {
    ($conn:expr, |$pool:ident, $pg:ident, $id:ident, $ts:ident, $wrap:ident| $body:expr) => {
        match $conn {
            ConnRef::Pg($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                #[allow(unused_variables)]
                let $id = |u: &Uuid| *u;
                #[allow(unused_variables)]
                let $ts = |t: &DateTime<Utc>| *t;
                #[allow(unused_variables)]
                let $wrap = $crate::store::wrap_pg;
                $body
            }
            ConnRef::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                #[allow(unused_variables)]
                let $id = |u: &Uuid| u.hyphenated().to_string();
                #[allow(unused_variables)]
                let $ts = |t: &DateTime<Utc>| ts_text(t);
                #[allow(unused_variables)]
                let $wrap = $crate::store::wrap_sqlite;
                $body
            }
        }
    };
}

/// Reading ids and times from either backend's rows.
pub trait RowExt: Row {
    fn id(&self, c: &str) -> Result<Uuid, sqlx::Error>;
    fn id_opt(&self, c: &str) -> Result<Option<Uuid>, sqlx::Error>;
    fn ts(&self, c: &str) -> Result<DateTime<Utc>, sqlx::Error>;
    fn ts_opt(&self, c: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
}

fn decode_err(c: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: c.to_string(),
        source: e.to_string().into(),
    }
}

impl RowExt for PgRow {
    fn id(&self, c: &str) -> Result<Uuid, sqlx::Error> {
        self.try_get(c)
    }
    fn id_opt(&self, c: &str) -> Result<Option<Uuid>, sqlx::Error> {
        self.try_get(c)
    }
    fn ts(&self, c: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.try_get(c)
    }
    fn ts_opt(&self, c: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(c)
    }
}

impl RowExt for SqliteRow {
    fn id(&self, c: &str) -> Result<Uuid, sqlx::Error> {
        let s: String = self.try_get(c)?;
        Uuid::parse_str(&s).map_err(|e| decode_err(c, e))
    }
    fn id_opt(&self, c: &str) -> Result<Option<Uuid>, sqlx::Error> {
        let s: Option<String> = self.try_get(c)?;
        s.map(|s| Uuid::parse_str(&s).map_err(|e| decode_err(c, e)))
            .transpose()
    }
    fn ts(&self, c: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        let s: String = self.try_get(c)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| decode_err(c, e))
    }
    fn ts_opt(&self, c: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let s: Option<String> = self.try_get(c)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| decode_err(c, e))
        })
        .transpose()
    }
}

/// Whether a failed write may succeed later (connection trouble) or never will (the data
/// breaks a constraint).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            use sqlx::error::ErrorKind::*;
            if matches!(
                d.kind(),
                UniqueViolation | ForeignKeyViolation | NotNullViolation | CheckViolation
            ) {
                return false;
            }
            // Postgres classes 22 (data), 23 (integrity), 42 (syntax, undefined objects).
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            !(code.starts_with("22") || code.starts_with("23") || code.starts_with("42"))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A call row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Call {
    pub id: Uuid,
    pub kind: String,
    pub direction: String,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub room: String,
    pub status: String,
    pub record: bool,
    pub created_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    pub duration_sec: Option<i32>,
}

impl Call {
    /// A new call in `room` as a room without an API call gets it: WebRTC, internal, to be
    /// recorded, `created` now (to the microsecond, as the databases keep it).
    pub fn adhoc(id: Uuid, room: &str) -> Call {
        Call {
            id,
            kind: "webrtc".into(),
            direction: "internal".into(),
            from_number: None,
            to_number: None,
            room: room.to_string(),
            status: "created".into(),
            record: true,
            created_at: DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
                .unwrap_or_else(Utc::now),
            answered_at: None,
            ended_at: None,
            end_reason: None,
            duration_sec: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Participant {
    pub id: Uuid,
    pub call_id: Uuid,
    pub kind: String,
    pub role: String,
    pub identity: Option<String>,
    pub display_name: String,
    pub joined_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    pub leave_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordingRow {
    pub id: Uuid,
    pub call_id: Uuid,
    pub source: String,
    pub status: String,
    pub codec: String,
    pub flac_key: Option<String>,
    pub mp3_key: Option<String>,
    pub duration_sec: Option<f64>,
    pub channels: Option<i32>,
    pub sample_rate: Option<i32>,
    pub flac_bytes: Option<i64>,
    pub mp3_bytes: Option<i64>,
    pub flac_sha256: Option<String>,
    pub mp3_sha256: Option<String>,
    pub upload_sha256: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsentRow {
    pub id: Uuid,
    pub call_id: Uuid,
    pub participant_id: Option<Uuid>,
    pub recording_id: Option<Uuid>,
    pub kind: String,
    pub offset_ms: i64,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub note: Option<String>,
}

/// A write. Every op is idempotent, so the outbox may replay it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StoreOp {
    CreateCall(Call),
    /// `created` -> `active` (first participant).
    CallActive {
        call_id: Uuid,
    },
    /// Two parties present for the first time.
    CallAnswered {
        call_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Any state but ended -> ended, with the duration from answer to end (0 if never
    /// answered).
    CallEnded {
        call_id: Uuid,
        at: DateTime<Utc>,
        reason: String,
    },
    ParticipantJoined(Participant),
    ParticipantLeft {
        id: Uuid,
        at: DateTime<Utc>,
        reason: String,
    },
    /// Insert, or complete a row that exists (a recording started, then ready).
    Recording(RecordingRow),
    RecordingFailed {
        id: Uuid,
        error: String,
    },
    Consent(ConsentRow),
    /// SMS writes (`sms.rs`).
    Sms(sms::SmsOp),
}

impl StoreOp {
    pub fn name(&self) -> &'static str {
        match self {
            StoreOp::CreateCall(_) => "create_call",
            StoreOp::CallActive { .. } => "call_active",
            StoreOp::CallAnswered { .. } => "call_answered",
            StoreOp::CallEnded { .. } => "call_ended",
            StoreOp::ParticipantJoined(_) => "participant_joined",
            StoreOp::ParticipantLeft { .. } => "participant_left",
            StoreOp::Recording(_) => "recording",
            StoreOp::RecordingFailed { .. } => "recording_failed",
            StoreOp::Consent(_) => "consent",
            StoreOp::Sms(op) => op.name(),
        }
    }
}

/// Filters of the call listing.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub direction: Option<String>,
    /// Matches from_number or to_number.
    pub number: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u64,
}

impl Store {
    /// Connect (waiting up to `connect_timeout_secs`) and run the migrations.
    pub async fn open(cfg: &DatabaseConfig) -> anyhow::Result<Store> {
        let timeout = Duration::from_secs(cfg.connect_timeout_secs);
        let db = if cfg.url.is_empty() {
            if let Some(dir) = cfg.sqlite_path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("creating the database directory {}: {e}", dir.display())
                })?;
            }
            let opts = SqliteConnectOptions::from_str("sqlite://")?
                .filename(&cfg.sqlite_path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "opening the SQLite database {}: {e}",
                        cfg.sqlite_path.display()
                    )
                })?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("migrating the SQLite database: {e}"))?;
            Db::Sqlite(pool)
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(timeout)
                .connect(&cfg.url);
            let pool = tokio::time::timeout(timeout, pool)
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "PostgreSQL at {} did not answer within {} s",
                        crate::redact::db_url(&cfg.url),
                        cfg.connect_timeout_secs
                    )
                })?
                .map_err(|e| {
                    anyhow::anyhow!(
                        "connecting to PostgreSQL at {}: {e}",
                        crate::redact::db_url(&cfg.url)
                    )
                })?;
            PG_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("migrating the PostgreSQL database: {e}"))?;
            Db::Pg(pool)
        };
        Ok(Store { db })
    }

    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Pg(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Pg(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }

    /// Cheap liveness probe.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
        })
    }

    /// Apply one write.
    pub async fn apply(&self, op: &StoreOp) -> Result<(), sqlx::Error> {
        match &self.db {
            Db::Pg(p) => {
                let mut c = p.acquire().await?;
                self.apply_on(ConnRef::Pg(&mut c), op).await
            }
            Db::Sqlite(p) => {
                let mut c = p.acquire().await?;
                self.apply_on(ConnRef::Sqlite(&mut c), op).await
            }
        }
    }

    /// Apply several writes, in order, in one transaction (all or none): the store task's
    /// group commit, one fsync for many ops.
    pub async fn apply_batch(&self, ops: &[StoreOp]) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        match &self.db {
            Db::Pg(p) => {
                let mut c = p.acquire().await?;
                let mut tx = c.begin().await?;
                for op in ops {
                    self.apply_on(ConnRef::Pg(&mut tx), op).await?;
                }
                tx.commit().await
            }
            Db::Sqlite(p) => {
                let mut c = p.acquire().await?;
                let mut tx = c.begin().await?;
                for op in ops {
                    self.apply_on(ConnRef::Sqlite(&mut tx), op).await?;
                }
                tx.commit().await
            }
        }
    }

    /// Apply one write on a connection (which may be inside a transaction).
    pub async fn apply_on(&self, conn: ConnRef<'_>, op: &StoreOp) -> Result<(), sqlx::Error> {
        if let StoreOp::Sms(op) = op {
            return Box::pin(self.apply_sms(conn, op)).await;
        }
        on_conn!(conn, |pool, pg, id, ts, wrap| {
            match op {
                StoreOp::CreateCall(c) => {
                    sqlx::query(
                        "INSERT INTO calls (id, kind, direction, from_number, to_number, room, \
                         status, record, created_at, answered_at, ended_at, end_reason, duration_sec) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id(&c.id))
                    .bind(&c.kind)
                    .bind(&c.direction)
                    .bind(&c.from_number)
                    .bind(&c.to_number)
                    .bind(&c.room)
                    .bind(&c.status)
                    .bind(c.record)
                    .bind(ts(&c.created_at))
                    .bind(c.answered_at.as_ref().map(ts))
                    .bind(c.ended_at.as_ref().map(ts))
                    .bind(&c.end_reason)
                    .bind(c.duration_sec)
                    .execute(pool)
                    .await?;
                }
                StoreOp::CallActive { call_id } => {
                    sqlx::query(
                        "UPDATE calls SET status = 'active' WHERE id = $1 AND status = 'created'",
                    )
                    .bind(id(call_id))
                    .execute(pool)
                    .await?;
                }
                StoreOp::CallAnswered { call_id, at } => {
                    sqlx::query(
                        "UPDATE calls SET answered_at = $2 \
                         WHERE id = $1 AND answered_at IS NULL AND status <> 'ended'",
                    )
                    .bind(id(call_id))
                    .bind(ts(at))
                    .execute(pool)
                    .await?;
                }
                StoreOp::CallEnded {
                    call_id,
                    at,
                    reason,
                } => {
                    // Whole seconds, rounded down (julianday is a float: round to ms first).
                    let duration = if pg {
                        "CASE WHEN answered_at IS NULL THEN 0 \
                         ELSE GREATEST(0, floor(extract(epoch FROM ($2 - answered_at))))::integer END"
                    } else {
                        "CASE WHEN answered_at IS NULL THEN 0 \
                         ELSE max(0, CAST(round((julianday($2) - julianday(answered_at)) * 86400000) AS INTEGER) / 1000) END"
                    };
                    let sql = format!(
                        "UPDATE calls SET status = 'ended', ended_at = $2, end_reason = $3, \
                         duration_sec = {duration} WHERE id = $1 AND status <> 'ended'"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(id(call_id))
                        .bind(ts(at))
                        .bind(reason)
                        .execute(pool)
                        .await?;
                }
                StoreOp::ParticipantJoined(p) => {
                    sqlx::query(
                        "INSERT INTO call_participants (id, call_id, kind, role, identity, \
                         display_name, joined_at, left_at, leave_reason) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id(&p.id))
                    .bind(id(&p.call_id))
                    .bind(&p.kind)
                    .bind(&p.role)
                    .bind(&p.identity)
                    .bind(&p.display_name)
                    .bind(ts(&p.joined_at))
                    .bind(p.left_at.as_ref().map(ts))
                    .bind(&p.leave_reason)
                    .execute(pool)
                    .await?;
                }
                StoreOp::ParticipantLeft {
                    id: pid,
                    at,
                    reason,
                } => {
                    sqlx::query(
                        "UPDATE call_participants SET left_at = $2, leave_reason = $3 \
                         WHERE id = $1 AND left_at IS NULL",
                    )
                    .bind(id(pid))
                    .bind(ts(at))
                    .bind(reason)
                    .execute(pool)
                    .await?;
                }
                StoreOp::Recording(r) => {
                    sqlx::query(
                        "INSERT INTO call_recordings (id, call_id, source, status, codec, flac_key, \
                         mp3_key, duration_sec, channels, sample_rate, flac_bytes, mp3_bytes, \
                         flac_sha256, mp3_sha256, upload_sha256, error, started_at, ready_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                         $16, $17, $18) \
                         ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                         flac_key = excluded.flac_key, mp3_key = excluded.mp3_key, \
                         duration_sec = excluded.duration_sec, channels = excluded.channels, \
                         sample_rate = excluded.sample_rate, flac_bytes = excluded.flac_bytes, \
                         mp3_bytes = excluded.mp3_bytes, flac_sha256 = excluded.flac_sha256, \
                         mp3_sha256 = excluded.mp3_sha256, error = excluded.error, \
                         ready_at = excluded.ready_at \
                         WHERE call_recordings.status = 'recording'",
                    )
                    .bind(id(&r.id))
                    .bind(id(&r.call_id))
                    .bind(&r.source)
                    .bind(&r.status)
                    .bind(&r.codec)
                    .bind(&r.flac_key)
                    .bind(&r.mp3_key)
                    .bind(r.duration_sec)
                    .bind(r.channels)
                    .bind(r.sample_rate)
                    .bind(r.flac_bytes)
                    .bind(r.mp3_bytes)
                    .bind(&r.flac_sha256)
                    .bind(&r.mp3_sha256)
                    .bind(&r.upload_sha256)
                    .bind(&r.error)
                    .bind(ts(&r.started_at))
                    .bind(r.ready_at.as_ref().map(ts))
                    .execute(pool)
                    .await?;
                }
                StoreOp::RecordingFailed { id: rid, error } => {
                    sqlx::query(
                        "UPDATE call_recordings SET status = 'failed', error = $2 \
                         WHERE id = $1 AND status = 'recording'",
                    )
                    .bind(id(rid))
                    .bind(error)
                    .execute(pool)
                    .await?;
                }
                StoreOp::Sms(_) => {}
                StoreOp::Consent(c) => {
                    sqlx::query(
                        "INSERT INTO consent_events (id, call_id, participant_id, recording_id, \
                         kind, offset_ms, occurred_at, source, note) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id(&c.id))
                    .bind(id(&c.call_id))
                    .bind(c.participant_id.as_ref().map(id))
                    .bind(c.recording_id.as_ref().map(id))
                    .bind(&c.kind)
                    .bind(c.offset_ms)
                    .bind(ts(&c.occurred_at))
                    .bind(&c.source)
                    .bind(&c.note)
                    .execute(pool)
                    .await?;
                }
            }
            Ok(())
        })
    }

    pub async fn call(&self, call_id: &Uuid) -> Result<Option<Call>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let row = sqlx::query("SELECT * FROM calls WHERE id = $1")
                .bind(id(call_id))
                .fetch_optional(pool)
                .await?;
            row.map(|r| call_from(&r)).transpose()
        })
    }

    /// A page of calls, newest first, and the total matching.
    pub async fn list_calls(&self, f: &CallFilter) -> Result<(Vec<Call>, i64), sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let where_sql = "WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR kind = $2) \
                 AND ($3 IS NULL OR direction = $3) \
                 AND ($4 IS NULL OR from_number = $4 OR to_number = $4) \
                 AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)";
            // Postgres needs the parameter types spelled out where only `IS NULL` shows them.
            let where_sql = if pg {
                where_sql
                    .replace("$1 IS NULL", "$1::text IS NULL")
                    .replace("$2 IS NULL", "$2::text IS NULL")
                    .replace("$3 IS NULL", "$3::text IS NULL")
                    .replace("$4 IS NULL", "$4::text IS NULL")
                    .replace("$5 IS NULL", "$5::timestamptz IS NULL")
                    .replace("$6 IS NULL", "$6::timestamptz IS NULL")
            } else {
                where_sql.to_string()
            };
            let list = format!(
                "SELECT * FROM calls {where_sql} ORDER BY created_at DESC, id DESC LIMIT $7 OFFSET $8"
            );
            let count = format!("SELECT COUNT(*) AS n FROM calls {where_sql}");
            macro_rules! binds {
                ($q:expr) => {
                    $q.bind(&f.status)
                        .bind(&f.kind)
                        .bind(&f.direction)
                        .bind(&f.number)
                        .bind(f.since.as_ref().map(ts))
                        .bind(f.until.as_ref().map(ts))
                };
            }
            let rows = binds!(sqlx::query(sqlx::AssertSqlSafe(list.clone())))
                .bind(i64::from(f.limit))
                .bind(f.offset as i64)
                .fetch_all(pool)
                .await?;
            let total: i64 = binds!(sqlx::query(sqlx::AssertSqlSafe(count.clone())))
                .fetch_one(pool)
                .await?
                .try_get("n")?;
            let calls = rows.iter().map(call_from).collect::<Result<Vec<_>, _>>()?;
            Ok((calls, total))
        })
    }

    pub async fn participants(&self, call_id: &Uuid) -> Result<Vec<Participant>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query(
                "SELECT * FROM call_participants WHERE call_id = $1 ORDER BY joined_at, id",
            )
            .bind(id(call_id))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Participant {
                        id: r.id("id")?,
                        call_id: r.id("call_id")?,
                        kind: r.try_get("kind")?,
                        role: r.try_get("role")?,
                        identity: r.try_get("identity")?,
                        display_name: r.try_get("display_name")?,
                        joined_at: r.ts("joined_at")?,
                        left_at: r.ts_opt("left_at")?,
                        leave_reason: r.try_get("leave_reason")?,
                    })
                })
                .collect()
        })
    }

    pub async fn recordings(&self, call_id: &Uuid) -> Result<Vec<RecordingRow>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query(
                "SELECT * FROM call_recordings WHERE call_id = $1 ORDER BY started_at, id",
            )
            .bind(id(call_id))
            .fetch_all(pool)
            .await?;
            rows.iter().map(recording_from).collect()
        })
    }

    pub async fn recording(&self, rec_id: &Uuid) -> Result<Option<RecordingRow>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let row = sqlx::query("SELECT * FROM call_recordings WHERE id = $1")
                .bind(id(rec_id))
                .fetch_optional(pool)
                .await?;
            row.map(|r| recording_from(&r)).transpose()
        })
    }

    /// A pbx-upload recording of `call_id` with this upload checksum, if one exists.
    pub async fn uploaded(
        &self,
        call_id: &Uuid,
        sha256: &str,
    ) -> Result<Option<RecordingRow>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let row = sqlx::query(
                "SELECT * FROM call_recordings WHERE call_id = $1 AND upload_sha256 = $2",
            )
            .bind(id(call_id))
            .bind(sha256)
            .fetch_optional(pool)
            .await?;
            row.map(|r| recording_from(&r)).transpose()
        })
    }

    pub async fn consent_events(&self, call_id: &Uuid) -> Result<Vec<ConsentRow>, sqlx::Error> {
        with_db!(self, |pool, pg, id, ts| {
            let rows = sqlx::query(
                "SELECT * FROM consent_events WHERE call_id = $1 ORDER BY occurred_at, id",
            )
            .bind(id(call_id))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ConsentRow {
                        id: r.id("id")?,
                        call_id: r.id("call_id")?,
                        participant_id: r.id_opt("participant_id")?,
                        recording_id: r.id_opt("recording_id")?,
                        kind: r.try_get("kind")?,
                        offset_ms: r.try_get("offset_ms")?,
                        occurred_at: r.ts("occurred_at")?,
                        source: r.try_get("source")?,
                        note: r.try_get("note")?,
                    })
                })
                .collect()
        })
    }

    /// Row counts of every table (tests and `commhub migrate` report them).
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let mut out = Vec::new();
        for t in TABLES {
            let sql = format!("SELECT COUNT(*) AS n FROM {t}");
            let n: i64 = with_db!(self, |pool, pg, id, ts| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_one(pool)
                    .await?
                    .try_get("n")?
            });
            out.push((t.to_string(), n));
        }
        Ok(out)
    }
}

/// Every table of the schema.
pub const TABLES: [&str; 12] = [
    "calls",
    "call_participants",
    "call_recordings",
    "consent_events",
    "call_transcripts",
    "sms_conversations",
    "sms_messages",
    "sms_optouts",
    "sms_message_parts",
    "sms_receipts_pending",
    "sms_inbound_parts",
    "sms_media",
];

fn call_from<R: RowExt>(r: &R) -> Result<Call, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i32>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Call {
        id: r.id("id")?,
        kind: r.try_get("kind")?,
        direction: r.try_get("direction")?,
        from_number: r.try_get("from_number")?,
        to_number: r.try_get("to_number")?,
        room: r.try_get("room")?,
        status: r.try_get("status")?,
        record: r.try_get("record")?,
        created_at: r.ts("created_at")?,
        answered_at: r.ts_opt("answered_at")?,
        ended_at: r.ts_opt("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        duration_sec: r.try_get("duration_sec")?,
    })
}

fn recording_from<R: RowExt>(r: &R) -> Result<RecordingRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<f64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i32>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RecordingRow {
        id: r.id("id")?,
        call_id: r.id("call_id")?,
        source: r.try_get("source")?,
        status: r.try_get("status")?,
        codec: r.try_get("codec")?,
        flac_key: r.try_get("flac_key")?,
        mp3_key: r.try_get("mp3_key")?,
        duration_sec: r.try_get("duration_sec")?,
        channels: r.try_get("channels")?,
        sample_rate: r.try_get("sample_rate")?,
        flac_bytes: r.try_get("flac_bytes")?,
        mp3_bytes: r.try_get("mp3_bytes")?,
        flac_sha256: r.try_get("flac_sha256")?,
        mp3_sha256: r.try_get("mp3_sha256")?,
        upload_sha256: r.try_get("upload_sha256")?,
        error: r.try_get("error")?,
        started_at: r.ts("started_at")?,
        ready_at: r.ts_opt("ready_at")?,
    })
}

/// Storage key (relative to the recording storage root) of a file under it.
pub fn storage_key(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

pub mod sms;
