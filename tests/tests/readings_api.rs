//! The readings queries: raw when the readings fit, buckets when they do not, explicit bucket
//! widths and raw pages, an asset's series, tenants and strict parameters. Needs
//! `scripts/test.sh`.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use maintainpro_tests::{Plant, error_fields};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// 2025-03-01T00:00:00Z: a day boundary, so on every bucket grid used here but the odd widths.
const T0: i64 = 1_740_787_200;
/// Readings of the bearing temperature: one a second from `T0`.
const N: i64 = 3000;

#[derive(Debug, Clone, Copy)]
struct Stored {
    secs: i64,
    value: f64,
    quality: i16,
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("in range")
}

/// `T0 + offset` seconds, as the query wants it.
fn time(offset: i64) -> String {
    at(T0 + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A saw-tooth with a slow rise; every 50th reading bad and every 70th uncertain.
fn bearing_temp() -> Vec<Stored> {
    (0..N)
        .map(|i| Stored {
            secs: T0 + i,
            value: ((i * 37) % 101) as f64 / 4.0 + (i / 500) as f64,
            quality: if i % 50 == 7 {
                2
            } else if i % 70 == 3 {
                1
            } else {
                0
            },
        })
        .collect()
}

/// Readings go straight into `readings` (the application role may insert, not read); those of
/// days without a partition land in the default partition, where queries find them too.
async fn insert(pool: &PgPool, tag: i64, readings: &[Stored]) -> anyhow::Result<()> {
    let ts: Vec<DateTime<Utc>> = readings.iter().map(|r| at(r.secs)).collect();
    let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
    let qualities: Vec<i16> = readings.iter().map(|r| r.quality).collect();
    sqlx::query(
        "INSERT INTO readings (tag_id, ts, value, quality)
         SELECT $1, ts, value, quality
         FROM UNNEST($2::timestamptz[], $3::float8[], $4::int2[]) AS r (ts, value, quality)",
    )
    .bind(tag)
    .bind(ts)
    .bind(values)
    .bind(qualities)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Expected {
    start: i64,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
    count: i64,
    bad: i64,
}

/// The buckets of `width` seconds, aligned to the epoch, of the readings in `[from, to)`.
fn buckets(readings: &[Stored], from: i64, to: i64, width: i64) -> Vec<Expected> {
    let mut by_start: BTreeMap<i64, Expected> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.secs >= from && r.secs < to) {
        let start = r.secs.div_euclid(width) * width;
        let b = by_start.entry(start).or_insert(Expected {
            start,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            last: 0.0,
            count: 0,
            bad: 0,
        });
        b.min = b.min.min(r.value);
        b.max = b.max.max(r.value);
        b.sum += r.value;
        b.last = r.value;
        b.count += 1;
        b.bad += i64::from(r.quality != 0);
    }
    by_start.into_values().collect()
}

fn ts_of(v: &Value) -> anyhow::Result<i64> {
    let s = v.as_str().context("a timestamp")?;
    Ok(DateTime::parse_from_rfc3339(s)?.timestamp())
}

/// Checks a bucketed series against the buckets computed here from what was stored.
fn assert_buckets(series: &Value, readings: &[Stored], from: i64, to: i64) -> anyhow::Result<()> {
    assert_eq!(series["mode"], "buckets", "{series}");
    let width = series["bucket_seconds"]
        .as_i64()
        .context("bucket_seconds")?;
    let points = series["points"].as_array().context("points")?;
    let expected = buckets(readings, T0 + from, T0 + to, width);
    assert_eq!(points.len(), expected.len(), "{series}");
    for (p, e) in points.iter().zip(&expected) {
        assert_eq!(ts_of(&p["start"])?, e.start, "{p}");
        assert_eq!(p["min"].as_f64(), Some(e.min), "{p}");
        assert_eq!(p["max"].as_f64(), Some(e.max), "{p}");
        assert_eq!(p["last"].as_f64(), Some(e.last), "{p}");
        assert_eq!(p["count"].as_i64(), Some(e.count), "{p}");
        assert_eq!(p["bad"].as_i64(), Some(e.bad), "{p}");
        let avg = p["avg"].as_f64().context("avg")?;
        let mean = e.sum / e.count as f64;
        assert!((avg - mean).abs() < 1e-9, "{p}: mean {mean}");
    }
    Ok(())
}

fn points(series: &Value) -> anyhow::Result<&Vec<Value>> {
    series["points"].as_array().context("points")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_answered_raw_or_in_buckets_within_the_point_cap() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let tag = plant.tag_id(tenant, "press-1.bearing_temp").await?;
    let vibration = plant.tag_id(tenant, "press-1.vibration").await?;
    let pool = plant.db.app_pool().await;
    let stored = bearing_temp();
    insert(&pool, tag, &stored).await?;
    let few: Vec<Stored> = (0..10)
        .map(|i| Stored {
            secs: T0 + 10 * i,
            value: i as f64,
            quality: 0,
        })
        .collect();
    insert(&pool, vibration, &few).await?;
    let admin = plant.login("plant-a").await?;
    let readings = |query: String| format!("/api/v1/tags/{tag}/readings?{query}");

    // Up to max_points readings: raw, every one of them, `to` excluded.
    let (status, body) = plant
        .get(
            &readings(format!("from={}&to={}", time(0), time(1000))),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "raw", "{body}");
    assert!(body["bucket_seconds"].is_null());
    assert_eq!(body["truncated"], false);
    assert!(body["next_from"].is_null());
    assert_eq!(body["tag"]["id"], tag);
    assert_eq!(body["tag"]["name"], "press-1.bearing_temp");
    assert_eq!(body["tag"]["unit"], "degC");
    let asset = body["tag"]["asset_id"]
        .as_str()
        .context("asset_id")?
        .to_owned();
    let raw = points(&body)?;
    assert_eq!(raw.len(), 1000);
    for (p, s) in raw.iter().zip(&stored) {
        assert_eq!(ts_of(&p["ts"])?, s.secs, "{p}");
        assert_eq!(p["value"].as_f64(), Some(s.value), "{p}");
    }
    assert_eq!(raw[0]["quality"], "good");
    assert_eq!(raw[3]["quality"], "uncertain");
    assert_eq!(raw[7]["quality"], "bad");

    // More than max_points: buckets of ceil(span / max_points) on the epoch's grid.
    let (status, body) = plant
        .get(
            &readings(format!("from={}&to={}&max_points=100", time(0), time(N))),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bucket_seconds"], 30, "{body}");
    assert_eq!(points(&body)?.len(), 100);
    assert_eq!(body["truncated"], false);
    assert_buckets(&body, &stored, 0, N)?;
    let (_, body) = plant
        .get(
            &readings(format!("from={}&to={}", time(0), time(N))),
            Some(&admin),
        )
        .await?;
    assert_eq!(body["bucket_seconds"], 3, "{body}");
    assert_eq!(points(&body)?.len(), 1000);
    assert_buckets(&body, &stored, 0, N)?;

    // Off the grid, 30 s buckets would be 101 of them: a wider width keeps the cap.
    let (status, body) = plant
        .get(
            &readings(format!(
                "from={}&to={}&max_points=100",
                time(15),
                time(N + 15)
            )),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["bucket_seconds"].as_i64() > Some(30), "{body}");
    assert!(points(&body)?.len() <= 100, "{body}");
    assert_eq!(body["truncated"], false);
    assert_buckets(&body, &stored, 15, N + 15)?;
    let counted: i64 = points(&body)?
        .iter()
        .filter_map(|p| p["count"].as_i64())
        .sum();
    assert_eq!(counted, N - 15);

    // An explicit width: as asked, or refused when it would give more than max_points.
    let (status, body) = plant
        .get(
            &readings(format!("from={}&to={}&bucket=1m", time(0), time(N))),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bucket_seconds"], 60, "{body}");
    assert_eq!(points(&body)?.len(), 50);
    assert_buckets(&body, &stored, 0, N)?;
    let (status, body) = plant
        .get(
            &readings(format!(
                "from={}&to={}&bucket=10s&max_points=100",
                time(0),
                time(N)
            )),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid", "{body}");
    assert_eq!(error_fields(&body), ["bucket"], "{body}");
    let message = body["error"]["details"][0]["message"]
        .as_str()
        .context("message")?;
    assert!(message.contains("at least 30s"), "{message}");

    // Raw on request: the first max_points, then the next page from next_from.
    let mut from = time(0);
    for page in 0..3 {
        let (status, body) = plant
            .get(
                &readings(format!("from={from}&to={}&bucket=raw", time(N))),
                Some(&admin),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["mode"], "raw");
        let raw = points(&body)?;
        assert_eq!(raw.len(), 1000, "page {page}");
        assert_eq!(ts_of(&raw[0]["ts"])?, T0 + 1000 * page);
        if page < 2 {
            assert_eq!(body["truncated"], true, "{body}");
            assert_eq!(ts_of(&body["next_from"])?, T0 + 1000 * (page + 1));
            from = body["next_from"].as_str().context("next_from")?.to_owned();
        } else {
            assert_eq!(body["truncated"], false, "{body}");
            assert!(body["next_from"].is_null());
        }
    }

    // The asset: one series per tag, by name, each resolved on its own.
    let (status, body) = plant
        .get(
            &format!(
                "/api/v1/assets/{asset}/readings?from={}&to={}&max_points=100",
                time(0),
                time(N)
            ),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["asset_id"], asset.as_str());
    assert_eq!(ts_of(&body["from"])?, T0);
    assert_eq!(ts_of(&body["to"])?, T0 + N);
    let series = body["series"].as_array().context("series")?;
    let names: Vec<&str> = series
        .iter()
        .filter_map(|s| s["tag"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "press-1.bearing_temp",
            "press-1.cycle_count",
            "press-1.motor_current",
            "press-1.vibration"
        ]
    );
    assert_buckets(&series[0], &stored, 0, N)?;
    assert_eq!(series[1]["mode"], "raw");
    assert_eq!(points(&series[1])?.len(), 0);
    assert_eq!(series[3]["mode"], "raw");
    let values: Vec<f64> = points(&series[3])?
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .collect();
    assert_eq!(values, few.iter().map(|r| r.value).collect::<Vec<_>>());
    let (status, body) = plant
        .get(
            &format!(
                "/api/v1/assets/{asset}/readings?from={}&to={}&tag=press-1.vibration",
                time(0),
                time(N)
            ),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["series"][0]["tag"]["id"], vibration);

    // Any role reads.
    plant.add_user("viewer@example.com", "viewer").await?;
    let viewer = plant.login_as("plant-a", "viewer@example.com").await?;
    let (status, body) = plant
        .get(
            &readings(format!("from={}&to={}", time(0), time(10))),
            Some(&viewer),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(points(&body)?.len(), 10);

    // Another tenant: 404 for this tenant's tag and asset, and its own tag shows nothing of
    // this tenant's readings. A tag that does not exist: 404 too.
    let other = plant.login("plant-b").await?;
    let window = format!("from={}&to={}", time(0), time(N));
    let (status, body) = plant.get(&readings(window.clone()), Some(&other)).await?;
    assert_eq!(status, 404, "{body}");
    let asset_path = format!("/api/v1/assets/{asset}/readings?{window}");
    let (status, body) = plant.get(&asset_path, Some(&other)).await?;
    assert_eq!(status, 404, "{body}");
    let own = plant
        .tag_id(plant.tenant_b.tenant, "press-1.bearing_temp")
        .await?;
    let (status, body) = plant
        .get(
            &format!("/api/v1/tags/{own}/readings?{window}"),
            Some(&other),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(points(&body)?.len(), 0, "{body}");
    let missing = own.max(tag).max(vibration) + 1000;
    let (status, body) = plant
        .get(
            &format!("/api/v1/tags/{missing}/readings?{window}"),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = plant
        .get(
            &format!("/api/v1/assets/{}/readings?{window}", Uuid::new_v4()),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 404, "{body}");

    // Strict parameters: unknown keys and every wrong value refused, each field named.
    for (query, fields) in [
        (format!("{window}&limit=5"), vec![]),
        ("from=yesterday&to=today".to_owned(), vec!["from", "to"]),
        (format!("from={}&to={}", time(10), time(0)), vec!["from"]),
        (
            format!("from={}&to={}", time(0), time(367 * 86_400)),
            vec!["from"],
        ),
        (
            format!("{window}&max_points=0&bucket=500ms"),
            vec!["max_points", "bucket"],
        ),
        (format!("{window}&max_points=10001"), vec!["max_points"]),
    ] {
        let (status, body) = plant.get(&readings(query.clone()), Some(&admin)).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(error_fields(&body), fields, "{query}: {body}");
    }
    let (status, body) = plant
        .get(
            &format!("/api/v1/assets/{asset}/readings?{window}&tag="),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_fields(&body), ["tag"], "{body}");
    let (status, body) = plant
        .get(
            &format!("/api/v1/tags/{tag}/readings?{window}&tag=x"),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 400, "{body}");

    // Without a window: the last 24 hours, which hold none of these readings.
    let (status, body) = plant.get(&readings(String::new()), Some(&admin)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "raw");
    assert_eq!(points(&body)?.len(), 0);
    let span = ts_of(&body["to"])? - ts_of(&body["from"])?;
    assert_eq!(TimeDelta::seconds(span), TimeDelta::hours(24));
    let (status, _) = plant.get(&readings(String::new()), None).await?;
    assert_eq!(status, 401);

    plant.services.stop().await;
    Ok(())
}
