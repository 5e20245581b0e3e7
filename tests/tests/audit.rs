//! The audit log through the API, against the real server and database: permission denials
//! recorded, the admins' query with filters and pages, the export in both formats, and
//! tenants that never see each other's entries. Needs `scripts/test.sh`.

use std::time::Duration;

use anyhow::Context;
use maintainpro_tests::{Plant, error_fields};
use reqwest::Method;
use serde_json::{Value, json};

async fn entries(plant: &Plant, token: &str, query: &str) -> anyhow::Result<Value> {
    let (status, body) = plant
        .get(&format!("/api/v1/audit{query}"), Some(token))
        .await?;
    anyhow::ensure!(status == 200, "audit query answered {status}: {body}");
    Ok(body)
}

async fn export(plant: &Plant, token: &str, query: &str) -> anyhow::Result<(String, String)> {
    let res = plant
        .http
        .get(format!("{}/api/v1/audit/export{query}", plant.api))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "export answered {}", res.status());
    let kind = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((kind, res.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_query_and_export_their_tenants_audit_log_and_denials_are_in_it()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let technician_id = plant.add_user("tech@example.com", "technician").await?;
    let technician = plant.login_as("plant-a", "tech@example.com").await?;

    // A technician may not read the audit log; the refusal is itself audited.
    let (status, body) = plant.get("/api/v1/audit", Some(&technician)).await?;
    assert_eq!(status, 403, "{body}");
    let denied = Plant::eventually(Duration::from_secs(10), "the denial entry", || async {
        let body = entries(&plant, &admin, "?action=permission.*").await?;
        Ok(body["items"].as_array().and_then(|i| i.first()).cloned())
    })
    .await?;
    assert_eq!(denied["action"], "permission.denied");
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["actor_user"], technician_id.to_string());
    assert_eq!(denied["detail"]["path"], "/api/v1/audit");
    assert_eq!(denied["detail"]["role"], "technician");

    // A failed login, found by its outcome.
    let (status, _) = plant
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "tenant": "plant-a", "email": "tech@example.com", "password": "wrong password here" })),
        )
        .await?;
    assert_eq!(status, 401);
    let failures = entries(&plant, &admin, "?outcome=failure&action=auth.login").await?;
    let failures = failures["items"].as_array().context("items")?;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["detail"]["email"], "tech@example.com");

    // Pages: newest first, each entry once, the last page without a cursor.
    let all = entries(&plant, &admin, "?limit=500").await?;
    let all: Vec<i64> = all["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    assert!(
        all.len() >= 4,
        "two logins, a denial and a failed login: {all:?}"
    );
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = entries(&plant, &admin, &query).await?;
        paged.extend(
            page["items"]
                .as_array()
                .context("items")?
                .iter()
                .filter_map(|e| e["id"].as_i64()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, all);

    // Exports: oldest first, every entry, and the export audited.
    let (kind, ndjson) = export(&plant, &admin, "").await?;
    assert_eq!(kind, "application/x-ndjson");
    let exported: Vec<i64> = ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)?["id"]
                .as_i64()
                .context("id")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut oldest_first = all.clone();
    oldest_first.reverse();
    assert_eq!(exported[..oldest_first.len()], oldest_first[..]);
    let (kind, csv) = export(&plant, &admin, "?format=csv&action=auth.*").await?;
    assert_eq!(kind, "text/csv; charset=utf-8");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("id,at,actor_user,action,outcome,target_type,target_id,request_id,ip,detail")
    );
    assert!(lines.clone().count() >= 3, "{csv}");
    assert!(lines.all(|l| l.contains(",\"auth.")), "{csv}");
    let exports = entries(&plant, &admin, "?action=audit.export").await?;
    assert_eq!(exports["items"].as_array().map(Vec::len), Some(2));

    // Another tenant's admin sees only its own entries.
    let other = plant.login("plant-b").await?;
    let theirs = entries(&plant, &other, "?limit=500").await?;
    let theirs = theirs["items"].as_array().context("items")?;
    assert!(!theirs.is_empty());
    assert!(
        theirs
            .iter()
            .all(|e| e["id"].as_i64().is_some_and(|id| !all.contains(&id)))
    );

    // Bad requests say what is wrong.
    for (query, status) in [
        ("?limit=0", 400),
        ("?outcome=maybe", 400),
        ("?colour=red", 400),
        ("?format=csv", 400),
        (
            "?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            400,
        ),
    ] {
        let (got, body) = plant
            .get(&format!("/api/v1/audit{query}"), Some(&admin))
            .await?;
        assert_eq!(got, status, "{query}: {body}");
        assert!(body["error"]["code"].is_string(), "{query}: {body}");
    }
    // Every bad parameter at once, each on its field.
    let (got, body) = plant
        .get(
            "/api/v1/audit?limit=0&outcome=maybe&action=DROP",
            Some(&admin),
        )
        .await?;
    assert_eq!(got, 400, "{body}");
    let fields = error_fields(&body);
    assert_eq!(fields, ["limit", "outcome", "action"], "{body}");
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_entry_still_being_written_is_waited_for_at_the_stop() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    plant.add_user("tech@example.com", "technician").await?;
    let technician = plant.login_as("plant-a", "tech@example.com").await?;
    // Entries cannot be written while this lock is held.
    let mut lock =
        maintainpro_tests::lock_table(&plant.db.urls.owner_url, "audit_log", "SHARE").await?;
    // The refusal is answered at once; its entry is written after the answer.
    let (status, body) = plant.get("/api/v1/audit", Some(&technician)).await?;
    assert_eq!(status, 403, "{body}");
    plant
        .until_one_waits_for_a_lock("the entry waiting")
        .await?;

    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sqlx::query("ROLLBACK").execute(&mut lock).await
    });
    let Plant { services, db, .. } = plant;
    tokio::time::timeout(
        api::app::STOP_GRACE + Duration::from_secs(15),
        services.stop(),
    )
    .await
    .context("the stop waited for the entry beyond its grace")?;
    // The stop returned only once the entry was written.
    let pool = db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let denials: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'permission.denied'")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    release.await??;
    assert_eq!(
        denials, 1,
        "the stop returned before the denial's entry was written"
    );
    Ok(())
}
