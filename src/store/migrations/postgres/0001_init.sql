-- commhub schema, PostgreSQL. Table and column names are the platform's contract
-- (../shared/seed: calls, call_participants, call_recordings, consent_events, call_transcripts,
-- sms_conversations, sms_messages, sms_optouts). Checks keep impossible states out; the indexes
-- serve the listing queries of /api/v1.

CREATE TABLE calls (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('webrtc', 'pstn', 'hybrid')),
    direction    text NOT NULL CHECK (direction IN ('inbound', 'outbound', 'internal')),
    from_number  text CHECK (from_number ~ '^\+[1-9][0-9]{1,14}$'),
    to_number    text CHECK (to_number ~ '^\+[1-9][0-9]{1,14}$'),
    room         text NOT NULL UNIQUE CHECK (room ~ '^[A-Za-z0-9._-]{1,64}$'),
    status       text NOT NULL CHECK (status IN ('created', 'active', 'ended')),
    record       boolean NOT NULL,
    created_at   timestamptz NOT NULL,
    answered_at  timestamptz CHECK (answered_at >= created_at),
    ended_at     timestamptz CHECK (ended_at >= created_at),
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
    id           uuid PRIMARY KEY,
    call_id      uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('browser', 'pstn', 'whip')),
    role         text NOT NULL CHECK (role IN ('agent', 'customer', 'pstn', 'supervisor', 'guest')),
    identity     text,
    display_name text NOT NULL,
    joined_at    timestamptz NOT NULL,
    left_at      timestamptz,
    leave_reason text,
    CHECK (left_at >= joined_at),
    CHECK ((left_at IS NULL) = (leave_reason IS NULL))
);
CREATE INDEX call_participants_call_idx ON call_participants (call_id, joined_at);

CREATE TABLE call_recordings (
    id           uuid PRIMARY KEY,
    call_id      uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    source       text NOT NULL CHECK (source IN ('tap', 'pbx-upload')),
    status       text NOT NULL CHECK (status IN ('recording', 'ready', 'failed')),
    codec        text NOT NULL CHECK (codec IN ('flac', 'mp3', 'wav')),
    flac_key     text,
    mp3_key      text,
    duration_sec double precision CHECK (duration_sec >= 0),
    channels     integer CHECK (channels BETWEEN 1 AND 8),
    sample_rate  integer CHECK (sample_rate BETWEEN 8000 AND 192000),
    flac_bytes   bigint CHECK (flac_bytes >= 0),
    mp3_bytes    bigint CHECK (mp3_bytes >= 0),
    flac_sha256  text CHECK (flac_sha256 ~ '^[0-9a-f]{64}$'),
    mp3_sha256   text CHECK (mp3_sha256 ~ '^[0-9a-f]{64}$'),
    upload_sha256 text CHECK (upload_sha256 ~ '^[0-9a-f]{64}$'),
    error        text,
    started_at   timestamptz NOT NULL,
    ready_at     timestamptz,
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
    id             uuid PRIMARY KEY,
    call_id        uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    participant_id uuid REFERENCES call_participants (id) ON DELETE SET NULL,
    recording_id   uuid REFERENCES call_recordings (id) ON DELETE SET NULL,
    kind           text NOT NULL CHECK (kind IN ('ivr_announcement', 'periodic_beep',
                                                 'verbal_yes', 'verbal_no', 'dtmf_1')),
    offset_ms      bigint NOT NULL CHECK (offset_ms >= 0),
    occurred_at    timestamptz NOT NULL,
    source         text NOT NULL CHECK (source IN ('system', 'api', 'pbx')),
    note           text
);
CREATE INDEX consent_events_call_idx ON consent_events (call_id, occurred_at);

-- Schema only (transcription comes later).
CREATE TABLE call_transcripts (
    id           uuid PRIMARY KEY,
    call_id      uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    recording_id uuid REFERENCES call_recordings (id) ON DELETE SET NULL,
    status       text NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    language     text,
    content      text,
    segments     jsonb,
    created_at   timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX call_transcripts_call_idx ON call_transcripts (call_id);

-- SMS: schema now, behaviour in a later issue.
CREATE TABLE sms_conversations (
    id              uuid PRIMARY KEY,
    our_number      text NOT NULL CHECK (our_number ~ '^\+[1-9][0-9]{1,14}$'),
    their_number    text NOT NULL CHECK (their_number ~ '^\+[1-9][0-9]{1,14}$'),
    created_at      timestamptz NOT NULL,
    last_message_at timestamptz,
    UNIQUE (our_number, their_number)
);
CREATE INDEX sms_conversations_last_idx ON sms_conversations (last_message_at DESC);

CREATE TABLE sms_messages (
    id                 uuid PRIMARY KEY,
    conversation_id    uuid NOT NULL REFERENCES sms_conversations (id) ON DELETE CASCADE,
    direction          text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    from_number        text NOT NULL CHECK (from_number ~ '^\+[1-9][0-9]{1,14}$'),
    to_number          text NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{1,14}$'),
    body               text NOT NULL,
    status             text NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'failed',
                                                        'blocked', 'received')),
    carrier_message_id text,
    error              text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX sms_messages_conversation_idx ON sms_messages (conversation_id, created_at);
CREATE UNIQUE INDEX sms_messages_carrier_uniq ON sms_messages (carrier_message_id)
    WHERE carrier_message_id IS NOT NULL;

CREATE TABLE sms_optouts (
    phone_number  text PRIMARY KEY CHECK (phone_number ~ '^\+[1-9][0-9]{1,14}$'),
    keyword       text NOT NULL,
    opted_out_at  timestamptz NOT NULL
);
