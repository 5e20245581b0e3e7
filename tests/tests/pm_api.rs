//! Preventive maintenance through the API and the scheduler: a monthly calendar in a DST zone
//! across month ends, generation a lead ahead, nothing twice after a restart, skipped and late
//! occurrences after an outage; a meter schedule on a counter tag; a cron calendar on local
//! weekdays across DST. Needs `scripts/test.sh`.

use std::time::Duration;

use anyhow::Context;
use api::routes::pm::{RunSummary, run_due};
use chrono::{DateTime, Utc};
use maintainpro_tests::{Plant, error_fields};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().expect("a time")
}

fn id_of(v: &Value) -> anyhow::Result<Uuid> {
    Ok(v["id"].as_str().context("id")?.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_generate_work_orders_once_and_show_what_they_skipped() -> anyhow::Result<()> {
    // The scheduler task runs once at start (nothing is due then) and not again in this test:
    // the test runs the rounds itself, at chosen times.
    let plant = Plant::start_with_api(|api| api.pm_interval = Duration::from_secs(3600)).await?;
    let tenant = plant.tenant_a.tenant;
    let admin = plant.login("plant-a").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let pool = plant.db.app_pool().await;
    let (_, assets) = plant.get("/api/v1/assets", Some(&admin)).await?;
    let asset = id_of(&assets["items"][0])?;

    // Technicians do not plan; every problem of a schedule at once.
    let (status, _) = plant
        .send(
            Method::POST,
            "/api/v1/pm-schedules",
            Some(&tech),
            Some(json!({})),
        )
        .await?;
    assert!(status == 403 || status == 400, "{status}");
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/pm-schedules",
            Some(&admin),
            Some(json!({ "name": "x", "asset_id": asset, "title": "x",
                         "calendar": { "start": "2027-01-31T08:00:00", "zone": "Mars/Olympus",
                                       "every": "1 fortnight" } })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let fields = error_fields(&body);
    assert_eq!(fields, ["calendar.zone", "calendar.every"]);

    let (status, schedule) = plant
        .send(
            Method::POST,
            "/api/v1/pm-schedules",
            Some(&admin),
            Some(json!({
                "name": "Press 1 monthly lubrication",
                "asset_id": asset,
                "title": "Lubricate Press 1",
                "checklist": ["Grease the guide rails", "Check the oil level"],
                "assignee_user": tech_id,
                "calendar": { "start": "2027-01-31T08:00:00", "zone": "Europe/Berlin",
                              "every": "1 month", "lead": "3d" }
            })),
        )
        .await?;
    assert_eq!(status, 201, "{schedule}");
    let schedule_id = id_of(&schedule)?;
    assert_eq!(
        schedule["upcoming"],
        json!([
            "2027-01-31T07:00:00Z",
            "2027-02-28T07:00:00Z",
            "2027-03-31T06:00:00Z",
            "2027-04-30T06:00:00Z",
            "2027-05-31T06:00:00Z"
        ]),
        "month ends, and 08:00 Berlin time across the DST change"
    );

    // Before the lead window: nothing. In it: the first occurrence, once, even run twice.
    assert_eq!(
        run_due(&pool, utc("2027-01-27T00:00:00Z")).await?,
        RunSummary::default()
    );
    let first = run_due(&pool, utc("2027-01-28T08:00:00Z")).await?;
    assert_eq!(
        first,
        RunSummary {
            generated: 1,
            skipped: 0
        }
    );
    assert_eq!(
        run_due(&pool, utc("2027-01-28T08:00:00Z")).await?,
        RunSummary::default()
    );
    let (_, list) = plant
        .get("/api/v1/work-orders?source=pm", Some(&tech))
        .await?;
    let items = list["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1, "{list}");
    let wo = &items[0];
    assert_eq!(wo["due_at"], "2027-01-31T07:00:00Z");
    assert_eq!(wo["work_type"], "preventive");
    assert_eq!(wo["status"], "assigned");
    assert_eq!(wo["assignee_user"], tech_id.to_string());
    let (_, detail) = plant
        .get(
            &format!("/api/v1/work-orders/{}", wo["id"].as_str().unwrap_or("")),
            Some(&tech),
        )
        .await?;
    assert_eq!(detail["checklist"][1]["text"], "Check the oil level");
    assert_eq!(detail["events"][0]["kind"], "opened_by_schedule");

    // The scheduler was down until the end of May: February and March are skipped, April is
    // generated late, May (within its lead window, still ahead) on time.
    let after_outage = run_due(&pool, utc("2027-05-29T00:00:00Z")).await?;
    assert_eq!(
        after_outage,
        RunSummary {
            generated: 2,
            skipped: 2
        }
    );
    let (_, schedule) = plant
        .get(&format!("/api/v1/pm-schedules/{schedule_id}"), Some(&tech))
        .await?;
    let seen: Vec<(i64, String, bool)> = schedule["occurrences"]
        .as_array()
        .context("occurrences")?
        .iter()
        .map(|o| {
            (
                o["n"].as_i64().unwrap_or(-1),
                o["status"].as_str().unwrap_or("").to_owned(),
                o["late"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (4, "generated".to_owned(), false),
            (3, "generated".to_owned(), true),
            (2, "skipped".to_owned(), false),
            (1, "skipped".to_owned(), false),
            (0, "generated".to_owned(), false),
        ]
    );
    assert_eq!(schedule["upcoming"][0], "2027-06-30T06:00:00Z");

    // Paused: nothing more.
    let (status, _) = plant
        .send(
            Method::PATCH,
            &format!("/api/v1/pm-schedules/{schedule_id}"),
            Some(&admin),
            Some(json!({ "active": false })),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        run_due(&pool, utc("2027-09-01T00:00:00Z")).await?,
        RunSummary::default()
    );

    // A meter schedule: every 500 operating hours of a counter, 50 hours ahead.
    let counter = plant.tag_id(tenant, "press-1.bearing_temp").await?;
    let (status, meter) = plant
        .send(
            Method::POST,
            "/api/v1/pm-schedules",
            Some(&admin),
            Some(json!({ "name": "Press 1 500 h service", "asset_id": asset,
                         "title": "500-hour service",
                         "meter": { "tag_id": counter, "start": 0, "every": 500, "lead": 50 } })),
        )
        .await?;
    assert_eq!(status, 201, "{meter}");
    let meter_id = id_of(&meter)?;
    let reading = |value: f64, at: &str| {
        let pool = pool.clone();
        let at = utc(at);
        async move {
            sqlx::query("INSERT INTO readings (tag_id, ts, value, quality) VALUES ($1, $2, $3, 0)")
                .bind(counter)
                .bind(at)
                .bind(value)
                .execute(&pool)
                .await
        }
    };
    reading(420.0, "2026-11-01T00:00:00Z").await?;
    assert_eq!(run_due(&pool, Utc::now()).await?, RunSummary::default());
    reading(460.0, "2026-11-02T00:00:00Z").await?;
    assert_eq!(
        run_due(&pool, Utc::now()).await?,
        RunSummary {
            generated: 1,
            skipped: 0
        }
    );
    reading(1600.0, "2026-11-03T00:00:00Z").await?;
    assert_eq!(
        run_due(&pool, Utc::now()).await?,
        RunSummary {
            generated: 1,
            skipped: 1
        }
    );
    let (_, meter) = plant
        .get(&format!("/api/v1/pm-schedules/{meter_id}"), Some(&admin))
        .await?;
    assert_eq!(meter["handled"], 2);
    assert_eq!(meter["occurrences"][0]["late"], true);

    // Another tenant sees none of it.
    let other = plant.login("plant-b").await?;
    let (status, _) = plant
        .get(&format!("/api/v1/pm-schedules/{schedule_id}"), Some(&other))
        .await?;
    assert_eq!(status, 404);
    let (_, list) = plant.get("/api/v1/pm-schedules", Some(&other)).await?;
    assert_eq!(list["items"], json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedules_generate_on_their_local_weekdays() -> anyhow::Result<()> {
    let plant = Plant::start_with_api(|api| api.pm_interval = Duration::from_secs(3600)).await?;
    let admin = plant.login("plant-a").await?;
    let pool = plant.db.app_pool().await;
    let (_, assets) = plant.get("/api/v1/assets", Some(&admin)).await?;
    let asset = id_of(&assets["items"][0])?;
    let create = |every: &str| {
        json!({ "name": format!("inspection {every}"), "asset_id": asset,
                "title": "Weekly guard inspection", "work_type": "inspection",
                "calendar": { "start": "2027-03-22T00:00:00", "zone": "Europe/Berlin",
                              "every": every, "lead": "1d" } })
    };
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/pm-schedules",
            Some(&admin),
            Some(create("cron 0 6 * * mon-fry")),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "calendar.every");
    assert!(
        body["error"]["details"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cron")),
        "{body}"
    );

    // Mondays and Thursdays at 06:00 Berlin time, over the spring DST change (2027-03-28).
    let (status, schedule) = plant
        .send(
            Method::POST,
            "/api/v1/pm-schedules",
            Some(&admin),
            Some(create("cron 0 6 * * mon,thu")),
        )
        .await?;
    assert_eq!(status, 201, "{schedule}");
    assert_eq!(schedule["cal_every"], "cron 0 6 * * mon,thu");
    assert_eq!(
        schedule["upcoming"],
        json!([
            "2027-03-22T05:00:00Z",
            "2027-03-25T05:00:00Z",
            "2027-03-29T04:00:00Z",
            "2027-04-01T04:00:00Z",
            "2027-04-05T04:00:00Z"
        ])
    );
    // On Wednesday the 24th, 07:00 local: Monday's occurrence is past (the latest past one:
    // generated late), Thursday's is within its one-day lead window (generated on time).
    let run = run_due(&pool, utc("2027-03-24T06:00:00Z")).await?;
    assert_eq!(
        run,
        RunSummary {
            generated: 2,
            skipped: 0
        }
    );
    assert_eq!(
        run_due(&pool, utc("2027-03-24T06:00:00Z")).await?,
        RunSummary::default(),
        "nothing twice"
    );
    let (_, list) = plant
        .get("/api/v1/work-orders?source=pm&sort=due", Some(&admin))
        .await?;
    let due: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|w| w["due_at"].as_str())
        .collect();
    assert_eq!(due, ["2027-03-22T05:00:00Z", "2027-03-25T05:00:00Z"]);
    let (_, detail) = plant
        .get(
            &format!("/api/v1/pm-schedules/{}", id_of(&schedule)?),
            Some(&admin),
        )
        .await?;
    assert_eq!(detail["upcoming"][0], "2027-03-29T04:00:00Z");
    Ok(())
}
