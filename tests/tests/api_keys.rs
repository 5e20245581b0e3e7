//! API keys against the real server and database: a key shown once and never listed, scopes
//! enforced (and refusals audited), another organisation's key out of reach, revoked and
//! expired keys refused, rotation with an overlap, the last use recorded, and the per-key rate
//! limit. Needs `scripts/test.sh`.

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;
use maintainpro_tests::{Plant, text};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const KEYS: &str = "/api/v1/api-keys";

async fn create(plant: &Plant, token: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    plant
        .send(Method::POST, KEYS, Some(token), Some(body))
        .await
}

async fn status_of(plant: &Plant, path: &str, key: &str) -> anyhow::Result<u16> {
    Ok(plant.get(path, Some(key)).await?.0)
}

/// The tenant's audit entries, oldest first, as (action, outcome, target id, detail).
async fn audit_entries(
    plant: &Plant,
    tenant: Uuid,
) -> anyhow::Result<Vec<(String, String, Option<String>, Value)>> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let rows =
        sqlx::query_as("SELECT action, outcome, target_id, detail FROM audit_log ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(rows)
}

async fn listed(plant: &Plant, admin: &str, id: &str) -> anyhow::Result<Value> {
    let (status, list) = plant.get(KEYS, Some(admin)).await?;
    anyhow::ensure!(status == 200, "list answered {status}: {list}");
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|k| k["id"] == id))
        .cloned()
        .with_context(|| format!("{id} not in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shown_once_scoped_and_kept_to_their_organisation() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;

    let (status, created) = create(
        &plant,
        &admin,
        json!({ "name": " gateway north hall ", "scopes": ["work_orders:read", "rules:read"] }),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    let key = text(&created, "key")?;
    let id = text(&created, "id")?;
    assert!(
        key.starts_with(&format!("mpak.{}.", plant.tenant_a.tenant.simple())),
        "{key}"
    );
    assert_eq!(created["name"], "gateway north hall");
    assert_eq!(created["scopes"], json!(["work_orders:read", "rules:read"]));
    assert_eq!(created["status"], "active");
    assert_eq!(created["expires_at"], Value::Null);
    assert_eq!(created["last_used_at"], Value::Null);

    // The list never shows the key or its hash.
    let (status, list) = plant.get(KEYS, Some(&admin)).await?;
    assert_eq!(status, 200, "{list}");
    let listed_text = list.to_string();
    assert!(!listed_text.contains(&key[key.len() - 43..]), "{list}");
    assert!(
        !listed_text.contains("secret") && !listed_text.contains("\"key\""),
        "{list}"
    );

    // With its scopes: 200, and the use is recorded.
    assert_eq!(status_of(&plant, "/api/v1/work-orders", &key).await?, 200);
    assert_eq!(status_of(&plant, "/api/v1/rules/status", &key).await?, 200);
    assert!(listed(&plant, &admin, &id).await?["last_used_at"].is_string());

    // Without: 403, audited with the key and the scope it lacked.
    let (status, body) = plant.get("/api/v1/alarms", Some(&key)).await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("alarms:read"),
        "{body}"
    );
    let tenant = plant.tenant_a.tenant;
    let denied = Plant::eventually(Duration::from_secs(10), "the denial entry", || async {
        Ok(audit_entries(&plant, tenant)
            .await?
            .into_iter()
            .find(|(action, ..)| action == "permission.denied"))
    })
    .await?;
    assert_eq!(denied.1, "denied");
    assert_eq!(denied.3["api_key"], id.as_str());
    assert_eq!(denied.3["scope"], "alarms:read");
    assert_eq!(denied.3["role"], "service");

    // Endpoints that name no scope refuse every key: sessions, key management.
    for (method, path) in [
        (Method::GET, "/api/v1/auth/sessions"),
        (Method::GET, KEYS),
        (Method::POST, "/api/v1/auth/logout"),
    ] {
        let (status, body) = plant.send(method, path, Some(&key), None).await?;
        assert_eq!(status, 403, "{path}: {body}");
    }

    // Bad requests say what was wrong.
    for (body, says) in [
        (
            json!({ "name": "x", "scopes": ["readings:delete"] }),
            "not a scope: readings:delete",
        ),
        (json!({ "name": "x", "scopes": [] }), "at least one"),
        (json!({ "name": "", "scopes": ["alarms:read"] }), "name"),
        (
            json!({ "name": "x", "scopes": ["alarms:read"], "expires_at": "2020-01-01T00:00:00Z" }),
            "expires_at",
        ),
        (
            json!({ "name": "x", "scopes": ["alarms:read"], "owner": "me" }),
            "owner",
        ),
    ] {
        let (status, answer) = create(&plant, &admin, body.clone()).await?;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{body}: {message}");
    }

    // A gateway's broker login needs a server that keeps broker accounts; this one does not.
    let (status, answer) = create(
        &plant,
        &admin,
        json!({ "name": "x", "scopes": ["readings:publish"] }),
    )
    .await?;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("[api.broker_accounts]"), "{message}");

    // Only admins manage keys.
    plant.add_user("tech@example.com", "technician").await?;
    let technician = plant.login_as("plant-a", "tech@example.com").await?;
    let (status, _) = create(
        &plant,
        &technician,
        json!({ "name": "x", "scopes": ["alarms:read"] }),
    )
    .await?;
    assert_eq!(status, 403);
    assert_eq!(plant.get(KEYS, Some(&technician)).await?.0, 403);

    // Another organisation's admin finds no such key.
    let other = plant.login("plant-b").await?;
    let (status, body) = plant
        .send(
            Method::POST,
            &format!("{KEYS}/{id}/rotate"),
            Some(&other),
            None,
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = plant
        .send(Method::DELETE, &format!("{KEYS}/{id}"), Some(&other), None)
        .await?;
    assert_eq!(status, 404, "{body}");
    let (status, list) = plant.get(KEYS, Some(&other)).await?;
    assert_eq!(
        (status, list["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert_eq!(status_of(&plant, "/api/v1/work-orders", &key).await?, 200);

    // A wrong secret, another tenant in the key, or no such key: 401 alike.
    let mut wrong = key.clone();
    let last = wrong.pop().context("a key")?;
    wrong.push(if last == 'A' { 'Q' } else { 'A' });
    let moved = key.replacen(
        &plant.tenant_a.tenant.simple().to_string(),
        &plant.tenant_b.tenant.simple().to_string(),
        1,
    );
    for bad in [wrong.as_str(), moved.as_str(), "mpak.nothing"] {
        let (status, body) = plant.get("/api/v1/work-orders", Some(bad)).await?;
        assert_eq!(status, 401, "{bad}: {body}");
    }
    let failures: Vec<_> = audit_entries(&plant, tenant)
        .await?
        .into_iter()
        .filter(|(action, ..)| action == "auth.api_key")
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].1, "failure");
    assert_eq!(failures[0].2.as_deref(), Some(id.as_str()));
    assert_eq!(failures[0].3["reason"], "wrong_secret");

    // Revoked: 401 at once.
    let (status, _) = plant
        .send(Method::DELETE, &format!("{KEYS}/{id}"), Some(&admin), None)
        .await?;
    assert_eq!(status, 204);
    assert_eq!(status_of(&plant, "/api/v1/work-orders", &key).await?, 401);
    let revoked = listed(&plant, &admin, &id).await?;
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_by"].is_string(), "{revoked}");

    let actions: Vec<(String, String)> = audit_entries(&plant, tenant)
        .await?
        .into_iter()
        .map(|(action, outcome, ..)| (action, outcome))
        .collect();
    for expected in [("api_key.create", "success"), ("api_key.revoke", "success")] {
        assert!(
            actions
                .iter()
                .any(|(a, o)| (a.as_str(), o.as_str()) == expected),
            "{expected:?} missing from {actions:?}"
        );
    }
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_scope_can_be_given_to_a_key() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    // `readings:publish` needs a server that keeps broker accounts: gateway_keys.rs makes
    // such keys, with the other scopes too.
    let scopes: Vec<&str> = api::api_keys::Scope::ALL
        .iter()
        .filter(|s| **s != api::api_keys::Scope::ReadingsPublish)
        .map(|s| s.as_str())
        .collect();
    // One key per scope, and one with all of them: the database's check of the scopes
    // must accept what the API accepts.
    for scope in &scopes {
        let (status, body) =
            create(&plant, &admin, json!({ "name": scope, "scopes": [scope] })).await?;
        assert_eq!(status, 201, "{scope}: {body}");
    }
    let (status, body) = create(&plant, &admin, json!({ "name": "all", "scopes": scopes })).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["scopes"], json!(scopes));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_api_keys_overlap_and_expired_api_keys_stop() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let path = "/api/v1/work-orders";

    let soon = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (status, expiring) = create(
        &plant,
        &admin,
        json!({ "name": "short-lived", "scopes": ["work_orders:read"], "expires_at": soon }),
    )
    .await?;
    assert_eq!(status, 201, "{expiring}");
    let expiring_key = text(&expiring, "key")?;
    assert_eq!(status_of(&plant, path, &expiring_key).await?, 200);

    let (old_key, old_id) = plant.new_api_key(&admin, &["work_orders:read"]).await?;
    let rotate = format!("{KEYS}/{old_id}/rotate");
    let (status, body) = plant
        .send(
            Method::POST,
            &rotate,
            Some(&admin),
            Some(json!({ "overlap": "8d" })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let (status, rotated) = plant
        .send(
            Method::POST,
            &rotate,
            Some(&admin),
            Some(json!({ "overlap": "3s" })),
        )
        .await?;
    assert_eq!(status, 201, "{rotated}");
    let new_key = text(&rotated, "key")?;
    let new_id = text(&rotated, "id")?;
    assert_ne!(new_key, old_key);
    assert_eq!(rotated["scopes"], json!(["work_orders:read"]));
    assert_eq!(rotated["replaces"]["replaced_by"], new_id.as_str());
    assert!(rotated["replaces"]["expires_at"].is_string(), "{rotated}");

    // Both work during the overlap; a key is rotated once.
    assert_eq!(status_of(&plant, path, &old_key).await?, 200);
    assert_eq!(status_of(&plant, path, &new_key).await?, 200);
    let (status, body) = plant
        .send(Method::POST, &rotate, Some(&admin), None)
        .await?;
    assert_eq!(status, 409, "{body}");

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        status_of(&plant, path, &old_key).await?,
        401,
        "after the overlap"
    );
    assert_eq!(status_of(&plant, path, &new_key).await?, 200);
    assert_eq!(
        status_of(&plant, path, &expiring_key).await?,
        401,
        "expired"
    );
    assert_eq!(listed(&plant, &admin, &old_id).await?["status"], "expired");

    let reasons: Vec<String> = audit_entries(&plant, plant.tenant_a.tenant)
        .await?
        .into_iter()
        .filter(|(action, ..)| action == "auth.api_key")
        .filter_map(|(.., detail)| detail["reason"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(reasons, ["expired", "expired"]);
    let rotations = audit_entries(&plant, plant.tenant_a.tenant)
        .await?
        .into_iter()
        .filter(|(action, ..)| action == "api_key.rotate")
        .count();
    assert_eq!(rotations, 1);
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_key_has_its_own_rate_limit() -> anyhow::Result<()> {
    let plant = Plant::start_with_api(|api| {
        api.api_key_rate = "1/min".parse().expect("a rate");
        api.api_key_burst = NonZeroU32::new(2).expect("not zero");
    })
    .await?;
    let admin = plant.login("plant-a").await?;
    let (busy, _) = plant.new_api_key(&admin, &["work_orders:read"]).await?;
    let (quiet, _) = plant.new_api_key(&admin, &["work_orders:read"]).await?;
    let url = format!("{}/api/v1/work-orders", plant.api);
    for _ in 0..2 {
        assert_eq!(status_of(&plant, "/api/v1/work-orders", &busy).await?, 200);
    }
    let res = plant.http.get(&url).bearer_auth(&busy).send().await?;
    assert_eq!(res.status().as_u16(), 429);
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another key of the same organisation, and its users, keep their budgets.
    assert_eq!(status_of(&plant, "/api/v1/work-orders", &quiet).await?, 200);
    assert_eq!(status_of(&plant, "/api/v1/work-orders", &admin).await?, 200);
    plant.services.stop().await;
    Ok(())
}
