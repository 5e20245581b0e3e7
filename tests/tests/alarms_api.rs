//! The alarms API: list, acknowledge, shelve (raises while shelved open no work order),
//! unshelve; roles and tenants. Needs `scripts/test.sh`.

use std::time::Duration;

use anyhow::Context;
use api::{AlarmOutcome, WorkOrderService};
use maintainpro_tests::Plant;
use model::alarm::{AlarmEvent, AlarmSubject, WorkOrderDraft, WorkType};
use model::{AssetId, Priority, Severity, TagName, TenantId, Timestamp};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

async fn subject(plant: &Plant) -> anyhow::Result<AlarmSubject> {
    let tenant = plant.tenant_a.tenant;
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let (tag_id, asset): (i64, Uuid) =
        sqlx::query_as("SELECT id, asset_id FROM tags WHERE name = 'press-1.bearing_temp'")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(AlarmSubject {
        tenant: TenantId::from_uuid(tenant),
        asset: AssetId::from_uuid(asset),
        tag_id,
        tag: TagName::parse("press-1.bearing_temp")?,
        rule_id: "press-bearing-overheat".into(),
        failure_mode: "bearing-overheat".into(),
        severity: Severity::High,
    })
}

fn raised(subject: &AlarmSubject, at: Timestamp) -> AlarmEvent {
    AlarmEvent::Raised {
        subject: subject.clone(),
        at,
        value: 91.0,
        work_order: WorkOrderDraft {
            title: "Bearing overheating on Press 1".into(),
            description: String::new(),
            work_type: WorkType::Corrective,
            priority: Priority::Critical,
            checklist: Vec::new(),
            repeat_window: Duration::from_secs(86_400),
        },
    }
}

fn cleared(subject: &AlarmSubject, raised_at: Timestamp, at: Timestamp) -> AlarmEvent {
    AlarmEvent::Cleared {
        subject: subject.clone(),
        raised_at,
        at,
        value: 70.0,
        healthy_period: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_acknowledged_and_shelved_by_operators_of_their_tenant_only()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let service = WorkOrderService::new(plant.db.app_pool().await);
    let s = subject(&plant).await?;
    let t0 = Timestamp::now();
    assert!(matches!(
        service.on_alarm(&raised(&s, t0)).await?,
        AlarmOutcome::Created { .. }
    ));

    let admin = plant.login("plant-a").await?;
    let (status, body) = plant
        .get("/api/v1/alarms?state=active", Some(&admin))
        .await?;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["tag"], "press-1.bearing_temp");
    assert!(items[0]["acknowledged_at"].is_null());
    let id = items[0]["id"].as_str().context("id")?.to_owned();
    let (status, body) = plant
        .get("/api/v1/alarms?state=bogus", Some(&admin))
        .await?;
    assert_eq!(status, 400, "{body}");

    // Acknowledge: strict body, then the acknowledgement is kept.
    let ack = format!("/api/v1/alarms/{id}/acknowledge");
    let (status, body) = plant
        .send(
            Method::POST,
            &ack,
            Some(&admin),
            Some(json!({ "coment": "typo" })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid", "{body}");
    assert_eq!(maintainpro_tests::error_fields(&body), ["coment"], "{body}");
    let (status, body) = plant
        .send(
            Method::POST,
            &ack,
            Some(&admin),
            Some(json!({ "comment": "on it" })),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ack_comment"], "on it");
    assert!(!body["acknowledged_at"].is_null());

    // Another tenant: 404, whatever the role. A viewer of this tenant: 403.
    let other = plant.login("plant-b").await?;
    let (status, body) = plant
        .send(Method::POST, &ack, Some(&other), Some(json!({})))
        .await?;
    assert_eq!(status, 404, "{body}");
    let (_, body) = plant.get("/api/v1/alarms", Some(&other)).await?;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "{body}");
    plant.add_user("viewer@example.com", "viewer").await?;
    let viewer = plant.login_as("plant-a", "viewer@example.com").await?;
    let shelve = format!("/api/v1/alarms/{id}/shelve");
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let request = json!({ "until": until, "comment": "sensor being replaced" });
    let (status, body) = plant
        .send(Method::POST, &shelve, Some(&viewer), Some(request.clone()))
        .await?;
    assert_eq!(status, 403, "{body}");

    // Shelve: a past time is refused; then the shelf holds.
    let (status, body) = plant
        .send(
            Method::POST,
            &shelve,
            Some(&admin),
            Some(json!({ "until": "2020-01-01T00:00:00Z", "comment": "x" })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = plant
        .send(Method::POST, &shelve, Some(&admin), Some(request))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(!body["shelved_until"].is_null(), "{body}");

    // While shelved, the condition clears and returns: recorded, no work order touched.
    let t1 = Timestamp::from_micros(t0.as_micros() + 60_000_000);
    let t2 = Timestamp::from_micros(t0.as_micros() + 120_000_000);
    service.on_alarm(&cleared(&s, t0, t1)).await?;
    assert!(matches!(
        service.on_alarm(&raised(&s, t2)).await?,
        AlarmOutcome::Suppressed { .. }
    ));
    let (_, body) = plant.get("/api/v1/alarms", Some(&admin)).await?;
    let items = body["items"].as_array().context("items")?;
    assert_eq!(items.len(), 2, "{body}");
    assert_eq!(items[0]["suppressed"], true, "{body}");
    let (_, orders) = plant.get("/api/v1/work-orders", Some(&admin)).await?;
    let wo = orders["items"][0]["id"].as_str().context("work order")?;
    let (_, detail) = plant
        .get(&format!("/api/v1/work-orders/{wo}"), Some(&admin))
        .await?;
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["opened_by_alarm", "alarm_cleared"], "{detail}");
    let suppressed_clear = Timestamp::from_micros(t2.as_micros() + 60_000_000);
    service.on_alarm(&cleared(&s, t2, suppressed_clear)).await?;

    // Unshelved: the next raise reaches the work order again.
    let (status, body) = plant
        .send(Method::DELETE, &shelve, Some(&admin), None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["shelved_until"].is_null(), "{body}");
    let t3 = Timestamp::from_micros(t0.as_micros() + 240_000_000);
    assert!(matches!(
        service.on_alarm(&raised(&s, t3)).await?,
        AlarmOutcome::Appended { .. }
    ));

    // Each operator action is in the audit log once, with who and on which alarm.
    let (status, body) = plant
        .get("/api/v1/audit?action=alarm.*&limit=500", Some(&admin))
        .await?;
    assert_eq!(status, 200, "{body}");
    let actions: Vec<(&str, &str)> = body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| Some((e["action"].as_str()?, e["target_id"].as_str()?)))
        .collect();
    assert_eq!(
        actions,
        [
            ("alarm.unshelve", id.as_str()),
            ("alarm.shelve", id.as_str()),
            ("alarm.acknowledge", id.as_str()),
        ],
        "{body}"
    );
    plant.services.stop().await;
    Ok(())
}
