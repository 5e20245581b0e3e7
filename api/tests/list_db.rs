//! The list connections' pipelined read against a real PostgreSQL (a fresh migrated database
//! on the test cluster): what a read runs inside, what it leaves on the connection (after a
//! failed read too), and how many prepared statements a connection keeps.

use api::list_db::{ListPool, Sql};
use migrations::testing::TestDatabase;
use uuid::Uuid;

/// The backend a read ran on, and what it saw of its transaction.
const SCOPE: &str = "SELECT pg_backend_pid(), current_setting('app.tenant_id', true), \
     current_setting('transaction_read_only'), current_setting('plan_cache_mode'), \
     current_setting('max_parallel_workers_per_gather')";

async fn scope(
    lists: &ListPool,
    tenant: Uuid,
) -> anyhow::Result<(i32, String, String, String, String)> {
    let rows = lists.read(tenant, &Sql::new(SCOPE)).await?;
    let row = rows.first().ok_or_else(|| anyhow::anyhow!("no row"))?;
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    ))
}

/// What the backend `pid` is doing now, seen from another connection.
async fn state_of(admin: &sqlx::PgPool, pid: i32) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(admin)
            .await?,
    )
}

#[tokio::test]
async fn a_read_runs_in_the_tenants_read_only_transaction_and_leaves_nothing_behind()
-> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let admin = sqlx::PgPool::connect(db.admin_url()).await?;
    let lists = ListPool::new(db.app_url(), 1)?;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

    let (pid, tenant, read_only, plans, workers) = scope(&lists, a).await?;
    assert_eq!(tenant, a.to_string());
    assert_eq!(read_only, "on");
    assert_eq!(plans, "force_generic_plan");
    assert_eq!(workers, "0");
    // The ROLLBACK went with the read: the connection waits outside any transaction.
    assert_eq!(state_of(&admin, pid).await?, "idle");

    // The same connection, another tenant: the first one's setting ended with its read.
    let (again, tenant, ..) = scope(&lists, b).await?;
    assert_eq!(again, pid, "one connection in the pool");
    assert_eq!(tenant, b.to_string());

    // A read that fails at execution, inside the transaction, answers an error; its ROLLBACK
    // still ends the transaction, and the connection is as clean as after a good read.
    let mut failing = Sql::new("SELECT 1 / ");
    failing.push_bind(0_i32);
    let e = lists
        .read(a, &failing)
        .await
        .expect_err("a division by zero");
    assert!(matches!(e, api::error::ApiError::Internal(_)), "{e:?}");
    let (next, tenant, ..) = scope(&lists, b).await?;
    assert_eq!(next, pid);
    assert_eq!(tenant, b.to_string());
    assert_eq!(state_of(&admin, next).await?, "idle");
    Ok(())
}

#[tokio::test]
async fn a_connection_keeps_a_bounded_number_of_prepared_statements() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let lists = ListPool::new(db.app_url(), 1)?;
    let tenant = Uuid::new_v4();
    let mut most = 0_i64;
    for n in 0..450 {
        // Each text is a statement of its own.
        let sql = Sql::new(format!(
            "SELECT count(*) FROM pg_prepared_statements WHERE {n} = {n}"
        ));
        let rows = lists.read(tenant, &sql).await?;
        let prepared: i64 = rows[0].try_get(0)?;
        most = most.max(prepared);
    }
    assert!(
        (1..=201).contains(&most),
        "at most the cache's 200 and the one being run, found {most}"
    );
    Ok(())
}
