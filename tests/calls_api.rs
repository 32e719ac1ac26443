//! Call state in the database and the call API, against a real PostgreSQL and the embedded
//! SQLite (the same tests on both): the store's writes and their replay, a call created over
//! the API, joined by two WebRTC clients with their tokens, recorded and ended, token refusals,
//! and the API's auth. HTTP goes through the `curl` command line.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use commhub::auth::{Claims, TokenKey, unix_now};
use commhub::store::{
    Call, CallFilter, ConsentRow, Participant, RecordingRow, Store, StoreOp, is_transient,
};
use common::{
    Backend, Client, MediaHooks, Ws, curl, curl_json, eventually, server, sha256sum, test_config,
    use_backend,
};
use serde_json::{Value, json};
use uuid::Uuid;

use common::TEST_API_KEY as API_KEY;
const JWT_SECRET: &str = "test-jwt-secret";
const TURN_SECRET: &str = "test-turn-secret";

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("time")
}

fn call_row(now: DateTime<Utc>) -> Call {
    let id = Uuid::new_v4();
    Call {
        id,
        kind: "pstn".into(),
        direction: "outbound".into(),
        from_number: Some("+14155550100".into()),
        to_number: Some("+14155550111".into()),
        room: format!("call-{}", id.simple()),
        status: "created".into(),
        record: true,
        created_at: now,
        answered_at: None,
        ended_at: None,
        end_reason: None,
        duration_sec: None,
    }
}

async fn store_suite(backend: Backend) {
    let mut cfg = test_config();
    use_backend(&mut cfg, backend).await;
    Store::open(&cfg.database).await.expect("open and migrate");
    // Migrating again is a no-op.
    let store = Store::open(&cfg.database).await.expect("reopen");

    let t0 = micros(Utc::now());
    let s = |n: i64| t0 + chrono::Duration::seconds(n);
    let call = call_row(t0);
    let p = |n: i64, role: &str| Participant {
        id: Uuid::new_v4(),
        call_id: call.id,
        kind: "browser".into(),
        role: role.into(),
        identity: Some(format!("user-{n}")),
        display_name: format!("User {n}"),
        joined_at: s(n),
        left_at: None,
        leave_reason: None,
    };
    let (p1, p2) = (p(1, "agent"), p(10, "customer"));
    let rec_id = Uuid::new_v4();
    let started = RecordingRow {
        id: rec_id,
        call_id: call.id,
        source: "tap".into(),
        status: "recording".into(),
        codec: "flac".into(),
        flac_key: None,
        mp3_key: None,
        duration_sec: None,
        channels: Some(2),
        sample_rate: Some(48_000),
        flac_bytes: None,
        mp3_bytes: None,
        flac_sha256: None,
        mp3_sha256: None,
        upload_sha256: None,
        error: None,
        started_at: s(1),
        ready_at: None,
    };
    let ready = RecordingRow {
        status: "ready".into(),
        flac_key: Some("call-recordings/x.flac".into()),
        mp3_key: Some("call-recordings/x.mp3".into()),
        duration_sec: Some(74.5),
        flac_bytes: Some(1000),
        mp3_bytes: Some(100),
        flac_sha256: Some("a".repeat(64)),
        mp3_sha256: Some("b".repeat(64)),
        ready_at: Some(s(76)),
        ..started.clone()
    };
    let beep = ConsentRow {
        id: Uuid::new_v4(),
        call_id: call.id,
        participant_id: None,
        recording_id: Some(rec_id),
        kind: "periodic_beep".into(),
        offset_ms: 15_000,
        occurred_at: s(16),
        source: "system".into(),
        note: None,
    };
    let ops = vec![
        StoreOp::CreateCall(call.clone()),
        StoreOp::CallActive { call_id: call.id },
        StoreOp::ParticipantJoined(p1.clone()),
        StoreOp::Recording(started.clone()),
        StoreOp::ParticipantJoined(p2.clone()),
        StoreOp::CallAnswered {
            call_id: call.id,
            at: s(10),
        },
        StoreOp::Consent(beep.clone()),
        StoreOp::ParticipantLeft {
            id: p1.id,
            at: s(70),
            reason: "left".into(),
        },
        StoreOp::Recording(ready.clone()),
        StoreOp::ParticipantLeft {
            id: p2.id,
            at: s(75),
            reason: "call_ended".into(),
        },
        StoreOp::CallEnded {
            call_id: call.id,
            at: s(75),
            reason: "ended_by_api".into(),
        },
    ];
    // Everything twice: a replayed outbox changes nothing.
    for round in 0..2 {
        for op in &ops {
            store
                .apply(op)
                .await
                .unwrap_or_else(|e| panic!("{backend:?} round {round}: {}: {e}", op.name()));
        }
    }
    let counts: std::collections::HashMap<String, i64> =
        store.counts().await.expect("counts").into_iter().collect();
    assert_eq!(counts["calls"], 1);
    assert_eq!(counts["call_participants"], 2);
    assert_eq!(counts["call_recordings"], 1);
    assert_eq!(counts["consent_events"], 1);
    for t in [
        "call_transcripts",
        "sms_conversations",
        "sms_messages",
        "sms_optouts",
    ] {
        assert_eq!(counts[t], 0, "{t} exists and is empty");
    }

    let got = store.call(&call.id).await.expect("read").expect("row");
    assert_eq!(got.status, "ended");
    assert_eq!(got.answered_at, Some(s(10)));
    assert_eq!(got.ended_at, Some(s(75)));
    assert_eq!(got.duration_sec, Some(65), "answer to end");
    assert_eq!(got.end_reason.as_deref(), Some("ended_by_api"));
    let ps = store.participants(&call.id).await.expect("participants");
    assert_eq!(ps[0].left_at, Some(s(70)));
    assert_eq!(ps[1].leave_reason.as_deref(), Some("call_ended"));
    assert_eq!(ps[0].identity.as_deref(), Some("user-1"));
    let rs = store.recordings(&call.id).await.expect("recordings");
    assert_eq!(
        rs,
        vec![ready.clone()],
        "a replayed start does not undo ready"
    );
    assert_eq!(
        store.consent_events(&call.id).await.expect("consent"),
        vec![beep]
    );

    // Listing and filters.
    let f = |status: Option<&str>, number: Option<&str>| CallFilter {
        status: status.map(str::to_string),
        number: number.map(str::to_string),
        limit: 10,
        ..Default::default()
    };
    let (list, total) = store.list_calls(&f(None, None)).await.expect("list");
    assert_eq!((list.len(), total), (1, 1));
    assert_eq!(list[0], got);
    assert_eq!(
        store
            .list_calls(&f(Some("ended"), None))
            .await
            .expect("l")
            .1,
        1
    );
    assert_eq!(
        store
            .list_calls(&f(Some("active"), None))
            .await
            .expect("l")
            .1,
        0
    );
    assert_eq!(
        store
            .list_calls(&f(None, Some("+14155550111")))
            .await
            .expect("l")
            .1,
        1
    );
    assert_eq!(
        store
            .list_calls(&f(None, Some("+19999999999")))
            .await
            .expect("l")
            .1,
        0
    );
    let later = CallFilter {
        since: Some(s(1)),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_calls(&later).await.expect("l").1, 0);
    let window = CallFilter {
        since: Some(s(-1)),
        until: Some(s(1)),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_calls(&window).await.expect("l").1, 1);

    // Constraints keep bad states out, and such errors are final (not retried).
    let mut bad_number = call_row(t0);
    bad_number.from_number = Some("4155550100".into());
    let mut ended_without_time = call_row(t0);
    ended_without_time.status = "ended".into();
    let mut bad_consent = ConsentRow {
        id: Uuid::new_v4(),
        kind: "maybe".into(),
        ..store.consent_events(&call.id).await.expect("c")[0].clone()
    };
    let orphan = Participant {
        id: Uuid::new_v4(),
        call_id: Uuid::new_v4(),
        ..p1.clone()
    };
    let ready_without_files = RecordingRow {
        id: Uuid::new_v4(),
        flac_key: None,
        ..ready.clone()
    };
    for (what, op) in [
        ("non-E.164 number", StoreOp::CreateCall(bad_number)),
        (
            "ended without ended_at",
            StoreOp::CreateCall(ended_without_time),
        ),
        (
            "unknown consent kind",
            StoreOp::Consent(bad_consent.clone()),
        ),
        ("participant of no call", StoreOp::ParticipantJoined(orphan)),
        (
            "ready without files",
            StoreOp::Recording(ready_without_files),
        ),
    ] {
        let e = store.apply(&op).await.expect_err(what);
        assert!(!is_transient(&e), "{backend:?}: {what}: {e} must be final");
    }
    bad_consent.kind = "verbal_yes".into();
    store
        .apply(&StoreOp::Consent(bad_consent))
        .await
        .expect("a valid verbal consent");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_replays_and_constraints_on_sqlite() {
    store_suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_replays_and_constraints_on_postgres() {
    store_suite(Backend::Postgres).await;
}

fn auth_on(c: &mut commhub::config::Config) {
    c.auth.enabled = true;
    c.auth.api_keys = vec![API_KEY.into()];
    c.auth.jwt_secret = JWT_SECRET.into();
    c.auth.pbx_token = "test-pbx-token".into();
    c.turn.shared_secret = TURN_SECRET.into();
    c.turn.server_url = "turn:127.0.0.1:3478".into();
}

fn key_header() -> String {
    format!("Authorization: Bearer {API_KEY}")
}

use common::{api_get as get, api_post as post};

async fn api_call_flow(backend: Backend) {
    let mut cfg = test_config();
    use_backend(&mut cfg, backend).await;
    let root = cfg.recording.storage_root.clone();
    let srv = server(move |c| {
        *c = cfg;
        auth_on(c);
        c.recording.enabled = true;
        c.recording.beep_interval_ms = 2000;
    })
    .await;
    let base = srv.http_url();

    // call-create needs the API key.
    let create = json!({"kind": "webrtc", "direction": "outbound", "to": "+14155550123",
        "identity": "agent-7", "display_name": "Agent Seven", "role": "agent"});
    let (st, v) = curl_json(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &create.to_string(),
        &format!("{base}/functions/v1/call-create"),
    ]);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (st, created) = post(&format!("{base}/functions/v1/call-create"), &create);
    assert_eq!(st, 201, "{created}");
    let call_id = created["call_id"].as_str().expect("call_id").to_string();
    let room = created["room"].as_str().expect("room").to_string();
    assert_eq!(created["signaling_url"], json!(srv.ws_url()));
    assert_eq!(created["status"], "created");
    let turn = &created["iceServers"][0];
    assert_eq!(turn["urls"], json!(["turn:127.0.0.1:3478"]));
    assert!(
        turn["username"]
            .as_str()
            .expect("username")
            .ends_with(":agent-7")
    );
    let claims = TokenKey::new(JWT_SECRET.as_bytes())
        .verify(created["token"].as_str().expect("token"))
        .expect("a valid token");
    assert_eq!(
        (
            claims.room.as_str(),
            claims.role.as_str(),
            claims.sub.as_str()
        ),
        (room.as_str(), "agent", "agent-7")
    );
    assert_eq!(claims.exp - claims.iat, 600, "10-minute tokens");

    // The customer's token.
    let (st, tok2) = post(
        &format!("{base}/api/v1/calls/{call_id}/tokens"),
        &json!({"identity": "cust-1", "display_name": "Customer", "role": "customer"}),
    );
    assert_eq!(st, 201, "{tok2}");

    let hooks = |t: &Value| MediaHooks {
        token: Some(t["token"].as_str().expect("token").to_string()),
        ..Default::default()
    };
    let url = srv.ws_url();
    let a = Client::join_with(&url, &room, "Agent Seven", 1, hooks(&created))
        .await
        .expect("agent joins with its token");
    let b = Client::join_with(&url, &room, "Customer", 2, hooks(&tok2))
        .await
        .expect("customer joins with its token");
    assert!(
        eventually(Duration::from_secs(10), || a.count_from(&b.id) > 20
            && b.count_from(&a.id) > 20)
        .await,
        "media flows both ways"
    );
    // While the call runs the row says so.
    let mut live = Value::Null;
    assert!(
        eventually(Duration::from_secs(5), || {
            live = get(&format!("{base}/api/v1/calls/{call_id}")).1;
            live["call"]["status"] == "active" && live["call"]["answered_at"].is_string()
        })
        .await,
        "{live}"
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;

    let (st, ended) = post(
        &format!("{base}/functions/v1/call-end"),
        &json!({"call_id": call_id}),
    );
    assert_eq!(st, 200, "{ended}");
    assert_eq!(ended["status"], "ended");
    assert!(
        ended["duration_sec"].as_i64().expect("duration") >= 4,
        "{ended}"
    );
    for c in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), || c.saw(
                "bye",
                "reason",
                "call_ended"
            ))
            .await,
            "participants are told the call ended"
        );
    }

    let (st, detail) = get(&format!("{base}/api/v1/calls/{call_id}"));
    assert_eq!(st, 200);
    let call = &detail["call"];
    assert_eq!(call["status"], "ended");
    assert_eq!(call["end_reason"], "ended_by_api");
    assert_eq!(call["to_number"], "+14155550123");
    let ps = detail["participants"].as_array().expect("participants");
    assert_eq!(ps.len(), 2, "{detail}");
    let mut seen: Vec<(String, String)> = ps
        .iter()
        .map(|p| {
            assert_eq!(p["kind"], "browser");
            assert_eq!(p["leave_reason"], "call_ended", "{p}");
            assert!(p["left_at"].is_string());
            (
                p["identity"].as_str().unwrap_or("").to_string(),
                p["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("agent-7".to_string(), "agent".to_string()),
            ("cust-1".to_string(), "customer".to_string())
        ]
    );
    let recs = detail["recordings"].as_array().expect("recordings");
    assert_eq!(recs.len(), 1, "{detail}");
    let r = &recs[0];
    assert_eq!(
        (r["status"].as_str(), r["source"].as_str()),
        (Some("ready"), Some("tap"))
    );
    let flac = root.join(r["flac_key"].as_str().expect("flac_key"));
    let mp3 = root.join(r["mp3_key"].as_str().expect("mp3_key"));
    assert_eq!(r["flac_sha256"].as_str(), Some(sha256sum(&flac).as_str()));
    assert_eq!(r["mp3_sha256"].as_str(), Some(sha256sum(&mp3).as_str()));
    assert_eq!(
        r["flac_bytes"].as_u64(),
        Some(std::fs::metadata(&flac).expect("flac").len())
    );
    assert!(r["duration_sec"].as_f64().expect("duration") >= 4.0);
    let consent = detail["consent_events"].as_array().expect("consent");
    let kinds: Vec<&str> = consent.iter().filter_map(|c| c["kind"].as_str()).collect();
    assert!(
        kinds.iter().filter(|k| **k == "periodic_beep").count() >= 2,
        "beeps every 2 s are consent events: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "ivr_announcement").count(),
        1,
        "{kinds:?}"
    );

    // The preview downloads with range requests (a browser can seek).
    let (st, headers, body) = curl(&[
        "-H",
        &key_header(),
        "-H",
        "Range: bytes=0-99",
        &format!("{base}{}", r["mp3_url"].as_str().expect("mp3_url")),
    ]);
    assert_eq!(st, 206, "{headers}");
    let size = std::fs::metadata(&mp3).expect("mp3").len();
    assert!(
        headers.contains(&format!("content-range: bytes 0-99/{size}")),
        "{headers}"
    );
    assert!(headers.contains("content-type: audio/mpeg"), "{headers}");
    assert_eq!(body, std::fs::read(&mp3).expect("mp3")[..100].to_vec());
    let (st, _, body) = curl(&[
        "-H",
        &key_header(),
        &format!("{base}{}", r["flac_url"].as_str().expect("flac_url")),
    ]);
    assert_eq!(
        (st, body.len() as u64),
        (200, std::fs::metadata(&flac).expect("f").len())
    );

    // Verbal consent is logged against a participant.
    let pid = ps[0]["id"].as_str().expect("pid");
    let (st, c) = post(
        &format!("{base}/api/v1/calls/{call_id}/consent"),
        &json!({"kind": "verbal_yes", "participant_id": pid, "note": "said yes"}),
    );
    assert_eq!(st, 201, "{c}");
    let (st, c) = post(
        &format!("{base}/api/v1/calls/{call_id}/consent"),
        &json!({"kind": "maybe"}),
    );
    assert_eq!(st, 400, "{c}");
    let detail = get(&format!("{base}/api/v1/calls/{call_id}")).1;
    assert!(
        detail["consent_events"]
            .as_array()
            .expect("c")
            .iter()
            .any(|c| c["kind"] == "verbal_yes"
                && c["participant_id"] == pid
                && c["source"] == "api")
    );

    // Listing.
    let (st, list) = get(&format!(
        "{base}/api/v1/calls?status=ended&number=%2B14155550123"
    ));
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["calls"][0]["id"], json!(call_id));
    let (st, list) = get(&format!("{base}/api/v1/calls?status=active"));
    assert_eq!((st, list["total"].as_i64()), (200, Some(0)));
    let (st, e) = get(&format!("{base}/api/v1/calls?status=bogus"));
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (st, e) = get(&format!("{base}/api/v1/calls?since=yesterday"));
    assert_eq!(st, 400, "{e}");

    // The call is over: its tokens no longer admit anyone, and no new ones are issued.
    let mut ws = Ws::connect(&url).await.expect("ws");
    ws.send(json!({"type": "join", "room": room, "display_name": "Late",
        "token": created["token"]}))
        .await
        .expect("send");
    let err = next_error(&mut ws).await;
    assert_eq!(err["code"], "call_ended", "{err}");
    let (st, e) = post(
        &format!("{base}/api/v1/calls/{call_id}/tokens"),
        &json!({"identity": "x"}),
    );
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("call_ended")));
    // Ending again is harmless.
    let (st, again) = post(
        &format!("{base}/functions/v1/call-end"),
        &json!({"call_id": call_id}),
    );
    assert_eq!((st, again["already_ended"].as_bool()), (200, Some(true)));
    let (st, e) = post(
        &format!("{base}/functions/v1/call-end"),
        &json!({"call_id": Uuid::new_v4()}),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("unknown_call"))
    );

    a.leave().await;
    b.leave().await;
    let counts: std::collections::HashMap<String, i64> = srv
        .state
        .store
        .store
        .counts()
        .await
        .expect("counts")
        .into_iter()
        .collect();
    assert_eq!(counts["calls"], 1, "{counts:?}");
    assert_eq!(counts["call_participants"], 2, "{counts:?}");
    assert_eq!(counts["call_recordings"], 1, "{counts:?}");
    srv.stop().await.expect("stop");
}

async fn next_error(ws: &mut Ws) -> Value {
    loop {
        let v = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("a reply in time")
            .expect("recv");
        if v["type"] == "error" {
            return v;
        }
        assert_ne!(v["type"], "joined", "must not be admitted: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_call_is_joined_with_tokens_recorded_ended_and_stored_on_sqlite() {
    api_call_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_call_is_joined_with_tokens_recorded_ended_and_stored_on_postgres() {
    api_call_flow(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_other_room_and_missing_tokens_are_refused() {
    let srv = server(auth_on).await;
    let url = srv.ws_url();
    let key = TokenKey::new(JWT_SECRET.as_bytes());
    let now = unix_now();
    let claims = |room: &str, exp: u64| Claims {
        iss: "commhub".into(),
        sub: "u1".into(),
        room: room.into(),
        call_id: None,
        role: "customer".into(),
        name: None,
        iat: now.saturating_sub(700),
        exp,
    };
    let expired = key.sign(&claims("r1", now - 10));
    let other_room = key.sign(&claims("r2", now + 600));
    let forged = TokenKey::new(b"someone-else").sign(&claims("r1", now + 600));
    let valid = key.sign(&claims("r1", now + 600));
    for (what, token, code) in [
        ("missing", None, "token_missing"),
        ("expired", Some(expired.as_str()), "token_expired"),
        ("other room", Some(other_room.as_str()), "token_wrong_room"),
        ("bad signature", Some(forged.as_str()), "token_signature"),
        ("garbage", Some("not-a-jwt"), "token_malformed"),
    ] {
        let mut ws = Ws::connect(&url).await.expect("ws");
        let mut join = json!({"type": "join", "room": "r1", "display_name": "X"});
        if let Some(t) = token {
            join["token"] = json!(t);
        }
        ws.send(join).await.expect("send");
        let err = next_error(&mut ws).await;
        assert_eq!(err["code"], "unauthorized", "{what}: {err}");
        assert!(
            err["message"].as_str().unwrap_or("").starts_with(code),
            "{what}: {err}"
        );
        assert_eq!(err["in_reply_to"], "join", "{what}: {err}");
        // The session goes on: a valid token now joins.
        ws.send(json!({"type": "join", "room": "r1", "display_name": "X", "token": valid}))
            .await
            .expect("send");
        ws.expect("joined").await.expect("valid token joins");
    }
    // WHIP and WHEP take the token as a bearer.
    let offer = "v=0\r\n";
    for (auth, code) in [
        (None, "unauthorized"),
        (Some(expired.as_str()), "unauthorized"),
        (Some(other_room.as_str()), "unauthorized"),
    ] {
        let h = auth.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-X", "POST", "-H", "Content-Type: application/sdp"];
        if let Some(h) = &h {
            args.extend(["-H", h.as_str()]);
        }
        let u = format!("{}/whip/r1", srv.http_url());
        args.extend(["--data-binary", offer, u.as_str()]);
        let (st, e) = curl_json(&args);
        assert_eq!((st, e["error"]["code"].as_str()), (401, Some(code)), "{e}");
    }
    // The API's key.
    let base = srv.http_url();
    let (st, _) = curl_json(&[&format!("{base}/api/v1/calls")]);
    assert_eq!(st, 401);
    let (st, _) = curl_json(&[
        "-H",
        "Authorization: Bearer wrong-key-wrong-key",
        &format!("{base}/api/v1/calls"),
    ]);
    assert_eq!(st, 401);
    let (st, _) = get(&format!("{base}/api/v1/calls"));
    assert_eq!(st, 200);
    let (st, _) = curl_json(&[&format!("{base}/dev/token?room=r1")]);
    assert_eq!(st, 404, "no dev tokens unless dev mode");
    let (st, doc) = curl_json(&[&format!("{base}/openapi.json")]);
    assert_eq!(st, 200);
    assert!(doc["paths"]["/functions/v1/recording-upload"].is_object());
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_hands_the_demo_page_tokens() {
    let srv = server(|c| {
        c.auth.enabled = true;
        c.auth.dev_mode = true;
    })
    .await;
    let (st, t) = curl_json(&[&format!(
        "{}/dev/token?room=demo&name=Ann&role=agent",
        srv.http_url()
    )]);
    assert_eq!(st, 200, "{t}");
    let hooks = MediaHooks {
        token: Some(t["token"].as_str().expect("token").to_string()),
        ..Default::default()
    };
    let c = Client::join_with(&srv.ws_url(), "demo", "Ann", 1, hooks)
        .await
        .expect("joins with a dev token");
    // An ad-hoc room gets a call row of its own.
    let mut calls = Value::Null;
    assert!(
        eventually(Duration::from_secs(5), || {
            calls = curl_json(&[&format!("{}/api/v1/calls", srv.http_url())]).1;
            calls["total"] == 1 && calls["calls"][0]["room"] == "demo"
        })
        .await,
        "{calls}"
    );
    c.leave().await;
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_command_creates_the_schema_on_both_backends() {
    let mut cfg = test_config();
    use_backend(&mut cfg, Backend::Postgres).await;
    let sqlite = cfg.recording.storage_root.join("m.db");
    for (var, value) in [
        ("DATABASE_URL", cfg.database.url.clone()),
        (
            "COMMHUB_DATABASE__SQLITE_PATH",
            sqlite.display().to_string(),
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_commhub"))
            .args(["--config", "/dev/null", "migrate"])
            .env(var, &value)
            .output()
            .expect("commhub migrate");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{var}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for t in commhub::store::TABLES {
            assert!(
                text.contains(&format!("  {t:<20} 0 rows")),
                "{var}: {t}: {text}"
            );
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("commhub:commhub"),
            "no password in the output: {err}"
        );
    }
    assert!(sqlite.exists());
    // A database that is not there is a clear error, not a hang.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_commhub"))
        .args(["--config", "/dev/null", "migrate"])
        .env("DATABASE_URL", "postgres://nobody:secret@127.0.0.1:1/none")
        .env("COMMHUB_DATABASE__CONNECT_TIMEOUT_SECS", "2")
        .output()
        .expect("commhub migrate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(
        !err.contains("secret"),
        "the password stays out of errors: {err}"
    );
}

/// The store task on SQLite: writes land in order; one the database refuses for good is
/// answered `Rejected` and kept in the rejected file (nothing vanishes), and the task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_refused_write_keeps_the_others() {
    use commhub::store::writer::{Durable, spawn};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut cfg = test_config();
        use_backend(&mut cfg, backend).await;
        let store = Store::open(&cfg.database).await.expect("open");
        let (h, _task) = spawn(
            store.clone(),
            cfg.database.outbox_path.clone(),
            Duration::from_millis(100),
            Duration::from_secs(5),
        )
        .expect("spawn");
        // Handed over at once, so the task commits them in groups; number 20 breaks a CHECK.
        let mut calls = Vec::new();
        let mut acks = Vec::new();
        for i in 0..50 {
            let mut c = call_row(micros(Utc::now()));
            if i == 20 {
                c.to_number = Some("not-a-number".into());
            }
            acks.push(h.send_durable(StoreOp::CreateCall(c.clone())));
            calls.push(c);
        }
        for (i, (a, c)) in acks.into_iter().zip(&calls).enumerate() {
            let d = a.await.expect("answer");
            let want = if i == 20 {
                Durable::Rejected
            } else {
                Durable::Written
            };
            assert_eq!(d, want, "{backend:?} op {i}");
            let row = store.call(&c.id).await.expect("read");
            assert_eq!(row.is_some(), i != 20, "{backend:?} op {i}");
        }
        assert!(h.stats.written.load(std::sync::atomic::Ordering::Relaxed) >= 49);
        assert_eq!(h.close().await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_task_keeps_refused_writes_and_goes_on() {
    use commhub::store::writer::{Durable, spawn};
    let cfg = test_config();
    let store = Store::open(&cfg.database).await.expect("open");
    let outbox = cfg.database.outbox_path.clone();
    let (h, task) = spawn(
        store.clone(),
        outbox.clone(),
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .expect("spawn");
    let call = call_row(micros(Utc::now()));
    assert_eq!(
        h.write(StoreOp::CreateCall(call.clone())).await,
        Durable::Written
    );
    let mut bad = call_row(micros(Utc::now()));
    bad.to_number = Some("not-a-number".into());
    assert_eq!(
        h.write(StoreOp::CreateCall(bad.clone())).await,
        Durable::Rejected
    );
    h.send(StoreOp::CallActive { call_id: call.id });
    assert_eq!(h.flush().await, 0);
    assert_eq!(
        store
            .call(&call.id)
            .await
            .expect("read")
            .expect("row")
            .status,
        "active",
        "the task goes on after a refusal"
    );
    let rejected = std::fs::read_to_string(outbox.with_extension("rejected.jsonl"))
        .expect("the rejected file");
    assert!(rejected.contains(&bad.id.to_string()), "{rejected}");
    assert!(
        rejected.contains("CHECK"),
        "with the database's reason: {rejected}"
    );
    assert_eq!(h.close().await, 0);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends after close")
        .expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_joins_is_abandoned_and_its_token_refused() {
    let srv = server(|c| {
        auth_on(c);
        c.calls.abandon_after_secs = 10;
    })
    .await;
    let base = srv.http_url();
    let (st, created) = post(
        &format!("{base}/functions/v1/call-create"),
        &json!({"kind": "webrtc", "direction": "internal", "identity": "agent-1", "role": "agent"}),
    );
    assert_eq!(st, 201, "{created}");
    let call_id = created["call_id"].as_str().expect("call_id").to_string();
    let room = created["room"].as_str().expect("room").to_string();
    let token = created["token"].as_str().expect("token").to_string();
    // Still open before the limit.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, v) = get(&format!("{base}/api/v1/calls/{call_id}"));
    assert_eq!(v["call"]["status"], "created", "{v}");
    // Ended as abandoned once nobody joined for 10 s.
    let mut v = Value::Null;
    assert!(
        eventually(Duration::from_secs(15), || {
            v = get(&format!("{base}/api/v1/calls/{call_id}")).1;
            v["call"]["status"] == "ended"
        })
        .await,
        "{v}"
    );
    assert_eq!(v["call"]["end_reason"], "abandoned", "{v}");
    assert_eq!(v["call"]["duration_sec"], 0, "{v}");
    // Its token no longer lets anyone in.
    let mut ws = Ws::connect(&srv.ws_url()).await.expect("ws");
    ws.send(json!({"type": "join", "room": room, "display_name": "Late", "token": token}))
        .await
        .expect("send");
    let e = next_error(&mut ws).await;
    assert_eq!(e["code"], "call_ended", "{e}");
    // Counted.
    let (_, metrics) = common::http("GET", &format!("{base}/metrics"), "", "").await;
    assert!(
        metrics.contains("commhub_calls_abandoned_total 1"),
        "{metrics}"
    );
    srv.stop().await.expect("stop");
}
