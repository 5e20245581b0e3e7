//! Email to assignees and requesters, delivered to a local SMTP sink. Needs `scripts/test.sh`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use maintainpro_tests::Plant;
use maintainpro_tests::smtp::smtp_sink;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignees_and_requesters_get_email() -> anyhow::Result<()> {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let port = smtp_sink(Arc::clone(&mails)).await?;
    let plant = Plant::start_with_api(|api| {
        api.smtp = Some(maintainpro_tests::smtp::settings(port));
    })
    .await?;
    let admin = plant.login("plant-a").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    plant.add_user("req@plant-a.example", "requester").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let requester = plant.login_as("plant-a", "req@plant-a.example").await?;
    let (_, assets) = plant.get("/api/v1/assets", Some(&admin)).await?;
    let asset = assets["items"][0]["id"]
        .as_str()
        .context("asset")?
        .to_owned();
    let (status, wo) = plant
        .send(
            Method::POST,
            "/api/v1/work-orders",
            Some(&requester),
            Some(json!({ "asset_id": asset, "title": "Door sensor broken" })),
        )
        .await?;
    assert_eq!(status, 201, "{wo}");
    let id = wo["id"].as_str().context("id")?.to_owned();
    plant
        .send(
            Method::POST,
            &format!("/api/v1/work-orders/{id}/assign"),
            Some(&admin),
            Some(json!({ "user_id": tech_id })),
        )
        .await?;
    plant
        .send(
            Method::POST,
            &format!("/api/v1/work-orders/{id}/status"),
            Some(&tech),
            Some(json!({ "to": "in_progress" })),
        )
        .await?;

    let got = Plant::eventually(Duration::from_secs(15), "two mails", || {
        let mails = Arc::clone(&mails);
        async move {
            let m = mails.lock().expect("lock").clone();
            Ok((m.len() >= 2).then_some(m))
        }
    })
    .await?;
    let assigned = got
        .iter()
        .find(|m| m.to == ["tech@plant-a.example"])
        .context("the technician's mail")?;
    assert!(
        assigned
            .data
            .contains("Subject: Assigned to you: Door sensor broken"),
        "{}",
        assigned.data
    );
    let started = got
        .iter()
        .find(|m| m.to == ["req@plant-a.example"])
        .context("the requester's mail")?;
    assert!(started.data.contains("in_progress"), "{}", started.data);
    // The requester's own create, and the assignment the admin made, mail nobody else.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails.lock().expect("lock").len(), 2);

    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let logged: Vec<(String, String)> =
        sqlx::query_as("SELECT email, outcome FROM notifications ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(
        logged,
        [
            ("tech@plant-a.example".to_owned(), "sent".to_owned()),
            ("req@plant-a.example".to_owned(), "sent".to_owned()),
        ]
    );
    Ok(())
}
