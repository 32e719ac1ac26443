//! SMS writes against a real PostgreSQL and the embedded SQLite (the same suite on both): every
//! op applied twice gives the same rows (the outbox may replay), a receipt that overtakes its
//! submit's answer is kept and applied, statuses never go back, inbound parts and opt-outs.

#![allow(clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Utc};
use commhub::store::sms::{InboundPartRow, SmsFilter, SmsMessage, SmsOp, conversation_id};
use commhub::store::{Store, StoreOp};
use common::{Backend, test_config, use_backend};
use uuid::Uuid;

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("time")
}

fn outbound(now: DateTime<Utc>, segments: i32) -> SmsMessage {
    let (from, to) = ("+14155550100", "+14155550111");
    SmsMessage {
        id: Uuid::new_v4(),
        conversation_id: conversation_id(from, to),
        direction: "outbound".into(),
        from_number: from.into(),
        to_number: to.into(),
        body: "hello".into(),
        status: "queued".into(),
        carrier_message_id: None,
        error: None,
        error_code: None,
        segments,
        encoding: Some("gsm7".into()),
        carrier: Some("smpp".into()),
        origin: "api".into(),
        idempotency_key: None,
        ten_dlc_brand_id: Some("B1".into()),
        ten_dlc_campaign_id: Some("C1".into()),
        concat_ref: (segments > 1).then_some(7),
        attempts: 0,
        created_at: now,
        updated_at: now,
    }
}

async fn twice(store: &Store, op: SmsOp) {
    let op = StoreOp::Sms(op);
    store.apply(&op).await.expect("apply");
    store.apply(&op).await.expect("apply again (replay)");
}

async fn status(store: &Store, id: Uuid) -> String {
    store
        .sms_message(&id)
        .await
        .expect("read")
        .expect("row")
        .status
}

async fn suite(backend: Backend) {
    let mut cfg = test_config();
    use_backend(&mut cfg, backend).await;
    let store = Store::open(&cfg.database).await.expect("open and migrate");
    let t0 = micros(Utc::now());

    // A 2-part message: both parts accepted, the receipt of part 2 first, then part 1's.
    let m = outbound(t0, 2);
    twice(
        &store,
        SmsOp::Insert {
            message: m.clone(),
            parts: 2,
            media: Vec::new(),
        },
    )
    .await;
    assert_eq!(store.sms_parts(&m.id).await.unwrap().len(), 2);
    assert_eq!(status(&store, m.id).await, "queued");
    // The receipt for part 2 arrives before its submit_sm_resp was recorded: kept pending.
    twice(
        &store,
        SmsOp::Receipt {
            carrier: "smpp".into(),
            carrier_message_id: "id-2".into(),
            status: "delivered".into(),
            error_code: None,
            at: t0,
        },
    )
    .await;
    let counts = store.counts().await.unwrap();
    let pending = counts
        .iter()
        .find(|(t, _)| t == "sms_receipts_pending")
        .unwrap()
        .1;
    assert_eq!(pending, 1);
    for (part, id) in [(1u8, "id-1"), (2, "id-2")] {
        twice(
            &store,
            SmsOp::PartAccepted {
                message_id: m.id,
                part,
                carrier: "smpp".into(),
                carrier_message_id: id.into(),
                at: t0,
            },
        )
        .await;
    }
    // Part 2 took its pending receipt; part 1 is only sent: the message is sent.
    let parts = store.sms_parts(&m.id).await.unwrap();
    assert_eq!(parts[0].status, "sent");
    assert_eq!(parts[1].status, "delivered");
    assert_eq!(status(&store, m.id).await, "sent");
    let stored = store.sms_message(&m.id).await.unwrap().unwrap();
    assert_eq!(stored.carrier_message_id.as_deref(), Some("id-1"));
    assert_eq!(stored.ten_dlc_campaign_id.as_deref(), Some("C1"));
    // Part 1 delivered: the message is delivered. An ENROUTE (sent) afterwards changes nothing.
    for st in ["delivered", "sent"] {
        twice(
            &store,
            SmsOp::Receipt {
                carrier: "smpp".into(),
                carrier_message_id: "id-1".into(),
                status: st.into(),
                error_code: None,
                at: t0,
            },
        )
        .await;
    }
    assert_eq!(status(&store, m.id).await, "delivered");
    // A receipt from another carrier with the same id is not ours.
    twice(
        &store,
        SmsOp::Receipt {
            carrier: "twilio".into(),
            carrier_message_id: "id-1".into(),
            status: "failed".into(),
            error_code: Some("30003".into()),
            at: t0,
        },
    )
    .await;
    assert_eq!(status(&store, m.id).await, "delivered");

    // UNDELIV on one part fails the message with the code.
    let f = outbound(t0, 1);
    twice(
        &store,
        SmsOp::Insert {
            message: f.clone(),
            parts: 1,
            media: Vec::new(),
        },
    )
    .await;
    twice(
        &store,
        SmsOp::PartAccepted {
            message_id: f.id,
            part: 1,
            carrier: "smpp".into(),
            carrier_message_id: "id-f".into(),
            at: t0,
        },
    )
    .await;
    twice(
        &store,
        SmsOp::Receipt {
            carrier: "smpp".into(),
            carrier_message_id: "id-f".into(),
            status: "failed".into(),
            error_code: Some("034".into()),
            at: t0,
        },
    )
    .await;
    let row = store.sms_message(&f.id).await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.error_code.as_deref()),
        ("failed", Some("034"))
    );

    // Attempts count up (a replay does not count twice); give_up fails it.
    let g = outbound(t0, 1);
    twice(
        &store,
        SmsOp::Insert {
            message: g.clone(),
            parts: 1,
            media: Vec::new(),
        },
    )
    .await;
    for (n, give_up) in [(1, false), (2, false), (3, true)] {
        twice(
            &store,
            SmsOp::Attempt {
                message_id: g.id,
                attempts: n,
                error_code: "ESME_RSYSERR".into(),
                error: "system error".into(),
                give_up,
                at: t0,
            },
        )
        .await;
    }
    let row = store.sms_message(&g.id).await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempts, row.error_code.as_deref()),
        ("failed", 3, Some("ESME_RSYSERR"))
    );
    assert_eq!(store.sms_parts(&g.id).await.unwrap()[0].status, "failed");
    // A late acceptance after giving up does not resurrect it.
    twice(
        &store,
        SmsOp::PartAccepted {
            message_id: g.id,
            part: 1,
            carrier: "smpp".into(),
            carrier_message_id: "id-g".into(),
            at: t0,
        },
    )
    .await;
    assert_eq!(status(&store, g.id).await, "failed");

    // Blocked while queued.
    let b = outbound(t0, 1);
    twice(
        &store,
        SmsOp::Insert {
            message: b.clone(),
            parts: 1,
            media: Vec::new(),
        },
    )
    .await;
    twice(
        &store,
        SmsOp::Blocked {
            message_id: b.id,
            at: t0,
        },
    )
    .await;
    assert_eq!(status(&store, b.id).await, "blocked");

    // Inbound parts, then the joined message; a repeated inbound carrier id is stored once.
    let part = |seq| InboundPartRow {
        from_number: "+14155550111".into(),
        to_number: "+14155550100".into(),
        reference: 42,
        total: 2,
        seq,
        data_coding: 8,
        payload: vec![0, 0x68],
        received_at: t0,
    };
    twice(&store, SmsOp::InboundPart(part(2))).await;
    twice(&store, SmsOp::InboundPart(part(1))).await;
    assert_eq!(store.sms_inbound_parts().await.unwrap().len(), 2);
    let mut inbound = outbound(t0, 2);
    inbound.direction = "inbound".into();
    inbound.from_number = "+14155550111".into();
    inbound.to_number = "+14155550100".into();
    inbound.status = "received".into();
    inbound.origin = "carrier".into();
    inbound.carrier_message_id = Some("mo-1".into());
    twice(
        &store,
        SmsOp::InboundJoined {
            message: inbound.clone(),
            reference: 42,
            total: 2,
        },
    )
    .await;
    assert!(store.sms_inbound_parts().await.unwrap().is_empty());
    let mut again = inbound.clone();
    again.id = Uuid::new_v4();
    twice(
        &store,
        SmsOp::Insert {
            message: again.clone(),
            parts: 0,
            media: Vec::new(),
        },
    )
    .await;
    assert!(
        store.sms_message(&again.id).await.unwrap().is_none(),
        "the same carrier id is one inbound message"
    );

    // Opt-out and back.
    twice(
        &store,
        SmsOp::OptOut {
            number: "+14155550111".into(),
            keyword: "STOP".into(),
            at: t0,
        },
    )
    .await;
    assert_eq!(store.sms_optouts().await.unwrap(), vec!["+14155550111"]);
    let (convs, total) = store.list_sms_conversations(None, 10, 0).await.unwrap();
    assert_eq!(total, 1, "one conversation for the two numbers");
    assert!(convs[0].opted_out);
    assert_eq!(convs[0].message_count, 5);
    twice(
        &store,
        SmsOp::OptIn {
            number: "+14155550111".into(),
        },
    )
    .await;
    assert!(store.sms_optouts().await.unwrap().is_empty());

    // Listing filters.
    let all = |f: SmsFilter| {
        let store = store.clone();
        async move { store.list_sms(&f).await.unwrap() }
    };
    let (_, n) = all(SmsFilter {
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(n, 5);
    let (l, n) = all(SmsFilter {
        status: Some("failed".into()),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(n, 2);
    assert!(l.iter().all(|m| m.status == "failed"));
    let (_, n) = all(SmsFilter {
        direction: Some("inbound".into()),
        number: Some("+14155550111".into()),
        since: Some(t0 - chrono::Duration::seconds(1)),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(n, 1);
    // The queue a restart reloads: none of these is queued any more.
    let q = outbound(t0, 3);
    twice(
        &store,
        SmsOp::Insert {
            message: q.clone(),
            parts: 3,
            media: Vec::new(),
        },
    )
    .await;
    twice(
        &store,
        SmsOp::PartAccepted {
            message_id: q.id,
            part: 2,
            carrier: "smpp".into(),
            carrier_message_id: "id-q2".into(),
            at: t0,
        },
    )
    .await;
    let queued = store.sms_queued().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.id, q.id);
    assert_eq!(queued[0].1, vec![1, 3], "only the parts not accepted");
    // Pending receipts expire.
    twice(
        &store,
        SmsOp::Receipt {
            carrier: "smpp".into(),
            carrier_message_id: "never".into(),
            status: "delivered".into(),
            error_code: None,
            at: t0,
        },
    )
    .await;
    twice(
        &store,
        SmsOp::ExpireReceipts {
            before: t0 + chrono::Duration::seconds(1),
        },
    )
    .await;
    let pending = store
        .counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == "sms_receipts_pending")
        .unwrap()
        .1;
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn sms_writes_replay_and_move_forward_only_on_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn sms_writes_replay_and_move_forward_only_on_postgres() {
    suite(Backend::Postgres).await;
}
