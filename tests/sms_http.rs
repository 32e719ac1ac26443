//! SMS through the running server in HTTP mode against the carrier simulator
//! (`tests/clients/sms_carrier.py`) in each style: generic JSON, Twilio-style (webhooks signed by
//! PyPI `twilio`'s own RequestValidator) and Telnyx-style (Ed25519 signatures made by Python's
//! `cryptography`). Sends, receipts, inbound keywords, retries of 429/500, permanent 400s,
//! receipts that overtake the send's answer, MMS through signed links, idempotency, and bad
//! webhooks refused with nothing half-written.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sms::{Carrier, free_port, metric, sms_get, sms_list, sms_send, wait_for};
use common::{TEST_API_KEY, curl_json, test_config};
use serde_json::json;

const US: &str = "+15550001111";
const THEM: &str = "+15550002222";
const HOOK_TOKEN: &str = "hook-token-0123456789";
const TWILIO: &str = "AC0123456789:twilio-auth-token";

struct Setup {
    srv: commhub::server::ServerHandle,
    base: String,
    carrier: Carrier,
}

async fn setup(style: &str) -> Setup {
    common::init_logs();
    let (carrier_port, server_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{server_port}");
    let carrier = Carrier::start(
        carrier_port,
        style,
        &base,
        HOOK_TOKEN,
        TWILIO.split_once(':').unwrap().1,
    )
    .await;
    let mut cfg = test_config();
    cfg.server.listen = format!("127.0.0.1:{server_port}").parse().unwrap();
    cfg.auth.enabled = true;
    cfg.auth.api_keys = vec![TEST_API_KEY.into()];
    cfg.auth.webhook_token = HOOK_TOKEN.into();
    cfg.sms.mode = commhub::config::SmsMode::Http;
    cfg.sms.brand = "Acme".into();
    cfg.sms.contact = "acme.example".into();
    cfg.sms.http.style = style.into();
    cfg.sms.http.base_url = carrier.url.clone();
    cfg.sms.http.key = if style == "twilio" {
        TWILIO.into()
    } else {
        "carrier-key".into()
    };
    cfg.sms.http.telnyx_public_key = carrier.telnyx_public_key.clone();
    cfg.sms.http.public_base_url = base.clone();
    let srv = commhub::server::start(cfg).await.unwrap();
    Setup { srv, base, carrier }
}

fn status_of(base: &str, id: &str) -> String {
    sms_get(base, id)["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn send_and_deliver(s: &Setup) {
    let (st, m) = sms_send(
        &s.base,
        &json!({"from": US, "to": THEM, "body": "Hi from Acme"}),
    );
    assert_eq!(st, 201, "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("delivered", Duration::from_secs(10), || {
        status_of(&s.base, &id) == "delivered"
    })
    .await;
    let sent = s.carrier.sent();
    let last = sent.last().unwrap();
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str()),
        (Some(US), Some(THEM))
    );
    assert_eq!(last["text"], "Hi from Acme");
}

async fn keywords(s: &Setup) {
    let (st, r) = s
        .carrier
        .control("mo", json!({"from": THEM, "to": US, "text": "  Stop. "}));
    assert_eq!(st, 201, "commhub's answer to the webhook: {r}");
    wait_for(
        "the STOP confirmation at the carrier",
        Duration::from_secs(10),
        || {
            s.carrier
                .sent()
                .iter()
                .any(|m| m["text"].as_str().unwrap_or("").contains("unsubscribed"))
        },
    )
    .await;
    let (st, m) = sms_send(&s.base, &json!({"from": US, "to": THEM, "body": "promo"}));
    assert_eq!((st, m["status"].as_str()), (201, Some("blocked")), "{m}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !s.carrier.sent().iter().any(|m| m["text"] == "promo"),
        "a blocked message never reaches the carrier"
    );
    s.carrier
        .control("mo", json!({"from": THEM, "to": US, "text": "unstop"}));
    s.carrier
        .control("mo", json!({"from": THEM, "to": US, "text": "INFO"}));
    wait_for("START and HELP replies", Duration::from_secs(10), || {
        let t: Vec<String> = s
            .carrier
            .sent()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or("").to_string())
            .collect();
        t.iter().any(|x| x.contains("subscribed again"))
            && t.iter().any(|x| {
                x.contains("Reply STOP to opt out") && x.contains("Msg & data rates may apply")
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_carrier_sends_retries_receipts_keywords_and_mms() {
    let s = setup("generic").await;
    let base = s.base.clone();
    send_and_deliver(&s).await;
    let last = s.carrier.sent().last().unwrap().clone();
    assert_eq!(last["authorization"], "Bearer carrier-key");
    keywords(&s).await;

    // 500 twice, then OK: sent on the third attempt, attempts recorded.
    s.carrier
        .control("mode", json!({"answer": 500, "fail_next": 2}));
    let (_, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "retry me"}));
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("delivered after two 500s", Duration::from_secs(20), || {
        status_of(&base, &id) == "delivered"
    })
    .await;
    assert_eq!(sms_get(&base, &id)["attempts"], 2);
    // 429 with Retry-After: paused, then sent (not an attempt).
    s.carrier.control(
        "mode",
        json!({"answer": 429, "fail_next": 1, "retry_after": 1}),
    );
    let (_, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "slow down"}));
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("delivered after a 429", Duration::from_secs(15), || {
        status_of(&base, &id) == "delivered"
    })
    .await;
    assert!(metric(&base, "commhub_sms_throttled_total") >= 1.0);
    // 400: failed for good with the carrier's text.
    s.carrier
        .control("mode", json!({"answer": 400, "fail_next": 1}));
    let (_, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "bad"}));
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("failed after a 400", Duration::from_secs(10), || {
        status_of(&base, &id) == "failed"
    })
    .await;
    let f = sms_get(&base, &id);
    assert!(
        f["error_code"].as_str().unwrap().starts_with("http_400"),
        "{f}"
    );
    // The receipt overtakes the send's answer: kept, then applied.
    s.carrier
        .control("mode", json!({"receipt_before_answer": true}));
    let (_, m) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "early receipt"}),
    );
    let id = m["id"].as_str().unwrap().to_string();
    wait_for(
        "delivered from an early receipt",
        Duration::from_secs(10),
        || status_of(&base, &id) == "delivered",
    )
    .await;
    s.carrier.control(
        "mode",
        json!({"receipt_before_answer": false, "fetch_media": true}),
    );

    // MMS: a PNG is stored under sms-media/, the carrier fetches it through the signed link.
    let png: Vec<u8> = [b"\x89PNG\r\n\x1a\n".as_slice(), &[7u8; 200]].concat();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&png)
    };
    let (st, m) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "see this",
            "media": [{"content_type": "image/png", "data": b64}]}),
    );
    assert_eq!(st, 201, "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("MMS delivered", Duration::from_secs(10), || {
        status_of(&base, &id) == "delivered"
    })
    .await;
    let got = sms_get(&base, &id);
    let key = got["media"][0]["storage_key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("sms-media/") && key.ends_with(".png"),
        "{key}"
    );
    let sent = s.carrier.sent();
    let mms = sent.iter().find(|m| m["text"] == "see this").unwrap();
    let fetched = &mms["media"][0];
    assert_eq!(fetched["fetch_status"], 200, "{mms}");
    assert_eq!(fetched["bytes"], png.len(), "{mms}");
    assert_eq!(fetched["content_type"], "image/png", "{mms}");
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&png)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        fetched["sha256"],
        sha.as_str(),
        "the carrier got the same bytes"
    );
    // The link without its signature is refused.
    let url = mms["media_urls"][0].as_str().unwrap();
    let bare = url.split('?').next().unwrap();
    assert_eq!(curl_json(&[bare]).0, 401);
    // Oversized (413), wrong type (422), not base64 (400): nothing stored.
    let before = sms_list(&base, "limit=1")["total"].as_i64().unwrap();
    let big = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(
            [
                b"\x89PNG\r\n\x1a\n".as_slice(),
                &vec![0u8; 5 * 1024 * 1024 + 1],
            ]
            .concat(),
        )
    };
    let dir = std::env::temp_dir().join(format!("commhub-big-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("big.json");
    std::fs::write(
        &body,
        json!({"from": US, "to": THEM, "body": "big", "media": [{"content_type": "image/png", "data": big}]}).to_string(),
    )
    .unwrap();
    let (st, e) = curl_json(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {TEST_API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("{base}/functions/v1/sms-send"),
    ]);
    assert_eq!(st, 413, "{e}");
    let html = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b"<html><script>alert(1)</script>")
    };
    let (st, e) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "media": [{"content_type": "image/png", "data": html}]}),
    );
    assert_eq!(st, 422, "{e}");
    let (st, e) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "media": [{"content_type": "image/png", "data": "%%%"}]}),
    );
    assert_eq!(st, 400, "{e}");
    let (st, e) = sms_send(
        &base,
        &json!({"from": "5550001111", "to": THEM, "body": "x"}),
    );
    assert_eq!(st, 400, "{e}");
    let (st, e) = sms_send(&base, &json!({"from": US, "to": THEM, "body": ""}));
    assert_eq!(st, 400, "{e}");
    let (st, e) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "x".repeat(2000)}),
    );
    assert_eq!(st, 400, "{e}");
    assert_eq!(
        sms_list(&base, "limit=1")["total"].as_i64().unwrap(),
        before
    );

    // Idempotency: the same key is the same message; another body under it is 422.
    let (st, a) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "once", "idempotency_key": "k-1"}),
    );
    assert_eq!(st, 201, "{a}");
    let (st, b) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "once", "idempotency_key": "k-1"}),
    );
    assert_eq!((st, &b["id"]), (200, &a["id"]), "{b}");
    let (st, e) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "twice", "idempotency_key": "k-1"}),
    );
    assert_eq!(st, 422, "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.carrier
            .sent()
            .iter()
            .filter(|m| m["text"] == "once")
            .count(),
        1
    );

    // Webhooks: a bad token is 401, a bad body 400, an unknown receipt id is kept (202), a
    // repeated MO is stored once.
    let rows = sms_list(&base, "limit=1")["total"].as_i64().unwrap();
    let (st, r) = s.carrier.control(
        "mo",
        json!({"from": THEM, "to": US, "text": "hi", "token": "wrong"}),
    );
    assert_eq!(st, 401, "{r}");
    let (st, e) = curl_json(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {HOOK_TOKEN}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        "{\"from\": 12",
        &format!("{base}/functions/v1/sms-webhook-mo"),
    ]);
    assert_eq!(st, 400, "{e}");
    let (st, e) = curl_json(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        "{\"id\": \"x\", \"status\": \"delivered\"}",
        &format!("{base}/functions/v1/sms-webhook-dlr?token={HOOK_TOKEN}"),
    ]);
    assert_eq!(st, 202, "?token= works, unknown ids are kept: {e}");
    assert_eq!(sms_list(&base, "limit=1")["total"].as_i64().unwrap(), rows);
    for want in [201, 200] {
        let (st, r) = s.carrier.control(
            "mo",
            json!({"from": THEM, "to": US, "text": "same one", "id": "mo-dup-1"}),
        );
        assert_eq!(
            st, want,
            "the repeat is answered 200 with duplicate: true: {r}"
        );
    }
    let l = sms_list(&base, "direction=inbound&limit=100");
    assert_eq!(
        l["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["body"] == "same one")
            .count(),
        1
    );
    s.srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_style_carrier_with_signed_webhooks() {
    let s = setup("twilio").await;
    send_and_deliver(&s).await;
    let last = s.carrier.sent().last().unwrap().clone();
    assert!(
        last["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Basic ")
    );
    keywords(&s).await;
    // A webhook with a bad signature is refused and stores nothing.
    let rows = sms_list(&s.base, "limit=1")["total"].as_i64().unwrap();
    let (st, r) = s.carrier.control(
        "mo",
        json!({"from": THEM, "to": US, "text": "forged", "signature": "bad"}),
    );
    assert_eq!(st, 401, "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sms_list(&s.base, "limit=1")["total"].as_i64().unwrap(),
        rows
    );
    s.srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_style_carrier_with_ed25519_webhooks() {
    let s = setup("telnyx").await;
    assert!(!s.carrier.telnyx_public_key.is_empty());
    send_and_deliver(&s).await;
    keywords(&s).await;
    let rows = sms_list(&s.base, "limit=1")["total"].as_i64().unwrap();
    for sig in ["bad", "stale", "none"] {
        let (st, r) = s.carrier.control(
            "mo",
            json!({"from": THEM, "to": US, "text": "forged", "signature": sig}),
        );
        assert_eq!(st, 401, "{sig}: {r}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sms_list(&s.base, "limit=1")["total"].as_i64().unwrap(),
        rows
    );
    assert!(metric(&s.base, "commhub_sms_webhook_refused_total") >= 3.0);
    s.srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_carrier_is_reached_with_its_ca_trusted() {
    common::init_logs();
    let dir = std::env::temp_dir().join(format!("commhub-tls-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (plain, tls, server_port) = (free_port(), free_port(), free_port());
    let base = format!("http://127.0.0.1:{server_port}");
    let carrier = Carrier::start_with(
        plain,
        "generic",
        &base,
        HOOK_TOKEN,
        "",
        &[
            "--tls-port".into(),
            tls.to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
    )
    .await;
    let mut cfg = test_config();
    cfg.server.listen = format!("127.0.0.1:{server_port}").parse().unwrap();
    cfg.auth.enabled = true;
    cfg.auth.api_keys = vec![TEST_API_KEY.into()];
    cfg.auth.webhook_token = HOOK_TOKEN.into();
    cfg.sms.mode = commhub::config::SmsMode::Http;
    cfg.sms.http.base_url = format!("https://127.0.0.1:{tls}");
    cfg.sms.http.key = "carrier-key".into();
    cfg.sms.http.ca_file = Some(cert.clone());
    let srv = commhub::server::start(cfg).await.unwrap();
    let (st, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "over TLS"}));
    assert_eq!(st, 201, "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("delivered over https", Duration::from_secs(10), || {
        status_of(&base, &id) == "delivered"
    })
    .await;
    assert!(carrier.sent().iter().any(|m| m["text"] == "over TLS"));
    srv.stop().await.unwrap();
}
