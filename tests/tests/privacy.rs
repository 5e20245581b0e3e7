//! A user's personal data through the API: the export holds what the organisation keeps about
//! them, the erasure removes it and keeps every reference, both only for admins (or the user,
//! for their own export) of the same organisation, and both audited.

use maintainpro_tests::{PASSWORD, Plant};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const EMAIL: &str = "erin.tech@plant-a.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_exported_then_erased_with_references_kept() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let user = plant.add_user(EMAIL, "technician").await?;
    // A failed login naming the user's email (the audit entry holds it), then a session.
    let (status, _) = plant
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "tenant": "plant-a", "email": EMAIL, "password": "not the password at all" })),
        )
        .await?;
    assert_eq!(status, 401);
    let token = plant.login_as("plant-a", EMAIL).await?;
    // Work: a work order assigned to them, a comment and a time log of theirs.
    let wo = plant.rule_work_order().await?;
    let (status, body) = plant
        .send(
            Method::POST,
            &format!("/api/v1/work-orders/{wo}/assign"),
            Some(&admin),
            Some(json!({ "user_id": user })),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = plant
        .send(
            Method::POST,
            &format!("/api/v1/work-orders/{wo}/comments"),
            Some(&token),
            Some(json!({ "text": "Bearing replaced, Erin" })),
        )
        .await?;
    assert!(status == 200 || status == 201, "{body}");

    // Their own export, and an admin's: the same document.
    let path = format!("/api/v1/users/{user}/export");
    let (status, own) = plant.get(&path, Some(&token)).await?;
    assert_eq!(status, 200, "{own}");
    let (status, export) = plant.get(&path, Some(&admin)).await?;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["format"], "maintainpro.user-export.v1");
    assert_eq!(export["user"]["email"], EMAIL);
    assert_eq!(export["user"]["role"], "technician");
    assert!(
        !export["sessions"].as_array().is_some_and(Vec::is_empty),
        "{export}"
    );
    assert!(
        export["work_orders_assigned"]
            .to_string()
            .contains(&wo.to_string())
    );
    assert!(
        export["work_order_events"]
            .to_string()
            .contains("Bearing replaced, Erin")
    );
    let audit = export["audit_entries"].to_string();
    assert!(audit.contains("login") && audit.contains(EMAIL), "{audit}");
    // Nothing of another user: the admin's own login is not in it.
    assert!(
        !export.to_string().contains(server::demo::DEMO_EMAIL),
        "{export}"
    );

    // Another technician may not export them; tenant B's admin does not see them at all.
    plant
        .add_user("other.tech@plant-a.example", "technician")
        .await?;
    let other = plant
        .login_as("plant-a", "other.tech@plant-a.example")
        .await?;
    let (status, _) = plant.get(&path, Some(&other)).await?;
    assert_eq!(status, 403);
    let admin_b = plant.login("plant-b").await?;
    let (status, body) = plant.get(&path, Some(&admin_b)).await?;
    assert_eq!(status, 404, "{body}");
    assert!(!body.to_string().contains(EMAIL));
    let erase_path = format!("/api/v1/users/{user}/erase");
    let confirm = json!({ "confirm_email": EMAIL });
    let (status, _) = plant
        .send(
            Method::POST,
            &erase_path,
            Some(&admin_b),
            Some(confirm.clone()),
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _) = plant
        .send(
            Method::POST,
            &erase_path,
            Some(&other),
            Some(confirm.clone()),
        )
        .await?;
    assert_eq!(status, 403);

    // Erasure wants the email repeated, and never the caller's own account.
    let (status, body) = plant
        .send(
            Method::POST,
            &erase_path,
            Some(&admin),
            Some(json!({ "confirm_email": "someone.else@plant-a.example" })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "confirm_email");
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let admin_id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(server::demo::DEMO_EMAIL)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let (status, _) = plant
        .send(
            Method::POST,
            &format!("/api/v1/users/{admin_id}/erase"),
            Some(&admin),
            Some(json!({ "confirm_email": server::demo::DEMO_EMAIL })),
        )
        .await?;
    assert_eq!(status, 409);

    let (status, erased) = plant
        .send(
            Method::POST,
            &erase_path,
            Some(&admin),
            Some(confirm.clone()),
        )
        .await?;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["erased"], true);
    assert!(erased["sessions_ended"].as_u64() >= Some(1), "{erased}");
    let (status, _) = plant
        .send(Method::POST, &erase_path, Some(&admin), Some(confirm))
        .await?;
    assert_eq!(status, 409, "erased twice");

    // The user's token no longer works.
    let (status, _) = plant.get("/api/v1/work-orders", Some(&token)).await?;
    assert_eq!(status, 401);

    // What remains: the same id everywhere, under a pseudonym, with no address or email.
    let (status, after) = plant.get(&path, Some(&admin)).await?;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["user"]["id"], json!(user));
    assert_eq!(after["user"]["display_name"], "Erased user");
    assert!(after["user"]["erased_at"].is_string());
    assert_eq!(after["user"]["disabled"], true);
    let text = after.to_string();
    assert!(!text.contains(EMAIL), "{text}");
    assert!(
        text.contains(&wo.to_string()),
        "the work order still names them: {text}"
    );
    for session in after["sessions"].as_array().into_iter().flatten() {
        assert_eq!(session["ip"], Value::Null);
        assert_eq!(session["user_agent"], Value::Null);
        assert!(session["revoked_at"].is_string());
    }
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let (left, requested_by): (i64, Option<Uuid>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_log
                 WHERE (actor_user = $1 AND ip IS NOT NULL) OR detail::text LIKE '%' || $2 || '%'),
                (SELECT assignee_user FROM work_orders WHERE id = $3)",
    )
    .bind(user)
    .bind(EMAIL)
    .bind(wo)
    .fetch_one(&mut *tx)
    .await?;
    let remaining: Vec<(String, Option<String>, Value)> = sqlx::query_as(
        "SELECT action, ip, detail FROM audit_log
         WHERE (actor_user = $1 AND ip IS NOT NULL) OR detail::text LIKE '%' || $2 || '%'",
    )
    .bind(user)
    .bind(EMAIL)
    .fetch_all(&mut *tx)
    .await?;
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE target_type = 'user' AND target_id = $1 ORDER BY id",
    )
    .bind(user.to_string())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(
        left, 0,
        "audit entries still hold the user's address or email: {remaining:?}"
    );
    assert_eq!(requested_by, Some(user), "references stay");
    assert!(
        actions.iter().any(|a| a == "user.export") && actions.iter().any(|a| a == "user.erase"),
        "{actions:?}"
    );
    // Nor does the password (checked last: the refused login is a new audit entry naming the
    // email that was typed).
    let (status, _) = plant
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "tenant": "plant-a", "email": EMAIL, "password": PASSWORD })),
        )
        .await?;
    assert_eq!(status, 401);
    Ok(())
}
