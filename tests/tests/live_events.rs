//! An automatic work order worked through the API from assignment to verification, with
//! parts, while the live event stream and a webhook receiver watch every step; a stream
//! resumes after its last event; webhooks retry, refuse private targets unless allowed, and
//! are disabled after repeated failure. Needs `scripts/test.sh`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use api::routes::webhooks::secret_bytes;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use maintainpro_tests::Plant;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// What a receiver got: the event kind header, the sequence header, the signature check.
#[derive(Debug, Clone)]
struct Received {
    kind: String,
    seq: i64,
    signed: bool,
}

#[derive(Default)]
struct Receiver {
    secret: Mutex<Vec<u8>>,
    got: Mutex<Vec<Received>>,
    /// Answer 503 to this many requests first.
    fail_first: Mutex<u32>,
}

/// A webhook receiver on 127.0.0.1 that checks signatures; returns its URL.
async fn receiver(state: Arc<Receiver>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&state);
            async move {
                {
                    let mut fail = state.fail_first.lock().expect("lock");
                    if *fail > 0 {
                        *fail -= 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let signature = header("x-maintainpro-signature");
                let t: i64 = signature
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default();
                let secret = state.secret.lock().expect("lock").clone();
                let signed = api::webhooks::signature(&secret, t, &body) == signature;
                state.got.lock().expect("lock").push(Received {
                    kind: header("x-maintainpro-event"),
                    seq: header("x-maintainpro-event-seq").parse().unwrap_or(-1),
                    signed,
                });
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sent {
    id: i64,
    event: String,
}

/// Reads an event stream in the background into `into`.
async fn listen(
    plant: &Plant,
    token: &str,
    last_event_id: Option<i64>,
    into: Arc<Mutex<Vec<Sent>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut req = plant
        .http
        .get(format!(
            "{}/api/v1/events/stream?kinds=work_order.,part.",
            plant.api
        ))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let mut res = req.send().await?;
    anyhow::ensure!(res.status() == 200, "stream: {}", res.status());
    anyhow::ensure!(
        res.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    Ok(tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(chunk)) = res.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut id, mut event) = (None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    }
                }
                if let (Some(id), Some(event)) = (id, event) {
                    into.lock().expect("lock").push(Sent { id, event });
                }
            }
        }
    }))
}

fn id_of(v: &Value) -> anyhow::Result<Uuid> {
    Ok(v["id"].as_str().context("id")?.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_and_a_webhook_see_every_step_of_an_automatic_work_order() -> anyhow::Result<()>
{
    let plant = Plant::start_with_api(|api| {
        api.webhooks.retry_base = Duration::from_millis(50);
        api.webhooks.poll = Duration::from_millis(50);
        api.webhooks.max_attempts = 3;
        api.webhooks.disable_after = 2;
    })
    .await?;
    let admin = plant.login("plant-a").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let manager_id = plant.add_user("manager@plant-a.example", "manager").await?;
    let manager = plant.login_as("plant-a", "manager@plant-a.example").await?;
    let _ = manager_id;

    // A receiver on loopback: refused unless the admin allows private targets.
    let state = Arc::new(Receiver::default());
    *state.fail_first.lock().expect("lock") = 1;
    let url = receiver(Arc::clone(&state)).await?;
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/webhooks",
            Some(&admin),
            Some(json!({ "url": url })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "url");
    // Each kind is a prefix; every bad one is named, and good ones are stored trimmed.
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/webhooks",
            Some(&admin),
            Some(json!({ "url": url, "event_kinds": ["work_order.", "Alarm", " "], "allow_private": true })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        maintainpro_tests::error_fields(&body),
        ["event_kinds.1", "event_kinds.2"]
    );
    let created = plant
        .send_ok(
            Method::POST,
            "/api/v1/webhooks",
            &admin,
            json!({ "url": url, "event_kinds": [" work_order. "], "allow_private": true }),
        )
        .await?;
    assert_eq!(created["event_kinds"], json!(["work_order."]), "{created}");
    let webhook = id_of(&created)?;
    let secret = secret_bytes(created["secret"].as_str().context("secret")?).context("secret")?;
    *state.secret.lock().expect("lock") = secret;

    // The stream, from now on.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let stream = listen(&plant, &manager, None, Arc::clone(&sent)).await?;

    // Opened by the rules engine, then worked through the API.
    let wo = plant.rule_work_order().await?;
    let location = plant
        .send_ok(
            Method::POST,
            "/api/v1/stock-locations",
            &admin,
            json!({ "name": "Store" }),
        )
        .await?;
    let location_id = id_of(&location)?;
    let part = plant
        .send_ok(
            Method::POST,
            "/api/v1/parts",
            &admin,
            json!({ "sku": "BRG-1", "name": "Bearing" }),
        )
        .await?;
    let part_id = id_of(&part)?;
    plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/parts/{part_id}/movements"),
            &admin,
            json!({ "location_id": location_id, "kind": "receipt", "quantity": 4 }),
        )
        .await?;
    let base = format!("/api/v1/work-orders/{wo}");
    plant
        .send_ok(
            Method::POST,
            &format!("{base}/assign"),
            &manager,
            json!({ "user_id": tech_id }),
        )
        .await?;
    plant
        .send_ok(
            Method::POST,
            &format!("{base}/status"),
            &tech,
            json!({ "to": "in_progress" }),
        )
        .await?;
    let planned = plant
        .send_ok(
            Method::POST,
            &format!("{base}/parts"),
            &tech,
            json!({ "part_id": part_id, "location_id": location_id, "quantity": 2 }),
        )
        .await?;
    let line = planned["parts"][0]["id"]
        .as_str()
        .context("line")?
        .to_owned();
    plant
        .send_ok(
            Method::POST,
            &format!("{base}/parts/{line}/use"),
            &tech,
            json!({ "quantity": 2 }),
        )
        .await?;
    plant
        .send_ok(
            Method::POST,
            &format!("{base}/status"),
            &tech,
            json!({ "to": "completed", "resolution": "fixed" }),
        )
        .await?;
    plant
        .send_ok(
            Method::POST,
            &format!("{base}/status"),
            &manager,
            json!({ "to": "verified" }),
        )
        .await?;

    let steps = [
        "work_order.opened_by_alarm",
        "work_order.assigned",
        "work_order.status_changed",
        "work_order.part_planned",
        "work_order.part_used",
        "work_order.status_changed",
        "work_order.status_changed",
    ];
    let seen = Plant::eventually(
        Duration::from_secs(20),
        "the stream to see every step",
        || {
            let sent = Arc::clone(&sent);
            async move {
                let sent = sent.lock().expect("lock").clone();
                Ok((sent.len() >= steps.len()).then_some(sent))
            }
        },
    )
    .await?;
    let kinds: Vec<&str> = seen.iter().map(|s| s.event.as_str()).collect();
    assert_eq!(kinds, steps);
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id), "{seen:?}");
    let got = Plant::eventually(
        Duration::from_secs(20),
        "the webhook to get every step",
        || {
            let state = Arc::clone(&state);
            async move {
                let got = state.got.lock().expect("lock").clone();
                Ok((got.len() >= steps.len()).then_some(got))
            }
        },
    )
    .await?;
    let hooked: Vec<&str> = got.iter().map(|g| g.kind.as_str()).collect();
    assert_eq!(hooked, steps);
    assert!(got.iter().all(|g| g.signed), "{got:?}");
    let seqs: Vec<i64> = got.iter().map(|g| g.seq).collect();
    let ids: Vec<i64> = seen.iter().map(|s| s.id).collect();
    assert_eq!(seqs, ids, "the stream and the webhook number events alike");

    // The first attempt got a 503 and was retried: the delivery log says so.
    let (_, log) = plant
        .get(
            &format!("/api/v1/webhooks/{webhook}/deliveries?limit=500"),
            Some(&admin),
        )
        .await?;
    let mut outcomes: Vec<(i64, String)> = log["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|d| {
            (
                d["event_seq"].as_i64().unwrap_or(-1),
                d["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    outcomes.reverse();
    assert_eq!(outcomes[0], (ids[0], "failed".to_owned()));
    assert_eq!(outcomes[1], (ids[0], "delivered".to_owned()));
    assert_eq!(outcomes.len(), steps.len() + 1);

    // A stream that reconnects after the third event gets the rest, in order.
    stream.abort();
    let resumed = Arc::new(Mutex::new(Vec::new()));
    let again = listen(&plant, &manager, Some(ids[2]), Arc::clone(&resumed)).await?;
    let rest = Plant::eventually(Duration::from_secs(10), "the resumed stream", || {
        let resumed = Arc::clone(&resumed);
        async move {
            let r = resumed.lock().expect("lock").clone();
            Ok((r.len() >= 4).then_some(r))
        }
    })
    .await?;
    assert_eq!(rest.iter().map(|s| s.id).collect::<Vec<_>>(), ids[3..]);
    again.abort();

    // Requesters cannot watch the whole tenant; another tenant's stream stays silent.
    plant.add_user("req@plant-a.example", "requester").await?;
    let requester = plant.login_as("plant-a", "req@plant-a.example").await?;
    let (status, _) = plant.get("/api/v1/events/stream", Some(&requester)).await?;
    assert_eq!(status, 403);
    let other = plant.login("plant-b").await?;
    let theirs = Arc::new(Mutex::new(Vec::new()));
    let b_stream = listen(&plant, &other, Some(0), Arc::clone(&theirs)).await?;

    // A webhook whose receiver is gone is disabled after two events given up.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/gone", listener.local_addr()?)
    };
    let created = plant
        .send_ok(
            Method::POST,
            "/api/v1/webhooks",
            &admin,
            json!({ "url": dead, "allow_private": true }),
        )
        .await?;
    let dead_id = id_of(&created)?;
    for text in ["one", "two"] {
        plant
            .send_ok(
                Method::POST,
                &format!("{base}/comments"),
                &manager,
                json!({ "text": text }),
            )
            .await?;
    }
    let disabled = Plant::eventually(
        Duration::from_secs(20),
        "the dead webhook to be disabled",
        || {
            let plant = &plant;
            let admin = admin.clone();
            async move {
                let (_, list) = plant.get("/api/v1/webhooks", Some(&admin)).await?;
                let hook = list["items"].as_array().and_then(|items| {
                    items
                        .iter()
                        .find(|w| w["id"] == dead_id.to_string())
                        .cloned()
                });
                Ok(hook.filter(|h| h["enabled"] == false))
            }
        },
    )
    .await?;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap_or("")
            .contains("2 events in a row"),
        "{disabled}"
    );
    let (_, log) = plant
        .get(
            &format!("/api/v1/webhooks/{dead_id}/deliveries"),
            Some(&admin),
        )
        .await?;
    assert_eq!(
        log["items"].as_array().map(Vec::len),
        Some(6),
        "3 attempts for each of 2 events"
    );
    assert!(
        theirs.lock().expect("lock").is_empty(),
        "tenant B saw tenant A's events"
    );
    b_stream.abort();
    Ok(())
}
