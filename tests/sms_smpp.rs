//! SMS through the running server in SMPP mode against a simulated SMSC (npm `smpp`,
//! `tests/sms/smsc.js`): sends end `delivered` or `failed` from receipts, long texts go as UDH
//! parts, inbound STOP/START/HELP are acted on and confirmed, a multipart UCS-2 reply is
//! reassembled, the SMSC crashing mid-queue and commhub restarting with a queue lose nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sms::{Smsc, metric, sms_get, sms_list, sms_send, wait_for};
use common::{TEST_API_KEY, server, test_config};
use serde_json::{Value, json};

const US: &str = "+15550001111";
const THEM: &str = "+15550002222";

fn smpp_cfg(cfg: &mut commhub::config::Config, port: u16) {
    cfg.auth.enabled = true;
    cfg.auth.api_keys = vec![TEST_API_KEY.into()];
    cfg.sms.mode = commhub::config::SmsMode::Smpp;
    cfg.sms.brand = "Acme".into();
    cfg.sms.contact = "acme.example".into();
    cfg.sms.smpp.host = "127.0.0.1".into();
    cfg.sms.smpp.port = port;
    cfg.sms.smpp.system_id = "commhub".into();
    cfg.sms.smpp.password = "pw".into();
    cfg.sms.smpp.reconnect_min_ms = 200;
    cfg.sms.smpp.reconnect_max_ms = 1000;
    cfg.sms.ten_dlc_brand_id = "BRAND1".into();
    cfg.sms.ten_dlc_campaign_id = "CAMP1".into();
}

fn status_of(base: &str, id: &str) -> String {
    sms_get(base, id)["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_end_delivered_or_failed_and_long_texts_go_in_udh_parts() {
    let smsc = Smsc::start().await;
    let srv = server(|c| smpp_cfg(c, smsc.smpp_port)).await;
    let base = srv.http_url();
    wait_for("bound", Duration::from_secs(10), || {
        metric(&base, "commhub_sms_bind_state_tx") == 2.0
    })
    .await;

    // One part, delivered.
    let (s, m) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "Hello from Acme"}),
    );
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["segments"], 1);
    assert_eq!(m["encoding"], "gsm7");
    assert_eq!(m["ten_dlc_brand_id"], "BRAND1");
    assert_eq!(m["ten_dlc_campaign_id"], "CAMP1");
    let id = m["id"].as_str().unwrap().to_string();
    wait_for("delivered", Duration::from_secs(10), || {
        status_of(&base, &id) == "delivered"
    })
    .await;
    let got = sms_get(&base, &id);
    assert!(
        got["carrier_message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(got["parts"].as_array().unwrap().len(), 1);

    // 400 GSM characters: 3 parts of 153 with one UDH reference, each with its own id.
    let long: String = "abcdefghij".repeat(40);
    let (s, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": long}));
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["segments"], 3);
    let long_id = m["id"].as_str().unwrap().to_string();
    // A UCS-2 text of 100 characters: 2 parts of 67.
    let emoji: String = "é😀".repeat(35);
    let (s, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": emoji}));
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        (m["segments"].as_i64(), m["encoding"].as_str()),
        (Some(2), Some("ucs2"))
    );
    let ucs_id = m["id"].as_str().unwrap().to_string();
    for id in [&long_id, &ucs_id] {
        wait_for("multipart delivered", Duration::from_secs(10), || {
            status_of(&base, id) == "delivered"
        })
        .await;
    }
    let parts = sms_get(&base, &long_id)["parts"]
        .as_array()
        .unwrap()
        .clone();
    let ids: std::collections::HashSet<_> = parts
        .iter()
        .map(|p| p["carrier_message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "each part keeps its own id: {parts:?}");
    let msgs = smsc.messages();
    let long_parts: Vec<&Value> = msgs
        .iter()
        .filter(|m| {
            m["udh"]
                .as_str()
                .is_some_and(|u| u.ends_with("0301") || u.ends_with("0302") || u.ends_with("0303"))
        })
        .collect();
    assert_eq!(long_parts.len(), 3, "{msgs:?}");
    let refs: std::collections::HashSet<_> = long_parts
        .iter()
        .map(|m| m["udh"].as_str().unwrap()[6..8].to_string())
        .collect();
    assert_eq!(refs.len(), 1, "one reference for the 3 parts");
    assert!(
        long_parts
            .iter()
            .all(|m| m["esm_class"].as_u64().unwrap() & 0x40 != 0)
    );
    let joined: String = {
        let mut p = long_parts.clone();
        p.sort_by_key(|m| m["udh"].as_str().unwrap().to_string());
        p.iter().map(|m| m["text"].as_str().unwrap()).collect()
    };
    assert_eq!(joined, long);
    let ucs: Vec<&Value> = msgs.iter().filter(|m| m["data_coding"] == 8).collect();
    assert_eq!(ucs.len(), 2);
    assert!(msgs.iter().all(|m| m["has_message_payload"] == false));
    assert!(
        msgs.iter()
            .all(|m| m["destination"] == THEM.trim_start_matches('+'))
    );

    // UNDELIV: the message fails with the error code; REJECTD too.
    smsc.mode(json!({"receipt_stat": "UNDELIV", "receipt_err": "034"}));
    let (_, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "will fail"}));
    let fid = m["id"].as_str().unwrap().to_string();
    wait_for("failed", Duration::from_secs(10), || {
        status_of(&base, &fid) == "failed"
    })
    .await;
    assert_eq!(sms_get(&base, &fid)["error_code"], "034");

    // Receipts reversed and an ENROUTE after DELIVRD: still delivered.
    smsc.mode(
        json!({"receipt_stat": "DELIVRD", "receipt_err": "000", "enroute_after": true,
        "hold_receipts": 3, "receipts_reversed": true}),
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, m) = sms_send(
            &base,
            &json!({"from": US, "to": THEM, "body": format!("order {i}")}),
        );
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_for(
            "reversed receipts delivered",
            Duration::from_secs(10),
            || status_of(&base, id) == "delivered",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        assert_eq!(
            status_of(&base, id),
            "delivered",
            "ENROUTE after DELIVRD does not go back"
        );
    }

    // MMS over SMPP is a clear 422, and nothing is stored.
    let before = sms_list(&base, "limit=1")["total"].as_i64().unwrap();
    let (s, e) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "pic", "media": [{"content_type": "image/png", "data": "iVBORw0KGgo="}]}),
    );
    assert_eq!(s, 422, "{e}");
    assert_eq!(
        sms_list(&base, "limit=1")["total"].as_i64().unwrap(),
        before
    );
    assert!(metric(&base, "commhub_sms_sent_total") >= 10.0);
    assert!(metric(&base, "commhub_sms_receipts_total") >= 10.0);
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_keywords_opt_out_and_multipart_replies_are_reassembled() {
    let smsc = Smsc::start().await;
    let srv = server(|c| smpp_cfg(c, smsc.smpp_port)).await;
    let base = srv.http_url();
    wait_for("bound", Duration::from_secs(10), || {
        metric(&base, "commhub_sms_bind_state_tx") == 2.0
    })
    .await;

    // " stop! " opts the sender out; one confirmation goes back to them.
    let r = smsc.mo(json!({"from": THEM, "to": US, "text": " stop! "}));
    assert_eq!(r["acked"], 1, "{r}");
    wait_for("confirmation at the SMSC", Duration::from_secs(10), || {
        smsc.messages()
            .iter()
            .any(|m| m["text"].as_str().unwrap_or("").contains("unsubscribed"))
    })
    .await;
    let conv = common::api_get(&format!(
        "{base}/api/v1/sms/conversations?number={}",
        THEM.replace('+', "%2B")
    ))
    .1;
    assert_eq!(conv["conversations"][0]["opted_out"], true, "{conv}");
    // A second STOP gets no second confirmation (no loops with auto-responders).
    smsc.mo(json!({"from": THEM, "to": US, "text": "STOP"}));
    // A send to the opted-out number is stored as blocked and never reaches the SMSC.
    let submits = smsc.stats()["submits"].as_i64().unwrap();
    let (s, m) = sms_send(&base, &json!({"from": US, "to": THEM, "body": "promo"}));
    assert_eq!((s, m["status"].as_str()), (201, Some("blocked")), "{m}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(smsc.stats()["submits"].as_i64().unwrap(), submits);
    let confirmations = smsc
        .messages()
        .iter()
        .filter(|m| m["text"].as_str().unwrap_or("").contains("unsubscribed"))
        .count();
    assert_eq!(confirmations, 1);
    assert_eq!(metric(&base, "commhub_sms_blocked_total"), 1.0);

    // START: opted in again, confirmed; HELP: the help text.
    smsc.mo(json!({"from": THEM, "to": US, "text": "Start"}));
    smsc.mo(json!({"from": THEM, "to": US, "text": "help"}));
    wait_for("start and help replies", Duration::from_secs(10), || {
        let t: Vec<String> = smsc
            .messages()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or("").to_string())
            .collect();
        t.iter().any(|x| x.contains("subscribed again"))
            && t.iter().any(|x| {
                x.contains("Reply STOP to opt out")
                    && x.contains("Msg & data rates may apply")
                    && x.contains("acme.example")
            })
    })
    .await;
    let (s, m) = sms_send(
        &base,
        &json!({"from": US, "to": THEM, "body": "welcome back"}),
    );
    assert_eq!((s, m["status"].as_str()), (201, Some("queued")), "{m}");

    // A UCS-2 reply in 3 parts, sent in reverse order, with one part twice: one message.
    let text = "Grüße 😀 ".repeat(20);
    let r = smsc.mo(
        json!({"from": THEM, "to": US, "text": text, "ucs2": true, "parts": 3,
        "reverse": true, "duplicate": true}),
    );
    assert!(r["acked"].as_i64().unwrap() >= 3, "{r}");
    wait_for("the joined reply", Duration::from_secs(10), || {
        let l = sms_list(&base, "direction=inbound&limit=50");
        l["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["body"] == text.as_str())
    })
    .await;
    let l = sms_list(&base, "direction=inbound&limit=50");
    let joined = l["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"] == text.as_str())
        .count();
    assert_eq!(joined, 1, "stored once");
    // The inbound rows: STOP, STOP, Start, help, and the joined reply.
    assert_eq!(l["total"], 5, "{l}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_smsc_crashes_or_commhub_restarts() {
    let smsc = Smsc::start().await;
    let port = smsc.smpp_port;
    let mut cfg = test_config();
    smpp_cfg(&mut cfg, port);
    common::init_logs();
    let srv = commhub::server::start(cfg.clone()).await.unwrap();
    let base = srv.http_url();
    wait_for("bound", Duration::from_secs(10), || {
        metric(&base, "commhub_sms_bind_state_tx") == 2.0
    })
    .await;
    // Slow answers so that the crash finds parts in flight.
    smsc.mode(json!({"slow_submit_ms": 20}));
    let mut ids = Vec::new();
    for i in 0..60 {
        let (s, m) = sms_send(
            &base,
            &json!({"from": US, "to": THEM, "body": format!("crash test {i}")}),
        );
        assert_eq!(s, 201, "{m}");
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    smsc.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let smsc = Smsc::start_on(port).await;
    // Every message was accepted by one SMSC or the other (a receipt the crashed one owed is
    // lost with it, so `sent` is as far as those go); nothing stays queued.
    for id in &ids {
        wait_for(
            "every message accepted after the SMSC came back",
            Duration::from_secs(30),
            || matches!(status_of(&base, id).as_str(), "sent" | "delivered"),
        )
        .await;
    }
    let resent = smsc.messages().len();
    assert!(
        resent < 60,
        "the new SMSC got only what the old one had not taken: {resent}"
    );

    // Now the SMSC is gone; messages queue; commhub restarts; the SMSC comes back: the
    // reloaded queue is sent, each message once.
    smsc.kill().await;
    let mut queued = Vec::new();
    for i in 0..5 {
        let (s, m) = sms_send(
            &base,
            &json!({"from": US, "to": THEM, "body": format!("queued {i}")}),
        );
        assert_eq!((s, m["status"].as_str()), (201, Some("queued")), "{m}");
        queued.push(m["id"].as_str().unwrap().to_string());
    }
    srv.stop().await.unwrap();
    let smsc = Smsc::start_on(port).await;
    let srv = commhub::server::start(cfg).await.unwrap();
    let base = srv.http_url();
    for id in &queued {
        wait_for(
            "queued messages sent after the restart",
            Duration::from_secs(20),
            || status_of(&base, id) == "delivered",
        )
        .await;
    }
    let texts: Vec<String> = smsc
        .messages()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect();
    for i in 0..5 {
        let n = texts
            .iter()
            .filter(|t| **t == format!("queued {i}"))
            .count();
        assert_eq!(n, 1, "queued {i} sent exactly once: {texts:?}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_in_decimal_for_hex_answers_are_matched_with_receipt_id_hex_to_dec() {
    let smsc = Smsc::start().await;
    // Ids from 0x1000 up: hex and decimal spellings differ.
    smsc.mode(json!({"receipt_id_format": "dec"}));
    for _ in 0..2 {
        let srv = server(|c| {
            smpp_cfg(c, smsc.smpp_port);
            c.sms.smpp.receipt_id = "hex_to_dec".into();
        })
        .await;
        let base = srv.http_url();
        wait_for("bound", Duration::from_secs(10), || {
            metric(&base, "commhub_sms_bind_state_tx") == 2.0
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..12 {
            let (_, m) = sms_send(
                &base,
                &json!({"from": US, "to": THEM, "body": format!("n {i}")}),
            );
            ids.push(m["id"].as_str().unwrap().to_string());
        }
        for id in &ids {
            wait_for(
                "delivered from decimal receipts",
                Duration::from_secs(10),
                || status_of(&base, id) == "delivered",
            )
            .await;
        }
        srv.stop().await.unwrap();
    }
}
