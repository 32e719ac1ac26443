//! The command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// commhub: a self-hosted VoIP media server. It forwards Opus audio between the participants of
/// a call (WebRTC SFU), with WebSocket signaling at /ws, WHIP publish at /whip/{room}, WHEP
/// subscribe at /whep/{room}/{participant}, a demo page at /, and /healthz, /readyz, /metrics.
/// It records calls (FLAC + MP3, consent beeps) and serves the call API (/functions/v1/call-create,
/// call-end, recording-upload; /api/v1; /openapi.json), storing calls in PostgreSQL
/// (database.url / DATABASE_URL) or in an embedded SQLite file. Phone calls come in and go out
/// over SIP (sip.listen, default 127.0.0.1:5060; outbound through SIP_TRUNK_URI): FreeSWITCH and
/// carrier trunks bridge PSTN callers into calls. Joins need a token from the API; --dev-mode
/// lets the demo page get its own.
///
/// Configuration comes from built-in defaults, then config/commhub.toml (or --config), then
/// COMMHUB_<SECTION>__<KEY> environment variables, then the flags below. Every option is
/// documented in config/commhub.toml.
#[derive(Debug, Parser)]
#[command(name = "commhub", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML). Default: config/commhub.toml when it exists.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address for HTTP/WebSocket (overrides server.listen), e.g. 0.0.0.0:8443.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Local IP media sockets bind to (overrides media.bind_ip).
    #[arg(long, global = true, value_name = "IP")]
    pub media_ip: Option<IpAddr>,

    /// Media UDP port range, e.g. 40000-49999 (overrides media.port_min/port_max).
    #[arg(long, global = true, value_name = "MIN-MAX", value_parser = parse_range)]
    pub media_ports: Option<(u16, u16)>,

    /// Public IP announced in ICE candidates, for servers behind 1:1 NAT (repeatable).
    #[arg(long = "announced-ip", global = true, value_name = "IP")]
    pub announced_ips: Vec<IpAddr>,

    /// TLS certificate chain (PEM); with --tls-key, signaling becomes wss://.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Log format: pretty (for people) or json (for log pipelines).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// DEVELOPMENT ONLY: the demo page gets join tokens from /dev/token and /api/v1 needs no
    /// key (sets auth.dev_mode). Never on a reachable server.
    #[arg(long, global = true)]
    pub dev_mode: bool,

    /// Log filter, e.g. info or info,media=debug (RUST_LOG wins when set).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Print the effective configuration (defaults + file + environment + flags) as TOML,
    /// secrets redacted.
    Config,
    /// Create or upgrade the database schema (PostgreSQL at database.url / DATABASE_URL, or
    /// the SQLite file) and print each table's row count. The server also migrates at start.
    Migrate,
    /// Recording maintenance.
    Recordings {
        #[command(subcommand)]
        action: RecordingsCmd,
    },
    /// Write a self-signed development certificate and key (PEM) for HTTPS/WSS, valid for
    /// localhost and 127.0.0.1 plus any --name. Browsers will warn; never use it in production.
    DevCert {
        /// Directory to write dev-cert.pem and dev-key.pem into.
        #[arg(long, default_value = "config")]
        dir: PathBuf,
        /// Extra DNS names or IPs the certificate is valid for (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordingsCmd {
    /// Finalise recordings whose process died (kill -9, power loss) from their journals under
    /// recording.storage_root. The server also does this at every start.
    Recover,
}

/// Write `dev-cert.pem` and `dev-key.pem` into `dir`; returns their paths.
pub fn write_dev_cert(
    dir: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(extra.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(names)?;
    std::fs::create_dir_all(dir)?;
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((cert, key))
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not MIN-MAX"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("`{s}`: need 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

impl Cli {
    /// Load the configuration and apply the flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(l) = self.listen {
            cfg.server.listen = l;
        }
        if let Some(ip) = self.media_ip {
            cfg.media.bind_ip = ip;
        }
        if let Some((a, b)) = self.media_ports {
            cfg.media.port_min = a;
            cfg.media.port_max = b;
        }
        if !self.announced_ips.is_empty() {
            cfg.media.announced_ips = self.announced_ips.iter().map(|i| i.to_string()).collect();
        }
        if let Some(c) = &self.tls_cert {
            cfg.server.tls_cert = Some(c.clone());
        }
        if let Some(k) = &self.tls_key {
            cfg.server.tls_key = Some(k.clone());
        }
        if let Some(f) = self.log_format {
            cfg.log.format = f;
        }
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
        if self.dev_mode {
            cfg.auth.dev_mode = true;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Install the global tracing subscriber.
pub fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // webrtc-rs logs per-packet errors at error level while a connection is being torn
        // down; keep those at warn so they do not drown the log.
        .add_directive("webrtc=warn".parse().unwrap_or_default())
        // rsipstack logs every SIP message raw (numbers included) at info.
        .add_directive("rsipstack=error".parse().unwrap_or_default())
        // rtc warns once per datagram it cannot use (a check before the answer, a packet after
        // close): outside input must not write a line per packet.
        .add_directive("rtc=error".parse().unwrap_or_default())
        // Noise from the ICE/DTLS stacks on every connection ("remote_addr is empty", "no
        // candidate pairs yet") is not actionable.
        .add_directive("rtc_ice=error".parse().unwrap_or_default())
        .add_directive("rtc_dtls=error".parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("commhub: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Recordings {
            action: RecordingsCmd::Recover,
        } => {
            let rc = crate::server::recording_config(&cfg);
            let journals = recorder::pending_journals(&rc.storage_root);
            if journals.is_empty() {
                println!(
                    "no unfinished recordings under {}",
                    rc.storage_root.display()
                );
                return ExitCode::SUCCESS;
            }
            let mut failed = 0;
            for (i, j) in journals.iter().enumerate() {
                eprint!("[{}/{}] {} ... ", i + 1, journals.len(), j.display());
                match recorder::recover(j, &rc) {
                    Ok(s) => println!(
                        "recovered {} ({:.1} s): {} {}",
                        s.meta.recording_id,
                        s.duration.as_secs_f64(),
                        s.flac_path.display(),
                        s.mp3_path.display()
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED: {e}");
                    }
                }
            }
            if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::DevCert { dir, names } => match write_dev_cert(&dir, &names) {
            Ok((c, k)) => {
                println!(
                    "wrote {} and {}\nserve with: commhub --tls-cert {} --tls-key {}",
                    c.display(),
                    k.display(),
                    c.display(),
                    k.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("commhub: dev-cert: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Migrate => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("commhub: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async {
                let backend = if cfg.database.url.is_empty() {
                    format!("SQLite {}", cfg.database.sqlite_path.display())
                } else {
                    format!("PostgreSQL {}", crate::redact::db_url(&cfg.database.url))
                };
                eprintln!("migrating {backend} ...");
                match crate::store::Store::open(&cfg.database).await {
                    Ok(store) => {
                        println!("schema up to date ({})", store.backend());
                        match store.counts().await {
                            Ok(counts) => {
                                for (t, n) in counts {
                                    println!("  {t:<20} {n} rows");
                                }
                            }
                            Err(e) => eprintln!("commhub: counting rows: {e}"),
                        }
                        store.close().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("commhub: migrate: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Config => match toml_string(&redacted(cfg)) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("commhub: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => {
            init_logging(&cfg);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("commhub: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("commhub: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The configuration with its secrets replaced, for printing.
fn redacted(mut cfg: Config) -> Config {
    let hide = |s: &mut String| {
        if !s.is_empty() {
            *s = "<redacted>".into();
        }
    };
    hide(&mut cfg.auth.jwt_secret);
    hide(&mut cfg.auth.pbx_token);
    hide(&mut cfg.auth.webhook_token);
    hide(&mut cfg.turn.shared_secret);
    hide(&mut cfg.sip.trunk_password);
    hide(&mut cfg.sms.smpp.password);
    hide(&mut cfg.sms.http.key);
    for t in &mut cfg.sip.trunks {
        hide(&mut t.password);
    }
    for k in &mut cfg.auth.api_keys {
        hide(k);
    }
    if !cfg.database.url.is_empty() {
        cfg.database.url = crate::redact::db_url(&cfg.database.url);
    }
    cfg
}

fn toml_string(cfg: &Config) -> Result<String, String> {
    let v = serde_json::to_value(cfg).map_err(|e| e.to_string())?;
    let mut out = String::new();
    if let serde_json::Value::Object(sections) = v {
        for (name, body) in sections {
            out.push_str(&format!("[{name}]\n"));
            let mut tables = Vec::new();
            let mut subs = Vec::new();
            if let serde_json::Value::Object(kv) = body {
                for (k, v) in kv {
                    match &v {
                        serde_json::Value::Null => {}
                        // Arrays of tables (`[[sip.trunks]]`) follow the section's keys.
                        serde_json::Value::Array(items)
                            if !items.is_empty() && items.iter().all(|i| i.is_object()) =>
                        {
                            tables.push((k, items.clone()));
                        }
                        // Sub-tables (`[sms.smpp]`) too.
                        serde_json::Value::Object(_) => subs.push((k, v.clone())),
                        _ => out.push_str(&format!("{k} = {v}\n")),
                    }
                }
            }
            for (k, sub) in subs {
                out.push_str(&format!("\n[{name}.{k}]\n"));
                if let serde_json::Value::Object(kv) = sub {
                    for (ik, iv) in kv.iter().filter(|(_, v)| !v.is_null()) {
                        out.push_str(&format!("{ik} = {iv}\n"));
                    }
                }
            }
            for (k, items) in tables {
                for item in items {
                    out.push_str(&format!("\n[[{name}.{k}]]\n"));
                    if let serde_json::Value::Object(kv) = item {
                        for (ik, iv) in kv.iter().filter(|(_, v)| !v.is_null()) {
                            out.push_str(&format!("{ik} = {iv}\n"));
                        }
                    }
                }
            }
            out.push('\n');
        }
    }
    Ok(out)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let server = crate::server::start(cfg).await?;
    eprintln!(
        "commhub {} listening on {} (demo page: {}/)",
        env!("CARGO_PKG_VERSION"),
        server.ws_url(),
        server.http_url()
    );
    shutdown_signal().await;
    tracing::info!("signal received");
    server.stop().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
