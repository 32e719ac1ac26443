-- SMS gateway (issue 12): what the send queue, receipts, inbound reassembly and MMS need.
-- The message row is the durable queue; its parts carry the carrier's ids and receipts.

ALTER TABLE sms_messages ADD COLUMN segments smallint NOT NULL DEFAULT 1 CHECK (segments BETWEEN 1 AND 255);
ALTER TABLE sms_messages ADD COLUMN encoding text CHECK (encoding IN ('gsm7', 'ucs2'));
ALTER TABLE sms_messages ADD COLUMN carrier text CHECK (carrier IN ('smpp', 'generic', 'twilio', 'telnyx'));
ALTER TABLE sms_messages ADD COLUMN origin text NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'keyword', 'carrier'));
ALTER TABLE sms_messages ADD COLUMN idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255);
ALTER TABLE sms_messages ADD COLUMN ten_dlc_brand_id text;
ALTER TABLE sms_messages ADD COLUMN ten_dlc_campaign_id text;
ALTER TABLE sms_messages ADD COLUMN concat_ref integer CHECK (concat_ref BETWEEN 0 AND 255);
ALTER TABLE sms_messages ADD COLUMN attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0);
ALTER TABLE sms_messages ADD COLUMN error_code text;
DROP INDEX sms_messages_carrier_uniq;
CREATE UNIQUE INDEX sms_messages_inbound_carrier_uniq ON sms_messages (carrier, carrier_message_id)
    WHERE direction = 'inbound' AND carrier_message_id IS NOT NULL;
CREATE UNIQUE INDEX sms_messages_idempotency_uniq ON sms_messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX sms_messages_queued_idx ON sms_messages (created_at) WHERE status = 'queued';
CREATE INDEX sms_messages_status_created_idx ON sms_messages (status, created_at DESC);

CREATE TABLE sms_message_parts (
    message_id         uuid NOT NULL REFERENCES sms_messages (id) ON DELETE CASCADE,
    part               smallint NOT NULL CHECK (part BETWEEN 1 AND 255),
    carrier            text NOT NULL,
    carrier_message_id text,
    status             text NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'failed')),
    error_code         text,
    submitted_at       timestamptz,
    receipt_at         timestamptz,
    PRIMARY KEY (message_id, part),
    CHECK (status IN ('queued', 'failed') OR carrier_message_id IS NOT NULL)
);
-- Not unique: an SMSC that restarts may hand out its ids again; a receipt goes to the most
-- recent part with its id.
CREATE INDEX sms_message_parts_carrier_idx ON sms_message_parts (carrier, carrier_message_id)
    WHERE carrier_message_id IS NOT NULL;

-- A receipt that matches no part yet (it overtook the submit's answer): applied when the
-- part's carrier id is written, dropped after sms.pending_receipt_hours.
CREATE TABLE sms_receipts_pending (
    carrier            text NOT NULL,
    carrier_message_id text NOT NULL,
    status             text NOT NULL CHECK (status IN ('sent', 'delivered', 'failed')),
    error_code         text,
    received_at        timestamptz NOT NULL,
    PRIMARY KEY (carrier, carrier_message_id, status)
);
CREATE INDEX sms_receipts_pending_received_idx ON sms_receipts_pending (received_at);

-- Inbound SMPP parts, durable before their deliver_sm_resp, until the message is whole.
CREATE TABLE sms_inbound_parts (
    from_number  text NOT NULL CHECK (from_number ~ '^\+[1-9][0-9]{1,14}$'),
    to_number    text NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{1,14}$'),
    reference    integer NOT NULL CHECK (reference BETWEEN 0 AND 65535),
    total        smallint NOT NULL CHECK (total BETWEEN 2 AND 255),
    seq          smallint NOT NULL CHECK (seq BETWEEN 1 AND total),
    data_coding  smallint NOT NULL CHECK (data_coding BETWEEN 0 AND 255),
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (from_number, to_number, reference, total, seq)
);

-- MMS items, stored under sms-media/ in the storage root.
CREATE TABLE sms_media (
    id           uuid PRIMARY KEY,
    message_id   uuid NOT NULL REFERENCES sms_messages (id) ON DELETE CASCADE,
    position     smallint NOT NULL CHECK (position BETWEEN 0 AND 9),
    content_type text NOT NULL,
    size_bytes   integer NOT NULL CHECK (size_bytes > 0),
    sha256       text NOT NULL CHECK (length(sha256) = 64),
    storage_key  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    UNIQUE (message_id, position)
);
