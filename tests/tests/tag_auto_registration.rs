//! Unknown tags from a known gateway through the broker and ingest: dead letters while the
//! organisation's ingest policy is off, registered (up to the policy's limit per gateway,
//! audited, marked for review in the registry) once it is on. Needs `scripts/test.sh`.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_are_registered_only_when_the_policy_allows_and_up_to_its_limit()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let topic = model::topic::readings(tenant, &gateway);

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
    let (_, tags) = plant.get("/api/v1/tags?limit=1000", Some(&admin)).await?;
    let count = tags["items"].as_array().context("items")?.len() as i64;
    let (status, set) = plant
        .send(
            Method::PUT,
            POLICY,
            Some(&admin),
            Some(json!({ "auto_register_tags": true, "max_tags_per_gateway": count + 1 })),
        )
        .await?;
    assert_eq!(status, 200, "{set}");
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
