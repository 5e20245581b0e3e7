//! Sessions against the real server and database: refresh-token rotation, reuse that revokes
//! the family, logout, revoking sessions, and the append-only audit log. Needs
//! `scripts/test.sh`.

use anyhow::Context;
use maintainpro_tests::{PASSWORD, Plant};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn login(plant: &Plant, slug: &str, email: &str) -> anyhow::Result<Value> {
    let body = json!({ "tenant": slug, "email": email, "password": PASSWORD });
    let (status, body) = plant
        .send(Method::POST, "/api/v1/auth/login", None, Some(body))
        .await?;
    anyhow::ensure!(status == 200, "login answered {status}: {body}");
    Ok(body)
}

fn field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v[key].as_str().with_context(|| format!("{key} in {v}"))
}

async fn refresh(plant: &Plant, token: &str) -> anyhow::Result<(u16, Value)> {
    plant
        .send(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": token })),
        )
        .await
}

async fn works(plant: &Plant, access: &str) -> anyhow::Result<bool> {
    let (status, _) = plant.get("/api/v1/work-orders", Some(access)).await?;
    Ok(status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_whole_session() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let email = server::demo::DEMO_EMAIL;
    let first = login(&plant, "plant-a", email).await?;
    assert_eq!(first["token_type"], "Bearer");
    let (access1, refresh1) = (
        field(&first, "access_token")?,
        field(&first, "refresh_token")?,
    );
    assert!(works(&plant, access1).await?);

    // Rotation: a new pair; the old access token still belongs to a live session.
    let (status, second) = refresh(&plant, refresh1).await?;
    assert_eq!(status, 200, "{second}");
    let (access2, refresh2) = (
        field(&second, "access_token")?,
        field(&second, "refresh_token")?,
    );
    assert_ne!(refresh1, refresh2);
    assert!(works(&plant, access2).await?);

    // A refresh token is not an access token, nor the other way round.
    let (status, _) = plant.get("/api/v1/work-orders", Some(refresh2)).await?;
    assert_eq!(status, 401);
    let (status, _) = refresh(&plant, access2).await?;
    assert_eq!(status, 401);

    // The spent token again: the session ends, every token of it with it.
    let (status, body) = refresh(&plant, refresh1).await?;
    assert_eq!(status, 401, "{body}");
    assert!(!works(&plant, access2).await?, "the family is revoked");
    let (status, _) = refresh(&plant, refresh2).await?;
    assert_eq!(status, 401, "the newest refresh token is revoked too");

    // Another login is a separate session, unaffected.
    let other = login(&plant, "plant-a", email).await?;
    assert!(works(&plant, field(&other, "access_token")?).await?);

    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT action, outcome FROM audit_log ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT revoked_reason FROM sessions WHERE revoked_at IS NOT NULL LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    // The log is append-only for the application.
    let update = sqlx::query("UPDATE audit_log SET outcome = 'success'")
        .execute(&mut *tx)
        .await;
    assert!(
        update.is_err(),
        "the app role must not update the audit log"
    );
    tx.rollback().await?;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let delete = sqlx::query("DELETE FROM audit_log").execute(&mut *tx).await;
    assert!(
        delete.is_err(),
        "the app role must not delete from the audit log"
    );
    tx.rollback().await?;
    assert_eq!(reason.as_deref(), Some("refresh_token_reuse"));
    let pairs: Vec<(&str, &str)> = actions
        .iter()
        .map(|(a, o)| (a.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("auth.login", "success"),
            ("auth.refresh", "success"),
            ("auth.refresh_reuse", "denied"),
            ("auth.login", "success"),
        ]
    );
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_by_logout_by_their_owner_and_by_an_admin_only() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let email = server::demo::DEMO_EMAIL;
    let a = login(&plant, "plant-a", email).await?;
    let b = login(&plant, "plant-a", email).await?;
    let (access_a, access_b) = (field(&a, "access_token")?, field(&b, "access_token")?);

    let (status, body) = plant.get("/api/v1/auth/sessions", Some(access_a)).await?;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().context("items")?;
    assert_eq!(items.len(), 2, "{body}");
    let current: Vec<bool> = items
        .iter()
        .map(|s| s["current"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(current.iter().filter(|c| **c).count(), 1);
    let other_session = items
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .context("the other session")?
        .to_owned();

    // A wrong-tenant caller cannot touch it: 404.
    let foreign = login(&plant, "plant-b", email).await?;
    let path = format!("/api/v1/auth/sessions/{other_session}");
    let (status, _) = plant
        .send(
            Method::DELETE,
            &path,
            Some(field(&foreign, "access_token")?),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    assert!(works(&plant, access_b).await?);
    // Its owner can.
    let (status, _) = plant
        .send(Method::DELETE, &path, Some(access_a), None)
        .await?;
    assert_eq!(status, 204);
    assert!(!works(&plant, access_b).await?);

    // Logout ends the caller's own session.
    let (status, _) = plant
        .send(Method::POST, "/api/v1/auth/logout", Some(access_a), None)
        .await?;
    assert_eq!(status, 204);
    assert!(!works(&plant, access_a).await?);

    // An admin ends all of a user's sessions; the user id of another tenant answers 404.
    let c = login(&plant, "plant-a", email).await?;
    let access_c = field(&c, "access_token")?;
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let admin: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let (status, _) = plant
        .send(
            Method::POST,
            &format!("/api/v1/users/{admin}/revoke-sessions"),
            Some(field(&foreign, "access_token")?),
            None,
        )
        .await?;
    assert_eq!(status, 404, "another tenant's user");
    let (status, body) = plant
        .send(
            Method::POST,
            &format!("/api/v1/users/{admin}/revoke-sessions"),
            Some(access_c),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 1);
    assert!(!works(&plant, access_c).await?);
    plant.services.stop().await;
    Ok(())
}

/// The id of the session `access` belongs to.
async fn current_session(plant: &Plant, access: &str) -> anyhow::Result<Uuid> {
    let (status, list) = plant.get("/api/v1/auth/sessions", Some(access)).await?;
    anyhow::ensure!(status == 200, "{list}");
    let current = list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["current"] == true))
        .with_context(|| format!("the current session in {list}"))?;
    Ok(field(current, "id")?.parse()?)
}

/// Waits (at most 3 s) until `access` is refused.
async fn refused_soon(plant: &Plant, access: &str, what: &str) -> anyhow::Result<()> {
    Plant::eventually(
        std::time::Duration::from_secs(3),
        &format!("{what} refused"),
        || async { Ok((!works(plant, access).await?).then_some(())) },
    )
    .await
}

/// Runs `sql` (binding `id`) as the database owner in `tenant`'s transaction: a change made
/// outside the API process, as another API process, the command line or an operator's SQL
/// would make it.
async fn change_outside(plant: &Plant, tenant: Uuid, sql: &str, id: Uuid) -> anyhow::Result<()> {
    let owner = plant.db.owner_pool().await;
    let mut tx = migrations::begin_tenant(&owner, tenant).await?;
    let n = sqlx::query(sql)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    owner.close().await;
    anyhow::ensure!(n == 1, "{sql}: {n} rows");
    Ok(())
}

/// Signs the admin in and revokes the session with the database's announcement switched
/// off, until the API still accepts the token: proof that it answers from memory. Returns
/// the session and its access token.
async fn silently_revoked(plant: &Plant) -> anyhow::Result<(Uuid, String)> {
    let tenant = plant.tenant_a.tenant;
    let owner = plant.db.owner_pool().await;
    sqlx::query("ALTER TABLE sessions DISABLE TRIGGER session_check_changed")
        .execute(&owner)
        .await?;
    let found = Plant::eventually(
        std::time::Duration::from_secs(15),
        "a session check answered from memory",
        || async {
            let tokens = login(plant, "plant-a", server::demo::DEMO_EMAIL).await?;
            let access = field(&tokens, "access_token")?.to_owned();
            anyhow::ensure!(works(plant, &access).await?);
            let session = current_session(plant, &access).await?;
            change_outside(
                plant,
                tenant,
                "UPDATE sessions SET revoked_at = now(), revoked_reason = 'revoked_by_admin'
                 WHERE id = $1",
                session,
            )
            .await?;
            Ok(works(plant, &access).await?.then_some((session, access)))
        },
    )
    .await;
    sqlx::query("ALTER TABLE sessions ENABLE TRIGGER session_check_changed")
        .execute(&owner)
        .await?;
    owner.close().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_session_checks_end_when_the_database_announces_a_change() -> anyhow::Result<()>
{
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    // The API remembers checks: a session revoked with the announcement switched off still
    // passes (once the listener has subscribed, which the helper waits for).
    let (session, access) = silently_revoked(&plant).await?;

    // With the announcement, the change ends the remembered check within moments.
    change_outside(
        &plant,
        tenant,
        "UPDATE sessions SET expires_at = expires_at - interval '1 second' WHERE id = $1",
        session,
    )
    .await?;
    refused_soon(&plant, &access, "the revoked session").await?;

    // A user disabled outside the API.
    let tech = plant.add_user("tech@plant-a.example", "technician").await?;
    let access = plant.login_as("plant-a", "tech@plant-a.example").await?;
    assert!(works(&plant, &access).await?);
    assert!(works(&plant, &access).await?);
    change_outside(
        &plant,
        tenant,
        "UPDATE users SET disabled = true WHERE id = $1",
        tech,
    )
    .await?;
    refused_soon(&plant, &access, "the disabled user's session").await?;

    // A role changed outside the API: the demoted admin's token loses what only admins may.
    let clerk = plant.add_user("clerk@plant-a.example", "admin").await?;
    let access = plant.login_as("plant-a", "clerk@plant-a.example").await?;
    let teams = std::sync::atomic::AtomicUsize::new(0);
    let create_team = || async {
        let name = format!(
            "Team {}",
            teams.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (status, body) = plant
            .send(
                Method::POST,
                "/api/v1/teams",
                Some(&access),
                Some(json!({ "name": name })),
            )
            .await?;
        anyhow::ensure!(status == 201 || status == 403, "{status}: {body}");
        anyhow::Ok(status)
    };
    assert_eq!(create_team().await?, 201);
    change_outside(
        &plant,
        tenant,
        "UPDATE users SET role = 'viewer' WHERE id = $1",
        clerk,
    )
    .await?;
    Plant::eventually(
        std::time::Duration::from_secs(3),
        "the new role's permissions applied",
        || async { Ok((create_team().await? == 403).then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_connection_forgets_every_check_until_it_subscribes_again()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let (_, access) = silently_revoked(&plant).await?;
    // The listener's connection ends (a database restart, a network cut): what it would
    // have heard meanwhile is lost, so every remembered check goes.
    let admin = sqlx::PgPool::connect(&migrations::testing::admin_url().await?).await?;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'LISTEN%maintainpro_session_checks%'
           AND pg_terminate_backend(pid)",
    )
    .bind(&plant.db.name)
    .fetch_one(&admin)
    .await?;
    admin.close().await;
    assert_eq!(ended, 1, "the listener's connection");
    refused_soon(&plant, &access, "the revoked session").await?;
    // It subscribes again (after a second), and remembers again.
    silently_revoked(&plant).await?;
    Ok(())
}
