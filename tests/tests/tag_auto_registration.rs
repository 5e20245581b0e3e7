//! Unknown tags from a known gateway through the broker and ingest: dead letters while the
//! organisation's ingest policy is off, registered (up to the policy's limit per gateway,
//! audited, marked for review in the registry) once it is on. Needs `scripts/test.sh`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use maintainpro_tests::{Plant, publish_all};
use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, TenantId, Timestamp};
use reqwest::Method;
use serde_json::{Value, json};
use server::demo::DEMO_GATEWAY;

const POLICY: &str = "/api/v1/organisation/ingest-policy";

fn reading(tag: &str, s: i64) -> anyhow::Result<Reading> {
    Ok(Reading {
        tag: TagName::parse(tag)?,
        ts: Timestamp::from_micros(Timestamp::now().as_micros() - 60_000_000 + s * 1_000_000),
        value: 20.0 + s as f64,
        quality: Quality::Good,
    })
}

/// The dead letters of tenant A, and its readings of `tag`.
async fn stored(plant: &Plant, tag: &str) -> anyhow::Result<(Vec<String>, i64)> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let letters: Vec<String> = sqlx::query_scalar("SELECT detail FROM dead_letters ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let readings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenant_readings r JOIN tags t ON t.id = r.tag_id WHERE t.name = $1",
    )
    .bind(tag)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((letters, readings))
}

/// The announcements of changes ingest has heard so far, once its listener has subscribed
/// (which counts as one: everything cached before is forgotten).
async fn heard(plant: &Plant) -> anyhow::Result<u64> {
    Plant::eventually(Duration::from_secs(20), "the listener", || async {
        let n = changes_heard(plant);
        Ok((n >= 1).then_some(n))
    })
    .await
}

/// Waits until ingest has heard an announcement after `before`: a change committed before
/// that reaches the next message. (One resolved in the moment between a commit and its
/// announcement still gets the old answer.)
async fn heard_after(plant: &Plant, before: u64) -> anyhow::Result<()> {
    Plant::eventually(Duration::from_secs(20), "the announcement", || async {
        Ok((changes_heard(plant) > before).then_some(()))
    })
    .await
}

/// Turns the policy on with room for one more tag on the demo gateway.
async fn room_for_one_more(plant: &Plant, admin: &str) -> anyhow::Result<()> {
    let (_, tags) = plant.get("/api/v1/tags?limit=1000", Some(admin)).await?;
    let count = tags["items"].as_array().context("items")?.len() as i64;
    let (status, set) = plant
        .send(
            Method::PUT,
            POLICY,
            Some(admin),
            Some(json!({ "auto_register_tags": true, "max_tags_per_gateway": count + 1 })),
        )
        .await?;
    anyhow::ensure!(status == 200, "the policy answered {status}: {set}");
    Ok(())
}

fn changes_heard(plant: &Plant) -> u64 {
    let stats = plant.services.ingest_stats();
    stats.directory_changes.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_are_registered_only_when_the_policy_allows_and_up_to_its_limit()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let topic = model::topic::readings(tenant, &gateway);
    heard(&plant).await?;

    let (status, policy) = plant.get(POLICY, Some(&admin)).await?;
    assert_eq!(status, 200);
    assert_eq!(
        policy,
        json!({ "auto_register_tags": false, "max_tags_per_gateway": 10000 })
    );
    plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let (status, _) = plant
        .send(
            Method::PUT,
            POLICY,
            Some(&tech),
            Some(json!({ "auto_register_tags": true })),
        )
        .await?;
    assert_eq!(status, 403);

    // Off: the unknown tag's reading is a dead letter, the known one is stored.
    let batch = Batch::from_readings(
        gateway.clone(),
        1,
        &[
            reading("press-1.bearing_temp", 1)?,
            reading("press-1.oil_temp", 2)?,
        ],
    );
    publish_all(&plant.broker, &topic, vec![batch.encode()]).await?;
    let (letters, _) = Plant::eventually(Duration::from_secs(20), "the dead letter", || async {
        let found = stored(&plant, "press-1.oil_temp").await?;
        Ok((!found.0.is_empty()).then_some(found))
    })
    .await?;
    assert!(letters[0].contains("press-1.oil_temp"), "{letters:?}");

    // On, with room for one more tag on the gateway.
    let before = heard(&plant).await?;
    room_for_one_more(&plant, &admin).await?;
    let (status, bad) = plant
        .send(
            Method::PUT,
            POLICY,
            Some(&admin),
            Some(json!({ "auto_register_tags": true, "max_tags_per_gateway": 0 })),
        )
        .await?;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["details"][0]["field"], "max_tags_per_gateway");
    heard_after(&plant, before).await?;

    let batch = Batch::from_readings(
        gateway.clone(),
        2,
        &[
            reading("press-1.oil_temp", 3)?,
            reading("press-1.oil_temp", 4)?,
            reading("press-1.hydraulic_pressure", 5)?,
        ],
    );
    publish_all(&plant.broker, &topic, vec![batch.encode()]).await?;
    let (letters, oil) = Plant::eventually(Duration::from_secs(20), "the registration", || async {
        let found = stored(&plant, "press-1.oil_temp").await?;
        Ok((found.1 == 2 && found.0.len() == 2).then_some(found))
    })
    .await?;
    assert_eq!(oil, 2, "both readings of the registered tag are stored");
    assert!(
        letters[1].contains("press-1.hydraulic_pressure") && !letters[1].contains("oil_temp"),
        "past the limit, the other stays a dead letter: {letters:?}"
    );

    // The registry shows it for review, and the audit log says who registered it.
    let (_, auto) = plant
        .get("/api/v1/tags?auto_registered=true", Some(&admin))
        .await?;
    let names: Vec<&str> = auto["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["press-1.oil_temp"]);
    assert!(auto["items"][0]["auto_registered_at"].is_string());
    assert_eq!(auto["items"][0]["asset_id"], Value::Null);
    let (_, audit) = plant.get("/api/v1/audit?limit=500", Some(&admin)).await?;
    let entry = audit["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|e| e["action"] == "tag.auto_register")
        .with_context(|| format!("{audit}"))?;
    assert_eq!(entry["detail"]["tags"], json!(["press-1.oil_temp"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_nobody_registered_is_looked_up_once_until_a_tag_is_added() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let lookups = || {
        let stats = plant.services.ingest_stats();
        stats.directory_lookups.load(Ordering::Relaxed)
    };
    // Each batch numbered anew: a number stored once is a duplicate the next time.
    let next_seq = AtomicU64::new(1);
    let publish = |gateway: &str| {
        let gateway = gateway.to_owned();
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let plant = &plant;
        async move {
            let gateway = GatewayId::parse(gateway)?;
            let readings = [
                reading("press-1.bearing_temp", seq as i64)?,
                reading("press-1.spare_probe", seq as i64)?,
            ];
            let batch = Batch::from_readings(gateway.clone(), seq, &readings);
            let topic = model::topic::readings(tenant, &gateway);
            publish_all(&plant.broker, &topic, vec![batch.encode()]).await
        }
    };
    // Tenant A's dead letters once there are `n` naming `what`.
    let letters = |what: &'static str, n: usize| {
        let plant = &plant;
        async move {
            Plant::eventually(Duration::from_secs(20), "the dead letters", || async {
                let (found, _) = stored(plant, "press-1.spare_probe").await?;
                let naming = found.iter().filter(|l| l.contains(what)).count();
                Ok((naming == n).then_some(found))
            })
            .await
        }
    };
    heard(&plant).await?;

    // A tag nobody registered: looked up with the first message only.
    publish(DEMO_GATEWAY).await?;
    letters("press-1.spare_probe", 1).await?;
    let after_first = lookups();
    for _ in 0..3 {
        publish(DEMO_GATEWAY).await?;
    }
    letters("press-1.spare_probe", 4).await?;
    assert_eq!(
        lookups(),
        after_first,
        "an unknown name was looked up again"
    );

    // Registered through the registry: announced, and found by the next message.
    let before = heard(&plant).await?;
    let csv = format!(
        "gateway,name,asset,unit,description,range_min,range_max,labels\n\
         {DEMO_GATEWAY},press-1.spare_probe,,,,,,\n"
    );
    let (status, report) = plant.post_csv(&admin, "/api/v1/tags/import", &csv).await?;
    assert_eq!(status, 200, "{report}");
    heard_after(&plant, before).await?;
    publish(DEMO_GATEWAY).await?;
    Plant::eventually(Duration::from_secs(20), "the reading stored", || async {
        let (_, readings) = stored(&plant, "press-1.spare_probe").await?;
        Ok((readings == 1).then_some(()))
    })
    .await?;
    assert!(lookups() > after_first);

    // The same for a gateway nobody registered, and its registration.
    publish("gw-ghost").await?;
    letters("is not registered for tenant", 1).await?;
    let after_ghost = lookups();
    publish("gw-ghost").await?;
    letters("is not registered for tenant", 2).await?;
    assert_eq!(
        lookups(),
        after_ghost,
        "an unknown gateway was looked up again"
    );
    let before = heard(&plant).await?;
    let (status, gw) = plant
        .send(
            Method::POST,
            "/api/v1/gateways",
            Some(&admin),
            Some(json!({ "code": "gw-ghost", "name": "Found at last" })),
        )
        .await?;
    assert_eq!(status, 201, "{gw}");
    heard_after(&plant, before).await?;
    publish("gw-ghost").await?;
    letters("not registered for gateway \"gw-ghost\"", 1).await?;
    plant.services.stop().await;
    Ok(())
}

/// A tag someone else registers while ingest waits to register it (here: while the gateway's
/// registration lock is held) is found, not kept as unknown, and takes no place of the
/// policy's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_registered_meanwhile_by_someone_else_is_found() -> anyhow::Result<()> {
    use sqlx::Connection;
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    // On, with room for one more tag on the gateway: the one registered meanwhile.
    let before = heard(&plant).await?;
    room_for_one_more(&plant, &admin).await?;
    heard_after(&plant, before).await?;

    // Someone else holds the gateway's registration lock, about to add the tag.
    let mut other = sqlx::PgConnection::connect(&plant.db.urls.owner_url).await?;
    sqlx::query("BEGIN").execute(&mut other).await?;
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(migrations::TENANT_SETTING)
        .bind(tenant.to_string())
        .execute(&mut other)
        .await?;
    let gateway_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM gateways WHERE code = $1 FOR UPDATE")
            .bind(DEMO_GATEWAY)
            .fetch_one(&mut other)
            .await?;
    let batch = Batch::from_readings(gateway.clone(), 1, &[reading("press-1.meanwhile", 1)?]);
    publish_all(
        &plant.broker,
        &model::topic::readings(tenant, &gateway),
        vec![batch.encode()],
    )
    .await?;
    plant.until_one_waits_for_a_lock("ingest waiting").await?;
    sqlx::query("INSERT INTO tags (tenant_id, gateway_id, name) VALUES ($1, $2, $3)")
        .bind(tenant.as_uuid())
        .bind(gateway_id)
        .bind("press-1.meanwhile")
        .execute(&mut other)
        .await?;
    sqlx::query("COMMIT").execute(&mut other).await?;
    other.close().await?;

    let (letters, readings) =
        Plant::eventually(Duration::from_secs(20), "the message stored", || async {
            let found = stored(&plant, "press-1.meanwhile").await?;
            Ok((found.1 == 1 || !found.0.is_empty()).then_some(found))
        })
        .await?;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(readings, 1);
    plant.services.stop().await;
    Ok(())
}
