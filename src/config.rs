//! Configuration: defaults, then `config/commhub.toml` (or `--config FILE`), then environment
//! variables `COMMHUB_<SECTION>__<KEY>` (e.g. `COMMHUB_SERVER__LISTEN=0.0.0.0:8443`), then
//! command-line flags. Every option is documented in `config/commhub.toml`.

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
    pub log: LogConfig,
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
        // Only COMMHUB_<SECTION>__<KEY>: other COMMHUB_* variables (e.g. the test suite's
        // COMMHUB_TEST_PYTHON) are not configuration.
        fig = fig.merge(
            Env::prefixed("COMMHUB_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
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
        if !(8..=320).contains(&r.mp3_bitrate_kbps) {
            return bad("recording.mp3_bitrate_kbps must be 8..=320");
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
            let cfg = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.server.listen.port(), 2222);
            assert_eq!(cfg.media.announced_ips, vec!["203.0.113.7".to_string()]);
            assert!(!cfg.recording.enabled);
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
        ] {
            let err = Config::from_toml(toml).expect_err(toml).to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
