//! What happens to an alarm after its raise, against a real database: healthy periods that
//! close untouched work orders, repeat failures, replayed history, and alarms that survive a
//! restart of the server without firing again. Needs `scripts/test.sh`.

use std::time::Duration;

use anyhow::Context;
use api::{AlarmOutcome, RetireReason, WorkOrderService};
use chrono::Utc;
use maintainpro_tests::{Plant, demo_batch, lock_table, publish_all, series, waiting_for_locks};
use migrations::testing::TestDatabase;
use model::alarm::{AlarmEvent, AlarmSubject, Decision, WorkOrderDraft, WorkType, decide};
use model::wire::Batch;
use model::{
    AssetId, GatewayId, Priority, Quality, Reading, Severity, TagName, TenantId, Timestamp,
};
use serde_json::json;
use server::demo::{DEMO_GATEWAY, seed_plant};
use sqlx::{Connection, PgPool, Row};
use uuid::Uuid;

const MIN: i64 = 60_000_000;

/// A seeded tenant and the subject of an alarm on its press bearing.
struct Fixture {
    db: TestDatabase,
    pool: PgPool,
    service: WorkOrderService,
    subject: AlarmSubject,
}

impl Fixture {
    async fn new() -> anyhow::Result<Fixture> {
        let db = TestDatabase::create().await?;
        let tenant = seed_plant(&db.urls.app_url, "plant-a", "unused")
            .await?
            .tenant;
        let pool = db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        let row = sqlx::query("SELECT id, asset_id FROM tags WHERE name = 'press-1.bearing_temp'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let subject = AlarmSubject {
            tenant: TenantId::from_uuid(tenant),
            asset: AssetId::from_uuid(row.get("asset_id")),
            tag_id: row.get("id"),
            tag: TagName::parse("press-1.bearing_temp")?,
            rule_id: "press-bearing-overheat".into(),
            failure_mode: "bearing-overheat".into(),
            severity: Severity::High,
        };
        Ok(Fixture {
            service: WorkOrderService::new(pool.clone()),
            db,
            pool,
            subject,
        })
    }

    fn raised(&self, at: Timestamp) -> AlarmEvent {
        AlarmEvent::Raised {
            subject: self.subject.clone(),
            at,
            value: 91.0,
            work_order: WorkOrderDraft {
                title: "Bearing overheating on Press 1".into(),
                description: String::new(),
                work_type: WorkType::Corrective,
                priority: Priority::Critical,
                checklist: Vec::new(),
                repeat_window: Duration::from_secs(30 * 86_400),
            },
        }
    }

    fn cleared(&self, raised_at: Timestamp, at: Timestamp, healthy: Option<u64>) -> AlarmEvent {
        AlarmEvent::Cleared {
            subject: self.subject.clone(),
            raised_at,
            at,
            value: 70.0,
            healthy_period: healthy.map(Duration::from_secs),
        }
    }

    async fn query<T>(
        &self,
        sql: &str,
        f: impl Fn(sqlx::postgres::PgRow) -> T,
    ) -> anyhow::Result<Vec<T>> {
        let mut tx = migrations::begin_tenant(&self.pool, self.subject.tenant.as_uuid()).await?;
        let rows = sqlx::query(sql).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(f).collect())
    }

    async fn events(&self, work_order: Uuid) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        self.query(
            &format!("SELECT kind, detail FROM work_order_events WHERE work_order_id = '{work_order}' ORDER BY id"),
            |r| (r.get("kind"), r.get("detail")),
        )
        .await
    }
}

fn created(outcome: AlarmOutcome) -> anyhow::Result<Uuid> {
    match outcome {
        AlarmOutcome::Created { work_order } => Ok(work_order),
        other => anyhow::bail!("expected a new work order, got {other:?}"),
    }
}

#[tokio::test]
async fn an_untouched_work_order_closes_after_its_healthy_period_and_a_reopening_is_a_repeat()
-> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let t0 = Timestamp::now();
    let first = created(f.service.on_alarm(&f.raised(t0)).await?)?;
    let cleared_at = t0.plus_micros(MIN);
    let AlarmOutcome::Cleared {
        work_order: Some(noted),
        auto_close_at: Some(due),
    } = f
        .service
        .on_alarm(&f.cleared(t0, cleared_at, Some(600)))
        .await?
    else {
        anyhow::bail!("the clear should schedule the close");
    };
    assert_eq!(noted, first);
    assert_eq!(Some(due), cleared_at.plus_micros(10 * MIN).to_datetime());
    // Not yet due; then due.
    assert!(f.service.close_healthy(Utc::now()).await?.is_empty());
    let closed = f
        .service
        .close_healthy(due + chrono::Duration::seconds(1))
        .await?;
    assert_eq!(closed, [first]);
    let row = f
        .query(
            &format!("SELECT status, resolution, closed_at IS NOT NULL AS closed FROM work_orders WHERE id = '{first}'"),
            |r| (r.get::<String, _>("status"), r.get::<Option<String>, _>("resolution"), r.get::<bool, _>("closed")),
        )
        .await?;
    assert_eq!(
        row,
        [(
            "cancelled".into(),
            Some("cleared_automatically".into()),
            true
        )]
    );
    let events = f.events(first).await?;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["opened_by_alarm", "alarm_cleared", "closed_automatically"]
    );
    let evidence = &events[2].1["alarms"];
    assert_eq!(evidence.as_array().map(Vec::len), Some(1), "{evidence}");
    assert_eq!(evidence[0]["trigger_value"], 91.0);

    // The same failure mode again, within the repeat window: a new work order, flagged.
    let t1 = cleared_at.plus_micros(20 * MIN);
    let second = created(f.service.on_alarm(&f.raised(t1)).await?)?;
    let repeat_of = f
        .query(
            &format!("SELECT repeat_of FROM work_orders WHERE id = '{second}'"),
            |r| r.get::<Option<Uuid>, _>("repeat_of"),
        )
        .await?;
    assert_eq!(repeat_of, [Some(first)]);
    let kinds: Vec<String> = f
        .events(second)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["opened_by_alarm", "repeat_failure"]);
    Ok(())
}

#[tokio::test]
async fn a_returning_condition_or_started_work_keeps_the_work_order_open() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let t0 = Timestamp::now();
    let wo = created(f.service.on_alarm(&f.raised(t0)).await?)?;
    f.service
        .on_alarm(&f.cleared(t0, t0.plus_micros(MIN), Some(60)))
        .await?;
    // The condition returns before the healthy period is over.
    let t1 = t0.plus_micros(90_000_000);
    assert!(matches!(
        f.service.on_alarm(&f.raised(t1)).await?,
        AlarmOutcome::Appended { work_order, .. } if work_order == wo
    ));
    let far = Utc::now() + chrono::Duration::days(1);
    assert!(f.service.close_healthy(far).await?.is_empty());

    // Work starts; then the condition clears: a note, no close.
    let mut tx = migrations::begin_tenant(&f.pool, f.subject.tenant.as_uuid()).await?;
    sqlx::query("UPDATE work_orders SET status = 'in_progress' WHERE id = $1")
        .bind(wo)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let AlarmOutcome::Cleared { auto_close_at, .. } = f
        .service
        .on_alarm(&f.cleared(t1, t1.plus_micros(MIN), Some(60)))
        .await?
    else {
        anyhow::bail!("expected a clear");
    };
    assert_eq!(auto_close_at, None);
    assert!(f.service.close_healthy(far).await?.is_empty());
    let events = f.events(wo).await?;
    let (kind, detail) = events.last().context("events")?;
    assert_eq!(kind, "alarm_cleared");
    assert_eq!(
        detail["stays_open"],
        "work has started: it stays with the technician"
    );
    Ok(())
}

#[tokio::test]
async fn replayed_history_is_recorded_once_and_active_alarms_are_listed_for_a_restart()
-> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let t0 = Timestamp::from_micros(Timestamp::now().as_micros() - 60 * MIN);
    let history = [f.raised(t0), f.cleared(t0, t0.plus_micros(MIN), Some(60))];
    assert!(f.service.record_history(&history).await?);
    assert!(
        !f.service.record_history(&history).await?,
        "a second replay records nothing"
    );
    // A redelivered live raise of the same occurrence changes nothing either.
    assert_eq!(
        f.service.on_alarm(&history[0]).await?,
        AlarmOutcome::AlreadyApplied
    );
    let rows = f
        .query("SELECT state, replayed FROM alarms", |r| {
            (r.get::<String, _>("state"), r.get::<bool, _>("replayed"))
        })
        .await?;
    assert_eq!(rows, [("cleared".to_owned(), true)]);
    let work_orders = f.query("SELECT id FROM work_orders", |_| ()).await?;
    assert!(work_orders.is_empty());
    assert!(f.service.active_alarms().await?.is_empty());

    let t1 = Timestamp::now();
    f.service.on_alarm(&f.raised(t1)).await?;
    let active = f.service.active_alarms().await?;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].rule_id, "press-bearing-overheat");
    assert_eq!(active[0].tag_id, f.subject.tag_id);
    assert_eq!(active[0].raised_at, t1);
    assert_eq!(active[0].severity, Severity::High);
    drop(f.db);
    Ok(())
}

#[tokio::test]
async fn an_alarm_of_a_removed_rule_is_retired_with_a_note_on_its_work_order() -> anyhow::Result<()>
{
    let f = Fixture::new().await?;
    let t0 = Timestamp::now();
    let wo = created(f.service.on_alarm(&f.raised(t0)).await?)?;
    let active = f.service.active_alarms().await?;
    assert_eq!(active.len(), 1);
    f.service
        .retire(&active[0], RetireReason::RuleRemoved)
        .await?;
    assert!(f.service.active_alarms().await?.is_empty());
    let kinds: Vec<String> = f.events(wo).await?.into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["opened_by_alarm", "alarm_retired"]);
    // Retiring again changes nothing.
    f.service
        .retire(&active[0], RetireReason::RuleRemoved)
        .await?;
    assert_eq!(f.events(wo).await?.len(), 2);
    Ok(())
}

/// Readings of the demo press's bearing, one per second from `from` (microseconds), with
/// `value(i)` for the i-th.
fn bearing_batch(
    seq: u64,
    from: i64,
    n: i64,
    value: impl Fn(i64) -> f64,
) -> anyhow::Result<Vec<u8>> {
    demo_batch(
        seq,
        &series("press-1.bearing_temp", from, 1_000_000, n, value)?,
    )
}

/// The readings topic of the demo gateway of `plant`'s tenant A.
fn demo_topic(plant: &Plant) -> anyhow::Result<String> {
    Ok(model::topic::readings(
        TenantId::from_uuid(plant.tenant_a.tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    ))
}

/// Publishes `n` seconds of a hot press-1 bearing from `t0` (batch 1) and waits for the work
/// order it opens.
async fn open_bearing_work_order(plant: &Plant, t0: i64, n: i64) -> anyhow::Result<()> {
    publish_all(
        &plant.broker,
        &demo_topic(plant)?,
        vec![bearing_batch(1, t0, n, |_| 91.0)?],
    )
    .await?;
    Plant::eventually(Duration::from_secs(30), "the work order", || async {
        Ok((plant.services.summary().work_orders_opened == 1).then_some(()))
    })
    .await
}

async fn alarm_rows(plant: &Plant, tenant: Uuid) -> anyhow::Result<Vec<(String, bool, i64)>> {
    alarm_rows_in(&plant.db.app_pool().await, tenant).await
}

/// Waits (at most 30 s) until the tenant has an alarm on record; its rows. `what` names it.
async fn some_alarm_rows(
    plant: &Plant,
    tenant: Uuid,
    what: &str,
) -> anyhow::Result<Vec<(String, bool, i64)>> {
    Plant::eventually(Duration::from_secs(30), what, || async {
        let rows = alarm_rows(plant, tenant).await?;
        Ok((!rows.is_empty()).then_some(rows))
    })
    .await
}

/// The tenant's alarms: state, replayed, raised at (epoch seconds), oldest first.
async fn alarm_rows_in(pool: &PgPool, tenant: Uuid) -> anyhow::Result<Vec<(String, bool, i64)>> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let rows = sqlx::query("SELECT state, replayed, extract(epoch FROM raised_at)::bigint AS raised FROM alarms ORDER BY raised_at")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("state"), r.get("replayed"), r.get("raised")))
        .collect())
}

async fn work_order_events(plant: &Plant, tenant: Uuid) -> anyhow::Result<Vec<String>> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let kinds = sqlx::query_scalar("SELECT kind FROM work_order_events ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_alarm_survives_a_restart_and_neither_refires_nor_is_forgotten()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let topic = demo_topic(&plant)?;
    let t0 = Timestamp::now().as_micros() - 20_000_000;
    // Hot for 10 s: the demo rule's 3 s on-delay is met.
    open_bearing_work_order(&plant, t0, 10).await?;

    let (plant, before) = plant.restart().await?;
    assert_eq!(before.alarms_raised, 1);
    // Still hot after the restart: the restored alarm does not fire again.
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(2, t0 + 10_000_000, 5, |_| 92.0)?],
    )
    .await?;
    Plant::eventually(
        Duration::from_secs(30),
        "the hot readings evaluated",
        || async { Ok((plant.services.summary().readings_stored >= 5).then_some(())) },
    )
    .await?;
    // Then cool for longer than the 10 s off-delay: the clear belongs to the original raise.
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(3, t0 + 15_000_000, 15, |_| 70.0)?],
    )
    .await?;
    let rows = Plant::eventually(Duration::from_secs(30), "the alarm cleared", || async {
        let rows = alarm_rows(&plant, tenant).await?;
        Ok(rows
            .iter()
            .all(|(state, ..)| state == "cleared")
            .then_some(rows))
    })
    .await?;
    assert_eq!(rows.len(), 1, "one alarm row, raised once: {rows:?}");
    let summary = plant.services.stop().await;
    assert_eq!(summary.alarms_raised, 0, "nothing raised after the restart");
    assert_eq!(summary.work_orders_opened, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_delay_running_at_a_restart_goes_on_from_the_stored_history() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let topic = model::topic::readings(
        TenantId::from_uuid(tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    // Hot at t0 and t0 + 1 s: the demo rule's 3 s on-delay is running when the server stops.
    // A minute ago, longer than the 13 s of history the demo rules need: the history is
    // counted back from the tag's latest reading, not from the clock.
    let t0 = (Timestamp::now().as_micros() / 1_000_000 - 60) * 1_000_000;
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(1, t0, 2, |_| 91.0)?],
    )
    .await?;
    Plant::eventually(Duration::from_secs(30), "the readings stored", || async {
        Ok((plant.services.summary().readings_stored >= 2).then_some(()))
    })
    .await?;
    let (plant, before) = plant.restart().await?;
    assert_eq!(before.alarms_raised, 0);
    // Still hot: the alarm is raised 3 s after the breach began before the restart, not 3 s
    // after the first reading the new engine receives.
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(2, t0 + 2_000_000, 4, |_| 92.0)?],
    )
    .await?;
    let rows = some_alarm_rows(&plant, tenant, "the alarm raised").await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].2,
        t0 / 1_000_000 + 3,
        "raised at t0 + 3 s: {rows:?}"
    );
    let summary = plant.services.stop().await;
    assert_eq!(summary.alarms_raised, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_that_began_and_ended_in_replayed_data_goes_on_the_history_only()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let topic = model::topic::readings(
        TenantId::from_uuid(tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    // An outage an hour ago, replayed now: 60 s normal, 60 s hot, 60 s cool.
    let t0 = Timestamp::now().as_micros() - 60 * MIN;
    let replay = vec![
        bearing_batch(1, t0, 60, |_| 70.0)?,
        bearing_batch(2, t0 + MIN, 60, |_| 91.0)?,
        bearing_batch(3, t0 + 2 * MIN, 60, |_| 70.0)?,
    ];
    publish_all(&plant.broker, &topic, replay).await?;
    let rows = some_alarm_rows(&plant, tenant, "the replayed alarm recorded").await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("cleared", true));
    assert!(work_order_events(&plant, tenant).await?.is_empty());
    let summary = plant.services.stop().await;
    assert_eq!(summary.work_orders_opened, 0);
    assert_eq!(summary.alarms_raised, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_rule_file_is_reloaded_and_an_invalid_edit_keeps_the_running_rules()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plant.toml");
    std::fs::write(&file, server::demo::DEMO_RULES)?;
    let plant = Plant::start_with_rule_files(vec![file.clone()]).await?;
    let token = plant.login("plant-a").await?;
    let status = || async {
        let (code, body) = plant.get("/api/v1/rules/status", Some(&token)).await?;
        anyhow::ensure!(code == 200, "status answered {code}: {body}");
        Ok(body)
    };
    let body = status().await?;
    assert_eq!(body["running"], true, "{body}");
    assert_eq!(body["watching"], true, "{body}");
    assert_eq!(body["rules"], 2, "{body}");
    assert!(body["last_error"].is_null(), "{body}");
    let (code, _) = plant.get("/api/v1/rules/status", None).await?;
    assert_eq!(code, 401);

    // A broken edit: reported, and the two rules stay in force.
    std::fs::write(&file, "version = 1\n[[rule]]\nid = \"half-written\"\n")?;
    let body = Plant::eventually(Duration::from_secs(20), "the reload error", || async {
        let body = status().await?;
        Ok((!body["last_error"].is_null()).then_some(body))
    })
    .await?;
    let message = body["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("plant.toml"), "{body}");
    assert_eq!(body["rules"], 2, "{body}");

    // A valid edit: the bearing now alarms above 60 degC; the error is gone.
    let stricter = server::demo::DEMO_RULES
        .replace("above = 85.0", "above = 60.0")
        .replace("clear_below = 80.0", "clear_below = 55.0");
    assert_ne!(stricter, server::demo::DEMO_RULES);
    std::fs::write(&file, stricter)?;
    Plant::eventually(Duration::from_secs(20), "the reload", || async {
        let body = status().await?;
        Ok(body["last_error"].is_null().then_some(()))
    })
    .await?;
    let tenant = plant.tenant_a.tenant;
    let topic = model::topic::readings(
        TenantId::from_uuid(tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    let t0 = Timestamp::now().as_micros() - 10_000_000;
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(1, t0, 8, |_| 70.0)?],
    )
    .await?;
    Plant::eventually(
        Duration::from_secs(30),
        "a work order under the new limit",
        || async { Ok((plant.services.summary().work_orders_opened == 1).then_some(())) },
    )
    .await?;
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_the_database_does_not_answer_is_tried_again_and_given_up_at_the_stop()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plant.toml");
    std::fs::write(&file, server::demo::DEMO_RULES)?;
    let plant = Plant::start_configured(|_, config| {
        config.rules.files = vec![file.clone()];
        config.rules.database_timeout = Duration::from_secs(1);
    })
    .await?;
    // The readings locked away: the reload's warm-up gets no answer.
    let mut lock = lock_table(&plant.db.urls.owner_url, "readings", "ACCESS EXCLUSIVE").await?;
    std::fs::write(
        &file,
        server::demo::DEMO_RULES.replace("above = 85.0", "above = 84.0"),
    )?;
    let stats = plant.services.rules_stats();
    let get = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    Plant::eventually(Duration::from_secs(30), "two timeouts", || async {
        Ok((get(&stats.database_timeouts) >= 2).then_some(()))
    })
    .await?;
    assert_eq!(get(&stats.reloads), 0);

    // Asked to stop while the warm-up waits, the server gives the reload up at once.
    tokio::time::timeout(Duration::from_secs(15), plant.services.stop())
        .await
        .context("the stop waited for the reload")?;
    sqlx::query("ROLLBACK").execute(&mut lock).await?;
    lock.close().await?;
    Ok(())
}

/// A raise the database does not take (its table locked) is given up at the stop within the
/// database timeout and its statement cancelled, so that it is not applied once the table is
/// free; after the restart the breach still present raises it anew: one alarm, one work
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_the_database_does_not_take_is_given_up_and_cancelled_at_the_stop_and_raised_anew_at_the_start()
-> anyhow::Result<()> {
    let plant = Plant::start_configured(|_, config| {
        config.rules.database_timeout = Duration::from_secs(1);
    })
    .await?;
    let tenant = plant.tenant_a.tenant;
    let topic = demo_topic(&plant)?;
    let mut lock = lock_table(&plant.db.urls.owner_url, "alarms", "ACCESS EXCLUSIVE").await?;
    let t0 = Timestamp::now().as_micros() - 10_000_000;
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(1, t0, 8, |_| 91.0)?],
    )
    .await?;
    let stats = plant.services.rules_stats();
    let get = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    Plant::eventually(Duration::from_secs(30), "the raise", || async {
        Ok((get(&stats.alarms_raised) == 1).then_some(()))
    })
    .await?;

    let db_pool = plant.db.app_pool().await;
    let (admin_url, db_name) = (plant.db.admin_url().to_owned(), plant.db.name.clone());
    let stopped = plant.restart_after(async {
        assert_eq!(get(&stats.events_given_up), 1);
        // Nothing waits for the lock any more (the superuser sees every role's backends).
        let waiting = waiting_for_locks(&admin_url, &db_name).await?;
        assert_eq!(waiting, 0, "a statement still waits for the alarms");
        sqlx::query("ROLLBACK").execute(&mut lock).await?;
        assert_eq!(alarm_rows_in(&db_pool, tenant).await?, []);
        Ok(())
    });
    let (plant, before) = tokio::time::timeout(Duration::from_secs(45), stopped)
        .await
        .context("the stop waited for the database")??;
    assert_eq!(before.work_orders_opened, 0);

    // Still hot after the restart.
    publish_all(
        &plant.broker,
        &topic,
        vec![bearing_batch(2, t0 + 8_000_000, 6, |_| 92.0)?],
    )
    .await?;
    let rows = some_alarm_rows(&plant, tenant, "the alarm raised anew").await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "active", "{rows:?}");
    let mut tx = migrations::begin_tenant(&db_pool, tenant).await?;
    let work_orders: i64 = sqlx::query_scalar("SELECT count(*) FROM work_orders")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    assert_eq!(work_orders, 1);
    let after = plant.services.stop().await;
    assert_eq!((after.alarms_raised, after.work_orders_opened), (1, 1));
    lock.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_whose_rule_stops_selecting_its_tag_is_retired_at_the_reload() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plant.toml");
    std::fs::write(&file, server::demo::DEMO_RULES)?;
    let plant = Plant::start_with_rule_files(vec![file.clone()]).await?;
    let tenant = plant.tenant_a.tenant;
    open_bearing_work_order(&plant, Timestamp::now().as_micros() - 10_000_000, 8).await?;

    // The bearing rule now watches press-9 only: press-1's alarm could never clear.
    let elsewhere =
        server::demo::DEMO_RULES.replace("press-*.bearing_temp", "press-9.bearing_temp");
    assert_ne!(elsewhere, server::demo::DEMO_RULES);
    std::fs::write(&file, elsewhere)?;
    let rows = Plant::eventually(Duration::from_secs(30), "the alarm retired", || async {
        let rows = alarm_rows(&plant, tenant).await?;
        Ok(rows
            .iter()
            .all(|(state, ..)| state == "cleared")
            .then_some(rows))
    })
    .await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let reason: String = sqlx::query_scalar(
        "SELECT detail->>'reason' FROM work_order_events WHERE kind = 'alarm_retired'",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    assert!(reason.contains("no longer watches this tag"), "{reason}");
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_reordered_breach_readings_open_no_duplicate_work_order()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let topic = model::topic::readings(TenantId::from_uuid(tenant), &gateway);
    // 200 s of both press signals, ending now: three bearing episodes, two motor ones.
    let t0 = Timestamp::now().as_micros() - 200_000_000;
    let bearing = |s: i64| {
        if (20..40).contains(&s) || (80..100).contains(&s) || (140..160).contains(&s) {
            91.0
        } else {
            70.0
        }
    };
    let motor = |s: i64| {
        if (50..70).contains(&s) || (120..135).contains(&s) {
            65.0
        } else {
            40.0
        }
    };
    let mut batches = Vec::new();
    for b in 0..20i64 {
        let mut readings = Vec::new();
        for s in b * 10..(b + 1) * 10 {
            let ts = Timestamp::from_micros(t0 + s * 1_000_000);
            readings.push(Reading {
                tag: TagName::parse("press-1.bearing_temp")?,
                ts,
                value: bearing(s),
                quality: Quality::Good,
            });
            readings.push(Reading {
                tag: TagName::parse("press-1.motor_current")?,
                ts,
                value: motor(s),
                quality: Quality::Good,
            });
        }
        batches.push(Batch::from_readings(gateway.clone(), b as u64 + 1, &readings).encode());
    }
    // 10 % redelivered (two batches twice, one of them much later) and two pairs swapped.
    let mut sent = batches.clone();
    sent.swap(5, 6);
    sent.swap(13, 14);
    sent.insert(9, batches[8].clone());
    sent.push(batches[2].clone());
    publish_all(&plant.broker, &topic, sent).await?;
    Plant::eventually(Duration::from_secs(30), "every batch handled", || async {
        let s = plant.services.summary();
        Ok((s.readings_stored >= 400 && s.batches_duplicate >= 2).then_some(()))
    })
    .await?;
    // Stopping drains what ingest handed the rules task.
    let summary = plant.services.stop().await;
    assert_eq!(summary.batches_duplicate, 2);
    assert_eq!(summary.work_orders_opened, 2);
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let orders: Vec<(String, i64)> = sqlx::query_as(
        "SELECT w.failure_mode, count(*) OVER (PARTITION BY w.failure_mode)
         FROM work_orders w ORDER BY w.failure_mode",
    )
    .fetch_all(&mut *tx)
    .await?;
    let raises: i64 = sqlx::query_scalar("SELECT count(*) FROM alarms")
        .fetch_one(&mut *tx)
        .await?;
    let appended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM work_order_events WHERE kind = 'alarm_repeated'")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(
        orders,
        [
            ("bearing-overheat".to_owned(), 1),
            ("motor-overcurrent".to_owned(), 1)
        ],
        "one work order per failure mode"
    );
    // Every alarm occurrence reached its work order once: the first opened it, the others
    // were appended.
    assert!(raises >= 2, "{raises} alarms");
    assert_eq!(appended, raises - 2);
    Ok(())
}

impl Fixture {
    fn draft(priority: Priority) -> WorkOrderDraft {
        WorkOrderDraft {
            title: "Bearing overheating on Press 1".into(),
            description: String::new(),
            work_type: WorkType::Corrective,
            priority,
            checklist: Vec::new(),
            repeat_window: Duration::from_secs(30 * 86_400),
        }
    }

    /// A raise of `rule` (of its own failure mode) at `severity`, asking for `priority`.
    fn raised_as(
        &self,
        rule: &str,
        at: Timestamp,
        severity: Severity,
        priority: Priority,
    ) -> AlarmEvent {
        AlarmEvent::Raised {
            subject: AlarmSubject {
                rule_id: rule.into(),
                failure_mode: format!("{rule}-mode"),
                severity,
                ..self.subject.clone()
            },
            at,
            value: 91.0,
            work_order: Self::draft(priority),
        }
    }

    /// The escalation of the alarm `rule` raised at `raised_at`, to `severity` and `priority`.
    fn escalated_as(
        &self,
        rule: &str,
        raised_at: Timestamp,
        at: Timestamp,
        severity: Severity,
        priority: Priority,
    ) -> AlarmEvent {
        AlarmEvent::Escalated {
            subject: AlarmSubject {
                rule_id: rule.into(),
                failure_mode: format!("{rule}-mode"),
                severity,
                ..self.subject.clone()
            },
            raised_at,
            at,
            value: 95.0,
            work_order: Self::draft(priority),
        }
    }

    /// Every alarm, work order and work-order event of the tenant, whole rows, as JSON.
    async fn everything(&self) -> anyhow::Result<serde_json::Value> {
        let rows = self
            .query(
                "SELECT jsonb_build_object(
                     'alarms', (SELECT jsonb_agg(a ORDER BY a.id) FROM alarms a),
                     'work_orders', (SELECT jsonb_agg(w ORDER BY w.id) FROM work_orders w),
                     'events', (SELECT jsonb_agg(e ORDER BY e.id) FROM work_order_events e)) AS snapshot",
                |r| r.get::<serde_json::Value, _>("snapshot"),
            )
            .await?;
        rows.into_iter().next().context("one row")
    }

    /// Closes `work_order` as completed at `closed_at`, as a technician would.
    async fn complete(
        &self,
        work_order: Uuid,
        closed_at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut tx = migrations::begin_tenant(&self.pool, self.subject.tenant.as_uuid()).await?;
        sqlx::query(
            "UPDATE work_orders SET status = 'completed', resolution = 'fixed', closed_at = $2 WHERE id = $1",
        )
        .bind(work_order)
        .bind(closed_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_retried_raise_escalation_or_clear_changes_nothing() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let rule = "press-bearing-overheat";
    let t0 = Timestamp::now();
    let raise = f.raised_as(rule, t0, Severity::Medium, Priority::Medium);
    let wo = created(f.service.on_alarm(&raise).await?)?;
    let before = f.everything().await?;
    assert_eq!(
        f.service.on_alarm(&raise).await?,
        AlarmOutcome::AlreadyApplied
    );
    assert_eq!(f.everything().await?, before);

    let escalation = f.escalated_as(
        rule,
        t0,
        t0.plus_micros(MIN),
        Severity::High,
        Priority::Critical,
    );
    assert_eq!(
        f.service.on_alarm(&escalation).await?,
        AlarmOutcome::Appended {
            work_order: wo,
            escalated: true
        }
    );
    let before = f.everything().await?;
    assert_eq!(
        f.service.on_alarm(&escalation).await?,
        AlarmOutcome::AlreadyApplied
    );
    assert_eq!(f.everything().await?, before);
    // The escalation took over the active alarm row: one alarm, now at its severity.
    let alarms = &before["alarms"];
    assert_eq!(alarms.as_array().map(Vec::len), Some(1), "{alarms}");
    assert_eq!(alarms[0]["severity"], "high");
    assert_eq!(before["work_orders"][0]["priority"], "critical");

    let clear = AlarmEvent::Cleared {
        subject: AlarmSubject {
            rule_id: rule.into(),
            failure_mode: format!("{rule}-mode"),
            ..f.subject.clone()
        },
        raised_at: t0,
        at: t0.plus_micros(2 * MIN),
        value: 70.0,
        healthy_period: Some(Duration::from_secs(60)),
    };
    let AlarmOutcome::Cleared {
        work_order: Some(noted),
        auto_close_at: Some(_),
    } = f.service.on_alarm(&clear).await?
    else {
        anyhow::bail!("the clear should schedule the close");
    };
    assert_eq!(noted, wo);
    let before = f.everything().await?;
    assert_eq!(
        f.service.on_alarm(&clear).await?,
        AlarmOutcome::AlreadyApplied
    );
    assert_eq!(f.everything().await?, before);
    let kinds: Vec<String> = f.events(wo).await?.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "opened_by_alarm",
            "alarm_repeated",
            "escalated",
            "alarm_cleared"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_raise_escalates_the_open_work_order_exactly_when_decide_says_so() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let t0 = Timestamp::now();
    for open in Priority::ALL {
        for incoming in Priority::ALL {
            // A rule and failure mode of their own per pair: each pair has its own work order.
            let rule = format!("rule-{open}-{incoming}");
            let wo = created(
                f.service
                    .on_alarm(&f.raised_as(&rule, t0, Severity::Low, open))
                    .await?,
            )?;
            let escalation =
                f.escalated_as(&rule, t0, t0.plus_micros(MIN), Severity::High, incoming);
            let Decision::Append { escalate_to } = decide(Some(open), incoming) else {
                anyhow::bail!("an alarm is appended to the open work order");
            };
            assert_eq!(
                f.service.on_alarm(&escalation).await?,
                AlarmOutcome::Appended {
                    work_order: wo,
                    escalated: escalate_to.is_some()
                },
                "{open} then {incoming}"
            );
            let priority = f
                .query(
                    &format!("SELECT priority FROM work_orders WHERE id = '{wo}'"),
                    |r| r.get::<String, _>("priority"),
                )
                .await?;
            assert_eq!(
                priority,
                [escalate_to.unwrap_or(open).as_str()],
                "{open} then {incoming}"
            );
            let kinds: Vec<String> = f.events(wo).await?.into_iter().map(|(k, _)| k).collect();
            assert_eq!(
                kinds.iter().any(|k| k == "escalated"),
                escalate_to.is_some(),
                "{open} then {incoming}: {kinds:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn times_in_event_details_are_written_as_the_service_writes_them() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let second = 1_000_000;
    // A whole second, to which each round adds a fraction of its own: none, milliseconds,
    // microseconds.
    let base = Timestamp::now().as_micros() / second * second;
    let fractions = [0, 123_000, 654_321];
    let mut previous: Option<(Uuid, chrono::DateTime<Utc>)> = None;
    for round in 0..=fractions.len() {
        let start = base + i64::try_from(round)? * 10 * MIN;
        let raised_at = Timestamp::from_micros(start);
        let wo = created(f.service.on_alarm(&f.raised(raised_at)).await?)?;
        let events = f.events(wo).await?;
        match previous {
            Some((previous_wo, closed_at)) => {
                let (kind, detail) = events.last().context("events")?;
                assert_eq!(kind, "repeat_failure");
                assert_eq!(detail["previous_work_order"], json!(previous_wo));
                assert_eq!(detail["previous_closed_at"], json!(closed_at), "{detail}");
                assert_eq!(detail["repeat_window_s"], 30 * 86_400);
            }
            None => assert_eq!(events.len(), 1),
        }
        let Some(&fraction) = fractions.get(round) else {
            break;
        };
        let cleared_at = Timestamp::from_micros(start + MIN + fraction);
        let AlarmOutcome::Cleared {
            auto_close_at: Some(due),
            ..
        } = f
            .service
            .on_alarm(&f.cleared(raised_at, cleared_at, Some(60)))
            .await?
        else {
            anyhow::bail!("the clear should schedule the close");
        };
        assert_eq!(Some(due), cleared_at.plus_micros(MIN).to_datetime());
        let events = f.events(wo).await?;
        let (kind, detail) = events.last().context("events")?;
        assert_eq!(kind, "alarm_cleared");
        assert_eq!(detail["auto_close_at"], json!(due), "{detail}");
        assert!(detail["stays_open"].is_null(), "{detail}");
        let closed_at = Timestamp::from_micros(start + 3 * MIN + fraction)
            .to_datetime()
            .context("in range")?;
        f.complete(wo, closed_at).await?;
        previous = Some((wo, closed_at));
    }
    Ok(())
}
