//! Rules that select tags by asset, asset class and labels, against the real database: the
//! classes and labels stored on assets and tags reach the engine. Needs `scripts/test.sh`.

use std::time::Duration;

use maintainpro_tests::{Plant, demo_batch, publish_all, series};
use model::{GatewayId, TenantId, Timestamp};
use server::demo::DEMO_GATEWAY;
use sqlx::Row;

/// Three rules on the press bearing: two select it (by class and asset label, and by asset
/// name and the tag's own label), one by a label value the press does not have.
const RULES: &str = r#"
version = 1

[[rule]]
id = "press-class-hot"
asset_classes = ["hydraulic-*"]
labels = { line = "1" }
severity = "high"
failure_mode = "class-overheat"
[rule.threshold]
above = 85.0
[rule.work_order]
title = "Hot {tag} on {asset}"

[[rule]]
id = "tag-label-hot"
assets = ["Press *"]
labels = { sensor = "pt100" }
severity = "medium"
failure_mode = "label-overheat"
[rule.threshold]
above = 85.0
[rule.work_order]
title = "Hot {tag} on {asset}"

[[rule]]
id = "other-line-hot"
tags = ["*.bearing_temp"]
labels = { line = "2" }
severity = "high"
failure_mode = "other-line"
[rule.threshold]
above = 85.0
[rule.work_order]
title = "Hot {tag} on {asset}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_select_tags_by_asset_class_and_labels_stored_in_the_database() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plant.toml");
    std::fs::write(&file, RULES)?;
    let plant = Plant::start_with_rule_files(vec![file]).await?;
    let tenant = plant.tenant_a.tenant;
    let pool = plant.db.app_pool().await;
    // The tag's own label; its asset (seeded as the demo's) is a hydraulic press on line 1.
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    sqlx::query(
        "UPDATE tags SET labels = '{\"sensor\": \"pt100\", \"line\": \"1\"}' WHERE name = 'press-1.bearing_temp'",
    )
    .execute(&mut *tx)
    .await?;
    // Labels that are not text, and keys that are not plain, are refused by the database.
    let refused = sqlx::query("UPDATE assets SET labels = '{\"line\": 2}'")
        .execute(&mut *tx)
        .await;
    assert!(refused.is_err(), "a numeric label value was stored");
    tx.rollback().await?;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    sqlx::query(
        "UPDATE tags SET labels = '{\"sensor\": \"pt100\"}' WHERE name = 'press-1.bearing_temp'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let topic = model::topic::readings(
        TenantId::from_uuid(tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    let t0 = Timestamp::now().as_micros() - 5_000_000;
    let batch = demo_batch(
        1,
        &series("press-1.bearing_temp", t0, 1_000_000, 3, |_| 90.0)?,
    )?;
    publish_all(&plant.broker, &topic, vec![batch]).await?;
    Plant::eventually(Duration::from_secs(30), "two work orders", || async {
        Ok((plant.services.summary().work_orders_opened >= 2).then_some(()))
    })
    .await?;
    // Give a wrongly selected third rule the time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let modes: Vec<String> =
        sqlx::query("SELECT failure_mode FROM work_orders ORDER BY failure_mode")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get("failure_mode"))
            .collect();
    tx.commit().await?;
    assert_eq!(modes, ["class-overheat", "label-overheat"]);
    plant.services.stop().await;
    Ok(())
}
