//! The organisation's users over the API: created with a policy-checked or generated
//! password, listed and filtered, disabled (sessions end) and enabled again; the last admin
//! stays enabled, and nobody creates or changes a user beyond their own permissions. Needs
//! `scripts/test.sh`.

use anyhow::Context;
use maintainpro_tests::{PASSWORD, Plant, error_fields};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

async fn status(
    plant: &Plant,
    method: Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<u16> {
    Ok(plant.send(method, path, Some(token), body).await?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_create_list_disable_and_enable_users() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;

    // Every bad field at once.
    let (code, body) = plant
        .send(
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(
                json!({ "email": "not-an-email", "display_name": " ", "role": "overlord",
                         "password": "password" }),
            ),
        )
        .await?;
    assert_eq!(code, 400, "{body}");
    let mut fields = error_fields(&body);
    fields.dedup();
    assert_eq!(
        fields,
        ["display_name", "email", "password", "role"],
        "{body}"
    );

    // Without a password, one is generated and shown once; it works.
    let created = plant
        .send_ok(
            Method::POST,
            "/api/v1/users",
            &admin,
            json!({ "email": "Jana.Novak@plant-a.example", "display_name": "Jana Novak",
                    "role": "technician" }),
        )
        .await?;
    let jana: Uuid = created["id"].as_str().context("id")?.parse()?;
    assert_eq!(created["role"], "technician");
    let generated = created["initial_password"]
        .as_str()
        .context("a generated password")?;
    let (code, _) = plant
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(
                json!({ "tenant": "plant-a", "email": "jana.novak@plant-a.example",
                         "password": generated }),
            ),
        )
        .await?;
    assert_eq!(code, 200);
    let (_, again) = plant
        .get(&format!("/api/v1/users/{jana}"), Some(&admin))
        .await?;
    assert!(again.get("initial_password").is_none(), "{again}");
    let (code, body) = plant
        .send(
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(
                json!({ "email": "jana.novak@PLANT-A.example", "display_name": "Twin",
                         "role": "viewer", "password": PASSWORD }),
            ),
        )
        .await?;
    assert_eq!((code, error_fields(&body)), (400, vec!["email"]), "{body}");

    // With a password of the caller's choosing.
    let created = plant
        .send_ok(
            Method::POST,
            "/api/v1/users",
            &admin,
            json!({ "email": "lead@plant-a.example", "display_name": "Shift lead",
                    "role": "manager", "password": PASSWORD }),
        )
        .await?;
    assert!(created.get("initial_password").is_none(), "{created}");
    let manager = plant.login_as("plant-a", "lead@plant-a.example").await?;
    let jana_token = plant
        .login_as("plant-a", "jana.novak@plant-a.example")
        .await;
    assert!(jana_token.is_err(), "Jana's password is the generated one");
    let tech = {
        let body = json!({ "tenant": "plant-a", "email": "jana.novak@plant-a.example",
                           "password": generated });
        let (_, answer) = plant
            .send(Method::POST, "/api/v1/auth/login", None, Some(body))
            .await?;
        answer["access_token"].as_str().context("token")?.to_owned()
    };

    // Managers list users (filtered, paged); technicians see only themselves.
    let (code, list) = plant
        .get("/api/v1/users?role=technician&q=novak", Some(&manager))
        .await?;
    assert_eq!(code, 200, "{list}");
    let emails: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails, ["Jana.Novak@plant-a.example"]);
    let (_, page) = plant.get("/api/v1/users?limit=1", Some(&manager)).await?;
    let cursor = page["next_cursor"].as_str().context("a second page")?;
    let (code, _) = plant
        .get(
            &format!("/api/v1/users?limit=1&cursor={cursor}"),
            Some(&manager),
        )
        .await?;
    assert_eq!(code, 200);
    assert_eq!(
        status(&plant, Method::GET, "/api/v1/users", &tech, None).await?,
        403
    );
    assert_eq!(
        status(
            &plant,
            Method::GET,
            &format!("/api/v1/users/{jana}"),
            &tech,
            None
        )
        .await?,
        200
    );
    let admin_id: Uuid = {
        let (_, me) = plant.get("/api/v1/users?role=admin", Some(&admin)).await?;
        me["items"][0]["id"].as_str().context("admin")?.parse()?
    };
    assert_eq!(
        status(
            &plant,
            Method::GET,
            &format!("/api/v1/users/{admin_id}"),
            &tech,
            None
        )
        .await?,
        403
    );
    // A manager may not create or change users.
    let body = json!({ "email": "x@plant-a.example", "display_name": "X", "role": "viewer" });
    assert_eq!(
        status(&plant, Method::POST, "/api/v1/users", &manager, Some(body)).await?,
        403
    );

    // Disabling ends the user's sessions at once; enabling lets them sign in again.
    let path = format!("/api/v1/users/{jana}");
    let disabled = plant
        .send_ok(
            Method::PATCH,
            &path,
            &admin,
            json!({ "disabled": true, "display_name": "Jana N." }),
        )
        .await?;
    assert_eq!(
        (
            disabled["disabled"].clone(),
            disabled["display_name"].clone()
        ),
        (json!(true), json!("Jana N."))
    );
    assert_eq!(status(&plant, Method::GET, &path, &tech, None).await?, 401);
    plant
        .send_ok(Method::PATCH, &path, &admin, json!({ "disabled": false }))
        .await?;
    let (code, _) = plant
        .send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(
                json!({ "tenant": "plant-a", "email": "jana.novak@plant-a.example",
                         "password": generated }),
            ),
        )
        .await?;
    assert_eq!(code, 200);

    // The last enabled admin stays enabled.
    let (code, body) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            Some(&admin),
            Some(json!({ "disabled": true })),
        )
        .await?;
    assert_eq!(code, 409, "{body}");

    // Another organisation's admin reaches none of these users.
    let other = plant.login("plant-b").await?;
    assert_eq!(status(&plant, Method::GET, &path, &other, None).await?, 404);
    let body = json!({ "disabled": true });
    assert_eq!(
        status(&plant, Method::PATCH, &path, &other, Some(body)).await?,
        404
    );

    // Every change is audited.
    let (_, log) = plant
        .get("/api/v1/audit?action=user.*&limit=50", Some(&admin))
        .await?;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["user.create", "user.update", "user.disable", "user.enable"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_user_manager_stays_within_their_own_permissions() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    plant
        .send_ok(
            Method::POST,
            "/api/v1/roles",
            &admin,
            json!({ "name": "hr", "permissions": ["users:read", "users:manage", "assets:read"] }),
        )
        .await?;
    plant.add_user("hr@plant-a.example", "hr").await?;
    let hr = plant.login_as("plant-a", "hr@plant-a.example").await?;
    let admin_id: Uuid = {
        let (_, admins) = plant.get("/api/v1/users?role=admin", Some(&hr)).await?;
        admins["items"][0]["id"]
            .as_str()
            .context("admin")?
            .parse()?
    };

    let body = |role: &str| {
        json!({ "email": format!("{role}-new@plant-a.example"), "display_name": "New",
                "role": role, "password": PASSWORD })
    };
    for role in ["admin", "technician"] {
        assert_eq!(
            status(&plant, Method::POST, "/api/v1/users", &hr, Some(body(role))).await?,
            403,
            "{role}"
        );
    }
    assert_eq!(
        status(&plant, Method::POST, "/api/v1/users", &hr, Some(body("hr"))).await?,
        201
    );
    let disable = json!({ "disabled": true });
    assert_eq!(
        status(
            &plant,
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            &hr,
            Some(disable)
        )
        .await?,
        403
    );
    Ok(())
}
