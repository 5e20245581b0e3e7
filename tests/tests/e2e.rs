//! End to end: simulated PLC (Modbus) and oven (OPC-UA) -> edge agent -> Mosquitto -> ingest
//! -> PostgreSQL -> rules -> work order -> HTTP API. Needs `scripts/test.sh` (PostgreSQL
//! cluster and Mosquitto).

use std::time::Duration;

use anyhow::Context;
use edge_agent::{Agent, AgentConfig};
use maintainpro_tests::{Plant, demo_batch, publish_all, series};
use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, TenantId, Timestamp};
use server::demo::{
    DEMO_GATEWAY, agent_config, demo_scenario, oven_scenario, oven_source, seed_oven,
};
use simulators::spawn_modbus_plc;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_breach_opens_one_work_order_that_only_its_tenant_sees() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let plc = spawn_modbus_plc(
        "127.0.0.1:0".parse()?,
        demo_scenario(Duration::from_secs(1))?,
    )
    .await?;
    let outbox = tempfile::tempdir()?;
    seed_oven(&plant.db.urls.app_url, plant.tenant_a.tenant).await?;
    let oven = simulators::opcua::spawn_opcua_server(
        simulators::opcua::OpcUaServerSpec::new("127.0.0.1:0".parse()?, outbox.path().join("oven")),
        oven_scenario()?,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut text = agent_config(
        plant.tenant_a.tenant,
        &plant.broker,
        plc.local_addr(),
        &outbox.path().join("outbox"),
    );
    text.push_str(&oven_source(
        &oven.endpoint(),
        oven.namespace(),
        &outbox.path().join("pki"),
    ));
    let config = AgentConfig::from_toml_with_env("test agent", &text, Vec::new())?;
    let stop_agent = CancellationToken::new();
    let agent = {
        let stop = stop_agent.clone();
        tokio::spawn(Agent::build(config).run_until(async move { stop.cancelled().await }))
    };

    let token_a = plant.login("plant-a").await?;
    let orders = Plant::eventually(Duration::from_secs(60), "a work order", || async {
        let (status, body) = plant.get("/api/v1/work-orders", Some(&token_a)).await?;
        anyhow::ensure!(status == 200, "list answered {status}: {body}");
        let items = body["items"].as_array().cloned().unwrap_or_default();
        Ok((!items.is_empty()).then_some(items))
    })
    .await?;
    assert_eq!(orders.len(), 1, "{orders:#?}");
    let wo = &orders[0];
    assert_eq!(wo["title"], "Bearing overheating on Press 1");
    // Severity high on an asset of criticality 4: critical by the documented matrix.
    assert_eq!(wo["priority"], "critical");
    assert_eq!(wo["source"], "rule");
    assert_eq!(wo["failure_mode"], "bearing-overheat");

    // The breach continues: readings keep arriving, and still one work order.
    let stored_before = plant.services.summary().readings_stored;
    Plant::eventually(Duration::from_secs(20), "more readings", || async {
        Ok((plant.services.summary().readings_stored >= stored_before + 16).then_some(()))
    })
    .await?;
    let (_, body) = plant.get("/api/v1/work-orders", Some(&token_a)).await?;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
    let id = wo["id"].as_str().context("id")?;
    let (status, detail) = plant
        .get(&format!("/api/v1/work-orders/{id}"), Some(&token_a))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(detail["events"][0]["kind"], "opened_by_alarm", "{detail}");
    // The rule's checklist became the work order's items, in order, none done.
    let items: Vec<(&str, bool)> = detail["checklist"]
        .as_array()
        .context("checklist")?
        .iter()
        .map(|i| {
            (
                i["text"].as_str().unwrap_or_default(),
                i["done_at"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("Check lubrication level and grease lines", true),
            (
                "Measure bearing temperature with a handheld thermometer",
                true
            ),
            ("Listen for abnormal noise; record vibration", true),
        ],
        "{detail}"
    );

    // No token: 401. Another tenant: sees nothing, and the id answers 404.
    let (status, body) = plant.get("/api/v1/work-orders", None).await?;
    assert_eq!(status, 401, "{body}");
    let (status, _) = plant
        .get("/api/v1/work-orders", Some("not-a-token"))
        .await?;
    assert_eq!(status, 401);
    let token_b = plant.login("plant-b").await?;
    let (status, body) = plant.get("/api/v1/work-orders", Some(&token_b)).await?;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "{body}");
    let (status, body) = plant
        .get(&format!("/api/v1/work-orders/{id}"), Some(&token_b))
        .await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.get("title").is_none());

    // The oven's readings came over OPC-UA through the same agent, and the API shows them.
    let zone = plant
        .tag_id(plant.tenant_a.tenant, "oven-1.zone_temp")
        .await?;
    let window = || {
        let now = chrono::Utc::now();
        format!(
            "/api/v1/tags/{zone}/readings?from={}&to={}&bucket=raw",
            (now - chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (now + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    let body = Plant::eventually(Duration::from_secs(30), "oven readings", || async {
        let (status, body) = plant.get(&window(), Some(&token_a)).await?;
        anyhow::ensure!(status == 200, "readings answered {status}: {body}");
        let n = body["points"].as_array().map_or(0, Vec::len);
        Ok((n >= 3).then_some(body))
    })
    .await?;
    assert_eq!(body["tag"]["unit"], "degC", "{body}");
    for p in body["points"].as_array().context("points")? {
        assert_eq!(p["quality"], "good", "{p}");
        let v = p["value"].as_f64().context("value")?;
        assert!(
            (177.0..183.0).contains(&v),
            "the oven holds about 180 degC: {p}"
        );
    }

    stop_agent.cancel();
    agent.await??;
    plc.shutdown().await?;
    oven.shutdown().await.map_err(anyhow::Error::msg)?;
    let summary = plant.services.stop().await;
    assert_eq!(summary.work_orders_opened, 1);
    assert_eq!(summary.dead_letters, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_poison_becomes_a_dead_letter_with_its_reason() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let now = Timestamp::now().as_micros();
    let batch = |seq: u64, ts: i64, value: f64| -> anyhow::Result<Vec<u8>> {
        let reading = Reading {
            tag: TagName::parse("press-1.bearing_temp")?,
            ts: Timestamp::from_micros(ts),
            value,
            quality: Quality::Good,
        };
        Ok(Batch::from_readings(gateway.clone(), seq, &[reading]).encode())
    };
    let good = batch(1, now - 1_000_000, 50.0)?;
    let mut wrong_version = good.clone();
    wrong_version[4] = 9;
    let mut oversized = good.clone();
    oversized.resize(model::wire::MAX_MESSAGE_BYTES + 1, 0);
    const DAY: i64 = 86_400_000_000;
    // Each with its reason, in the order published.
    let wire = [
        (good[..good.len() / 2].to_vec(), "truncated"),
        (good[..3].to_vec(), "truncated"),
        (oversized, "oversized"),
        (wrong_version, "unsupported_version"),
        (batch(2, now, f64::NAN)?, "non_finite_value"),
        (batch(3, now, f64::INFINITY)?, "non_finite_value"),
        (batch(4, now, f64::NEG_INFINITY)?, "non_finite_value"),
        (batch(5, now + 365 * DAY, 50.0)?, "future_timestamp"),
        (batch(6, 0, 50.0)?, "old_timestamp"),
        // Before 4714 BC: beyond what PostgreSQL stores.
        (batch(7, -211_000_000_000_000_000, 50.0)?, "bad_timestamp"),
        // One reading a year ahead among good ones: it alone is left out.
        (
            Batch::from_readings(
                gateway.clone(),
                8,
                &[
                    Reading {
                        tag: TagName::parse("press-1.bearing_temp")?,
                        ts: Timestamp::from_micros(now - 2_000_000),
                        value: 51.0,
                        quality: Quality::Good,
                    },
                    Reading {
                        tag: TagName::parse("press-1.bearing_temp")?,
                        ts: Timestamp::from_micros(now + 365 * DAY),
                        value: 40.0,
                        quality: Quality::Good,
                    },
                ],
            )
            .encode(),
            "future_timestamp",
        ),
    ];
    let json = [
        (
            br#"{"readings": [{"tag": "press-1.bearing_temp", "value": 1, "ts": "2099-01-01T00:00:00Z"}]}"#.to_vec(),
            "future_timestamp",
        ),
        (
            br#"{"readings": [{"tag": "press-1.bearing_temp", "value": 1, "ts": 0}]}"#.to_vec(),
            "old_timestamp",
        ),
        (
            br#"{"readings": [{"tag": "press-1.bearing_temp", "value": 1e999, "ts": 0}]}"#.to_vec(),
            "malformed_json",
        ),
        (
            br#"{"readings": [{"tag": "press-1.bearing_temp", "value": 1, "ts": "2026-12-02T10:00:00"}]}"#.to_vec(),
            "bad_timestamp",
        ),
    ];
    let wire_count = wire.len();
    let (wire_payloads, mut expected): (Vec<_>, Vec<_>) = wire.into_iter().unzip();
    let (json_payloads, json_reasons): (Vec<_>, Vec<_>) = json.into_iter().unzip();
    expected.extend(json_reasons);
    let topic = model::topic::readings(tenant, &gateway);
    publish_all(&plant.broker, &topic, wire_payloads).await?;
    let json_topic = model::topic::json_readings(tenant, &gateway);
    publish_all(&plant.broker, &json_topic, json_payloads).await?;
    // Last, a good batch: once it is stored, everything before it has been handled.
    publish_all(&plant.broker, &topic, vec![good]).await?;

    Plant::eventually(Duration::from_secs(20), "the good batch stored", || async {
        Ok((plant.services.summary().readings_stored >= 2).then_some(()))
    })
    .await?;
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    let letters = sqlx::query("SELECT topic, reason, detail, payload FROM dead_letters")
        .fetch_all(&mut *tx)
        .await?;
    let readings: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_readings")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    // Writers store groups at once, so letters are numbered in no set order: compared sorted.
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|r| (r.get("topic"), r.get("reason")))
        .collect();
    reasons.sort();
    let mut expected: Vec<(String, String)> = expected
        .iter()
        .enumerate()
        .map(|(i, reason)| {
            let topic = if i < wire_count { &topic } else { &json_topic };
            (topic.clone(), (*reason).to_owned())
        })
        .collect();
    expected.sort();
    assert_eq!(reasons, expected);
    assert_eq!(
        readings, 2,
        "the good batch, and the good reading of the one with a reading ahead"
    );
    for letter in &letters {
        let detail: String = letter.get("detail");
        assert!(!detail.is_empty(), "{letter:?}");
        assert!(
            !letter.get::<Vec<u8>, _>("payload").is_empty(),
            "raw bytes kept"
        );
    }
    let detail = |topic: &str, reason: &str| -> anyhow::Result<String> {
        letters
            .iter()
            .find(|r| {
                r.get::<String, _>("topic") == topic && r.get::<String, _>("reason") == reason
            })
            .map(|r| r.get("detail"))
            .context(format!("no {reason} letter on {topic}"))
    };
    let ahead: Vec<String> = letters
        .iter()
        .filter(|r| r.get::<String, _>("topic") == topic)
        .map(|r| r.get::<String, _>("detail"))
        .filter(|d| d.contains("ahead of this server's clock"))
        .collect();
    assert_eq!(ahead.len(), 2, "{ahead:?}");
    assert!(
        ahead.iter().all(|d| d.contains("ingest.max_clock_ahead")),
        "{ahead:?}"
    );
    assert!(
        ahead
            .iter()
            .any(|d| d.starts_with("1 of 2 readings are not stored")),
        "{ahead:?}"
    );
    let old = detail(&json_topic, "old_timestamp")?;
    assert!(
        old.contains("1970-01-01") && old.contains("ingest.max_reading_age"),
        "{old}"
    );
    // The same, counted by reason.
    let summary = plant.services.stop().await;
    assert_eq!(summary.dead_letters, expected.len() as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_batches_are_stored_once_and_poison_becomes_dead_letters() -> anyhow::Result<()>
{
    let plant = Plant::start().await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let topic = model::topic::readings(tenant, &gateway);
    let reading = |tag: &str, s: i64| -> anyhow::Result<Reading> {
        Ok(Reading {
            tag: TagName::parse(tag)?,
            ts: Timestamp::from_micros(Timestamp::now().as_micros() - 60_000_000 + s * 1_000_000),
            value: 50.0 + s as f64,
            quality: Quality::Good,
        })
    };
    let good: Vec<Reading> = (0..10)
        .map(|s| reading("press-1.bearing_temp", s))
        .collect::<Result<_, _>>()?;
    let batch = Batch::from_readings(gateway.clone(), 42, &good).encode();
    let mut mixed = good[..2].to_vec();
    mixed.push(reading("press-1.not_registered", 3)?);
    let mixed = Batch::from_readings(gateway.clone(), 43, &mixed).encode();
    let mut truncated = batch.clone();
    truncated.truncate(batch.len() / 2);
    publish_all(
        &plant.broker,
        &topic,
        vec![
            batch.clone(),
            batch,
            b"{\"not\":\"ours\"}".to_vec(),
            truncated,
            mixed,
        ],
    )
    .await?;

    let pool = plant.db.app_pool().await;
    Plant::eventually(
        Duration::from_secs(20),
        "all five messages handled",
        || async {
            let s = plant.services.summary();
            Ok(
                (s.readings_stored + s.batches_duplicate + s.dead_letters >= 12 + 1 + 3)
                    .then_some(()),
            )
        },
    )
    .await?;
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    let readings: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_readings")
        .fetch_one(&mut *tx)
        .await?;
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_batches")
        .fetch_one(&mut *tx)
        .await?;
    let letters =
        sqlx::query("SELECT reason, length(payload) AS bytes FROM dead_letters ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(readings, 12, "10 from batch 42 once, 2 known from batch 43");
    assert_eq!(batches, 2);
    let mut reasons: Vec<String> = letters.iter().map(|r| r.get("reason")).collect();
    reasons.sort();
    assert_eq!(reasons, ["bad_magic", "truncated", "unknown_tag"]);
    assert!(
        letters.iter().all(|r| r.get::<i32, _>("bytes") > 0),
        "raw bytes are kept"
    );

    // The dead letters through the API: newest first, a page at a time, with their bytes.
    let admin = plant.login("plant-a").await?;
    let (status, all) = plant.get("/api/v1/dead-letters", Some(&admin)).await?;
    assert_eq!(status, 200, "{all}");
    let items = all["items"].as_array().context("items")?;
    let ids: Vec<i64> = items.iter().filter_map(|i| i["id"].as_i64()).collect();
    assert_eq!(ids.len(), 3, "{all}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let (_, page) = plant
        .get("/api/v1/dead-letters?limit=2", Some(&admin))
        .await?;
    let cursor = page["next_cursor"].as_str().context("a second page")?;
    let (_, rest) = plant
        .get(
            &format!("/api/v1/dead-letters?limit=2&before={cursor}"),
            Some(&admin),
        )
        .await?;
    assert_eq!(rest["items"][0]["id"].as_i64(), Some(ids[2]));
    assert!(rest["next_cursor"].is_null());
    let (_, magic) = plant
        .get("/api/v1/dead-letters?reason=bad_magic", Some(&admin))
        .await?;
    let magic = &magic["items"];
    assert_eq!(magic.as_array().map(Vec::len), Some(1), "{magic}");
    assert_eq!(magic[0]["topic"], topic.as_str());
    assert_eq!(magic[0]["payload_bytes"], 14);
    let res = plant
        .http
        .get(format!(
            "{}/api/v1/dead-letters/{}/payload",
            plant.api, magic[0]["id"]
        ))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    assert_eq!(res.bytes().await?.as_ref(), b"{\"not\":\"ours\"}");

    // Every bad parameter at once; other roles and other organisations see none of it.
    let (status, bad) = plant
        .get("/api/v1/dead-letters?limit=0&reason=Bad", Some(&admin))
        .await?;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["details"].as_array().map(Vec::len), Some(2));
    plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let (status, _) = plant.get("/api/v1/dead-letters", Some(&tech)).await?;
    assert_eq!(status, 403);
    let other = plant.login("plant-b").await?;
    let (status, none) = plant.get("/api/v1/dead-letters", Some(&other)).await?;
    assert_eq!(
        (status, none["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _) = plant
        .get(
            &format!("/api/v1/dead-letters/{}/payload", magic[0]["id"]),
            Some(&other),
        )
        .await?;
    assert_eq!(status, 404);

    let summary = plant.services.stop().await;
    assert_eq!(summary.batches_duplicate, 1);
    assert_eq!(summary.dead_letters, 3);
    Ok(())
}

/// A burst far larger than ingest's queue: the broker keeps sending while ingest stores and
/// acks, and nothing stalls (acks must never wait behind incoming messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_queue_is_stored_without_stalling() -> anyhow::Result<()> {
    let plant = Plant::start_with_queue(4).await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let topic = model::topic::readings(tenant, &gateway);
    let t0 = Timestamp::now().as_micros() - 3_600_000_000;
    let payloads = (0..1500u64)
        .map(|seq| -> anyhow::Result<Vec<u8>> {
            let r = Reading {
                tag: TagName::parse("press-1.vibration")?,
                ts: Timestamp::from_micros(t0 + seq as i64 * 1000),
                value: 1.0,
                quality: Quality::Good,
            };
            Ok(Batch::from_readings(gateway.clone(), seq + 1, &[r]).encode())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    publish_all(&plant.broker, &topic, payloads).await?;
    Plant::eventually(
        Duration::from_secs(60),
        "the whole burst stored",
        || async { Ok((plant.services.summary().readings_stored >= 1500).then_some(())) },
    )
    .await?;
    let summary = plant.services.stop().await;
    assert_eq!(summary.readings_stored, 1500);
    Ok(())
}

/// What ingest did shows in the server's Prometheus metrics: messages and readings in, rows
/// committed, duplicates, group sizes, flush and receipt-to-commit times, queue depths, and
/// the lag from a reading's event time to its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_what_ingest_did() -> anyhow::Result<()> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let plant = Plant::start_configured(|_, config| config.metrics.listen = Some(addr)).await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let topic = model::topic::readings(tenant, &gateway);
    // Two readings of a minute ago, and the same batch again as a redelivery would bring it.
    let minute_ago = Timestamp::now().as_micros() - 60_000_000;
    let batch = demo_batch(
        1,
        &series("press-1.vibration", minute_ago, 1_000_000, 2, |_| 1.5)?,
    )?;
    publish_all(&plant.broker, &topic, vec![batch.clone(), batch]).await?;
    // Some metrics are recorded just after the counters the summary reads: wait on the
    // endpoint itself. (The recorder is the process's; the test runner gives each test one.)
    let url = format!("http://{addr}/metrics");
    let text = Plant::eventually(
        Duration::from_secs(30),
        "the batch and its copy in the metrics",
        || async {
            let text = plant
                .http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            let done = sample(&text, "maintainpro_ingest_readings_stored_total") == Some(2.0)
                && sample(&text, "maintainpro_ingest_duplicate_batches_total") == Some(1.0)
                && sample(&text, "maintainpro_ingest_receipt_to_commit_seconds_count") == Some(2.0);
            Ok(done.then_some(text))
        },
    )
    .await?;
    let value = |name: &str| sample(&text, name);
    assert_eq!(
        value("maintainpro_ingest_messages_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_readings_total"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_readings_stored_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_duplicate_batches_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_receipt_to_commit_seconds_count"),
        Some(2.0),
        "{text}"
    );
    let groups = value("maintainpro_ingest_group_readings_count").unwrap_or(0.0);
    assert!((1.0..=2.0).contains(&groups), "{text}");
    assert_eq!(
        value("maintainpro_ingest_flush_seconds_count"),
        Some(groups),
        "{text}"
    );
    // One batch stored, its newest reading 59 s old when it was committed.
    assert_eq!(
        value("maintainpro_ingest_lag_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let lag = value("maintainpro_ingest_lag_seconds_sum").unwrap_or(0.0);
    assert!((59.0..90.0).contains(&lag), "lag {lag}: {text}");
    // Histograms, with buckets that add up across processes, not per-process quantiles.
    assert_eq!(
        value("maintainpro_ingest_lag_seconds_bucket{le=\"30\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_lag_seconds_bucket{le=\"300\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_receipt_to_commit_seconds_bucket{le=\"+Inf\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value("maintainpro_ingest_group_readings_bucket{le=\"+Inf\"}"),
        Some(groups),
        "{text}"
    );
    assert!(!text.contains("quantile="), "{text}");
    assert!(
        value("maintainpro_ingest_queue_depth{stage=\"store\"}").is_some(),
        "{text}"
    );
    plant.services.stop().await;
    Ok(())
}

/// The value of the sample `name` (with its labels, if it has any) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A role that ends before it is told to (here ingest, handed a broker address it cannot
/// use, which the configuration file would have refused) is reported, so that the process
/// stops rather than run on without it; the other roles still stop in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_stops_by_itself_is_reported() -> anyhow::Result<()> {
    let db = migrations::testing::TestDatabase::create().await?;
    let files = tempfile::tempdir()?;
    let rules = files.path().join("rules.toml");
    std::fs::write(&rules, server::demo::DEMO_RULES)?;
    let text = format!(
        "roles = ['ingest', 'rules']\n[database]\nurl = '{}'\n\
         [ingest]\nbroker = 'mqtt://127.0.0.1'\n[rules]\nfiles = ['{}']\n",
        db.urls.app_url,
        rules.display()
    );
    let mut config = server::ServerConfig::from_toml("server.toml", &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.ingest.as_mut().context("ingest section")?.broker = "not a broker".to_owned();
    let rule_set = server::services::load_rule_files(&config.rules.files)?;
    let services = server::Services::start(&config, Some(rule_set)).await?;
    tokio::time::timeout(Duration::from_secs(20), services.ended())
        .await
        .context("the role's end was not reported")?;
    services.stop().await;
    Ok(())
}
