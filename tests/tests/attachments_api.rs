//! Work-order attachments: stored on disk, typed by their bytes, limited in size, readable by
//! who may see the work order only. Needs `scripts/test.sh`.

use anyhow::Context;
use maintainpro_tests::Plant;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR fake but typed by its signature";

async fn upload(
    plant: &Plant,
    token: &str,
    wo: Uuid,
    name: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/work-orders/{wo}/attachments", plant.api),
        &[("filename", name)],
    )?;
    let res = plant
        .http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_typed_limited_and_kept_to_their_tenant() -> anyhow::Result<()> {
    let plant = Plant::start_with_api(|api| api.attachment_max_bytes = 4096).await?;
    let admin = plant.login("plant-a").await?;
    plant.add_user("req@plant-a.example", "requester").await?;
    plant.add_user("viewer@plant-a.example", "viewer").await?;
    let requester = plant.login_as("plant-a", "req@plant-a.example").await?;
    let viewer = plant.login_as("plant-a", "viewer@plant-a.example").await?;
    let (_, assets) = plant.get("/api/v1/assets", Some(&admin)).await?;
    let asset = assets["items"][0]["id"]
        .as_str()
        .context("asset")?
        .to_owned();
    let (_, wo) = plant
        .send(
            Method::POST,
            "/api/v1/work-orders",
            Some(&admin),
            Some(json!({ "asset_id": asset, "title": "Cracked guard" })),
        )
        .await?;
    let wo: Uuid = wo["id"].as_str().context("id")?.parse()?;

    let (status, photo) = upload(&plant, &admin, wo, "../guard \"left\".png", PNG.to_vec()).await?;
    assert_eq!(status, 201, "{photo}");
    assert_eq!(photo["content_type"], "image/png");
    assert_eq!(photo["filename"], "guard left.png");
    let photo_id = photo["id"].as_str().context("id")?.to_owned();

    // The type comes from the bytes: an executable named .pdf is refused, whatever it claims.
    let (status, body) = upload(
        &plant,
        &admin,
        wo,
        "report.pdf",
        b"MZ\x90\0\x03\0\0\0".to_vec(),
    )
    .await?;
    assert_eq!(status, 415, "{body}");
    // Too large: 413, nothing stored.
    let (status, _) = upload(&plant, &admin, wo, "big.txt", vec![b'a'; 5000]).await?;
    assert_eq!(status, 413);
    let (status, _) = upload(&plant, &viewer, wo, "v.txt", b"hi".to_vec()).await?;
    assert_eq!(status, 403);
    // A requester reaches only their own requests.
    let (status, _) = upload(&plant, &requester, wo, "r.txt", b"hi".to_vec()).await?;
    assert_eq!(status, 404);

    // Downloaded as stored; listed on the work order.
    let res = plant
        .http
        .get(format!(
            "{}/api/v1/work-orders/{wo}/attachments/{photo_id}",
            plant.api
        ))
        .bearer_auth(&viewer)
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"guard left.png\""
    );
    assert_eq!(res.bytes().await?.as_ref(), PNG);
    let (_, detail) = plant
        .get(&format!("/api/v1/work-orders/{wo}"), Some(&viewer))
        .await?;
    assert_eq!(
        detail["attachments"].as_array().map(Vec::len),
        Some(1),
        "{detail}"
    );
    assert!(
        detail["events"]
            .as_array()
            .context("events")?
            .iter()
            .any(|e| e["kind"] == "attachment_added")
    );

    // Another tenant: 404 for the file and the work order alike.
    let other = plant.login("plant-b").await?;
    let path = format!("/api/v1/work-orders/{wo}/attachments/{photo_id}");
    let (status, _) = plant.get(&path, Some(&other)).await?;
    assert_eq!(status, 404);
    let (status, _) = upload(&plant, &other, wo, "x.txt", b"x".to_vec()).await?;
    assert_eq!(status, 404);
    let (status, _) = plant
        .send(Method::DELETE, &path, Some(&other), None)
        .await?;
    assert_eq!(status, 404);

    // Removed by an admin: gone from disk and list.
    let (status, _) = plant
        .send(Method::DELETE, &path, Some(&admin), None)
        .await?;
    assert_eq!(status, 204);
    let (status, _) = plant.get(&path, Some(&admin)).await?;
    assert_eq!(status, 404);
    Ok(())
}
