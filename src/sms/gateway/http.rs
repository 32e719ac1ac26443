//! HTTP carriers: one pooled hyper client, up to `window` requests in flight. Three styles:
//! `generic` (docs/sms-http.md), `twilio` (form POST to Messages.json with Basic auth) and
//! `telnyx` (JSON to /v2/messages with a Bearer key). 2xx is accepted (the carrier's id kept),
//! 408/429/5xx and connection errors are transient (Retry-After honoured), other 4xx are
//! permanent with the carrier's error text. Bodies and numbers are never logged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc, watch};

use super::SmsStats;
use super::link::{LinkEvent, OutPart, Retry};
use crate::config::SmsHttpConfig;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The TLS settings for https carriers: the public webpki roots plus `ca_file`.
fn tls_config(cfg: &SmsHttpConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("sms.http.ca_file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("sms.http.ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("sms.http.ca_file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "sms.http.ca_file {} has no certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Start the HTTP carrier link.
pub fn spawn(
    cfg: SmsHttpConfig,
    mut parts: mpsc::Receiver<OutPart>,
    events: mpsc::Sender<LinkEvent>,
    stats: Arc<SmsStats>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        conn.enforce_http(false);
        let tls = match tls_config(&cfg) {
            Ok(t) => t,
            Err(e) => {
                // Checked at start too (Config::validate reads the file); keep the link down.
                tracing::error!(error = %e, "sms: the carrier's TLS settings are unusable");
                return;
            }
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        stats.bind_state_tx.store(2, Ordering::Relaxed);
        let _ = events
            .send(LinkEvent::BindState {
                role: "http",
                state: 2,
            })
            .await;
        let window = Arc::new(Semaphore::new(cfg.window.max(1) as usize));
        let cfg = Arc::new(cfg);
        loop {
            // Take a part only when a request slot is free.
            let permit = tokio::select! {
                p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.changed() => return,
            };
            let part = tokio::select! {
                p = parts.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.changed() => return,
            };
            let (client, cfg, events, stats) =
                (client.clone(), cfg.clone(), events.clone(), stats.clone());
            tokio::spawn(async move {
                stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let ev = submit(&client, &cfg, &part, &stats).await;
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = events.send(ev).await;
                drop(permit);
            });
        }
    })
}

/// Build the carrier request for a message.
pub fn build_request(cfg: &SmsHttpConfig, p: &OutPart) -> Result<Request<Full<Bytes>>, String> {
    let base = cfg.base_url.trim_end_matches('/');
    let b64 = base64::engine::general_purpose::STANDARD;
    let (uri, auth, ctype, body) = match cfg.style.as_str() {
        "twilio" => {
            let (sid, token) = cfg.key.split_once(':').unwrap_or((&cfg.key, ""));
            let mut form = url_form(&[("To", &p.to), ("From", &p.from), ("Body", &p.text)]);
            for u in &p.media_urls {
                form.push('&');
                form.push_str(&url_form(&[("MediaUrl", u)]));
            }
            (
                format!("{base}/2010-04-01/Accounts/{sid}/Messages.json"),
                format!("Basic {}", b64.encode(format!("{sid}:{token}"))),
                "application/x-www-form-urlencoded",
                form,
            )
        }
        "telnyx" => {
            let body = serde_json::json!({
                "from": p.from, "to": p.to, "text": p.text,
                "media_urls": p.media_urls,
            });
            (
                format!("{base}/v2/messages"),
                format!("Bearer {}", cfg.key),
                "application/json",
                body.to_string(),
            )
        }
        _ => {
            let media: Vec<_> = p
                .media_urls
                .iter()
                .map(|u| serde_json::json!({ "url": u }))
                .collect();
            let body = serde_json::json!({
                "reference": p.message_id, "from": p.from, "to": p.to, "text": p.text,
                "media": media,
            });
            (
                format!("{base}/messages"),
                format!("Bearer {}", cfg.key),
                "application/json",
                body.to_string(),
            )
        }
    };
    Request::post(uri)
        .header("authorization", auth)
        .header("content-type", ctype)
        .header("user-agent", concat!("commhub/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad carrier request: {e}"))
}

fn url_form(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// What a carrier's answer means for the part.
pub fn classify_answer(
    style: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<String, (Retry, String, String)> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let id = json.as_ref().and_then(|j| match style {
            "twilio" => j.get("sid").and_then(|v| v.as_str()).map(str::to_string),
            "telnyx" => j
                .pointer("/data/id")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            _ => j.get("id").and_then(|v| v.as_str()).map(str::to_string),
        });
        return match id {
            Some(id) if !id.is_empty() && id.len() <= 128 => Ok(id),
            _ => Err((
                Retry::Transient { after: None },
                "bad_answer".into(),
                format!("the carrier answered {status} without a message id"),
            )),
        };
    }
    let text = json
        .as_ref()
        .and_then(|j| {
            j.get("message")
                .or_else(|| j.get("error"))
                .or_else(|| j.pointer("/errors/0/detail"))
                .or_else(|| j.pointer("/errors/0/title"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let code = json
        .as_ref()
        .and_then(|j| j.get("code").or_else(|| j.pointer("/errors/0/code")))
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .map(|c| format!("http_{status}_{c}"))
        .unwrap_or_else(|| format!("http_{status}"));
    let after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let retry = match status {
        429 => Retry::Transient {
            after: after.or(Some(Duration::from_secs(1))),
        },
        408 | 500..=599 => Retry::Transient { after },
        _ => Retry::Permanent,
    };
    Err((
        retry,
        code,
        format!("the carrier answered {status}: {text}"),
    ))
}

async fn submit(
    client: &HttpClient,
    cfg: &SmsHttpConfig,
    p: &OutPart,
    stats: &SmsStats,
) -> LinkEvent {
    let failed = |retry, code: String, error: String| LinkEvent::Failed {
        message_id: p.message_id,
        part: p.part,
        retry,
        code,
        error,
    };
    let req = match build_request(cfg, p) {
        Ok(r) => r,
        Err(e) => return failed(Retry::Permanent, "bad_request".into(), e),
    };
    let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    let answer = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await.map_err(|e| {
            // A connect error says nothing private; keep the kind only.
            if e.is_connect() {
                "could not connect to the carrier".to_string()
            } else {
                "the carrier connection failed".to_string()
            }
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| "the carrier's answer was cut off".to_string())?
            .to_bytes();
        Ok::<_, String>((status, retry_after, body))
    })
    .await;
    match answer {
        Err(_) => failed(
            Retry::Transient { after: None },
            "timeout".into(),
            format!("the carrier did not answer in {} s", timeout.as_secs()),
        ),
        Ok(Err(e)) => failed(Retry::Transient { after: None }, "connect".into(), e),
        Ok(Ok((status, ra, body))) => {
            match classify_answer(
                &cfg.style,
                status,
                ra.as_deref(),
                &body[..body.len().min(65536)],
            ) {
                Ok(id) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    LinkEvent::Accepted {
                        message_id: p.message_id,
                        part: p.part,
                        carrier_message_id: id,
                    }
                }
                Err((retry, code, error)) => {
                    stats.submit_errors.fetch_add(1, Ordering::Relaxed);
                    let retry = if status == 429 {
                        Retry::Throttled
                    } else {
                        retry
                    };
                    if let Retry::Throttled = retry {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                        // Wait before the next request as the carrier asked (the sender
                        // puts the part back first in line).
                        let after = ra
                            .as_deref()
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .unwrap_or(1)
                            .min(60);
                        tokio::time::sleep(Duration::from_secs(after)).await;
                    }
                    failed(retry, code, error)
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_accept_retry_or_fail() {
        assert_eq!(
            classify_answer("generic", 201, None, br#"{"id":"c-1"}"#),
            Ok("c-1".into())
        );
        assert_eq!(
            classify_answer("twilio", 201, None, br#"{"sid":"SM1","status":"queued"}"#),
            Ok("SM1".into())
        );
        assert_eq!(
            classify_answer("telnyx", 200, None, br#"{"data":{"id":"t-1"}}"#),
            Ok("t-1".into())
        );
        let (r, code, e) = classify_answer(
            "generic",
            400,
            None,
            br#"{"error":"bad number","code":21211}"#,
        )
        .unwrap_err();
        assert_eq!(r, Retry::Permanent);
        assert_eq!(code, "http_400_21211");
        assert!(e.contains("bad number"), "{e}");
        let (r, _, _) = classify_answer("generic", 429, Some("3"), b"").unwrap_err();
        assert_eq!(
            r,
            Retry::Transient {
                after: Some(Duration::from_secs(3))
            }
        );
        let (r, _, _) = classify_answer("generic", 503, None, b"down").unwrap_err();
        assert_eq!(r, Retry::Transient { after: None });
        let (r, code, _) = classify_answer("generic", 200, None, b"{}").unwrap_err();
        assert_eq!(
            (r, code.as_str()),
            (Retry::Transient { after: None }, "bad_answer")
        );
    }

    #[test]
    fn twilio_requests_are_forms_with_basic_auth() {
        let cfg = SmsHttpConfig {
            style: "twilio".into(),
            base_url: "http://127.0.0.1:9/".into(),
            key: "AC1:tok".into(),
            ..Default::default()
        };
        let p = OutPart {
            message_id: uuid::Uuid::nil(),
            part: 1,
            total: 1,
            from: "+15550001".into(),
            to: "+15550002".into(),
            encoding: crate::sms::encoding::Encoding::Gsm7,
            payload: Vec::new(),
            udh: None,
            text: "hi & bye".into(),
            media_urls: vec!["http://x/a?b=c".into()],
        };
        let r = build_request(&cfg, &p).unwrap();
        assert_eq!(
            r.uri(),
            "http://127.0.0.1:9/2010-04-01/Accounts/AC1/Messages.json"
        );
        assert_eq!(r.headers()["authorization"], "Basic QUMxOnRvaw==");
    }
}
