//! Parts inventory through the API: receipts and adjustments, reorder points, parts planned
//! (reserved) and used on a work order, reservations released when it closes, the ledger
//! summing to the stock, and tenants. Needs `scripts/test.sh`.

use anyhow::Context;
use maintainpro_tests::Plant;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn id_of(v: &Value) -> anyhow::Result<Uuid> {
    Ok(v["id"].as_str().context("id")?.parse()?)
}

async fn call(
    plant: &Plant,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    plant.send(method, path, Some(token), Some(body)).await
}

/// `on_hand`, `reserved` and `available` of the part's only stock row.
fn stock(part: &Value) -> (i64, i64, i64) {
    let s = &part["stock"][0];
    (
        s["on_hand"].as_i64().unwrap_or(i64::MIN),
        s["reserved"].as_i64().unwrap_or(i64::MIN),
        s["available"].as_i64().unwrap_or(i64::MIN),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_are_reserved_used_and_released_through_work_orders() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let admin = plant.login("plant-a").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;

    let location = plant
        .send_ok(
            Method::POST,
            "/api/v1/stock-locations",
            &admin,
            json!({ "name": "Main store" }),
        )
        .await?;
    let location_id = id_of(&location)?;
    let new_part = json!({ "sku": "BRG-6204", "name": "Deep groove ball bearing 6204", "unit_cost_cents": 1250 });
    let part = plant
        .send_ok(Method::POST, "/api/v1/parts", &admin, new_part)
        .await?;
    let part_id = id_of(&part)?;
    let movements = format!("/api/v1/parts/{part_id}/movements");

    // Receipts by storekeepers only; adjustments need a reason.
    let (status, _) = call(
        &plant,
        Method::POST,
        &movements,
        &tech,
        json!({ "location_id": location_id, "kind": "receipt", "quantity": 10 }),
    )
    .await?;
    assert_eq!(status, 403);
    let receipt =
        json!({ "location_id": location_id, "kind": "receipt", "quantity": 10, "note": "PO 4711" });
    let part = plant
        .send_ok(Method::POST, &movements, &admin, receipt)
        .await?;
    assert_eq!(stock(&part), (10, 0, 10));
    let (status, body) = call(
        &plant,
        Method::POST,
        &movements,
        &admin,
        json!({ "location_id": location_id, "kind": "adjustment", "quantity": -1 }),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "note");
    let (status, body) = call(
        &plant,
        Method::POST,
        &movements,
        &admin,
        json!({ "location_id": location_id, "kind": "receipt", "quantity": 0 }),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    // A stock location that does not exist, in the path: a resource that is not there.
    let (status, body) = call(
        &plant,
        Method::PUT,
        &format!("/api/v1/parts/{part_id}/stock/{}", Uuid::new_v4()),
        &admin,
        json!({ "min_qty": 2 }),
    )
    .await?;
    assert_eq!(status, 404, "{body}");
    plant
        .send_ok(
            Method::PUT,
            &format!("/api/v1/parts/{part_id}/stock/{location_id}"),
            &admin,
            json!({ "min_qty": 2, "max_qty": 20, "reorder_point": 4 }),
        )
        .await?;

    // A work order the technician works on.
    let (_, assets) = plant.get("/api/v1/assets", Some(&admin)).await?;
    let asset = id_of(&assets["items"][0])?;
    let wo = plant
        .send_ok(
            Method::POST,
            "/api/v1/work-orders",
            &admin,
            json!({ "asset_id": asset, "title": "Replace the main bearing" }),
        )
        .await?;
    let wo_id = id_of(&wo)?;
    plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/work-orders/{wo_id}/assign"),
            &admin,
            json!({ "user_id": tech_id }),
        )
        .await?;
    let plan = format!("/api/v1/work-orders/{wo_id}/parts");

    // Planned: reserved; more than is available: refused with what there is.
    let wo = plant
        .send_ok(
            Method::POST,
            &plan,
            &tech,
            json!({ "part_id": part_id, "location_id": location_id, "quantity": 5 }),
        )
        .await?;
    let line = wo["parts"][0]["id"].as_str().context("line")?.to_owned();
    assert_eq!(wo["parts"][0]["reserved"], 5);
    let (status, body) = call(
        &plant,
        Method::POST,
        &plan,
        &tech,
        json!({ "part_id": part_id, "location_id": location_id, "quantity": 6 }),
    )
    .await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("5 available"),
        "{body}"
    );
    let (_, part) = plant
        .get(&format!("/api/v1/parts/{part_id}"), Some(&tech))
        .await?;
    assert_eq!(stock(&part), (10, 5, 5));

    // Used: from the reservation first.
    let used = format!("/api/v1/work-orders/{wo_id}/parts/{line}/use");
    let wo = plant
        .send_ok(Method::POST, &used, &tech, json!({ "quantity": 3 }))
        .await?;
    assert_eq!(
        (
            wo["parts"][0]["used"].as_i64(),
            wo["parts"][0]["reserved"].as_i64()
        ),
        (Some(3), Some(2))
    );
    let (_, part) = plant
        .get(&format!("/api/v1/parts/{part_id}"), Some(&tech))
        .await?;
    assert_eq!(stock(&part), (7, 2, 5));

    // Planning two more drops what is available to 3, below the reorder point 4: low stock.
    plant
        .send_ok(
            Method::POST,
            &plan,
            &tech,
            json!({ "part_id": part_id, "location_id": location_id, "quantity": 2 }),
        )
        .await?;
    let (_, low) = plant
        .get("/api/v1/parts?low_stock=true", Some(&admin))
        .await?;
    assert_eq!(low["items"][0]["sku"], "BRG-6204", "{low}");

    // Completing the work order gives back what is still reserved (2 + 2).
    let status_path = format!("/api/v1/work-orders/{wo_id}/status");
    plant
        .send_ok(
            Method::POST,
            &status_path,
            &tech,
            json!({ "to": "in_progress" }),
        )
        .await?;
    plant
        .send_ok(
            Method::POST,
            &status_path,
            &tech,
            json!({ "to": "completed", "resolution": "fixed" }),
        )
        .await?;
    let (_, part) = plant
        .get(&format!("/api/v1/parts/{part_id}"), Some(&tech))
        .await?;
    assert_eq!(stock(&part), (7, 0, 7));
    let (status, _) = call(&plant, Method::POST, &used, &tech, json!({ "quantity": 1 })).await?;
    assert_eq!(status, 409, "a closed work order takes no more parts");

    // The ledger sums to the stock, and the low-stock and work-order events are in the log.
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let (on_hand, reserved): (i64, i64) = sqlx::query_as(
        "SELECT sum(on_hand_delta)::bigint, sum(reserved_delta)::bigint FROM stock_movements
         WHERE part_id = $1 AND location_id = $2",
    )
    .bind(part_id)
    .bind(location_id)
    .fetch_one(&mut *tx)
    .await?;
    assert_eq!((on_hand, reserved), (7, 0));
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM events ORDER BY seq")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    assert_eq!(
        kinds,
        [
            "work_order.created",
            "work_order.assigned",
            "work_order.part_planned",
            "work_order.part_used",
            "part.low_stock",
            "work_order.part_planned",
            "work_order.status_changed",
            "work_order.status_changed",
        ]
    );

    // Tenant B reaches none of it.
    let other = plant.login("plant-b").await?;
    let (status, _) = plant
        .get(&format!("/api/v1/parts/{part_id}"), Some(&other))
        .await?;
    assert_eq!(status, 404);
    let (status, _) = call(
        &plant,
        Method::POST,
        &movements,
        &other,
        json!({ "location_id": location_id, "kind": "receipt", "quantity": 1 }),
    )
    .await?;
    assert_eq!(status, 404);
    let (_, list) = plant.get("/api/v1/parts", Some(&other)).await?;
    assert_eq!(list["items"], json!([]));
    Ok(())
}

/// The parts list and the schedule list come in pages with a cursor: nothing is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_and_schedules_are_listed_page_by_page() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    for sku in ["C-3", "A-1", "B-2"] {
        plant
            .send_ok(
                Method::POST,
                "/api/v1/parts",
                &admin,
                json!({ "sku": sku, "name": format!("Part {sku}") }),
            )
            .await?;
    }
    let skus = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|p| p["sku"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, first) = plant.get("/api/v1/parts?limit=2", Some(&admin)).await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(skus(&first), ["A-1", "B-2"]);
    let cursor = first["next_cursor"].as_str().context("a next page")?;
    let (_, second) = plant
        .get(
            &format!("/api/v1/parts?limit=2&cursor={cursor}"),
            Some(&admin),
        )
        .await?;
    assert_eq!(skus(&second), ["C-3"]);
    assert!(second["next_cursor"].is_null(), "{second}");
    let (status, body) = plant
        .get("/api/v1/parts?limit=0&cursor=nonsense", Some(&admin))
        .await?;
    assert_eq!(status, 400);
    assert_eq!(maintainpro_tests::error_fields(&body), ["limit", "cursor"]);
    let (status, page) = plant
        .get("/api/v1/pm-schedules?limit=1", Some(&admin))
        .await?;
    assert_eq!(status, 200, "{page}");
    assert!(page["next_cursor"].is_null() || page["next_cursor"].is_string());
    Ok(())
}
