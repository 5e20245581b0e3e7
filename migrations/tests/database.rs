//! The migrations against a real PostgreSQL: the cluster named by
//! `MPTEST_PG_ADMIN_URL`, or a throwaway one started for this test process.
//!
//! Every test creates its own database. Every bootstrap here uses the test passwords, because
//! the two roles are shared by all databases of a cluster and other tests log in with them at
//! the same time; the test that needs other passwords starts a cluster of its own.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use std::{env, fs};

use migrations::testing::{TEST_APP_PASSWORD, TEST_OWNER_PASSWORD, TestDatabase, admin_url};
use migrations::throwaway::{Cluster, ClusterOptions};
use migrations::{
    APP_ROLE, DbError, MIGRATOR, OWNER_ROLE, RoleSecrets, StorageLayout, bootstrap, migrate,
};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use sqlx::types::JsonValue;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn Error>>;

fn test_secrets() -> RoleSecrets {
    RoleSecrets {
        owner_password: TEST_OWNER_PASSWORD.to_owned(),
        app_password: TEST_APP_PASSWORD.to_owned(),
    }
}

/// The license TimescaleDB runs under on the server of `admin` (`apache`, `timescale`), or
/// `None` when the server cannot install it (no package, or not preloaded). The setting exists
/// only in a session that has loaded the extension, so it is read in a scratch database.
async fn timescaledb_license(admin: &str) -> Result<Option<String>, Box<dyn Error>> {
    let mut conn = PgConnection::connect(admin).await?;
    let scratch = format!("probe_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut conn)
        .await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(&scratch);
    let mut probe = PgConnection::connect(url.as_str()).await?;
    let license = match sqlx::raw_sql("CREATE EXTENSION timescaledb")
        .execute(&mut probe)
        .await
    {
        Ok(_) => {
            sqlx::query_scalar("SELECT current_setting('timescaledb.license', true)")
                .fetch_one(&mut probe)
                .await?
        }
        Err(_) => None,
    };
    probe.close().await?;
    sqlx::raw_sql(&format!("DROP DATABASE {scratch}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(license)
}

/// A transaction with `tenant` as the current tenant (none when `None`).
async fn begin_as(
    pool: &PgPool,
    tenant: Option<Uuid>,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(tenant) = tenant {
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

async fn count_as(pool: &PgPool, tenant: Option<Uuid>, sql: &str) -> Result<i64, sqlx::Error> {
    let mut tx = begin_as(pool, tenant).await?;
    let count = sqlx::query_scalar(sql).fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(count)
}

/// The rows one tenant needs before its work orders and tags.
struct Seeded {
    tenant: Uuid,
    asset: Uuid,
    tag: i64,
}

/// Creates, as the app role, a tenant with a site, an asset, a gateway and a tag.
async fn seed_tenant(app: &PgPool, slug: &str) -> Result<Seeded, sqlx::Error> {
    let tenant = Uuid::new_v4();
    let site = Uuid::new_v4();
    let asset = Uuid::new_v4();
    let gateway = Uuid::new_v4();
    let mut tx = begin_as(app, Some(tenant)).await?;
    // The tenants INSERT policy only admits the tenant set for the transaction.
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
        "INSERT INTO assets (id, tenant_id, site_id, name) VALUES ($1, $2, $3, 'Pump P-101')",
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
         VALUES ($1, $2, 'pump.p101.vibration', $3, 'mm/s') RETURNING id",
    )
    .bind(tenant)
    .bind(gateway)
    .bind(asset)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Seeded { tenant, asset, tag })
}

const INSERT_WORK_ORDER: &str = "INSERT INTO work_orders (id, tenant_id, asset_id, title, priority, source) \
     VALUES ($1, $2, $3, 'High vibration on P-101', 'high', 'rule')";

fn sql_state(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()?
        .code()
        .map(|code| code.into_owned())
}

#[tokio::test]
async fn fresh_database_gets_the_servers_layout_and_migrating_again_changes_nothing() -> TestResult
{
    let db = TestDatabase::create().await?;
    let owner = db.owner_pool().await;
    let installed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
    )
    .fetch_one(&owner)
    .await?;
    // Only the Community edition has the compression and retention policies the readings
    // migration sets.
    let license = timescaledb_license(db.admin_url()).await?;
    let expected = if license.as_deref() == Some("timescale") {
        StorageLayout::TimescaleDb
    } else {
        StorageLayout::NativePartitions
    };
    assert_eq!(db.layout, expected, "timescaledb.license = {license:?}");
    assert_eq!(
        installed,
        expected == StorageLayout::TimescaleDb,
        "bootstrap leaves the Apache-2 edition out"
    );
    if db.layout == StorageLayout::NativePartitions {
        let kind: String = sqlx::query_scalar(
            "SELECT relkind::text FROM pg_class \
             WHERE relname = 'readings' AND relnamespace = 'public'::regnamespace",
        )
        .fetch_one(&owner)
        .await?;
        assert_eq!(kind, "p", "readings is a partitioned table");
        // Every partition, those of the first migration and those made later, is vacuumed at
        // the gentler pace.
        let made: i32 = sqlx::query_scalar("SELECT ensure_readings_partitions(10, 5)")
            .fetch_one(&owner)
            .await?;
        assert_eq!(made, 5, "3 days further back and 2 further ahead");
        let unpaced: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'readings'::regclass \
               AND NOT coalesce(c.reloptions, '{}') @> '{autovacuum_vacuum_cost_delay=20}'",
        )
        .fetch_all(&owner)
        .await?;
        assert!(
            unpaced.is_empty(),
            "partitions at the default pace: {unpaced:?}"
        );
    }

    assert_eq!(migrate(&db.urls.owner_url).await?, expected);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&owner)
        .await?;
    assert_eq!(usize::try_from(applied)?, MIGRATOR.iter().count());
    Ok(())
}

/// On a server whose TimescaleDB lacks compression (the Apache-2 edition), an extension an
/// operator installed by hand is refused before the readings are made, with what to change.
/// Elsewhere (no extension, or the Community edition) there is nothing to refuse and the test
/// ends at once; `bench/postgresql17.sh` prepares a server where it runs.
#[tokio::test]
async fn timescaledb_without_compression_is_refused_before_the_readings_exist() -> TestResult {
    let admin = admin_url().await?;
    let license = timescaledb_license(&admin).await?;
    if license.is_none() || license.as_deref() == Some("timescale") {
        return Ok(());
    }
    let name = format!("t_{}", Uuid::new_v4().simple());
    let urls = bootstrap(&admin, &name, &test_secrets()).await?;
    let mut url = url::Url::parse(&admin)?;
    url.set_path(&name);
    let mut conn = PgConnection::connect(url.as_str()).await?;
    sqlx::raw_sql("CREATE EXTENSION timescaledb")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    match migrate(&urls.owner_url).await {
        Err(DbError::TimescaleDbWithoutCompression { license: found }) => {
            assert_eq!(Some(found), license);
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    // Nothing was applied: dropping the extension is all it takes to migrate.
    let mut conn = PgConnection::connect(url.as_str()).await?;
    sqlx::raw_sql("DROP EXTENSION timescaledb")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    assert_eq!(
        migrate(&urls.owner_url).await?,
        StorageLayout::NativePartitions
    );
    Ok(())
}

#[tokio::test]
async fn tenant_tables_force_row_level_security_and_the_app_role_is_unprivileged() -> TestResult {
    let db = TestDatabase::create().await?;
    let owner = db.owner_pool().await;
    let tables: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
           AND (c.relname = 'tenants' OR EXISTS ( \
                SELECT 1 FROM pg_attribute a \
                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)) \
         ORDER BY 1",
    )
    .fetch_all(&owner)
    .await?;
    for (table, enabled, forced) in &tables {
        assert!(
            *enabled && *forced,
            "{table}: rowsecurity={enabled} force={forced}"
        );
    }
    let names: Vec<&str> = tables.iter().map(|(name, _, _)| name.as_str()).collect();
    for expected in [
        "tenants",
        "users",
        "sites",
        "assets",
        "gateways",
        "tags",
        "ingest_batches",
        "dead_letters",
        "rule_sets",
        "alarms",
        "work_orders",
        "work_order_events",
        "sparkplug_births",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    for role in [APP_ROLE, OWNER_ROLE] {
        let (superuser, bypass_rls, login): (bool, bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_one(&owner)
        .await?;
        assert!(
            !superuser && !bypass_rls && login,
            "{role}: super={superuser} bypassrls={bypass_rls} login={login}"
        );
    }
    let owned_by_app: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)",
    )
    .bind(APP_ROLE)
    .fetch_one(&owner)
    .await?;
    assert_eq!(owned_by_app, 0, "the app role owns no relation");
    let owned_by_owner: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relname = 'work_orders' \
           AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)",
    )
    .bind(OWNER_ROLE)
    .fetch_one(&owner)
    .await?;
    assert_eq!(owned_by_owner, 1, "the owner role owns the tables");
    Ok(())
}

#[tokio::test]
async fn the_app_role_sees_only_the_current_tenants_rows() -> TestResult {
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let a = seed_tenant(&app, "tenant-a").await?;
    let b = seed_tenant(&app, "tenant-b").await?;

    let mut tx = begin_as(&app, Some(a.tenant)).await?;
    for _ in 0..2 {
        sqlx::query(INSERT_WORK_ORDER)
            .bind(Uuid::new_v4())
            .bind(a.tenant)
            .bind(a.asset)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    let count = "SELECT count(*) FROM work_orders";
    assert_eq!(count_as(&app, Some(a.tenant), count).await?, 2);
    assert_eq!(count_as(&app, None, count).await?, 0, "no tenant set");
    assert_eq!(count_as(&app, Some(b.tenant), count).await?, 0, "tenant B");
    // FORCEd: the owner is no exception.
    let owner = db.owner_pool().await;
    assert_eq!(
        count_as(&owner, None, count).await?,
        0,
        "owner, no tenant set"
    );

    // Tenant B can neither write rows for A nor change A's rows.
    let mut tx = begin_as(&app, Some(b.tenant)).await?;
    let error = sqlx::query(INSERT_WORK_ORDER)
        .bind(Uuid::new_v4())
        .bind(a.tenant)
        .bind(a.asset)
        .execute(&mut *tx)
        .await
        .err()
        .ok_or("tenant B inserted a work order for tenant A")?;
    assert_eq!(sql_state(&error).as_deref(), Some("42501"), "{error}");
    tx.rollback().await?;
    let mut tx = begin_as(&app, Some(b.tenant)).await?;
    let updated = sqlx::query("UPDATE work_orders SET status = 'cancelled'")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    assert_eq!(updated, 0);
    assert_eq!(
        count_as(
            &app,
            Some(a.tenant),
            "SELECT count(*) FROM work_orders WHERE status = 'open'"
        )
        .await?,
        2
    );
    Ok(())
}

/// One pooled connection, used by transaction after transaction: the tenant set by one
/// (`migrations::begin_tenant`) is gone when it commits, rolls back or fails, so the next
/// request on that connection starts with no tenant and sees no tenant's rows.
#[tokio::test]
async fn a_pooled_connection_carries_no_tenant_into_the_next_transaction() -> TestResult {
    let db = TestDatabase::create().await?;
    let a = seed_tenant(&db.app_pool().await, "tenant-a").await?;
    let mut tx = begin_as(&db.app_pool().await, Some(a.tenant)).await?;
    sqlx::query(INSERT_WORK_ORDER)
        .bind(Uuid::new_v4())
        .bind(a.tenant)
        .bind(a.asset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.app_url())
        .await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    // What the next user of the connection finds: its backend, the tenant setting and the
    // work orders it can see, in a transaction and outside one.
    let next = || async {
        let mut tx = pool.begin().await?;
        let found: (i32, Option<String>, i64) = sqlx::query_as(
            "SELECT pg_backend_pid(), current_setting('app.tenant_id', true),
                    (SELECT count(*) FROM work_orders)",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let outside: i64 = sqlx::query_scalar("SELECT count(*) FROM work_orders")
            .fetch_one(&pool)
            .await?;
        Ok::<_, sqlx::Error>((found.0, found.1.unwrap_or_default(), found.2, outside))
    };
    let clean = (backend, String::new(), 0, 0);

    let seen = "SELECT count(*) FROM work_orders";
    let mut tx = migrations::begin_tenant(&pool, a.tenant).await?;
    let own: i64 = sqlx::query_scalar(seen).fetch_one(&mut *tx).await?;
    assert_eq!(own, 1, "the tenant's own row, inside its transaction");
    tx.commit().await?;
    assert_eq!(next().await?, clean, "after a commit");

    let mut tx = migrations::begin_tenant(&pool, a.tenant).await?;
    let own: i64 = sqlx::query_scalar(seen).fetch_one(&mut *tx).await?;
    assert_eq!(own, 1);
    tx.rollback().await?;
    assert_eq!(next().await?, clean, "after a rollback");

    let mut tx = migrations::begin_tenant(&pool, a.tenant).await?;
    let failed = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
    assert!(failed.is_err());
    drop(tx);
    assert_eq!(
        next().await?,
        clean,
        "after a failed transaction dropped unfinished"
    );

    // The statements of a read that sends its own scope: the tenant's rows, no writes, and
    // nothing left once it ends.
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(&migrations::tenant_read_begin(a.tenant))
        .execute(&mut *conn)
        .await?;
    let own: i64 = sqlx::query_scalar(seen).fetch_one(&mut *conn).await?;
    assert_eq!(own, 1);
    let write = sqlx::query("DELETE FROM work_orders")
        .execute(&mut *conn)
        .await
        .expect_err("the read's transaction is read-only");
    assert_eq!(sql_state(&write).as_deref(), Some("25006"), "{write}");
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
    drop(conn);
    assert_eq!(next().await?, clean, "after a read's transaction");
    Ok(())
}

#[tokio::test]
async fn the_app_role_reads_readings_only_through_tenant_readings() -> TestResult {
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let a = seed_tenant(&app, "tenant-a").await?;
    let b = seed_tenant(&app, "tenant-b").await?;

    let mut tx = begin_as(&app, Some(a.tenant)).await?;
    sqlx::query("INSERT INTO readings (tag_id, ts, value, quality) VALUES ($1, now(), 4.2, 192)")
        .bind(a.tag)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let error = count_as(&app, Some(a.tenant), "SELECT count(*) FROM readings")
        .await
        .err()
        .ok_or("the app role read readings directly")?;
    assert_eq!(sql_state(&error).as_deref(), Some("42501"), "{error}");

    let view = "SELECT count(*) FROM tenant_readings";
    assert_eq!(count_as(&app, Some(a.tenant), view).await?, 1);
    assert_eq!(count_as(&app, Some(b.tenant), view).await?, 0, "tenant B");
    assert_eq!(count_as(&app, None, view).await?, 0, "no tenant set");
    Ok(())
}

#[tokio::test]
async fn the_app_role_can_create_readings_partitions() -> TestResult {
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let created: i32 = sqlx::query_scalar("SELECT ensure_readings_partitions(1, 2)")
        .fetch_one(&app)
        .await?;
    // The migration made the partitions of today - 7 ..= today + 3 (UTC); a midnight since
    // then only moves this window further into that range.
    assert_eq!(created, 0);

    // One transaction, so both calls see the same now() even across midnight.
    let mut tx = app.begin().await?;
    let first: i32 = sqlx::query_scalar("SELECT ensure_readings_partitions(0, 10)")
        .fetch_one(&mut *tx)
        .await?;
    let second: i32 = sqlx::query_scalar("SELECT ensure_readings_partitions(0, 10)")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    match db.layout {
        StorageLayout::NativePartitions => assert!(first >= 7, "created {first}"),
        StorageLayout::TimescaleDb => assert_eq!(first, 0),
    }
    assert_eq!(second, 0, "partitions are created once");
    Ok(())
}

/// A raise through `alarm_raised_effects` for `seeded`'s tag, under `key`, naming `tenant` as
/// its tenant; returns its outcome.
async fn raise(
    conn: &mut PgConnection,
    tenant: Uuid,
    seeded: &Seeded,
    key: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT outcome FROM alarm_raised_effects(
             p_tenant => $1, p_key => $2, p_rule_id => 'vibration-high', p_tag_id => $3,
             p_asset_id => $4, p_failure_mode => 'bearing-wear', p_severity => 'high',
             p_value => 9.5, p_raised_at => now(), p_detail => '{}', p_new_alarm => $5,
             p_new_work_order => $6, p_title => 'High vibration on P-101', p_description => '',
             p_priority => 'high', p_work_type => 'corrective', p_repeat_since => NULL,
             p_repeat_window_s => 0)",
    )
    .bind(tenant)
    .bind(key)
    .bind(seeded.tag)
    .bind(seeded.asset)
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .fetch_one(conn)
    .await
}

/// A clear through `alarm_cleared_effects`, as [`raise`]; returns its outcome and work order.
async fn clear(
    conn: &mut PgConnection,
    tenant: Uuid,
    seeded: &Seeded,
    key: &str,
) -> Result<(String, Option<Uuid>), sqlx::Error> {
    sqlx::query_as(
        "SELECT outcome, work_order FROM alarm_cleared_effects(
             p_tenant => $1, p_key => $2, p_rule_id => 'vibration-high', p_tag_id => $3,
             p_asset_id => $4, p_failure_mode => 'bearing-wear', p_cleared_at => now(),
             p_detail => '{}', p_closes_by_itself => true,
             p_auto_close_at => now() + interval '1 hour')",
    )
    .bind(tenant)
    .bind(key)
    .bind(seeded.tag)
    .bind(seeded.asset)
    .fetch_one(conn)
    .await
}

/// The tenant's alarms, work orders and work-order events, whole rows.
async fn alarm_rows(pool: &PgPool, tenant: Uuid) -> Result<JsonValue, sqlx::Error> {
    let mut tx = begin_as(pool, Some(tenant)).await?;
    let rows = sqlx::query_scalar(
        "SELECT jsonb_build_object(
             'alarms', (SELECT jsonb_agg(a ORDER BY a.id) FROM alarms a),
             'work_orders', (SELECT jsonb_agg(w ORDER BY w.id) FROM work_orders w),
             'events', (SELECT jsonb_agg(e ORDER BY e.id) FROM work_order_events e))",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(rows)
}

#[tokio::test]
async fn alarm_effects_run_as_their_caller_with_a_pinned_search_path_for_the_app_role_only()
-> TestResult {
    let db = TestDatabase::create().await?;
    let owner = db.owner_pool().await;
    let functions: Vec<(String, bool, Vec<String>, bool, bool)> = sqlx::query_as(
        "SELECT p.proname::text, p.prosecdef, coalesce(p.proconfig, '{}'),
                has_function_privilege($1, p.oid, 'EXECUTE'),
                EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))
                        WHERE grantee = 0 AND privilege_type = 'EXECUTE')
         FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'alarm\\_%'
         ORDER BY 1",
    )
    .bind(APP_ROLE)
    .fetch_all(&owner)
    .await?;
    let names: Vec<&str> = functions.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "alarm_cleared_effects",
            "alarm_effect_time",
            "alarm_raised_effects"
        ]
    );
    for (name, security_definer, config, app_may, public_may) in &functions {
        assert!(!security_definer, "{name} runs as its owner");
        assert!(
            config.iter().any(|c| c.starts_with("search_path=")),
            "{name}: {config:?}"
        );
        assert!(app_may, "{name}: the app role may not call it");
        assert!(!public_may, "{name}: PUBLIC may call it");
    }
    Ok(())
}

#[tokio::test]
async fn alarm_effects_read_and_write_only_the_current_tenants_rows() -> TestResult {
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let a = seed_tenant(&app, "tenant-a").await?;
    let b = seed_tenant(&app, "tenant-b").await?;
    let key = "alarm:vibration-high:1:1000";

    // Naming tenant A under tenant B's setting, or under none: refused, nothing written.
    for setting in [Some(b.tenant), None] {
        let mut tx = begin_as(&app, setting).await?;
        let error = raise(&mut tx, a.tenant, &a, key)
            .await
            .err()
            .ok_or("a raise for tenant A under another setting was applied")?;
        assert_eq!(sql_state(&error).as_deref(), Some("42501"), "{error}");
        tx.rollback().await?;
    }
    assert_eq!(alarm_rows(&app, a.tenant).await?["alarms"], JsonValue::Null);

    // Under its own tenant: applied once; the same key again changes nothing.
    let mut tx = begin_as(&app, Some(a.tenant)).await?;
    assert_eq!(raise(&mut tx, a.tenant, &a, key).await?, "created");
    tx.commit().await?;
    let applied = alarm_rows(&app, a.tenant).await?;
    let mut tx = begin_as(&app, Some(a.tenant)).await?;
    assert_eq!(raise(&mut tx, a.tenant, &a, key).await?, "duplicate");
    tx.commit().await?;
    assert_eq!(alarm_rows(&app, a.tenant).await?, applied);

    // Tenant B neither sees A's keys (the same key is new to it) nor clears A's alarm.
    let mut tx = begin_as(&app, Some(b.tenant)).await?;
    assert_eq!(raise(&mut tx, b.tenant, &b, key).await?, "created");
    let cleared_key = format!("{key}:cleared");
    assert_eq!(
        clear(&mut tx, a.tenant, &a, &cleared_key).await?,
        ("cleared".to_owned(), None)
    );
    tx.commit().await?;
    assert_eq!(alarm_rows(&app, a.tenant).await?, applied);

    // The one-statement form the service sends: the tenant set in the first argument, for
    // that statement's transaction only.
    let mut conn = PgConnection::connect(&db.urls.app_url).await?;
    let (outcome, work_order): (String, Option<Uuid>) = sqlx::query_as(
        "SELECT outcome, work_order FROM alarm_cleared_effects(
             p_tenant => set_config('app.tenant_id', $1, true)::uuid, p_key => $2,
             p_rule_id => 'vibration-high', p_tag_id => $3, p_asset_id => $4,
             p_failure_mode => 'bearing-wear', p_cleared_at => now(), p_detail => '{}',
             p_closes_by_itself => true, p_auto_close_at => now() + interval '1 hour')",
    )
    .bind(a.tenant.to_string())
    .bind(&cleared_key)
    .bind(a.tag)
    .bind(a.asset)
    .fetch_one(&mut conn)
    .await?;
    assert_eq!(outcome, "cleared");
    let opened = applied["work_orders"][0]["id"]
        .as_str()
        .map(Uuid::parse_str)
        .transpose()?;
    assert_eq!(work_order, opened);
    let left: Option<Uuid> = sqlx::query_scalar("SELECT app_current_tenant()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(left, None, "the tenant setting outlived the statement");
    let rows = alarm_rows(&app, a.tenant).await?;
    assert_eq!(rows["alarms"][0]["state"], "cleared");
    let events = rows["events"].as_array().map(Vec::len);
    assert_eq!(events, Some(2), "{rows}");
    Ok(())
}

#[tokio::test]
async fn bootstrap_is_idempotent() -> TestResult {
    let admin = admin_url().await?;
    let name = format!("t_{}", Uuid::new_v4().simple());
    let first = bootstrap(&admin, &name, &test_secrets()).await?;
    let second = bootstrap(&admin, &name, &test_secrets()).await?;
    assert_eq!(first, second);
    let layout = migrate(&first.owner_url).await?;
    // Again after the migrations: nothing to redo, nothing broken.
    let third = bootstrap(&admin, &name, &test_secrets()).await?;
    assert_eq!(first, third);
    assert_eq!(migrate(&third.owner_url).await?, layout);

    let mut app = PgConnection::connect(&third.app_url).await?;
    let (user, database): (String, String) =
        sqlx::query_as("SELECT current_user::text, current_database()::text")
            .fetch_one(&mut app)
            .await?;
    assert_eq!(
        (user.as_str(), database.as_str()),
        (APP_ROLE, name.as_str())
    );
    let can_create: bool = sqlx::query_scalar("SELECT has_schema_privilege('public', 'CREATE')")
        .fetch_one(&mut app)
        .await?;
    assert!(
        !can_create,
        "the app role must not create objects in public"
    );
    Ok(())
}

#[tokio::test]
async fn bootstrap_rejects_bad_names_before_connecting() {
    // Nothing listens on port 1: a name check that needed the server would fail differently.
    let admin = "postgres://postgres:pw@127.0.0.1:1/postgres";
    let too_long = format!("a{}", "b".repeat(63));
    for name in [
        "",
        "Bad",
        "1abc",
        "a-b",
        "a;drop table x",
        "t\"x",
        too_long.as_str(),
    ] {
        let error = bootstrap(admin, name, &test_secrets())
            .await
            .expect_err("a bad name is rejected");
        assert!(
            matches!(error, DbError::InvalidDatabaseName { .. }),
            "{name:?}: {error}"
        );
        assert!(
            error.to_string().contains("^[a-z_][a-z0-9_]{0,62}$"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn bootstrap_leaves_other_owners_databases_alone() -> TestResult {
    let admin = admin_url().await?;
    let error = bootstrap(&admin, "postgres", &test_secrets())
        .await
        .expect_err("the postgres database belongs to the superuser");
    assert!(
        matches!(error, DbError::DatabaseOwnedByOtherRole { .. }),
        "{error}"
    );
    let mut conn = PgConnection::connect(&admin).await?;
    let public_can_connect: bool =
        sqlx::query_scalar("SELECT has_database_privilege('public', 'postgres', 'CONNECT')")
            .fetch_one(&mut conn)
            .await?;
    assert!(
        public_can_connect,
        "bootstrap must not lock down a database it refused"
    );
    Ok(())
}

#[tokio::test]
async fn connect_errors_name_the_server_and_role_but_not_the_password() -> TestResult {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let url = format!("postgres://postgres:hunter2-secret@127.0.0.1:{port}/postgres");
    let error = bootstrap(&url, "t_unreachable", &test_secrets())
        .await
        .expect_err("nothing listens there");
    let message = error.to_string();
    assert!(matches!(error, DbError::Connect { .. }), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("\"postgres\""), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{error:?}").contains("hunter2"));
    Ok(())
}

/// Whether process `pid` has ended (a zombie waiting to be reaped counts as ended).
fn process_gone(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return true;
    }
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            == Some('Z')
    })
}

async fn wait_until_gone(pids: &[u32], dir: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let running: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&pid| !process_gone(pid))
            .collect();
        if running.is_empty() && !dir.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {within:?}: processes {running:?} still running, {} exists: {}",
            dir.display(),
            dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The postmaster and every server process of `cluster`, as the server lists them.
async fn server_pids(
    cluster: &Cluster,
    admin: &mut PgConnection,
) -> Result<Vec<u32>, Box<dyn Error>> {
    let backends: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity")
        .fetch_all(admin)
        .await?;
    let mut pids = vec![cluster.pid()];
    for pid in backends {
        pids.push(u32::try_from(pid)?);
    }
    Ok(pids)
}

#[tokio::test]
async fn stopping_a_throwaway_cluster_leaves_no_process_and_no_data() -> TestResult {
    let cluster = Cluster::start(ClusterOptions { fsync: true }).await?;
    // Passwords that need quoting in SQL and encoding in URLs, on a cluster of its own.
    let secrets = RoleSecrets {
        owner_password: "o'wner\\ p@ss/w:rd?%41".to_owned(),
        app_password: "äpp \"pass\" #1&x=y".to_owned(),
    };
    let urls = bootstrap(&cluster.admin_url(), "maintainpro", &secrets).await?;
    migrate(&urls.owner_url).await?;
    let mut app = PgConnection::connect(&urls.app_url).await?;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut app)
        .await?;
    assert_eq!(user, APP_ROLE);

    // Open sessions must not hold the shutdown up.
    let mut admin = PgConnection::connect(&cluster.admin_url()).await?;
    let pids = server_pids(&cluster, &mut admin).await?;
    assert!(pids.len() > 2, "{pids:?}");
    let dir = cluster.root_dir().to_owned();
    let started = Instant::now();
    cluster.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fast shutdown took {:?}",
        started.elapsed()
    );
    // Stopped and reaped by stop(): nothing to wait for.
    wait_until_gone(&pids, &dir, Duration::ZERO).await;
    drop((app, admin));
    Ok(())
}

#[tokio::test]
async fn dropping_a_throwaway_cluster_leaves_no_process_and_no_data() -> TestResult {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let mut admin = PgConnection::connect(&cluster.admin_url()).await?;
    let pids = server_pids(&cluster, &mut admin).await?;
    let dir = cluster.root_dir().to_owned();
    assert!(dir.join("data").is_dir());
    drop(cluster);
    wait_until_gone(&pids, &dir, Duration::ZERO).await;
    Ok(())
}

/// Set in the child process of the test below.
const EXIT_CHILD_VAR: &str = "MAINTAINPRO_MIGRATIONS_EXIT_TEST_CHILD";

#[tokio::test]
async fn a_throwaway_cluster_stops_when_its_process_exits() -> TestResult {
    if env::var_os(EXIT_CHILD_VAR).is_some() {
        // The child: start a cluster and exit without running any destructor, as a process
        // does with a cluster in a `static`, or when it is killed.
        let cluster = Cluster::start(ClusterOptions::default()).await?;
        println!("CLUSTER {} {}", cluster.pid(), cluster.root_dir().display());
        std::process::exit(0);
    }

    let child = tokio::process::Command::new(env::current_exe()?)
        .args([
            "--exact",
            "a_throwaway_cluster_stops_when_its_process_exits",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EXIT_CHILD_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // Returning at all also shows that neither the server nor its guardian kept the child's
    // stdout open.
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        // libtest may print the test's name on the same line first.
        .find_map(|line| line.split_once("CLUSTER ").map(|(_, rest)| rest))
        .ok_or_else(|| {
            format!(
                "the child printed no cluster ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let (pid, dir) = line.split_once(' ').ok_or("malformed CLUSTER line")?;
    let pid: u32 = pid.parse()?;
    let dir = PathBuf::from(dir);
    wait_until_gone(&[pid], &dir, Duration::from_secs(20)).await;
    Ok(())
}

/// The ancestry rows as they should be: for every work order, its asset and each asset above
/// it, with the work order's creation time, status and openness, computed here from the
/// tables themselves.
async fn expected_ancestry(
    tx: &mut PgConnection,
) -> Result<std::collections::BTreeSet<(Uuid, Uuid, String, bool)>, sqlx::Error> {
    let parents: std::collections::HashMap<Uuid, Option<Uuid>> =
        sqlx::query_as::<_, (Uuid, Option<Uuid>)>("SELECT id, parent_id FROM assets")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let orders: Vec<(Uuid, Uuid, String, bool)> =
        sqlx::query_as("SELECT id, asset_id, status, closed_at IS NULL FROM work_orders")
            .fetch_all(&mut *tx)
            .await?;
    let mut rows = std::collections::BTreeSet::new();
    for (order, asset, status, open) in orders {
        let mut at = Some(asset);
        while let Some(a) = at {
            rows.insert((order, a, status.clone(), open));
            at = parents.get(&a).copied().flatten();
        }
    }
    Ok(rows)
}

async fn stored_ancestry(
    tx: &mut PgConnection,
) -> Result<std::collections::BTreeSet<(Uuid, Uuid, String, bool)>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String, bool)> = sqlx::query_as(
        "SELECT a.work_order_id, a.ancestor_id, a.status, a.open FROM work_order_ancestors a
         JOIN work_orders w ON w.id = a.work_order_id AND w.created_at = a.created_at",
    )
    .fetch_all(&mut *tx)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM work_order_ancestors")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(
        total as usize,
        rows.len(),
        "rows with a stale creation time"
    );
    Ok(rows.into_iter().collect())
}

#[tokio::test]
async fn work_order_ancestry_follows_new_work_orders_status_changes_and_asset_moves() -> TestResult
{
    let db = TestDatabase::create().await?;
    let app = db.app_pool().await;
    let seeded = seed_tenant(&app, "ancestry").await?;
    let tenant = seeded.tenant;
    let mut tx = begin_as(&app, Some(tenant)).await?;
    let site: Uuid = sqlx::query_scalar("SELECT site_id FROM assets WHERE id = $1")
        .bind(seeded.asset)
        .fetch_one(&mut *tx)
        .await?;
    // A tree of 40 assets under the seeded one, each under one made before it.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    let mut assets = vec![seeded.asset];
    for i in 0..40 {
        let id = Uuid::new_v4();
        let parent = assets[next(assets.len())];
        sqlx::query(
            "INSERT INTO assets (id, tenant_id, site_id, parent_id, name) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(tenant)
        .bind(site)
        .bind(parent)
        .bind(format!("Asset {i}"))
        .execute(&mut *tx)
        .await?;
        assets.push(id);
    }
    // Work orders one at a time, then a statement of many.
    let mut orders = Vec::new();
    for _ in 0..30 {
        let id = Uuid::new_v4();
        sqlx::query(INSERT_WORK_ORDER)
            .bind(id)
            .bind(tenant)
            .bind(assets[next(assets.len())])
            .execute(&mut *tx)
            .await?;
        orders.push(id);
    }
    sqlx::query(
        "INSERT INTO work_orders (id, tenant_id, asset_id, title, priority, source)
         SELECT gen_random_uuid(), $1, a, 'Bulk', 'low', 'manual' FROM unnest($2::uuid[]) a",
    )
    .bind(tenant)
    .bind(&assets)
    .execute(&mut *tx)
    .await?;
    assert_eq!(
        stored_ancestry(&mut tx).await?,
        expected_ancestry(&mut tx).await?
    );

    for step in 0..60 {
        match step % 4 {
            // A status change, closing some.
            0 | 1 => {
                let (status, closed) = [
                    ("in_progress", false),
                    ("completed", true),
                    ("on_hold", false),
                ][next(3)];
                sqlx::query(
                    "UPDATE work_orders SET status = $2,
                            closed_at = CASE WHEN $3 THEN now() END,
                            assignee_user = NULL
                      WHERE id = $1",
                )
                .bind(orders[next(orders.len())])
                .bind(status)
                .bind(closed)
                .execute(&mut *tx)
                .await?;
            }
            // A work order put on another asset.
            2 => {
                sqlx::query("UPDATE work_orders SET asset_id = $2 WHERE id = $1")
                    .bind(orders[next(orders.len())])
                    .bind(assets[next(assets.len())])
                    .execute(&mut *tx)
                    .await?;
            }
            // An asset moved under another that is not below it, or to the top.
            _ => {
                let moved = assets[1 + next(assets.len() - 1)];
                let below: Vec<Uuid> = sqlx::query_scalar(
                    "WITH RECURSIVE s AS (SELECT id FROM assets WHERE id = $1
                       UNION SELECT a.id FROM assets a JOIN s ON a.parent_id = s.id)
                     SELECT id FROM s",
                )
                .bind(moved)
                .fetch_all(&mut *tx)
                .await?;
                let candidates: Vec<Uuid> = assets
                    .iter()
                    .copied()
                    .filter(|a| !below.contains(a))
                    .collect();
                let parent = (next(5) > 0 && !candidates.is_empty())
                    .then(|| candidates[next(candidates.len())]);
                sqlx::query("UPDATE assets SET parent_id = $2 WHERE id = $1")
                    .bind(moved)
                    .bind(parent)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        assert_eq!(
            stored_ancestry(&mut tx).await?,
            expected_ancestry(&mut tx).await?,
            "after step {step}"
        );
    }
    tx.commit().await?;
    // The rows are the tenant's own: another tenant sees none of them.
    let other = seed_tenant(&app, "ancestry-other").await?;
    assert_eq!(
        count_as(
            &app,
            Some(other.tenant),
            "SELECT count(*) FROM work_order_ancestors"
        )
        .await?,
        0
    );
    assert!(
        count_as(
            &app,
            Some(tenant),
            "SELECT count(*) FROM work_order_ancestors"
        )
        .await?
            > 70
    );
    Ok(())
}

/// The errors a retry can outlast are told apart from those the same statement always gets,
/// with the errors a real server gives.
#[tokio::test]
async fn errors_that_pass_are_told_from_errors_that_stay() -> TestResult {
    let db = TestDatabase::create().await?;
    let mut admin = PgConnection::connect(db.admin_url()).await?;
    let error = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| match r {
        Ok(_) => Err("the statement should have failed"),
        Err(e) => Ok(e),
    };
    // A read-only server (a standby, or a primary during a failover): 25006.
    sqlx::query("SET default_transaction_read_only = on")
        .execute(&mut admin)
        .await?;
    let e = error(
        sqlx::query("CREATE TABLE t (x int)")
            .execute(&mut admin)
            .await,
    )?;
    assert!(migrations::is_transient(&e), "{e}");
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut admin)
        .await?;
    // A statement cancelled by a timeout (57014) is interrupted, not transient: it may be
    // cancelled again every time.
    sqlx::query("SET statement_timeout = 10")
        .execute(&mut admin)
        .await?;
    let e = error(sqlx::query("SELECT pg_sleep(5)").execute(&mut admin).await)?;
    assert!(migrations::is_interrupted(&e), "{e}");
    assert!(!migrations::is_transient(&e), "{e}");
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut admin)
        .await?;
    // What the same statement always gets: a syntax error, a missing table, a bad value.
    for statement in ["SELEC 1", "SELECT * FROM no_such_table", "SELECT 'x'::int"] {
        let e = error(sqlx::query(statement).execute(&mut admin).await)?;
        assert!(!migrations::is_transient(&e), "{statement}: {e}");
        assert!(!migrations::is_interrupted(&e), "{statement}: {e}");
    }
    Ok(())
}
