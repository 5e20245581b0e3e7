//! JSON batches of publishers that are not edge agents, through Mosquitto and ingest: stored
//! like the edge agents' batches, each message once even when it is delivered again, and
//! poison kept as dead letters with its reason. Needs `scripts/test.sh`.

use std::time::Duration;

use maintainpro_tests::{Plant, publish_all};
use model::{GatewayId, TenantId, Timestamp};
use server::demo::DEMO_GATEWAY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_batches_are_stored_once_and_poison_is_kept() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let topic = model::topic::json_readings(tenant, &GatewayId::parse(DEMO_GATEWAY)?);
    let ms = Timestamp::now().as_micros() / 1000 - 60_000;
    let numbered = format!(
        r#"{{"seq": 7, "readings": [
            {{"tag": "press-1.bearing_temp", "value": 61.5, "ts": {ms}}},
            {{"tag": "press-1.vibration", "value": 2.25, "ts": {}, "quality": "uncertain"}}
        ]}}"#,
        ms + 1
    );
    // Without a number: the same bytes twice are one batch.
    let unnumbered = format!(
        r#"{{"readings": [{{"tag": "press-1.bearing_temp", "value": 62.0, "ts": {}}}]}}"#,
        ms + 2
    );
    // The same readings as the numbered batch, formatted otherwise but with its number.
    let renumbered = numbered.replace('\n', " ");
    publish_all(
        &plant.broker,
        &topic,
        vec![
            numbered.into_bytes(),
            unnumbered.clone().into_bytes(),
            unnumbered.into_bytes(),
            renumbered.into_bytes(),
            br#"{"readings": [{"tag": "press-1.bearing_temp", "value": "hot", "ts": 0}]}"#.to_vec(),
            br#"{"readings": [{"tag": "press-1.bearing_temp", "value": 1, "ts": "noon"}]}"#
                .to_vec(),
        ],
    )
    .await?;
    Plant::eventually(Duration::from_secs(20), "six messages handled", || async {
        let s = plant.services.summary();
        Ok((s.readings_stored + s.batches_duplicate + s.dead_letters >= 3 + 2 + 2).then_some(()))
    })
    .await?;
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    let readings: Vec<(String, f64, i16)> = sqlx::query_as(
        "SELECT t.name, r.value, r.quality FROM tenant_readings r JOIN tags t ON t.id = r.tag_id
         ORDER BY r.ts",
    )
    .fetch_all(&mut *tx)
    .await?;
    // Sorted: messages written by different writers at once may be numbered in either order.
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY reason")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(
        readings,
        [
            ("press-1.bearing_temp".to_owned(), 61.5, 0),
            ("press-1.vibration".to_owned(), 2.25, 1),
            ("press-1.bearing_temp".to_owned(), 62.0, 0),
        ]
    );
    assert_eq!(reasons, ["bad_timestamp", "malformed_json"]);
    assert_eq!(plant.services.summary().batches_duplicate, 2);
    Ok(())
}
