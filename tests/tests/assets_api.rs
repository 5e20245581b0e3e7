//! The asset registry through the API: sites and areas, the asset tree, moves that keep the
//! history, QR codes, roles and tenants. Needs `scripts/test.sh`.

use anyhow::Context;
use maintainpro_tests::{Plant, error_fields};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn id_of(v: &Value) -> anyhow::Result<Uuid> {
    Ok(v["id"].as_str().context("id")?.parse()?)
}

async fn created(plant: &Plant, token: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let (status, answer) = plant
        .send(Method::POST, path, Some(token), Some(body))
        .await?;
    anyhow::ensure!(status == 201, "POST {path}: {status} {answer}");
    Ok(answer)
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_form_a_tree_that_moves_without_losing_its_history() -> anyhow::Result<()> {
    let plant = Plant::start_with_api(|api| {
        api.asset_link = Some("https://cmms.example.com/assets/{id}".into());
    })
    .await?;
    let admin = plant.login("plant-a").await?;
    plant.add_user("tech@plant-a.example", "technician").await?;
    plant.add_user("viewer@plant-a.example", "viewer").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let viewer = plant.login_as("plant-a", "viewer@plant-a.example").await?;

    let site = created(
        &plant,
        &admin,
        "/api/v1/sites",
        json!({ "name": "North works" }),
    )
    .await?;
    let site_id = id_of(&site)?;
    let site = created(
        &plant,
        &admin,
        &format!("/api/v1/sites/{site_id}/areas"),
        json!({ "name": "Hall 1" }),
    )
    .await?;
    let area_id: Uuid = site["areas"][0]["id"].as_str().context("area")?.parse()?;

    let line = created(
        &plant,
        &admin,
        "/api/v1/assets",
        json!({ "name": "Line 2", "site_id": site_id, "area_id": area_id, "criticality": 4 }),
    )
    .await?;
    let line_id = id_of(&line)?;
    let press = created(
        &plant,
        &admin,
        "/api/v1/assets",
        json!({ "name": "Press 2", "parent_id": line_id, "manufacturer": "Schuler",
                "model": "MSE 2-400", "serial_number": "SN-4711",
                "installed_on": "2019-03-01", "warranty_until": "2099-03-01",
                "asset_class": "hydraulic-press", "labels": { "line": "2" } }),
    )
    .await?;
    let press_id = id_of(&press)?;
    assert_eq!(
        press["site_id"],
        site_id.to_string(),
        "a child is on its parent's site"
    );
    assert_eq!(press["under_warranty"], true);
    let pump = created(
        &plant,
        &admin,
        "/api/v1/assets",
        json!({ "name": "Press 2 pump", "parent_id": press_id }),
    )
    .await?;
    let pump_id = id_of(&pump)?;
    assert_eq!(names(&pump, "path"), ["Line 2", "Press 2"]);
    assert_eq!(
        pump["link"],
        format!("https://cmms.example.com/assets/{pump_id}")
    );

    // Technicians read, not plan; every problem of a create at once.
    let (status, _) = plant
        .send(
            Method::POST,
            "/api/v1/assets",
            Some(&tech),
            Some(json!({ "name": "X", "site_id": site_id })),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/assets",
            Some(&admin),
            Some(json!({ "name": "Press 2", "parent_id": Uuid::new_v4(), "criticality": 0 })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let fields = error_fields(&body);
    assert_eq!(fields, ["criticality", "parent_id", "name"]);

    // A work order on the pump, then the press (with the pump) moves under the seeded Press 1.
    let wo = created(
        &plant,
        &admin,
        "/api/v1/work-orders",
        json!({ "asset_id": pump_id, "title": "Pump whines" }),
    )
    .await?;
    let wo_id = id_of(&wo)?;
    let (status, press_1) = plant
        .get("/api/v1/assets?q=press%201", Some(&viewer))
        .await?;
    assert_eq!(status, 200, "{press_1}");
    let press_1_id = id_of(&press_1["items"][0])?;
    let press_1_site = press_1["items"][0]["site_id"].clone();

    // Under itself or its own descendant: refused.
    let (status, body) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/assets/{press_id}"),
            Some(&admin),
            Some(json!({ "parent_id": pump_id })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "parent_id");

    let (status, moved) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/assets/{press_id}"),
            Some(&admin),
            Some(json!({ "parent_id": press_1_id, "model": null })),
        )
        .await?;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(names(&moved, "path"), ["Press 1"]);
    assert_eq!(moved["site_id"], press_1_site);
    assert!(moved["model"].is_null());
    assert_eq!(moved["manufacturer"], "Schuler", "left out, kept");
    assert_eq!(moved["open_work_orders"], 1);
    let (_, pump) = plant
        .get(&format!("/api/v1/assets/{pump_id}"), Some(&viewer))
        .await?;
    assert_eq!(pump["site_id"], press_1_site, "the subtree moved along");
    assert!(pump["area_id"].is_null());
    assert_eq!(names(&pump, "path"), ["Press 1", "Press 2"]);
    // The work order is where it was, and now in Press 1's subtree.
    let (_, list) = plant
        .get(
            &format!("/api/v1/work-orders?asset_id={press_1_id}"),
            Some(&viewer),
        )
        .await?;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert!(ids.contains(&wo_id.to_string().as_str()), "{list}");
    // ... and no longer in the subtree of the line it left.
    let (_, list) = plant
        .get(
            &format!("/api/v1/work-orders?asset_id={line_id}"),
            Some(&viewer),
        )
        .await?;
    assert!(!list.to_string().contains(&wo_id.to_string()), "{list}");
    let (_, line) = plant
        .get(&format!("/api/v1/assets/{line_id}"), Some(&viewer))
        .await?;
    assert_eq!(names(&line, "children"), Vec::<String>::new());

    // The move is audited with what changed.
    let (_, audit) = plant
        .get(
            &format!("/api/v1/audit?action=asset.move&target_id={press_id}"),
            Some(&admin),
        )
        .await?;
    assert_eq!(
        audit["items"][0]["detail"]["parent_id"]["to"],
        press_1_id.to_string()
    );

    // Listing: roots, by name, in pages.
    let (_, roots) = plant
        .get("/api/v1/assets?parent_id=root", Some(&viewer))
        .await?;
    assert_eq!(names(&roots, "items"), ["Line 2", "Press 1"]);
    let mut seen = Vec::new();
    let mut path = "/api/v1/assets?limit=1".to_owned();
    for _ in 0..10 {
        let (status, page) = plant.get(&path, Some(&viewer)).await?;
        assert_eq!(status, 200, "{page}");
        seen.extend(names(&page, "items"));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/assets?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["Line 2", "Press 1", "Press 2", "Press 2 pump"]);

    // QR codes of the link.
    let res = plant
        .http
        .get(format!("{}/api/v1/assets/{pump_id}/qr.svg", plant.api))
        .bearer_auth(&viewer)
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    assert!(res.text().await?.contains("<svg"));
    let res = plant
        .http
        .get(format!(
            "{}/api/v1/assets/{pump_id}/qr.png?scale=4",
            plant.api
        ))
        .bearer_auth(&viewer)
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert!(res.bytes().await?.starts_with(b"\x89PNG\r\n\x1a\n"));

    // Tenant B reaches none of it; tenant A cannot hang an asset under tenant B's.
    let other = plant.login("plant-b").await?;
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/assets/{pump_id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/assets/{pump_id}"),
            Some(json!({ "name": "mine" })),
        ),
        (
            Method::GET,
            format!("/api/v1/assets/{pump_id}/qr.svg"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/assets/{pump_id}/qr.png"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/sites/{site_id}/areas"),
            Some(json!({ "name": "x" })),
        ),
    ] {
        let (status, answer) = plant
            .send(method.clone(), &path, Some(&other), body)
            .await?;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, b_assets) = plant.get("/api/v1/assets", Some(&other)).await?;
    assert_eq!(names(&b_assets, "items"), ["Press 1"]);
    let b_press = id_of(&b_assets["items"][0])?;
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/assets",
            Some(&admin),
            Some(json!({ "name": "Intruder", "parent_id": b_press })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "parent_id");
    Ok(())
}
