//! Backtests against a real PostgreSQL (the cluster named by `MPTEST_PG_ADMIN_URL`, or a
//! throwaway one started for this test process), each test in a fresh migrated database:
//! history read through the tenant-scoped view, past work orders classified, and the same
//! backtest from an exported history file giving the same result.

use std::error::Error;
use std::sync::Arc;

use backtest::analysis::{Change, RuleMetrics};
use backtest::run::{self, Plan};
use backtest::{BacktestError, Settings, Window};
use chrono::{DateTime, TimeZone, Utc};
use migrations::testing::TestDatabase;
use model::Timestamp;
use rules::RuleSet;
use sqlx::PgPool;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn Error>>;

const SLUG: &str = "acme-plant";

/// The start of the seeded history: readings every second for 3000 s.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0)
        .single()
        .expect("a valid date")
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_datetime(t0()).plus_micros(seconds * 1_000_000)
}

fn rule_file(above: f64) -> Arc<RuleSet> {
    let text = format!(
        r#"
version = 1

[[rule]]
id = "bearing-hot"
tags = ["press-*.bearing_temp"]
severity = "high"
failure_mode = "bearing-overheat"
on_delay = "5s"

[rule.threshold]
above = {above:.1}
clear_below = 80.0

[rule.work_order]
title = "Bearing overheating on {{asset}}"
"#
    );
    match RuleSet::parse("bearing.toml", &text) {
        Ok(r) => Arc::new(r),
        Err(d) => panic!("the test rule file is valid: {d:?}"),
    }
}

struct Seeded {
    tenant: Uuid,
    asset: Uuid,
    tag: i64,
}

/// Creates, as the app role, a tenant with a site, an asset, a gateway and a bearing tag.
async fn seed_tenant(app: &PgPool, slug: &str) -> Result<Seeded, sqlx::Error> {
    let (tenant, site, asset, gateway) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let mut tx = migrations::begin_tenant(app, tenant).await?;
    sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, $2, $2)")
        .bind(tenant)
        .bind(slug)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO sites (id, tenant_id, name) VALUES ($1, $2, 'North plant')")
        .bind(site)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO assets (id, tenant_id, site_id, name, criticality) \
         VALUES ($1, $2, $3, 'Press 1', 4)",
    )
    .bind(asset)
    .bind(tenant)
    .bind(site)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO gateways (id, tenant_id, code, name) VALUES ($1, $2, 'gw-1', 'Gateway 1')",
    )
    .bind(gateway)
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    let tag: i64 = sqlx::query_scalar(
        "INSERT INTO tags (tenant_id, gateway_id, name, asset_id, unit) \
         VALUES ($1, $2, 'press-1.bearing_temp', $3, 'degC') RETURNING id",
    )
    .bind(tenant)
    .bind(gateway)
    .bind(asset)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Seeded { tenant, asset, tag })
}

/// Readings every second for `seconds` s from [`t0`]: 60.0, except `value` during each of
/// `breaches` (start second, length in seconds). Inserted as the app role, which may write
/// readings but read them only through `tenant_readings`.
async fn insert_readings(
    app: &PgPool,
    tag: i64,
    seconds: i64,
    breaches: &[(i64, i64, f64)],
) -> Result<(), sqlx::Error> {
    let starts: Vec<i64> = breaches.iter().map(|b| b.0).collect();
    let ends: Vec<i64> = breaches.iter().map(|b| b.0 + b.1).collect();
    let values: Vec<f64> = breaches.iter().map(|b| b.2).collect();
    sqlx::query(
        "INSERT INTO readings (tag_id, ts, value, quality)
         SELECT $1, $2 + make_interval(secs => i),
                coalesce((SELECT b.value FROM unnest($4::bigint[], $5::bigint[], $6::float8[])
                              AS b(start, stop, value)
                          WHERE i >= b.start AND i < b.stop LIMIT 1), 60.0),
                0
         FROM generate_series(0, $3 - 1) AS i",
    )
    .bind(tag)
    .bind(t0())
    .bind(seconds)
    .bind(&starts)
    .bind(&ends)
    .bind(&values)
    .execute(app)
    .await?;
    Ok(())
}

/// A closed work order of the bearing's failure mode, created `seconds` after [`t0`].
async fn insert_work_order(
    app: &PgPool,
    seeded: &Seeded,
    seconds: i64,
    status: &str,
    resolution: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = migrations::begin_tenant(app, seeded.tenant).await?;
    let created = t0() + chrono::Duration::seconds(seconds);
    sqlx::query(
        "INSERT INTO work_orders (id, tenant_id, asset_id, title, priority, status, failure_mode, \
                                  source, resolution, created_at, closed_at) \
         VALUES ($1, $2, $3, 'Bearing overheating', 'high', $4, 'bearing-overheat', 'rule', $5, \
                 $6, $6 + interval '2 hours')",
    )
    .bind(Uuid::new_v4())
    .bind(seeded.tenant)
    .bind(seeded.asset)
    .bind(status)
    .bind(resolution)
    .bind(created)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// [`run::from_file`] on a blocking thread, as async code must call it.
async fn from_file(path: &std::path::Path, plan: &Plan) -> Result<run::Outcome, Box<dyn Error>> {
    let (path, plan) = (path.to_owned(), plan.clone());
    Ok(
        tokio::task::spawn_blocking(move || run::from_file(&path, None, None, &plan, &mut |_| {}))
            .await??,
    )
}

fn metrics_of(outcome: &run::Outcome, rule: &str) -> (Change, RuleMetrics, Option<RuleMetrics>) {
    let report = outcome
        .analysis
        .rules
        .iter()
        .find(|r| r.rule == rule)
        .unwrap_or_else(|| panic!("{rule} is in the report"));
    (
        report.change,
        report.current.unwrap_or_else(|| panic!("{rule} ran")),
        report.baseline,
    )
}

#[tokio::test]
async fn a_backtest_replays_the_tenants_history_and_a_history_file_gives_the_same_result()
-> TestResult {
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let seeded = seed_tenant(&app, SLUG).await?;
    // Two breaches: 90 for 100 s at 1000 s, 95 for 50 s at 2000 s.
    insert_readings(
        &app,
        seeded.tag,
        3000,
        &[(1000, 100, 90.0), (2000, 50, 95.0)],
    )
    .await?;
    // A real failure 10 min after the first predicted opening (1005 s), and a cancelled work
    // order a minute after the second (2005 s).
    insert_work_order(&app, &seeded, 1605, "completed", Some("fixed")).await?;
    insert_work_order(&app, &seeded, 2065, "cancelled", None).await?;
    // Another tenant with a tag of the same name, hot all the time: never part of the result.
    let other = seed_tenant(&app, "other-plant").await?;
    insert_readings(&app, other.tag, 3000, &[(0, 3000, 99.0)]).await?;

    let window = Window::new(at(0), at(3000))?;
    let plan = Plan {
        rules: rule_file(85.0),
        baseline: Some(rule_file(92.0)),
        settings: Settings::default(),
    };
    let mut reports = 0;
    let live = run::from_database(&app, SLUG, window, &plan, &mut |_| reports += 1).await?;
    assert!(reports >= 1);
    assert_eq!(live.tenant, SLUG);
    assert_eq!(live.unknown_tags, 0);
    let stats = live.analysis.stats;
    assert_eq!((stats.readings, stats.evaluated), (3000, 3000));
    assert_eq!(stats.first_reading, Some(at(0)));
    assert_eq!(stats.last_reading, Some(at(2999)));
    assert_eq!(live.analysis.past_work_orders, Some(2));

    let (change, current, baseline) = metrics_of(&live, "bearing-hot");
    assert_eq!(change, Change::Changed);
    // Raised after the 5 s on-delay (1005 s, 2005 s), cleared at 1100 s and 2050 s.
    assert_eq!(
        current,
        RuleMetrics {
            alarms: 2,
            work_orders: 2,
            time_in_alarm: (95 + 45) * 1_000_000,
            flaps: 0,
            escalations: 0,
            active_at_end: 0,
            matched_failure: 1,
            matched_no_fault: 1,
            matched_open: 0,
            matched_other: 0,
            unmatched: 0,
            failures_caught: 1,
            failures_missed: 0,
        }
    );
    // The baseline's limit (92) sees only the second breach; its one work order's nearest
    // match is the cancelled one, though the real failure lies within its match window.
    assert_eq!(
        baseline,
        Some(RuleMetrics {
            alarms: 1,
            work_orders: 1,
            time_in_alarm: 45 * 1_000_000,
            matched_no_fault: 1,
            failures_caught: 1,
            ..RuleMetrics::default()
        })
    );

    // The same backtest offline, from an exported history file.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("acme.parquet");
    let export = run::export(&app, SLUG, window, &path, &mut |_| {}).await?;
    assert_eq!(export.readings, 3000);
    assert_eq!(export.tags, 1);
    assert_eq!(export.work_orders, 2);
    assert!(export.work_orders_path.exists());
    let offline = from_file(&path, &plan).await?;
    assert_eq!(offline, live);

    // A wider flap window turns the second raise into a flap, offline as from the database.
    let wide = Plan {
        settings: Settings {
            flap_window: std::time::Duration::from_secs(20 * 60),
            ..Settings::default()
        },
        ..plan
    };
    let offline = from_file(&path, &wide).await?;
    let live = run::from_database(&app, SLUG, window, &wide, &mut |_| {}).await?;
    assert_eq!(metrics_of(&offline, "bearing-hot").1.flaps, 1);
    assert_eq!(offline, live);
    Ok(())
}

#[tokio::test]
async fn an_unknown_tenant_is_named_in_the_error() -> TestResult {
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let plan = Plan {
        rules: rule_file(85.0),
        baseline: None,
        settings: Settings::default(),
    };
    let window = Window::new(at(0), at(10))?;
    let err = run::from_database(&app, "nobody", window, &plan, &mut |_| {})
        .await
        .expect_err("no such tenant");
    assert!(matches!(err, BacktestError::UnknownTenant { .. }), "{err}");
    assert!(err.to_string().contains("\"nobody\""), "{err}");
    Ok(())
}
