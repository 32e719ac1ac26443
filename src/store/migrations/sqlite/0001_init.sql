-- commhub schema, SQLite (the embedded store; same tables and checks as the
-- PostgreSQL schema: uuids and times are TEXT, times as YYYY-MM-DDTHH:MM:SS.ffffffZ so that
-- they sort and compare as text). Table and column names are the platform's contract
-- (../shared/seed: calls, call_participants, call_recordings, consent_events, call_transcripts,
-- sms_conversations, sms_messages, sms_optouts). Checks keep impossible states out; the indexes
-- serve the listing queries of /api/v1.

CREATE TABLE calls (
    id           TEXT PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('webrtc', 'pstn', 'hybrid')),
    direction    text NOT NULL CHECK (direction IN ('inbound', 'outbound', 'internal')),
    from_number  text CHECK (from_number GLOB '+[1-9]*' AND length(from_number) BETWEEN 3 AND 16 AND substr(from_number, 2) NOT GLOB '*[^0-9]*'),
    to_number    text CHECK (to_number GLOB '+[1-9]*' AND length(to_number) BETWEEN 3 AND 16 AND substr(to_number, 2) NOT GLOB '*[^0-9]*'),
    room         text NOT NULL UNIQUE CHECK (length(room) BETWEEN 1 AND 64 AND room NOT GLOB '*[^A-Za-z0-9._-]*'),
    status       text NOT NULL CHECK (status IN ('created', 'active', 'ended')),
    record       INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    answered_at  TEXT CHECK (answered_at >= created_at),
    ended_at     TEXT CHECK (ended_at >= created_at),
    end_reason   text,
    duration_sec integer CHECK (duration_sec >= 0),
    CHECK ((status = 'ended') = (ended_at IS NOT NULL)),
    CHECK ((status = 'ended') = (duration_sec IS NOT NULL)),
    CHECK (kind = 'webrtc' OR from_number IS NOT NULL OR to_number IS NOT NULL)
);
CREATE INDEX calls_created_idx ON calls (created_at DESC, id);
CREATE INDEX calls_status_created_idx ON calls (status, created_at DESC);
CREATE INDEX calls_from_created_idx ON calls (from_number, created_at DESC);
CREATE INDEX calls_to_created_idx ON calls (to_number, created_at DESC);

CREATE TABLE call_participants (
    id           TEXT PRIMARY KEY,
    call_id      TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('browser', 'pstn', 'whip')),
    role         text NOT NULL CHECK (role IN ('agent', 'customer', 'pstn', 'supervisor', 'guest')),
    identity     text,
    display_name text NOT NULL,
    joined_at    TEXT NOT NULL,
    left_at      TEXT,
    leave_reason text,
    CHECK (left_at >= joined_at),
    CHECK ((left_at IS NULL) = (leave_reason IS NULL))
);
CREATE INDEX call_participants_call_idx ON call_participants (call_id, joined_at);

CREATE TABLE call_recordings (
    id           TEXT PRIMARY KEY,
    call_id      TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    source       text NOT NULL CHECK (source IN ('tap', 'pbx-upload')),
    status       text NOT NULL CHECK (status IN ('recording', 'ready', 'failed')),
    codec        text NOT NULL CHECK (codec IN ('flac', 'mp3', 'wav')),
    flac_key     text,
    mp3_key      text,
    duration_sec REAL CHECK (duration_sec >= 0),
    channels     integer CHECK (channels BETWEEN 1 AND 8),
    sample_rate  integer CHECK (sample_rate BETWEEN 8000 AND 192000),
    flac_bytes   INTEGER CHECK (flac_bytes >= 0),
    mp3_bytes    INTEGER CHECK (mp3_bytes >= 0),
    flac_sha256  text CHECK (length(flac_sha256) = 64 AND flac_sha256 NOT GLOB '*[^0-9a-f]*'),
    mp3_sha256   text CHECK (length(mp3_sha256) = 64 AND mp3_sha256 NOT GLOB '*[^0-9a-f]*'),
    upload_sha256 text CHECK (length(upload_sha256) = 64 AND upload_sha256 NOT GLOB '*[^0-9a-f]*'),
    error        text,
    started_at   TEXT NOT NULL,
    ready_at     TEXT,
    CHECK (status <> 'ready' OR (flac_key IS NOT NULL AND mp3_key IS NOT NULL
        AND flac_sha256 IS NOT NULL AND mp3_sha256 IS NOT NULL AND duration_sec IS NOT NULL
        AND ready_at IS NOT NULL)),
    CHECK (status <> 'failed' OR error IS NOT NULL),
    CHECK ((source = 'pbx-upload') = (upload_sha256 IS NOT NULL))
);
CREATE INDEX call_recordings_call_idx ON call_recordings (call_id, started_at);
CREATE UNIQUE INDEX call_recordings_upload_uniq ON call_recordings (call_id, upload_sha256)
    WHERE upload_sha256 IS NOT NULL;

CREATE TABLE consent_events (
    id             TEXT PRIMARY KEY,
    call_id        TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    participant_id TEXT REFERENCES call_participants (id) ON DELETE SET NULL,
    recording_id   TEXT REFERENCES call_recordings (id) ON DELETE SET NULL,
    kind           text NOT NULL CHECK (kind IN ('ivr_announcement', 'periodic_beep',
                                                 'verbal_yes', 'verbal_no', 'dtmf_1')),
    offset_ms      INTEGER NOT NULL CHECK (offset_ms >= 0),
    occurred_at    TEXT NOT NULL,
    source         text NOT NULL CHECK (source IN ('system', 'api', 'pbx')),
    note           text
);
CREATE INDEX consent_events_call_idx ON consent_events (call_id, occurred_at);

-- Schema only (transcription comes later).
CREATE TABLE call_transcripts (
    id           TEXT PRIMARY KEY,
    call_id      TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    recording_id TEXT REFERENCES call_recordings (id) ON DELETE SET NULL,
    status       text NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    language     text,
    content      text,
    segments     TEXT,
    created_at   TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX call_transcripts_call_idx ON call_transcripts (call_id);

-- SMS: schema now, behaviour in a later issue.
CREATE TABLE sms_conversations (
    id              TEXT PRIMARY KEY,
    our_number      text NOT NULL CHECK (our_number GLOB '+[1-9]*' AND length(our_number) BETWEEN 3 AND 16 AND substr(our_number, 2) NOT GLOB '*[^0-9]*'),
    their_number    text NOT NULL CHECK (their_number GLOB '+[1-9]*' AND length(their_number) BETWEEN 3 AND 16 AND substr(their_number, 2) NOT GLOB '*[^0-9]*'),
    created_at      TEXT NOT NULL,
    last_message_at TEXT,
    UNIQUE (our_number, their_number)
);
CREATE INDEX sms_conversations_last_idx ON sms_conversations (last_message_at DESC);

CREATE TABLE sms_messages (
    id                 TEXT PRIMARY KEY,
    conversation_id    TEXT NOT NULL REFERENCES sms_conversations (id) ON DELETE CASCADE,
    direction          text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    from_number        text NOT NULL CHECK (from_number GLOB '+[1-9]*' AND length(from_number) BETWEEN 3 AND 16 AND substr(from_number, 2) NOT GLOB '*[^0-9]*'),
    to_number          text NOT NULL CHECK (to_number GLOB '+[1-9]*' AND length(to_number) BETWEEN 3 AND 16 AND substr(to_number, 2) NOT GLOB '*[^0-9]*'),
    body               text NOT NULL,
    status             text NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'failed',
                                                        'blocked', 'received')),
    carrier_message_id text,
    error              text,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
CREATE INDEX sms_messages_conversation_idx ON sms_messages (conversation_id, created_at);
CREATE UNIQUE INDEX sms_messages_carrier_uniq ON sms_messages (carrier_message_id)
    WHERE carrier_message_id IS NOT NULL;

CREATE TABLE sms_optouts (
    phone_number  text PRIMARY KEY CHECK (phone_number GLOB '+[1-9]*' AND length(phone_number) BETWEEN 3 AND 16 AND substr(phone_number, 2) NOT GLOB '*[^0-9]*'),
    keyword       text NOT NULL,
    opted_out_at  TEXT NOT NULL
);
