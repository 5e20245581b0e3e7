//! Custom roles through the API: built from the documented permissions, given to users, in
//! force at the holder's next request; nobody grants more than they hold; the last admin
//! stays; work-order standing follows the permissions. Needs `scripts/test.sh`.

use std::time::Duration;

use anyhow::Context;
use maintainpro_tests::{Plant, error_fields};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn create_role(
    plant: &Plant,
    token: &str,
    name: &str,
    permissions: &[&str],
) -> anyhow::Result<Value> {
    let body = json!({ "name": name, "description": format!("{name} for tests"), "permissions": permissions });
    plant
        .send_ok(Method::POST, "/api/v1/roles", token, body)
        .await
}

async fn set_role(
    plant: &Plant,
    token: &str,
    user: Uuid,
    role: &str,
) -> anyhow::Result<(u16, Value)> {
    plant
        .send(
            Method::PUT,
            &format!("/api/v1/users/{user}/role"),
            Some(token),
            Some(json!({ "role": role })),
        )
        .await
}

async fn status(
    plant: &Plant,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<u16> {
    Ok(plant.send(method, path, Some(token), body).await?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_role_allows_exactly_its_permissions_from_the_holders_next_request()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;

    // The documented list and the built-in roles.
    let (code, permissions) = plant.get("/api/v1/permissions", Some(&admin)).await?;
    assert_eq!(code, 200, "{permissions}");
    let names: Vec<&str> = permissions["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names.len(), api::permissions::Permission::ALL.len());
    assert!(names.contains(&"parts:write") && names.contains(&"roles:manage"));
    let (_, roles) = plant.get("/api/v1/roles", Some(&admin)).await?;
    let builtin: Vec<&str> = roles["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|r| r["builtin"] == true)
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        builtin,
        ["admin", "manager", "technician", "requester", "viewer"]
    );

    // Bad definitions are refused with every bad field named.
    let (code, body) = plant
        .send(
            Method::POST,
            "/api/v1/roles",
            Some(&admin),
            Some(json!({ "name": "manager", "permissions": ["parts:read", "parts:delete", "parts:read"] })),
        )
        .await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        error_fields(&body),
        ["name", "permissions.1", "permissions.2"],
        "{body}"
    );

    let role = create_role(
        &plant,
        &admin,
        "storekeeper",
        &["assets:read", "parts:read", "parts:write"],
    )
    .await?;
    assert_eq!(role["builtin"], false);
    assert_eq!(role["users"], 0);
    let role_id = role["id"].as_str().context("id")?.to_owned();
    let (code, body) = plant
        .send(
            Method::POST,
            "/api/v1/roles",
            Some(&admin),
            Some(json!({ "name": "storekeeper", "permissions": [] })),
        )
        .await?;
    assert_eq!((code, error_fields(&body)), (400, vec!["name"]), "{body}");

    // A technician becomes a storekeeper; the token they hold changes with the role.
    let user = plant
        .add_user("stores@plant-a.example", "technician")
        .await?;
    let token = plant.login_as("plant-a", "stores@plant-a.example").await?;
    assert_eq!(
        status(&plant, Method::GET, "/api/v1/work-orders", &token, None).await?,
        200
    );
    let part = json!({ "sku": "SEAL-1", "name": "Seal", "unit": "pcs", "unit_cost_cents": 100 });
    assert_eq!(
        status(
            &plant,
            Method::POST,
            "/api/v1/parts",
            &token,
            Some(part.clone())
        )
        .await?,
        403
    );
    let (code, change) = set_role(&plant, &admin, user, "storekeeper").await?;
    assert_eq!(code, 200, "{change}");
    assert_eq!(change["previous_role"], "technician");
    assert_eq!(
        status(&plant, Method::POST, "/api/v1/parts", &token, Some(part)).await?,
        201
    );
    assert_eq!(
        status(&plant, Method::GET, "/api/v1/parts", &token, None).await?,
        200
    );
    assert_eq!(
        status(&plant, Method::GET, "/api/v1/assets", &token, None).await?,
        200
    );
    for path in [
        "/api/v1/work-orders",
        "/api/v1/alarms",
        "/api/v1/teams",
        "/api/v1/pm-schedules",
    ] {
        assert_eq!(
            status(&plant, Method::GET, path, &token, None).await?,
            403,
            "{path}"
        );
    }
    let (_, held) = plant
        .get(&format!("/api/v1/roles/{role_id}"), Some(&admin))
        .await?;
    assert_eq!(held["users"], 1, "{held}");

    // Changing the role's permissions changes what its holders may do, at once.
    let patched = plant
        .send_ok(
            Method::PATCH,
            &format!("/api/v1/roles/{role_id}"),
            &admin,
            json!({ "permissions": ["assets:read", "parts:read", "pm:read"] }),
        )
        .await?;
    assert_eq!(
        patched["permissions"],
        json!(["assets:read", "pm:read", "parts:read"])
    );
    assert_eq!(
        status(&plant, Method::GET, "/api/v1/pm-schedules", &token, None).await?,
        200
    );
    let part = json!({ "sku": "SEAL-2", "name": "Seal", "unit": "pcs", "unit_cost_cents": 100 });
    assert_eq!(
        status(&plant, Method::POST, "/api/v1/parts", &token, Some(part)).await?,
        403
    );

    // The denial is audited with the permission that was missing.
    let denied = Plant::eventually(Duration::from_secs(10), "the audited denial", || async {
        let (_, body) = plant
            .get(
                "/api/v1/audit?action=permission.denied&limit=500",
                Some(&admin),
            )
            .await?;
        Ok(body["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|e| {
                    e["detail"]["permission"] == "parts:write"
                        && e["detail"]["role"] == "storekeeper"
                })
                .cloned()
        }))
    })
    .await?;
    assert_eq!(denied["detail"]["path"], "/api/v1/parts");

    // A held role cannot be deleted; once nobody holds it, it can.
    let path = format!("/api/v1/roles/{role_id}");
    assert_eq!(
        status(&plant, Method::DELETE, &path, &admin, None).await?,
        409
    );
    assert_eq!(set_role(&plant, &admin, user, "viewer").await?.0, 200);
    assert_eq!(
        status(&plant, Method::DELETE, &path, &admin, None).await?,
        204
    );
    assert_eq!(status(&plant, Method::GET, &path, &admin, None).await?, 404);
    assert_eq!(set_role(&plant, &admin, user, "storekeeper").await?.0, 400);

    // Every change is in the audit log.
    let (_, log) = plant
        .get("/api/v1/audit?action=role.*&limit=50", Some(&admin))
        .await?;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["role.create", "role.update", "role.delete"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let (_, log) = plant
        .get(
            "/api/v1/audit?action=user.role_change&limit=50",
            Some(&admin),
        )
        .await?;
    assert_eq!(log["items"].as_array().map(Vec::len), Some(2), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_grants_more_than_they_hold_and_the_last_admin_stays() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let admin_id: Uuid = {
        let pool = plant.db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
        let id = sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        id
    };

    // A manager manages no roles and no users.
    plant.add_user("manager@plant-a.example", "manager").await?;
    let manager = plant.login_as("plant-a", "manager@plant-a.example").await?;
    let body = json!({ "name": "helper", "permissions": ["assets:read"] });
    assert_eq!(
        status(&plant, Method::POST, "/api/v1/roles", &manager, Some(body)).await?,
        403
    );
    assert_eq!(set_role(&plant, &manager, admin_id, "viewer").await?.0, 403);

    // A delegated role manager may build roles only from what they hold.
    create_role(
        &plant,
        &admin,
        "role-keeper",
        &["roles:manage", "users:manage", "assets:read", "parts:read"],
    )
    .await?;
    let keeper_id = plant
        .add_user("keeper@plant-a.example", "role-keeper")
        .await?;
    let keeper = plant.login_as("plant-a", "keeper@plant-a.example").await?;
    let (code, body) = plant
        .send(
            Method::POST,
            "/api/v1/roles",
            Some(&keeper),
            Some(json!({ "name": "too-much", "permissions": ["parts:read", "audit:read", "users:manage"] })),
        )
        .await?;
    assert_eq!(code, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("audit:read") && !message.contains("parts:read"),
        "{body}"
    );
    create_role(&plant, &keeper, "parts-viewer", &["parts:read"]).await?;

    // ... and move users only between roles within their own permissions.
    let tech = plant.add_user("tech@plant-a.example", "technician").await?;
    assert_eq!(
        set_role(&plant, &keeper, tech, "parts-viewer").await?.0,
        403,
        "a technician's role is beyond the keeper"
    );
    assert_eq!(
        set_role(&plant, &keeper, admin_id, "parts-viewer").await?.0,
        403
    );
    assert_eq!(
        set_role(&plant, &keeper, keeper_id, "admin").await?.0,
        403,
        "no self-promotion"
    );
    let viewer = plant
        .add_user("parts@plant-a.example", "parts-viewer")
        .await?;
    assert_eq!(
        set_role(&plant, &admin, viewer, "parts-viewer").await?.0,
        200
    );
    let (code, body) = set_role(&plant, &keeper, viewer, "nonexistent-role").await?;
    assert_eq!((code, error_fields(&body)), (400, vec!["role"]), "{body}");

    // The last enabled admin keeps the role; with a second admin, the first may step down.
    let (code, body) = set_role(&plant, &admin, admin_id, "manager").await?;
    assert_eq!(code, 409, "{body}");
    let second = plant.add_user("admin2@plant-a.example", "admin").await?;
    assert_eq!(set_role(&plant, &admin, admin_id, "manager").await?.0, 200);
    // The demoted admin's token lost the admin's permissions with the role.
    assert_eq!(
        status(&plant, Method::GET, "/api/v1/audit", &admin, None).await?,
        403
    );
    let admin2 = plant.login_as("plant-a", "admin2@plant-a.example").await?;
    assert_eq!(set_role(&plant, &admin2, second, "viewer").await?.0, 409);

    // Another organisation's user answers 404, and its roles are not listed.
    let b_admin = plant.login("plant-b").await?;
    assert_eq!(set_role(&plant, &b_admin, tech, "viewer").await?.0, 404);
    let (_, roles) = plant.get("/api/v1/roles", Some(&b_admin)).await?;
    assert!(
        roles["items"]
            .as_array()
            .context("items")?
            .iter()
            .all(|r| r["builtin"] == true),
        "{roles}"
    );

    // The MFA policy may name custom roles of the organisation, and no others.
    let (code, body) = plant
        .send(
            Method::PUT,
            "/api/v1/organisation/mfa-policy",
            Some(&admin2),
            Some(json!({ "required_roles": ["parts-viewer", "admin"] })),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["required_roles"], json!(["admin", "parts-viewer"]));
    let (code, _) = plant
        .send(
            Method::PUT,
            "/api/v1/organisation/mfa-policy",
            Some(&b_admin),
            Some(json!({ "required_roles": ["parts-viewer"] })),
        )
        .await?;
    assert_eq!(code, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_order_standing_follows_the_custom_roles_permissions() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let asset = plant.asset_id(plant.tenant_a.tenant, "Press 1").await?;
    create_role(
        &plant,
        &admin,
        "fitter",
        &["assets:read", "work_orders:read", "work_orders:work"],
    )
    .await?;
    create_role(
        &plant,
        &admin,
        "operator",
        &["assets:read", "work_orders:create"],
    )
    .await?;
    create_role(&plant, &admin, "auditor", &["work_orders:read"]).await?;
    let fitter = plant.add_user("fitter@plant-a.example", "fitter").await?;
    plant
        .add_user("operator@plant-a.example", "operator")
        .await?;
    plant.add_user("auditor@plant-a.example", "auditor").await?;
    let fitter_token = plant.login_as("plant-a", "fitter@plant-a.example").await?;
    let operator = plant
        .login_as("plant-a", "operator@plant-a.example")
        .await?;
    let auditor = plant.login_as("plant-a", "auditor@plant-a.example").await?;

    // An operator opens requests: no due date, and sees only their own.
    let (code, body) = plant
        .send(
            Method::POST,
            "/api/v1/work-orders",
            Some(&operator),
            Some(json!({ "asset_id": asset, "title": "Noise", "due_at": "2099-01-01T00:00:00Z" })),
        )
        .await?;
    assert_eq!((code, error_fields(&body)), (400, vec!["due_at"]), "{body}");
    let request = plant
        .send_ok(
            Method::POST,
            "/api/v1/work-orders",
            &operator,
            json!({ "asset_id": asset, "title": "Noise" }),
        )
        .await?;
    let request = request["id"].as_str().context("id")?.to_owned();
    let other = plant.rule_work_order().await?;
    let (_, list) = plant.get("/api/v1/work-orders", Some(&operator)).await?;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, [request.as_str()]);
    assert_eq!(
        status(
            &plant,
            Method::GET,
            &format!("/api/v1/work-orders/{other}"),
            &operator,
            None
        )
        .await?,
        404
    );

    // An auditor sees everything and changes nothing.
    let (_, list) = plant.get("/api/v1/work-orders", Some(&auditor)).await?;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    let comment = json!({ "text": "looked at it" });
    assert_eq!(
        status(
            &plant,
            Method::POST,
            &format!("/api/v1/work-orders/{other}/comments"),
            &auditor,
            Some(comment)
        )
        .await?,
        403
    );
    assert_eq!(
        status(
            &plant,
            Method::POST,
            "/api/v1/work-orders",
            &auditor,
            Some(json!({ "asset_id": asset, "title": "x" }))
        )
        .await?,
        403
    );

    // A fitter may be assigned work and works it as a technician does; an operator may not.
    let assign = format!("/api/v1/work-orders/{other}/assign");
    let operator_id: Uuid = {
        let pool = plant.db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
        let id =
            sqlx::query_scalar("SELECT id FROM users WHERE email = 'operator@plant-a.example'")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        id
    };
    let (code, body) = plant
        .send(
            Method::POST,
            &assign,
            Some(&admin),
            Some(json!({ "user_id": operator_id })),
        )
        .await?;
    assert_eq!(
        (code, error_fields(&body)),
        (400, vec!["user_id"]),
        "{body}"
    );
    plant
        .send_ok(Method::POST, &assign, &admin, json!({ "user_id": fitter }))
        .await?;
    let started = plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/work-orders/{other}/status"),
            &fitter_token,
            json!({ "to": "in_progress" }),
        )
        .await?;
    assert_eq!(started["status"], "in_progress");
    // ... but not someone else's, and never verifies.
    let (code, _) = plant
        .send(
            Method::POST,
            &format!("/api/v1/work-orders/{request}/status"),
            Some(&fitter_token),
            Some(json!({ "to": "in_progress" })),
        )
        .await?;
    assert_eq!(code, 403);
    plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/work-orders/{other}/status"),
            &fitter_token,
            json!({ "to": "completed", "resolution": "fixed" }),
        )
        .await?;
    let (code, _) = plant
        .send(
            Method::POST,
            &format!("/api/v1/work-orders/{other}/status"),
            Some(&fitter_token),
            Some(json!({ "to": "verified" })),
        )
        .await?;
    assert_eq!(code, 403);
    Ok(())
}
