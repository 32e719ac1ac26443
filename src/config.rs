//! Configuration: defaults, then `config/commhub.toml` (or `--config FILE`), then environment
//! variables `COMMHUB_<SECTION>__<KEY>` (e.g. `COMMHUB_SERVER__LISTEN=0.0.0.0:8443`), then
//! command-line flags. Every option is documented in `config/commhub.toml`.
//!
//! The platform's own variable names are honoured too (they are the contract with the existing
//! deployment): `SFU_ENDPOINT`, `TURN_SHARED_SECRET`, `TURN_SERVER_URL`, `PBX_AUTH_TOKEN`,
//! `INBOUND_WEBHOOK_TOKEN` and `DATABASE_URL` set `api.sfu_endpoint`, `turn.shared_secret`,
//! `turn.server_url`, `auth.pbx_token`, `auth.webhook_token` and `database.url`. A
//! `COMMHUB_...` variable for the same key wins over them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub media: MediaConfig,
    pub signaling: SignalingConfig,
    pub recording: RecordingSection,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub turn: TurnConfig,
    pub api: ApiConfig,
    pub calls: CallsConfig,
    pub sip: SipConfig,
    pub sms: SmsConfig,
    pub log: LogConfig,
}

/// Environment values are parsed as TOML-ish scalars: an all-digit password or id arrives as a
/// number. Take either as text.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        S(String),
        U(u64),
        I(i64),
        F(f64),
    }
    Ok(match T::deserialize(d)? {
        T::S(s) => s,
        T::U(n) => n.to_string(),
        T::I(n) => n.to_string(),
        T::F(n) => n.to_string(),
    })
}

/// SMS over an SMPP or HTTP carrier (see `config/commhub.toml`, `docs/sms-http.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// `off`, `smpp` or `http` (SMS_MODE, any case).
    pub mode: SmsMode,
    /// Brand and contact in the HELP reply and the opt-out confirmations.
    pub brand: String,
    pub contact: String,
    /// 10DLC brand and campaign stored on each outbound message (TEN_DLC_BRAND_ID,
    /// TEN_DLC_CAMPAIGN_ID).
    #[serde(deserialize_with = "text_or_number")]
    pub ten_dlc_brand_id: String,
    #[serde(deserialize_with = "text_or_number")]
    pub ten_dlc_campaign_id: String,
    /// Parts per second for the campaign (0: no limit).
    pub campaign_parts_per_sec: u32,
    /// Largest MMS item (MMS_MEDIA_MAX_MB).
    pub mms_media_max_mb: u32,
    /// Attempts before a message fails for good, and its age limit.
    pub max_attempts: u32,
    pub max_age_hours: u32,
    /// A receipt for an id not (yet) known is kept this long.
    pub pending_receipt_hours: u32,
    pub smpp: SmppConfig,
    pub http: SmsHttpConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SmsMode {
    #[serde(alias = "OFF", alias = "Off")]
    #[serde(rename = "off")]
    Off,
    #[serde(alias = "SMPP", alias = "Smpp")]
    #[serde(rename = "smpp")]
    Smpp,
    #[serde(alias = "HTTP", alias = "Http")]
    #[serde(rename = "http")]
    Http,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            mode: SmsMode::Off,
            brand: "commhub".into(),
            contact: String::new(),
            ten_dlc_brand_id: String::new(),
            ten_dlc_campaign_id: String::new(),
            campaign_parts_per_sec: 0,
            mms_media_max_mb: 5,
            max_attempts: 8,
            max_age_hours: 24,
            pending_receipt_hours: 72,
            smpp: SmppConfig::default(),
            http: SmsHttpConfig::default(),
        }
    }
}

/// The SMPP bind (SMS_MODE=SMPP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmppConfig {
    /// SMPP_HOST, SMPP_PORT.
    pub host: String,
    pub port: u16,
    /// SMPP_SYSTEM_ID (at most 15 characters), SMPP_PASSWORD (at most 8: SMPP 3.4).
    #[serde(deserialize_with = "text_or_number")]
    pub system_id: String,
    #[serde(deserialize_with = "text_or_number")]
    pub password: String,
    pub system_type: String,
    /// SMPP_BIND: `transceiver`, or `transmitter+receiver` (two binds).
    pub bind: String,
    /// Submits in flight at once.
    pub window: u32,
    /// Parts per second to the SMSC (0: no limit).
    pub max_parts_per_sec: u32,
    pub response_timeout_secs: u64,
    /// enquire_link after this much silence.
    pub enquire_link_secs: u64,
    /// First pause after ESME_RTHROTTLED (doubles while throttling lasts, up to 16 s).
    pub throttle_pause_ms: u64,
    /// Reconnect backoff: first and longest delay.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// How receipt ids relate to the ids in submit_sm_resp: "same", or "hex_to_dec" /
    /// "dec_to_hex" for SMSCs that answer in one base and report in the other (as Jasmin's
    /// `dlr_msgid` connector option).
    pub receipt_id: String,
}

impl Default for SmppConfig {
    fn default() -> Self {
        SmppConfig {
            host: "127.0.0.1".into(),
            port: 2775,
            system_id: String::new(),
            password: String::new(),
            system_type: String::new(),
            bind: "transceiver".into(),
            window: 10,
            max_parts_per_sec: 0,
            response_timeout_secs: 10,
            enquire_link_secs: 30,
            throttle_pause_ms: 1000,
            reconnect_min_ms: 1000,
            reconnect_max_ms: 60_000,
            receipt_id: "same".into(),
        }
    }
}

/// An HTTP carrier (SMS_MODE=HTTP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmsHttpConfig {
    /// `generic` (docs/sms-http.md), `twilio` or `telnyx`.
    pub style: String,
    /// CARRIER_HTTP_BASEURL, CARRIER_HTTP_KEY (twilio: `AccountSid:AuthToken`).
    pub base_url: String,
    #[serde(deserialize_with = "text_or_number")]
    pub key: String,
    /// Telnyx's public key (base64 Ed25519) that signs its webhooks.
    pub telnyx_public_key: String,
    /// A PEM file of CA certificates trusted for an https carrier besides the public roots
    /// (a private carrier gateway). Empty: the public (webpki) roots only.
    pub ca_file: Option<PathBuf>,
    /// Our public URL as the carrier sees it: webhook signatures cover it, and MMS media
    /// links start with it. Empty: `http://{server.listen}`.
    pub public_base_url: String,
    pub timeout_secs: u64,
    /// Parts per second to the carrier (0: no limit).
    pub max_per_sec: u32,
    /// Requests in flight at once.
    pub window: u32,
}

impl Default for SmsHttpConfig {
    fn default() -> Self {
        SmsHttpConfig {
            style: "generic".into(),
            base_url: String::new(),
            key: String::new(),
            telnyx_public_key: String::new(),
            ca_file: None,
            public_base_url: String::new(),
            timeout_secs: 10,
            max_per_sec: 0,
            window: 10,
        }
    }
}

/// The SIP bridge: PSTN legs from the PBX and carrier trunks (see `config/commhub.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub enabled: bool,
    /// UDP and TCP address for SIP.
    pub listen: SocketAddr,
    /// Also listen on TCP at `listen`.
    pub tcp: bool,
    /// SIP over TLS (rustls) on this address, with `tls_cert` and `tls_key` (PEM); off when
    /// unset.
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The host (name or IP) in our Contact and SDP, when `listen`'s IP is not reachable as is.
    pub public_host: Option<String>,
    /// Outbound calls go to this trunk (`SIP_TRUNK_URI`): `sip:host[:port]` or `sip:user@host`.
    pub trunk_uri: String,
    /// Digest credentials for the trunk (answering its 401/407).
    pub trunk_username: String,
    pub trunk_password: String,
    /// The PBXs and carrier trunks that may send INVITEs: each by source networks, with
    /// digest credentials it must answer a 407 with (optional).
    pub trunks: Vec<TrunkConfig>,
    /// Accept INVITEs from 127.0.0.0/8 and ::1 without a trunk entry (and without digest).
    pub trust_loopback: bool,
    /// What an INVITE from anywhere else gets: "reject" (403) or "drop" (no answer at all).
    pub unknown_source: String,
    /// The digest realm in our 407 challenges.
    pub realm: String,
    /// INVITEs per second one source may send; more get 503 with Retry-After.
    pub invites_per_sec_per_source: u32,
    /// Concurrent legs; more get 503.
    pub max_legs: usize,
    /// Hang up a leg that sent no RTP for this long (unless it holds the call).
    pub rtp_timeout_secs: u64,
    /// RFC 4028 session interval we grant (and the minimum we accept).
    pub session_expires_secs: u32,
    pub min_se_secs: u32,
    /// Codecs in order of preference: opus, g722, pcmu, pcma.
    pub codecs: Vec<String>,
    /// Packet time we send when the offer names none (ms, 10..=60, whole 10s).
    pub ptime_ms: u32,
    /// Outbound calls not answered within this are cancelled (`no_answer`).
    pub ring_timeout_secs: u64,
    /// RTP ports for legs (one per leg).
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// libopus complexity (0-10) for encoding a leg's audio into the room.
    pub opus_complexity: i32,
    /// An INVITE to a number no open call has becomes a new inbound call (kind pstn) when the
    /// number is listed here ("*" takes every number); otherwise 404.
    pub inbound_numbers: Vec<String>,
}

/// One PBX or carrier trunk allowed to send INVITEs (`[[sip.trunks]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    /// For logs and metrics.
    pub name: String,
    /// Source IPs or CIDRs (`10.0.0.0/8`).
    pub sources: Vec<String>,
    /// When set, INVITEs from this trunk must carry digest credentials (407 challenge).
    pub username: String,
    pub password: String,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            tcp: true,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            public_host: None,
            trunk_uri: String::new(),
            trunk_username: String::new(),
            trunk_password: String::new(),
            trunks: Vec::new(),
            trust_loopback: true,
            unknown_source: "reject".into(),
            realm: "commhub".into(),
            invites_per_sec_per_source: 20,
            max_legs: 500,
            rtp_timeout_secs: 30,
            session_expires_secs: 1800,
            min_se_secs: 90,
            codecs: vec!["opus".into(), "g722".into(), "pcmu".into(), "pcma".into()],
            ptime_ms: 20,
            ring_timeout_secs: 60,
            rtp_port_min: 30_000,
            rtp_port_max: 30_999,
            opus_complexity: 3,
            inbound_numbers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// A call made by call-create that nobody joins is ended (`end_reason = abandoned`) after
    /// this many seconds; joins with its tokens are refused from then on.
    pub abandon_after_secs: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            abandon_after_secs: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host/db`. Empty: the embedded SQLite file `sqlite_path`.
    pub url: String,
    /// The SQLite database file used when `url` is empty.
    pub sqlite_path: PathBuf,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Seconds to wait for the database at start and for a connection later.
    pub connect_timeout_secs: u64,
    /// Durable queue of writes made while the database is unreachable (JSON lines).
    pub outbox_path: PathBuf,
    /// Milliseconds between attempts to write the outbox to the database.
    pub retry_interval_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            sqlite_path: PathBuf::from("data/commhub.db"),
            max_connections: 8,
            connect_timeout_secs: 5,
            outbox_path: PathBuf::from("data/outbox.jsonl"),
            retry_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a join token for /ws joins and WHIP/WHEP, and an API key for /api/v1.
    pub enabled: bool,
    /// HS256 secret of join tokens. Empty: a random secret per process.
    pub jwt_secret: String,
    /// Lifetime of issued join tokens (seconds).
    pub token_ttl_secs: u64,
    /// Keys accepted for /api/v1 and call-create/call-end (`Authorization: Bearer KEY`).
    pub api_keys: Vec<String>,
    /// The PBX's token for recording-upload (PBX_AUTH_TOKEN).
    #[serde(deserialize_with = "text_or_number")]
    pub pbx_token: String,
    /// The SMS carrier webhooks' token (INBOUND_WEBHOOK_TOKEN).
    #[serde(deserialize_with = "text_or_number")]
    pub webhook_token: String,
    /// DEVELOPMENT ONLY: the demo page gets join tokens from /dev/token and reads /api/v1
    /// without a key.
    pub dev_mode: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            jwt_secret: String::new(),
            token_ttl_secs: 600,
            api_keys: Vec::new(),
            pbx_token: String::new(),
            webhook_token: String::new(),
            dev_mode: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// coturn `static-auth-secret` (TURN_SHARED_SECRET). Empty: no TURN credentials issued.
    #[serde(deserialize_with = "text_or_number")]
    pub shared_secret: String,
    /// TURN URLs handed to clients, comma separated (TURN_SERVER_URL).
    pub server_url: String,
    /// Lifetime of issued TURN credentials (seconds).
    pub credential_ttl_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            shared_secret: String::new(),
            server_url: String::new(),
            credential_ttl_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Public signaling URL handed out by call-create (SFU_ENDPOINT), e.g.
    /// `wss://sfu.example.com`. Empty: derived from the request's Host header.
    pub sfu_endpoint: String,
    /// Largest recording-upload request body (bytes, base64 included).
    pub max_upload_bytes: usize,
    /// Largest JSON body of the other API requests (bytes).
    pub max_json_bytes: usize,
    /// Default and largest page size of listings.
    pub page_size: u32,
    pub max_page_size: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            sfu_endpoint: String::new(),
            max_upload_bytes: 64 * 1024 * 1024,
            max_json_bytes: 64 * 1024,
            page_size: 50,
            max_page_size: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingSection {
    /// Record every room unless a join (`record: false`) or a call says otherwise.
    pub enabled: bool,
    /// Root of `call-recordings/...` and the crash journals.
    pub storage_root: PathBuf,
    /// Milliseconds between consent beeps.
    pub beep_interval_ms: u64,
    /// Beep tone frequency (Hz).
    pub beep_frequency_hz: f32,
    /// Beep length (ms).
    pub beep_duration_ms: u64,
    /// Beep level (dBFS, negative).
    pub beep_level_dbfs: f32,
    /// Play (and record) "This call is recorded" when a recording starts.
    pub announcement: bool,
    /// MP3 preview bitrate (kbit/s).
    pub mp3_bitrate_kbps: u32,
    /// How phone legs consent: "announce" (they hear the announcement and beeps, as everyone)
    /// or "dtmf" (they also hear "press 1 to agree" when they join, and their answer or
    /// silence is stored as a consent event).
    pub consent_mode: String,
    /// With consent_mode "dtmf": seconds after the prompt to wait for the 1 key.
    pub dtmf_consent_timeout_secs: u64,
    /// With consent_mode "dtmf", when no 1 comes: "continue", "stop_recording" (the call's
    /// recording stops) or "hangup" (the leg is hung up).
    pub dtmf_no_consent: String,
}

impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            enabled: true,
            storage_root: PathBuf::from("data"),
            beep_interval_ms: 15_000,
            beep_frequency_hz: 1400.0,
            beep_duration_ms: 200,
            beep_level_dbfs: -12.0,
            announcement: true,
            mp3_bitrate_kbps: 40,
            consent_mode: "announce".into(),
            dtmf_consent_timeout_secs: 15,
            dtmf_no_consent: "continue".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for HTTP, WebSocket, WHIP/WHEP, metrics.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, serve HTTPS/WSS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Seconds to wait for sessions to close on shutdown.
    pub shutdown_grace_secs: u64,
    /// Concurrent HTTP/WebSocket connections served; more wait.
    pub max_connections: usize,
    /// Largest HTTP request body (bytes) for WHIP/WHEP offers.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Local IP media sockets bind to. Use a concrete address: 0.0.0.0 would skip loopback.
    pub bind_ip: IpAddr,
    /// First UDP port of the range peer connections use (one port per connection).
    pub port_min: u16,
    /// Last UDP port of the range (inclusive).
    pub port_max: u16,
    /// Public addresses announced in ICE candidates instead of `bind_ip` (servers behind 1:1
    /// NAT). Empty: announce `bind_ip`.
    pub announced_ips: Vec<String>,
    /// Seconds without ICE traffic before a connection counts as disconnected.
    pub ice_disconnected_secs: u64,
    /// Seconds a participant may stay disconnected (or not connect at all) before it is removed.
    pub media_timeout_secs: u64,
    /// Run ICE-lite: the server only answers connectivity checks and clients always control.
    pub ice_lite: bool,
    /// Participants per room.
    pub max_participants_per_room: usize,
    /// Packets queued per subscriber before drops (a slow subscriber never slows the others).
    pub subscriber_queue: usize,
    /// Packets queued per tap before drops.
    pub tap_queue: usize,
    /// Milliseconds between `audio_levels` events.
    pub audio_level_interval_ms: u64,
    /// Carry signaling and WHIP participants on the shared-socket media engine: a handful of
    /// UDP ports (one per worker) instead of one per connection. False: a webrtc-rs connection
    /// on its own port from the range each (WHEP viewers and SIP WebRTC legs always are).
    pub shared_socket: bool,
    /// UDP port of the first engine worker; worker i uses shared_port + i. 0: any free port.
    pub shared_port: u16,
    /// Engine worker threads (each with its own socket and rooms); 0: one per CPU core.
    pub shared_workers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    /// Seconds between client keepalives; announced in `welcome`.
    pub keepalive_secs: u64,
    /// Keepalive intervals without any message before the session is closed.
    pub missed_keepalives: u32,
    /// ICE servers handed to clients in `joined` (STUN/TURN URLs).
    pub ice_servers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,media=debug`; RUST_LOG wins when set.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            shutdown_grace_secs: 5,
            max_connections: 10_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            port_min: 40000,
            port_max: 49999,
            announced_ips: Vec::new(),
            ice_disconnected_secs: 5,
            media_timeout_secs: 15,
            ice_lite: false,
            max_participants_per_room: 64,
            subscriber_queue: 512,
            tap_queue: 4096,
            audio_level_interval_ms: 200,
            shared_socket: true,
            shared_port: 50000,
            shared_workers: 0,
        }
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            keepalive_secs: 30,
            missed_keepalives: 3,
            ice_servers: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Errors in configuration, with the file or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Load defaults <- file <- environment. `path` None uses `config/commhub.toml` when it
    /// exists; an explicit path must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError::Missing(p.to_path_buf()));
                }
                fig = fig.merge(Toml::file_exact(p));
            }
            None => {
                let default = Path::new("config/commhub.toml");
                if default.exists() {
                    fig = fig.merge(Toml::file_exact(default));
                }
            }
        }
        // The platform's variable names, then COMMHUB_<SECTION>__<KEY> over them.
        fig = fig.merge(
            Env::raw()
                .only(&[
                    "SFU_ENDPOINT",
                    "TURN_SHARED_SECRET",
                    "TURN_SERVER_URL",
                    "PBX_AUTH_TOKEN",
                    "INBOUND_WEBHOOK_TOKEN",
                    "DATABASE_URL",
                    "SIP_TRUNK_URI",
                    "SMS_MODE",
                    "SMPP_HOST",
                    "SMPP_PORT",
                    "SMPP_SYSTEM_ID",
                    "SMPP_PASSWORD",
                    "SMPP_BIND",
                    "CARRIER_HTTP_BASEURL",
                    "CARRIER_HTTP_KEY",
                    "TEN_DLC_BRAND_ID",
                    "TEN_DLC_CAMPAIGN_ID",
                    "MMS_MEDIA_MAX_MB",
                ])
                .map(|k| {
                    match k.as_str().to_ascii_uppercase().as_str() {
                        "SFU_ENDPOINT" => "api.sfu_endpoint",
                        "TURN_SHARED_SECRET" => "turn.shared_secret",
                        "TURN_SERVER_URL" => "turn.server_url",
                        "PBX_AUTH_TOKEN" => "auth.pbx_token",
                        "INBOUND_WEBHOOK_TOKEN" => "auth.webhook_token",
                        "SIP_TRUNK_URI" => "sip.trunk_uri",
                        "SMS_MODE" => "sms.mode",
                        "SMPP_HOST" => "sms.smpp.host",
                        "SMPP_PORT" => "sms.smpp.port",
                        "SMPP_SYSTEM_ID" => "sms.smpp.system_id",
                        "SMPP_PASSWORD" => "sms.smpp.password",
                        "SMPP_BIND" => "sms.smpp.bind",
                        "CARRIER_HTTP_BASEURL" => "sms.http.base_url",
                        "CARRIER_HTTP_KEY" => "sms.http.key",
                        "TEN_DLC_BRAND_ID" => "sms.ten_dlc_brand_id",
                        "TEN_DLC_CAMPAIGN_ID" => "sms.ten_dlc_campaign_id",
                        "MMS_MEDIA_MAX_MB" => "sms.mms_media_max_mb",
                        _ => "database.url",
                    }
                    .into()
                })
                .split("."),
        );
        // Only COMMHUB_<SECTION>__<KEY>: other COMMHUB_* variables (e.g. the test suite's
        // COMMHUB_TEST_PYTHON) are not configuration.
        fig = fig.merge(
            Env::prefixed("COMMHUB_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let mut cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.raw_secrets();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Secrets and ids taken from the environment exactly as written: the environment provider
    /// reads `00123` as the number 123, which would change a password. The COMMHUB_ variable
    /// wins over the platform's, as for every other key.
    fn raw_secrets(&mut self) {
        let var = |n: &str| std::env::var(n).ok();
        let pick = |platform: &str, ours: &str| var(ours).or_else(|| var(platform));
        let slots: [(&str, &str, &mut String); 8] = [
            (
                "SMPP_PASSWORD",
                "COMMHUB_SMS__SMPP__PASSWORD",
                &mut self.sms.smpp.password,
            ),
            (
                "SMPP_SYSTEM_ID",
                "COMMHUB_SMS__SMPP__SYSTEM_ID",
                &mut self.sms.smpp.system_id,
            ),
            (
                "CARRIER_HTTP_KEY",
                "COMMHUB_SMS__HTTP__KEY",
                &mut self.sms.http.key,
            ),
            (
                "TEN_DLC_BRAND_ID",
                "COMMHUB_SMS__TEN_DLC_BRAND_ID",
                &mut self.sms.ten_dlc_brand_id,
            ),
            (
                "TEN_DLC_CAMPAIGN_ID",
                "COMMHUB_SMS__TEN_DLC_CAMPAIGN_ID",
                &mut self.sms.ten_dlc_campaign_id,
            ),
            (
                "INBOUND_WEBHOOK_TOKEN",
                "COMMHUB_AUTH__WEBHOOK_TOKEN",
                &mut self.auth.webhook_token,
            ),
            (
                "PBX_AUTH_TOKEN",
                "COMMHUB_AUTH__PBX_TOKEN",
                &mut self.auth.pbx_token,
            ),
            (
                "TURN_SHARED_SECRET",
                "COMMHUB_TURN__SHARED_SECRET",
                &mut self.turn.shared_secret,
            ),
        ];
        for (platform, ours, slot) in slots {
            if let Some(v) = pick(platform, ours) {
                *slot = v;
            }
        }
    }

    /// Parse a TOML string over the defaults (no environment), for tests.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configured TURN URLs.
    pub fn turn_urls(&self) -> Vec<String> {
        self.turn
            .server_url
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }

    fn validate_sip(&self) -> Result<(), ConfigError> {
        let s = &self.sip;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for c in &s.codecs {
            if signaling::sip::sdp::Codec::parse(c).is_none() {
                return bad(format!(
                    "sip.codecs: `{c}` is not one of opus, g722, pcmu, pcma"
                ));
            }
        }
        if s.codecs.is_empty() {
            return bad("sip.codecs must name at least one codec".into());
        }
        if !(10..=60).contains(&s.ptime_ms) || !s.ptime_ms.is_multiple_of(10) {
            return bad("sip.ptime_ms must be 10, 20, 30, 40, 50 or 60".into());
        }
        if s.rtp_port_min == 0 || s.rtp_port_min > s.rtp_port_max {
            return bad("sip.rtp_port_min must be >= 1 and <= sip.rtp_port_max".into());
        }
        if s.min_se_secs < 90 || s.session_expires_secs < s.min_se_secs {
            return bad(
                "sip.min_se_secs must be >= 90 (RFC 4028) and <= session_expires_secs".into(),
            );
        }
        if s.rtp_timeout_secs == 0 || s.ring_timeout_secs == 0 || s.max_legs == 0 {
            return bad("sip.rtp_timeout_secs, ring_timeout_secs and max_legs must be >= 1".into());
        }
        if !["reject", "drop"].contains(&s.unknown_source.as_str()) {
            return bad("sip.unknown_source must be \"reject\" or \"drop\"".into());
        }
        for t in &s.trunks {
            if t.sources.is_empty() {
                return bad(format!(
                    "sip.trunks `{}`: list its sources (IPs or CIDRs)",
                    t.name
                ));
            }
            for a in &t.sources {
                if crate::sip::Cidr::parse(a).is_none() {
                    return bad(format!(
                        "sip.trunks `{}`: `{a}` is not an IP or CIDR",
                        t.name
                    ));
                }
            }
            if t.username.is_empty() != t.password.is_empty() {
                return bad(format!(
                    "sip.trunks `{}`: username and password go together",
                    t.name
                ));
            }
        }
        if s.tls_listen.is_some() && (s.tls_cert.is_none() || s.tls_key.is_none()) {
            return bad("sip.tls_listen needs sip.tls_cert and sip.tls_key".into());
        }
        if !s.trunk_uri.is_empty() && !s.trunk_uri.starts_with("sip:") {
            return bad("sip.trunk_uri (SIP_TRUNK_URI) must start with sip:".into());
        }
        if !(0..=10).contains(&s.opus_complexity) {
            return bad("sip.opus_complexity must be 0..=10".into());
        }
        Ok(())
    }

    fn validate_sms(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let s = &self.sms;
        if s.mms_media_max_mb == 0 || s.mms_media_max_mb > 100 {
            return bad("sms.mms_media_max_mb (MMS_MEDIA_MAX_MB) must be 1..=100".into());
        }
        if s.max_attempts == 0 || s.max_age_hours == 0 {
            return bad("sms.max_attempts and sms.max_age_hours must be at least 1".into());
        }
        match s.mode {
            SmsMode::Off => {}
            SmsMode::Smpp => {
                let p = &s.smpp;
                if p.system_id.is_empty() || p.system_id.chars().count() > 15 {
                    return bad(format!(
                        "SMPP_SYSTEM_ID (sms.smpp.system_id) is {} characters; SMPP allows 1 to 15",
                        p.system_id.chars().count()
                    ));
                }
                if p.password.chars().count() > 8 || !p.password.is_ascii() {
                    return bad(format!(
                        "SMPP_PASSWORD (sms.smpp.password) is {} characters; SMPP 3.4 allows at most 8 ASCII characters",
                        p.password.chars().count()
                    ));
                }
                if p.system_type.len() > 12 {
                    return bad("sms.smpp.system_type allows at most 12 characters".into());
                }
                if p.host.is_empty() || p.port == 0 {
                    return bad("SMPP_HOST and SMPP_PORT must be set in SMPP mode".into());
                }
                if !matches!(
                    p.bind.to_ascii_lowercase().as_str(),
                    "transceiver" | "transmitter+receiver" | "transmitter"
                ) {
                    return bad(format!(
                        "SMPP_BIND (sms.smpp.bind) is `{}`; use transceiver or transmitter+receiver",
                        p.bind
                    ));
                }
                if !matches!(p.receipt_id.as_str(), "same" | "hex_to_dec" | "dec_to_hex") {
                    return bad(format!(
                        "sms.smpp.receipt_id is `{}`; use same, hex_to_dec or dec_to_hex",
                        p.receipt_id
                    ));
                }
                if !(1..=1000).contains(&p.window) {
                    return bad("sms.smpp.window must be 1..=1000".into());
                }
                if p.response_timeout_secs == 0 || p.enquire_link_secs == 0 {
                    return bad(
                        "sms.smpp.response_timeout_secs and enquire_link_secs must be at least 1"
                            .into(),
                    );
                }
                if p.reconnect_min_ms == 0 || p.reconnect_min_ms > p.reconnect_max_ms {
                    return bad("sms.smpp.reconnect_min_ms must be 1..=reconnect_max_ms".into());
                }
            }
            SmsMode::Http => {
                let h = &s.http;
                if !matches!(h.style.as_str(), "generic" | "twilio" | "telnyx") {
                    return bad(format!(
                        "sms.http.style is `{}`; use generic, twilio or telnyx",
                        h.style
                    ));
                }
                if !(h.base_url.starts_with("http://") || h.base_url.starts_with("https://")) {
                    return bad(
                        "CARRIER_HTTP_BASEURL (sms.http.base_url) must be an http(s) URL in HTTP mode"
                            .into(),
                    );
                }
                if h.style == "twilio" && !h.key.contains(':') {
                    return bad(
                        "CARRIER_HTTP_KEY must be `AccountSid:AuthToken` with sms.http.style = twilio"
                            .into(),
                    );
                }
                if let Some(ca) = &h.ca_file
                    && !ca.is_file()
                {
                    return bad(format!("sms.http.ca_file {} does not exist", ca.display()));
                }
                if h.style == "telnyx" && h.telnyx_public_key.is_empty() {
                    return bad(
                        "sms.http.telnyx_public_key is needed to check Telnyx webhooks".into(),
                    );
                }
                if !(1..=1000).contains(&h.window) || h.timeout_secs == 0 {
                    return bad(
                        "sms.http.window must be 1..=1000 and timeout_secs at least 1".into(),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        self.validate_sip()?;
        self.validate_sms()?;
        if !(10..=7 * 86_400).contains(&self.calls.abandon_after_secs) {
            return bad("calls.abandon_after_secs must be 10..=604800");
        }
        if self.media.port_min == 0 || self.media.port_min > self.media.port_max {
            return bad("media.port_min must be >= 1 and <= media.port_max");
        }
        if self.media.bind_ip.is_unspecified() {
            return bad(
                "media.bind_ip must be a concrete address (0.0.0.0 / :: would skip loopback); \
                 use announced_ips for NAT",
            );
        }
        for ip in &self.media.announced_ips {
            if ip.parse::<IpAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "media.announced_ips: `{ip}` is not an IP address"
                )));
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return bad("server.tls_cert and server.tls_key must be set together");
        }
        if self.media.max_participants_per_room == 0 {
            return bad("media.max_participants_per_room must be at least 1");
        }
        if self.media.subscriber_queue == 0 || self.media.tap_queue == 0 {
            return bad("media.subscriber_queue and media.tap_queue must be at least 1");
        }
        if self.signaling.keepalive_secs == 0 || self.signaling.missed_keepalives == 0 {
            return bad("signaling.keepalive_secs and signaling.missed_keepalives must be >= 1");
        }
        if self.media.audio_level_interval_ms < 20 {
            return bad("media.audio_level_interval_ms must be at least 20");
        }
        let r = &self.recording;
        if r.beep_interval_ms < 1000
            || r.beep_duration_ms == 0
            || r.beep_duration_ms >= r.beep_interval_ms
        {
            return bad(
                "recording.beep_interval_ms must be >= 1000 and longer than beep_duration_ms (> 0)",
            );
        }
        if !(20.0..=20_000.0).contains(&r.beep_frequency_hz)
            || !(-60.0..=0.0).contains(&r.beep_level_dbfs)
        {
            return bad(
                "recording.beep_frequency_hz must be 20..=20000 and beep_level_dbfs -60..=0",
            );
        }
        if !["announce", "dtmf"].contains(&r.consent_mode.as_str()) {
            return bad("recording.consent_mode must be \"announce\" or \"dtmf\"");
        }
        if !["continue", "stop_recording", "hangup"].contains(&r.dtmf_no_consent.as_str()) {
            return bad(
                "recording.dtmf_no_consent must be \"continue\", \"stop_recording\" or \"hangup\"",
            );
        }
        if !(1..=300).contains(&r.dtmf_consent_timeout_secs) {
            return bad("recording.dtmf_consent_timeout_secs must be 1..=300");
        }
        if !(8..=320).contains(&r.mp3_bitrate_kbps) {
            return bad("recording.mp3_bitrate_kbps must be 8..=320");
        }
        let d = &self.database;
        if !d.url.is_empty()
            && !d.url.starts_with("postgres://")
            && !d.url.starts_with("postgresql://")
        {
            return bad("database.url must be a postgres:// URL (empty for the embedded SQLite)");
        }
        if d.max_connections == 0 || d.connect_timeout_secs == 0 || d.retry_interval_ms < 10 {
            return bad(
                "database.max_connections and connect_timeout_secs must be >= 1, retry_interval_ms >= 10",
            );
        }
        if !(60..=86_400).contains(&self.auth.token_ttl_secs)
            || !(60..=86_400).contains(&self.turn.credential_ttl_secs)
        {
            return bad("auth.token_ttl_secs and turn.credential_ttl_secs must be 60..=86400");
        }
        if self.auth.api_keys.iter().any(|k| k.len() < 16) {
            return bad("auth.api_keys entries must be at least 16 characters");
        }
        if !self.turn.shared_secret.is_empty() && self.turn.server_url.trim().is_empty() {
            return bad("turn.server_url (TURN_SERVER_URL) must be set with turn.shared_secret");
        }
        for u in self.turn_urls() {
            if !(u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:")) {
                return Err(ConfigError::Invalid(format!(
                    "turn.server_url: `{u}` must start with turn:, turns: or stun:"
                )));
            }
        }
        let ep = &self.api.sfu_endpoint;
        if !(ep.is_empty() || ep.starts_with("ws://") || ep.starts_with("wss://")) {
            return bad("api.sfu_endpoint (SFU_ENDPOINT) must be a ws:// or wss:// URL");
        }
        if self.api.page_size == 0 || self.api.page_size > self.api.max_page_size {
            return bad("api.page_size must be 1..=api.max_page_size");
        }
        if self.api.max_upload_bytes < 1024 || self.api.max_json_bytes < 1024 {
            return bad("api.max_upload_bytes and api.max_json_bytes must be at least 1024");
        }
        if self.media.media_timeout_secs == 0 || self.media.ice_disconnected_secs == 0 {
            return bad("media.media_timeout_secs and media.ice_disconnected_secs must be >= 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_parses_and_equals_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/commhub.toml"))
                .expect("config/commhub.toml");
        let cfg = Config::from_toml(&text).expect("valid");
        assert_eq!(
            cfg,
            Config::default(),
            "the shipped file documents the defaults"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn environment_overrides_file_and_ignores_non_config_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nlisten = \"127.0.0.1:1111\"\n")?;
            jail.set_env("COMMHUB_SERVER__LISTEN", "127.0.0.1:2222");
            jail.set_env("COMMHUB_MEDIA__ANNOUNCED_IPS", "[\"203.0.113.7\"]");
            jail.set_env("COMMHUB_RECORDING__ENABLED", "false");
            jail.set_env("COMMHUB_TEST_PYTHON", "/usr/bin/python3");
            // The platform's names, and COMMHUB_ winning over them.
            jail.set_env("TURN_SHARED_SECRET", "s3cret");
            jail.set_env("TURN_SERVER_URL", "turn:turn.example.com:3478");
            jail.set_env("PBX_AUTH_TOKEN", "pbx-token");
            jail.set_env("INBOUND_WEBHOOK_TOKEN", "hook-token");
            jail.set_env("SFU_ENDPOINT", "wss://sfu.example.com");
            jail.set_env("DATABASE_URL", "postgres://a@b/c");
            jail.set_env("COMMHUB_DATABASE__URL", "postgres://x@y/z");
            let cfg = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.server.listen.port(), 2222);
            assert_eq!(cfg.media.announced_ips, vec!["203.0.113.7".to_string()]);
            assert!(!cfg.recording.enabled);
            assert_eq!(cfg.turn.shared_secret, "s3cret");
            assert_eq!(
                cfg.turn_urls(),
                vec!["turn:turn.example.com:3478".to_string()]
            );
            assert_eq!(cfg.auth.pbx_token, "pbx-token");
            assert_eq!(cfg.auth.webhook_token, "hook-token");
            assert_eq!(cfg.api.sfu_endpoint, "wss://sfu.example.com");
            assert_eq!(cfg.database.url, "postgres://x@y/z");
            jail.set_env("COMMHUB_MEDIA__PORT_MIN", "not-a-port");
            let err = Config::load(Some(Path::new("c.toml"))).expect_err("bad env value");
            assert!(err.to_string().to_lowercase().contains("port_min"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_get_clear_errors() {
        for (toml, needle) in [
            ("[media]\nport_min = 5000\nport_max = 4000", "port_min"),
            ("[media]\nbind_ip = \"0.0.0.0\"", "bind_ip"),
            ("[media]\nannounced_ips = [\"nope\"]", "announced_ips"),
            ("[server]\ntls_cert = \"a.pem\"", "tls_key"),
            ("[server]\nlisten = \"not an address\"", "listen"),
            ("[server]\nlisten_typo = 1", "listen_typo"),
            ("[signaling]\nkeepalive_secs = 0", "keepalive"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            ("[turn]\nshared_secret = \"s\"", "server_url"),
            (
                "[turn]\nshared_secret = \"s\"\nserver_url = \"http://x\"",
                "turn:",
            ),
            ("[auth]\napi_keys = [\"short\"]", "api_keys"),
            ("[api]\nsfu_endpoint = \"http://x\"", "sfu_endpoint"),
        ] {
            let err = Config::from_toml(toml).expect_err(toml).to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn sms_variables_are_read_and_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "")?;
            jail.set_env("SMS_MODE", "SMPP");
            jail.set_env("SMPP_HOST", "smsc.example");
            jail.set_env("SMPP_PORT", "2776");
            jail.set_env("SMPP_SYSTEM_ID", "12345");
            // All digits: arrives as a number, taken as text.
            jail.set_env("SMPP_PASSWORD", "00123");
            jail.set_env("SMPP_BIND", "transmitter+receiver");
            jail.set_env("TEN_DLC_BRAND_ID", "B1");
            jail.set_env("TEN_DLC_CAMPAIGN_ID", "C1");
            jail.set_env("MMS_MEDIA_MAX_MB", "2");
            let cfg = Config::load(Some(Path::new("c.toml"))).expect("loads");
            assert_eq!(cfg.sms.mode, SmsMode::Smpp);
            assert_eq!(cfg.sms.smpp.host, "smsc.example");
            assert_eq!(cfg.sms.smpp.port, 2776);
            assert_eq!(cfg.sms.smpp.system_id, "12345");
            assert_eq!(cfg.sms.smpp.password, "00123");
            assert_eq!(cfg.sms.smpp.bind, "transmitter+receiver");
            assert_eq!(
                (cfg.sms.ten_dlc_brand_id.as_str(), cfg.sms.mms_media_max_mb),
                ("B1", 2)
            );
            jail.set_env("SMPP_PASSWORD", "longer-than-8");
            let e = Config::load(Some(Path::new("c.toml"))).expect_err("too long");
            assert!(e.to_string().contains("at most 8"), "{e}");
            jail.set_env("SMPP_PASSWORD", "ok");
            jail.set_env("SMPP_SYSTEM_ID", "a-system-id-of-16");
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            jail.set_env("SMPP_SYSTEM_ID", "sys");
            jail.set_env("SMS_MODE", "http");
            let e = Config::load(Some(Path::new("c.toml"))).expect_err("no base URL");
            assert!(e.to_string().contains("CARRIER_HTTP_BASEURL"), "{e}");
            jail.set_env("CARRIER_HTTP_BASEURL", "https://carrier.example");
            jail.set_env("CARRIER_HTTP_KEY", "k");
            let cfg = Config::load(Some(Path::new("c.toml"))).expect("http mode");
            assert_eq!(cfg.sms.http.key, "k");
            Ok(())
        });
    }
}
