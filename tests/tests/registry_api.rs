//! The asset and tag registers in CSV: a dry run reports every bad row and writes nothing,
//! an import writes all rows or none, an export imports back unchanged; gateways and tags over
//! HTTP, devices on gateways; tenants. Needs `scripts/test.sh`.

use anyhow::Context;
use maintainpro_tests::{Plant, error_fields};
use reqwest::Method;
use serde_json::{Value, json};

async fn get_text(plant: &Plant, token: &str, path: &str) -> anyhow::Result<String> {
    let res = plant
        .http
        .get(format!("{}{path}", plant.api))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "{path}: {}", res.status());
    Ok(res.text().await?)
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_import_all_or_nothing_and_export_back_unchanged() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let (status, site) = plant
        .send(
            Method::POST,
            "/api/v1/sites",
            Some(&admin),
            Some(json!({ "name": "North" })),
        )
        .await?;
    assert_eq!(status, 201, "{site}");
    let site_id = site["id"].as_str().context("site")?.to_owned();
    plant
        .send(
            Method::POST,
            &format!("/api/v1/sites/{site_id}/areas"),
            Some(&admin),
            Some(json!({ "name": "Hall 2" })),
        )
        .await?;

    // Every problem the database can tell, with its line; nothing written.
    let bad = "name,site,area,parent,criticality\n\
               Line 9,Nowhere,,,3\n\
               Press 9,,,Line 404,4\n\
               Press 10,North,Hall 7,,2\n";
    let (status, body) = plant.post_csv(&admin, "/api/v1/assets/import", bad).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        fields(&body),
        ["line 2: site", "line 3: parent", "line 4: area"]
    );
    // Cell problems are found before the database is asked.
    let (status, body) = plant
        .post_csv(&admin, "/api/v1/assets/import", "name,criticality\nX,7\n")
        .await?;
    assert_eq!(status, 400);
    assert_eq!(fields(&body), ["line 2: criticality"]);
    let (status, _) = plant
        .post_csv(&tech, "/api/v1/assets/import", "name\nX\n")
        .await?;
    assert_eq!(status, 403);

    // Children may come before their parents in the file.
    let good = "name,site,area,parent,criticality,status,manufacturer,model,serial_number,installed_on,warranty_until,labels\n\
                Press 9 pump,,,Press 9,3,operational,Bosch Rexroth,A10VSO,\"SN-1, rev 2\",2021-05-01,2031-05-01,line=9\n\
                Press 9,,,Line 9,4,degraded,Schuler,,,,,line=9;zone=b\n\
                Line 9,North,Hall 2,,5,operational,,,,,,\n\
                Press 1,,,Line 9,,,,'=cmd,,,,\n";
    let (status, report) = plant
        .post_csv(&admin, "/api/v1/assets/import?dry_run=true", good)
        .await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({ "dry_run": true, "rows": 4, "created": 3, "updated": 1 })
    );
    let (_, list) = plant.get("/api/v1/assets", Some(&admin)).await?;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "a dry run writes nothing"
    );
    let (status, report) = plant
        .post_csv(&admin, "/api/v1/assets/import", good)
        .await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"], 3);
    let (_, pump) = plant.get("/api/v1/assets?q=pump", Some(&admin)).await?;
    let pump = &pump["items"][0];
    assert_eq!(pump["serial_number"], "SN-1, rev 2");
    assert_eq!(pump["labels"], json!({ "line": "9" }));
    assert_eq!(pump["site_id"], site_id, "on its parent's site");
    let (_, press_1) = plant
        .get("/api/v1/assets?q=press%201", Some(&admin))
        .await?;
    assert_eq!(
        press_1["items"][0]["model"], "=cmd",
        "the defused cell is taken back as written"
    );
    assert_eq!(
        press_1["items"][0]["site_id"], site_id,
        "moved with its new parent"
    );

    // The export imports back unchanged.
    let exported = get_text(&plant, &admin, "/api/v1/assets/export.csv").await?;
    assert!(exported.contains("'=cmd"), "{exported}");
    let (status, report) = plant
        .post_csv(&admin, "/api/v1/assets/import", &exported)
        .await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"], 0);
    assert_eq!(
        get_text(&plant, &admin, "/api/v1/assets/export.csv").await?,
        exported
    );

    // Tags: a gateway, an import linking tags to assets, an edit, the export.
    let (status, gw) = plant
        .send(
            Method::POST,
            "/api/v1/gateways",
            Some(&admin),
            Some(json!({ "code": "north-gw", "name": "North gateway" })),
        )
        .await?;
    assert_eq!(status, 201, "{gw}");
    let tags = "gateway,name,asset,unit,description,range_min,range_max,labels\n\
                north-gw,press9.pressure,Press 9,bar,Main pressure,0,350,signal=pressure\n\
                north-gw,press9.temp,Press 9 pump,degC,,,,\n\
                nowhere-gw,x,,,,,,\n";
    let (status, body) = plant.post_csv(&admin, "/api/v1/tags/import", tags).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), ["line 4: gateway"]);
    let tags = tags.lines().take(3).collect::<Vec<_>>().join("\n");
    let (status, report) = plant.post_csv(&admin, "/api/v1/tags/import", &tags).await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"], 2);
    let gw_id = gw["id"].as_str().context("gateway")?;
    let (_, listed) = plant
        .get(&format!("/api/v1/tags?gateway_id={gw_id}"), Some(&tech))
        .await?;
    let items = listed["items"].as_array().context("items")?;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["range_max"], 350.0);
    let tag_id = items[1]["id"].as_i64().context("tag id")?;
    let (status, body) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/tags/{tag_id}"),
            Some(&admin),
            Some(json!({ "range_min": 10, "range_max": 5 })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let (status, tag) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/tags/{tag_id}"),
            Some(&admin),
            Some(json!({ "asset_id": null, "range_min": -20, "range_max": 120 })),
        )
        .await?;
    assert_eq!(status, 200, "{tag}");
    assert!(tag["asset_id"].is_null());
    let (_, unlinked) = plant
        .get("/api/v1/tags?unlinked=true", Some(&admin))
        .await?;
    assert!(
        unlinked["items"]
            .as_array()
            .context("items")?
            .iter()
            .any(|t| t["id"] == tag_id)
    );
    let exported = get_text(&plant, &admin, "/api/v1/tags/export.csv").await?;
    assert!(
        exported
            .contains("north-gw,press9.pressure,Press 9,bar,Main pressure,0,350,signal=pressure"),
        "{exported}"
    );

    // Another tenant sees and changes none of it.
    let other = plant.login("plant-b").await?;
    let (status, _) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/tags/{tag_id}"),
            Some(&other),
            Some(json!({ "unit": "x" })),
        )
        .await?;
    assert_eq!(status, 404);
    let theirs = get_text(&plant, &other, "/api/v1/assets/export.csv").await?;
    assert!(!theirs.contains("Press 9"), "{theirs}");
    let (status, body) = plant
        .post_csv(
            &other,
            "/api/v1/assets/import?dry_run=true",
            "name,parent\nMine,Press 9\n",
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), ["line 2: parent"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_have_devices_that_tags_are_read_from() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let (_, gateways) = plant.get("/api/v1/gateways", Some(&admin)).await?;
    let gateway = gateways["items"][0]["id"]
        .as_str()
        .context("a gateway")?
        .to_owned();
    let devices = format!("/api/v1/gateways/{gateway}/devices");
    let (status, bad) = plant
        .send(
            Method::POST,
            &devices,
            Some(&admin),
            Some(json!({ "name": " ", "protocol": "profinet" })),
        )
        .await?;
    assert_eq!(status, 400, "{bad}");
    let fields = error_fields(&bad);
    assert_eq!(fields, ["name", "protocol"]);
    let plc = plant
        .send_ok(
            Method::POST,
            &devices,
            &admin,
            json!({ "name": "press-1-plc", "protocol": "modbus_tcp", "address": "10.1.4.20:502" }),
        )
        .await?;
    let plc_id = plc["id"].as_str().context("id")?.to_owned();
    assert_eq!(plc["tags"], 0);
    let (status, twice) = plant
        .send(
            Method::POST,
            &devices,
            Some(&admin),
            Some(json!({ "name": "press-1-plc", "protocol": "opcua" })),
        )
        .await?;
    assert_eq!(status, 400, "{twice}");
    assert_eq!(twice["error"]["details"][0]["field"], "name");

    // A tag names the device it is read from; the list counts it.
    let tag = plant
        .tag_id(plant.tenant_a.tenant, "press-1.bearing_temp")
        .await?;
    let linked = plant
        .send_ok(
            Method::PATCH,
            &format!("/api/v1/tags/{tag}"),
            &admin,
            json!({ "device_id": plc_id }),
        )
        .await?;
    assert_eq!(linked["device_id"], json!(plc_id));
    let (_, list) = plant.get(&devices, Some(&admin)).await?;
    assert_eq!(list["items"][0]["tags"], 1, "{list}");
    let (status, _) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/tags/{tag}"),
            Some(&admin),
            Some(json!({ "device_id": uuid::Uuid::new_v4() })),
        )
        .await?;
    assert_eq!(status, 400);

    // Changed, then removed: the tag stays and loses the link.
    let moved = plant
        .send_ok(
            Method::PATCH,
            &format!("/api/v1/devices/{plc_id}"),
            &admin,
            json!({ "address": "10.1.4.21:502" }),
        )
        .await?;
    assert_eq!(moved["address"], "10.1.4.21:502");
    assert_eq!(moved["protocol"], "modbus_tcp");
    let (status, _) = plant
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{plc_id}"),
            Some(&admin),
            None,
        )
        .await?;
    assert_eq!(status, 204);
    let (_, tag_after) = plant.get("/api/v1/tags?limit=1000", Some(&admin)).await?;
    let row = tag_after["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|t| t["id"] == tag)
        .context("the tag")?;
    assert_eq!(row["device_id"], Value::Null);

    // Another tenant sees neither the gateway's devices nor the device.
    let other = plant.login("plant-b").await?;
    let (status, _) = plant.get(&devices, Some(&other)).await?;
    assert_eq!(status, 404);
    Ok(())
}
