//! Ingest's pipeline against a real database and broker: the rules receive a message's readings
//! while its storage transaction still waits, the message is acknowledged only after its
//! commit (and after the messages that arrived before it), and what the database could not
//! store never reaches the rules. The storage
//! transaction is held up by a lock another connection takes on the batch ledger. A group's
//! rows are written in the index's order. A message whose dead letter the database refuses is
//! held, not acknowledged, until the database takes it. A write the database does not answer
//! in time is given up and tried again on a new connection, and does not hold a stop. Needs
//! `scripts/test.sh`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ingest::copy::Row;
use ingest::store::{DeadLetter, Item};
use ingest::{Consumer, IngestConfig, IngestStats, PgStore, RuleInput};
use maintainpro_tests::{Plant, demo_batch, lock_table, mqtt_url, publish_all, series};
use migrations::testing::TestDatabase;
use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, TenantId, Timestamp};
use server::demo::{DEMO_GATEWAY, seed_plant};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A seeded tenant, and what its ingest consumers share: the client id (so a second consumer
/// resumes the first one's broker session) and the topic.
struct World {
    db: TestDatabase,
    tenant: Uuid,
    topic: String,
    config: IngestConfig,
}

impl World {
    async fn new() -> anyhow::Result<World> {
        let db = TestDatabase::create().await?;
        let tenant = seed_plant(&db.urls.app_url, "plant-a", "unused")
            .await?
            .tenant;
        let config = IngestConfig {
            client_id: format!("ingest-{}", Uuid::new_v4().simple()),
            subscribe: vec![format!("{}/{tenant}/+/readings", model::topic::PREFIX)],
            ..IngestConfig::new(mqtt_url()?)
        };
        let topic = model::topic::readings(
            TenantId::from_uuid(tenant),
            &GatewayId::parse(DEMO_GATEWAY)?,
        );
        Ok(World {
            db,
            tenant,
            topic,
            config,
        })
    }

    /// Publishes `messages` to the demo gateway's readings topic.
    async fn publish(&self, messages: Vec<Vec<u8>>) -> anyhow::Result<()> {
        publish_all(&self.config.broker, &self.topic, messages).await
    }

    /// Starts a consumer on its own pool, feeding a rules channel the test reads; returns
    /// once the broker has confirmed its subscription.
    async fn consumer(&self) -> anyhow::Result<Running> {
        let running = self.start_consumer().await;
        let stats = Arc::clone(&running.stats);
        Plant::eventually(Duration::from_secs(20), "the subscription", || async {
            Ok((stats.subscriptions.load(Ordering::Relaxed) > 0).then_some(()))
        })
        .await?;
        Ok(running)
    }

    /// The id of the seeded demo gateway.
    async fn demo_gateway(&self, pool: &PgPool) -> anyhow::Result<Uuid> {
        let mut tx = migrations::begin_tenant(pool, self.tenant).await?;
        let gateway = sqlx::query_scalar("SELECT id FROM gateways WHERE code = $1")
            .bind(DEMO_GATEWAY)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gateway)
    }

    /// Resumes the consumers' broker session and checks that nothing comes again: every
    /// message was acknowledged.
    async fn nothing_comes_again(&self) -> anyhow::Result<()> {
        let again = self.consumer().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(get(&again.stats.messages), 0, "a message came back");
        again.stop().await
    }

    /// Resumes the consumers' broker session, which gets the one message nothing stored yet:
    /// its `readings` go to the rules, and it is stored once.
    async fn delivered_again_and_stored_once(&self, readings: usize) -> anyhow::Result<()> {
        let mut again = self.consumer().await?;
        assert_eq!(again.next_rule_inputs().await?.len(), readings);
        Plant::eventually(Duration::from_secs(10), "the batch stored", || async {
            Ok((get(&again.stats.batches_stored) == 1).then_some(()))
        })
        .await?;
        again.stop().await?;
        assert_eq!(self.stored().await?, (1, i64::try_from(readings)?));
        Ok(())
    }

    /// Starts a consumer as [`World::consumer`] does, without waiting for anything.
    async fn start_consumer(&self) -> Running {
        let pool = self.db.app_pool().await;
        let (rules_tx, rules) = ingest::queue::bounded(64);
        let consumer = Consumer::new(
            self.config.clone(),
            PgStore::new(pool.clone()),
            Some(rules_tx),
        );
        let stats = consumer.stats();
        let stop = CancellationToken::new();
        let task = {
            let stop = stop.clone();
            tokio::spawn(consumer.run_until(async move { stop.cancelled().await }))
        };
        Running {
            pool,
            rules,
            stats,
            stop,
            task,
        }
    }

    /// (ledger rows, stored readings) of the tenant.
    async fn stored(&self) -> anyhow::Result<(i64, i64)> {
        let pool = self.db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, self.tenant).await?;
        let batches = sqlx::query_scalar("SELECT count(*) FROM ingest_batches")
            .fetch_one(&mut *tx)
            .await?;
        let readings = sqlx::query_scalar("SELECT count(*) FROM tenant_readings")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        pool.close().await;
        Ok((batches, readings))
    }

    /// Holds a lock on the batch ledger that stops ingest's first insert there, so its
    /// storage transaction waits, until the returned transaction ends.
    async fn lock_ledger(&self) -> anyhow::Result<PgConnection> {
        lock_table(&self.db.urls.owner_url, "ingest_batches", "SHARE").await
    }

    /// Waits until some transaction waits for the ledger lock.
    async fn ingest_waits_for(&self, lock_holder: &mut PgConnection) -> anyhow::Result<()> {
        wait_for_waiter(
            lock_holder,
            "SELECT count(*) FROM pg_locks
             WHERE relation = 'ingest_batches'::regclass AND NOT granted",
        )
        .await
    }

    /// An open transaction that has put batch `seq` of the demo gateway in the ledger: ingest's
    /// insert of the same batch waits until it ends.
    async fn claim_batch(&self, seq: i64) -> anyhow::Result<PgConnection> {
        let mut conn = PgConnection::connect(&self.db.urls.owner_url).await?;
        sqlx::query("BEGIN").execute(&mut conn).await?;
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(migrations::TENANT_SETTING)
            .bind(self.tenant.to_string())
            .execute(&mut conn)
            .await?;
        let claimed = sqlx::query(
            "INSERT INTO ingest_batches (tenant_id, gateway_id, seq, readings)
             SELECT tenant_id, id, $2, 0 FROM gateways WHERE tenant_id = $1 AND code = $3",
        )
        .bind(self.tenant)
        .bind(seq)
        .bind(DEMO_GATEWAY)
        .execute(&mut conn)
        .await?;
        anyhow::ensure!(claimed.rows_affected() == 1, "the demo gateway not found");
        Ok(conn)
    }

    /// Waits until another transaction waits for the one open on `claim`.
    async fn someone_waits(&self, claim: &mut PgConnection) -> anyhow::Result<()> {
        wait_for_waiter(
            claim,
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'transactionid' AND NOT granted
               AND transactionid::text = pg_current_xact_id()::text",
        )
        .await
    }
}

/// Polls `count` (the number of waiting lock requests) on `conn` until it is positive, for up
/// to 10 s.
async fn wait_for_waiter(conn: &mut PgConnection, count: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(count).fetch_one(&mut *conn).await?;
        if waiting > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no transaction waited for a lock within 10 s")
}

struct Running {
    pool: PgPool,
    rules: ingest::queue::Receiver<Vec<RuleInput>>,
    stats: Arc<IngestStats>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ingest::consumer::IngestError>>,
}

impl Running {
    async fn next_rule_inputs(&mut self) -> anyhow::Result<Vec<RuleInput>> {
        tokio::time::timeout(Duration::from_secs(10), self.rules.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the rules channel closed"))
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        self.pool.close().await;
        Ok(())
    }

    /// Asks ingest to stop, then ends the transaction of `lock` that held it up, and waits
    /// (at most 15 s) for the stop; the counters as the stop left them.
    async fn stop_then_release(self, mut lock: PgConnection) -> anyhow::Result<Arc<IngestStats>> {
        self.stop.cancel();
        sqlx::query("COMMIT").execute(&mut lock).await?;
        lock.close().await?;
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .map_err(|_| anyhow::anyhow!("ingest did not stop"))???;
        self.pool.close().await;
        Ok(self.stats)
    }
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    IngestStats::get(counter)
}

/// `n` readings of the press bearing, a second apart, from `from` (microseconds).
fn bearing(seq: u64, from: i64, n: i64) -> anyhow::Result<Vec<u8>> {
    let readings = series("press-1.bearing_temp", from, 1_000_000, n, |i| {
        60.0 + i as f64
    })?;
    demo_batch(seq, &readings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_receive_readings_while_their_transaction_waits_and_the_ack_follows_the_commit()
-> anyhow::Result<()> {
    let world = World::new().await?;
    let mut ingest = world.consumer().await?;
    let mut lock = world.lock_ledger().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(1, t0, 5)?]).await?;
    world.ingest_waits_for(&mut lock).await?;

    // The storage transaction is blocked; the rules have the readings all the same, in order.
    let inputs = ingest.next_rule_inputs().await?;
    let times: Vec<i64> = inputs.iter().map(|r| r.ts.as_micros()).collect();
    assert_eq!(
        times,
        (0..5).map(|i| t0 + i * 1_000_000).collect::<Vec<_>>()
    );
    assert!(
        inputs
            .iter()
            .all(|r| r.ctx.tag.as_str() == "press-1.bearing_temp")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&ingest.stats.batches_stored), 0);
    assert_eq!(ingest.stats.receipt_to_commit.count(), 0);
    assert_eq!(world.stored().await?, (0, 0), "nothing committed yet");

    // Released: the transaction commits, then the message is acknowledged.
    sqlx::query("COMMIT").execute(&mut lock).await?;
    Plant::eventually(Duration::from_secs(10), "the batch stored", || async {
        Ok((get(&ingest.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    assert_eq!(world.stored().await?, (1, 5));
    ingest.stop().await?;

    // Acknowledged: the same session, resumed, gets nothing again.
    world.nothing_comes_again().await?;
    lock.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dropped_before_its_commit_is_delivered_again_and_handed_to_the_rules_again()
-> anyhow::Result<()> {
    let world = World::new().await?;
    let mut first = world.consumer().await?;
    let mut lock = world.lock_ledger().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(7, t0, 3)?]).await?;
    world.ingest_waits_for(&mut lock).await?;
    assert_eq!(first.next_rule_inputs().await?.len(), 3);

    // A crash before the commit: every task of the consumer stops, nothing is acknowledged.
    first.task.abort();
    assert!(first.task.await.is_err_and(|e| e.is_cancelled()));
    sqlx::query("COMMIT").execute(&mut lock).await?;
    lock.close().await?;
    first.pool.close().await;
    assert_eq!(world.stored().await?, (0, 0));

    // The broker delivers the message to the resumed session; it is stored once, and the
    // rules receive its readings a second time (the engine skips readings it has seen).
    world.delivered_again_and_stored_once(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_engine_that_ended_stops_ingest_before_it_stores_what_the_rules_did_not_see()
-> anyhow::Result<()> {
    let world = World::new().await?;
    let Running {
        pool,
        rules,
        stats,
        task,
        ..
    } = world.consumer().await?;
    // The rules engine ends by itself (a failure): its end of the channel goes.
    drop(rules);
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(3, t0, 4)?]).await?;

    // Ingest ends with an error at the message, which it neither stores nor acknowledges.
    let ended = tokio::time::timeout(Duration::from_secs(10), task).await??;
    assert!(ended.is_err(), "ingest ended as if asked to: {ended:?}");
    assert_eq!(get(&stats.messages), 1);
    assert_eq!(get(&stats.batches_stored), 0);
    pool.close().await;
    assert_eq!(world.stored().await?, (0, 0));

    // The broker delivers it again to the next session, whose rules see it.
    world.delivered_again_and_stored_once(4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_postgresql_cannot_store_makes_a_dead_letter_the_rules_never_see()
-> anyhow::Result<()> {
    let mut world = World::new().await?;
    // Any age taken: PostgreSQL's own limit is the one under test.
    world.config.max_reading_age = Duration::MAX;
    let mut ingest = world.consumer().await?;
    let gateway = GatewayId::parse(DEMO_GATEWAY)?;
    let reading = |micros: i64| -> anyhow::Result<Reading> {
        Ok(Reading {
            tag: TagName::parse("press-1.vibration")?,
            ts: Timestamp::from_micros(micros),
            value: 1.0,
            quality: Quality::Good,
        })
    };
    // PostgreSQL's earliest time, 4714-11-24 00:00 UTC BC, in microseconds since 1970.
    let earliest = -211_813_488_000_000_000 + 946_684_800_000_000;
    let now = Timestamp::now().as_micros();
    let too_early = Batch::from_readings(
        gateway.clone(),
        1,
        &[reading(now - 1_000_000)?, reading(earliest - 1)?],
    )
    .encode();
    let edge = Batch::from_readings(gateway, 2, &[reading(now)?, reading(earliest)?]).encode();
    world.publish(vec![too_early, edge]).await?;

    let inputs = ingest.next_rule_inputs().await?;
    let times: Vec<i64> = inputs.iter().map(|r| r.ts.as_micros()).collect();
    assert_eq!(times, [earliest, now], "only the storable batch, sorted");
    Plant::eventually(Duration::from_secs(10), "both messages handled", || async {
        Ok(
            (get(&ingest.stats.batches_stored) == 1 && get(&ingest.stats.dead_letters) == 1)
                .then_some(()),
        )
    })
    .await?;
    assert!(
        ingest.rules.try_recv().is_none(),
        "nothing else reached the rules"
    );
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (1, 2));
    let pool = world.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, world.tenant).await?;
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    assert_eq!(reasons, ["bad_timestamp"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_commits_first_is_acknowledged_only_after_the_group_ahead_of_it()
-> anyhow::Result<()> {
    let world = World::new().await?;
    assert!(world.config.writers > 1, "needs writers that run at once");
    let first = world.consumer().await?;
    // Batch 1's group waits for another transaction that has claimed the same ledger key.
    let mut claim = world.claim_batch(1).await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(1, t0, 3)?]).await?;
    world.someone_waits(&mut claim).await?;

    // Batch 2 arrives after that group was formed: another writer commits it meanwhile.
    let later = t0 + 10_000_000;
    world.publish(vec![bearing(2, later, 4)?]).await?;
    Plant::eventually(Duration::from_secs(10), "batch 2 stored", || async {
        Ok((get(&first.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    assert_eq!(world.stored().await?, (1, 4));

    // A crash now: batch 2 is stored, but its acknowledgement waits for batch 1's, so the
    // broker still holds both messages.
    first.task.abort();
    assert!(first.task.await.is_err_and(|e| e.is_cancelled()));
    first.pool.close().await;
    sqlx::query("ROLLBACK").execute(&mut claim).await?;
    claim.close().await?;

    let second = world.consumer().await?;
    Plant::eventually(Duration::from_secs(10), "both messages again", || async {
        let done = get(&second.stats.batches_stored) + get(&second.stats.batches_duplicate);
        Ok((done == 2).then_some(()))
    })
    .await?;
    assert_eq!(get(&second.stats.messages), 2);
    assert_eq!(get(&second.stats.batches_stored), 1, "batch 1");
    assert_eq!(
        get(&second.stats.batches_duplicate),
        1,
        "batch 2, stored before"
    );
    second.stop().await?;
    assert_eq!(world.stored().await?, (2, 7));
    Ok(())
}

/// A group's rows go into the table in the index's order (tag, newest first), whatever order
/// its messages brought them in, so that the COPY walks the index instead of jumping about it.
/// With a linger, a group that is not full waits for more messages: two published apart are
/// committed in one transaction, and acknowledged; a stop writes a lingering group at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_within_a_linger_of_each_other_are_committed_together() -> anyhow::Result<()> {
    let mut world = World::new().await?;
    world.config.linger = Duration::from_secs(1);
    let mut ingest = world.consumer().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(1, t0, 3)?]).await?;
    // Decoded and handed to the rules, and not written: its group waits.
    assert_eq!(ingest.next_rule_inputs().await?.len(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(world.stored().await?, (0, 0), "the group lingers");
    world.publish(vec![bearing(2, t0 + 3_000_000, 2)?]).await?;
    assert_eq!(ingest.next_rule_inputs().await?.len(), 2);
    Plant::eventually(Duration::from_secs(10), "both batches stored", || async {
        Ok((get(&ingest.stats.batches_stored) == 2).then_some(()))
    })
    .await?;
    assert_eq!(world.stored().await?, (2, 5));
    let mut tx = migrations::begin_tenant(&ingest.pool, world.tenant).await?;
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM ingest_batches")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(transactions, 1, "one transaction for both messages");
    // A stop does not wait for a lingering group: it is stored and acknowledged.
    world.publish(vec![bearing(3, t0 + 5_000_000, 1)?]).await?;
    assert_eq!(ingest.next_rule_inputs().await?.len(), 1);
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (3, 6));
    world.nothing_comes_again().await
}

#[tokio::test]
async fn a_group_writes_its_rows_in_the_index_order() -> anyhow::Result<()> {
    let world = World::new().await?;
    let pool = world.db.app_pool().await;
    let gateway = world.demo_gateway(&pool).await?;
    // Seconds after 01:00 today (UTC): inside today's partition.
    const DAY: i64 = 86_400_000_000;
    let one_am = Timestamp::now().as_micros() / DAY * DAY + 3_600_000_000;
    let row = |tag_id: i64, second: i64| Row {
        tag_id,
        ts: Timestamp::from_micros(one_am + second * 1_000_000),
        value: 1.0,
        quality: Quality::Good,
    };
    let batch = |seq: i64, rows: Vec<Row>| Item::Batch {
        tenant: world.tenant,
        gateway,
        seq,
        rows,
        rejected: None,
        birth: None,
        numbered: None,
    };
    let items = [
        batch(1, vec![row(3, 1), row(1, 2), row(3, 0)]),
        batch(2, vec![row(2, 1), row(1, 0)]),
    ];
    PgStore::new(pool).write_group(&items).await?;

    let mut owner = PgConnection::connect(&world.db.urls.owner_url).await?;
    let stored: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT tag_id, ((extract(epoch FROM ts) * 1000000)::int8 - $1) / 1000000
         FROM readings ORDER BY ctid",
    )
    .bind(one_am)
    .fetch_all(&mut owner)
    .await?;
    assert_eq!(stored, [(1, 2), (1, 0), (2, 1), (3, 1), (3, 0)]);
    Ok(())
}

/// A group written again, as after a commit whose outcome ingest could not learn (its
/// connection lost or given up at the commit), stores nothing twice: the ledger skips its
/// batches, and each dead letter's key skips the letter.
#[tokio::test]
async fn a_group_written_again_stores_its_batches_and_dead_letters_once() -> anyhow::Result<()> {
    let world = World::new().await?;
    let pool = world.db.app_pool().await;
    let gateway = world.demo_gateway(&pool).await?;
    let letter = |reason| {
        DeadLetter::new(
            Some(world.tenant),
            &world.topic,
            reason,
            "detail".to_owned(),
            bytes::Bytes::from_static(b"\x00\x01"),
        )
    };
    let items = [
        Item::Dead(letter("decode_error")),
        Item::Batch {
            tenant: world.tenant,
            gateway,
            seq: 1,
            rows: vec![Row {
                tag_id: 1,
                ts: Timestamp::now(),
                value: 1.0,
                quality: Quality::Good,
            }],
            rejected: Some(letter("unknown_tag")),
            birth: None,
            numbered: None,
        },
    ];
    let store = PgStore::new(pool);
    store.write_group(&items).await?;
    store.write_group(&items).await?;
    // The same message decoded again (a redelivery) is a new letter.
    store
        .write_group(&[Item::Dead(letter("decode_error"))])
        .await?;

    let mut tx = migrations::begin_tenant(store.pool(), world.tenant).await?;
    let letters: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    assert_eq!(letters, ["decode_error", "unknown_tag", "decode_error"]);
    assert_eq!(world.stored().await?, (1, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_dead_letter_the_database_refuses_is_held_unacknowledged_until_it_is_stored()
-> anyhow::Result<()> {
    let world = World::new().await?;
    let mut owner = PgConnection::connect(&world.db.urls.owner_url).await?;
    let revoke = format!(
        "REVOKE INSERT ON dead_letters FROM {}",
        migrations::APP_ROLE
    );
    sqlx::query(&revoke).execute(&mut owner).await?;
    let first = world.consumer().await?;
    let payload = b"not a batch of readings, only words".to_vec();
    world.publish(vec![payload.clone()]).await?;

    // The letter is refused for good (permission denied), over and over: the message is
    // neither dropped nor acknowledged, whatever the error's class.
    Plant::eventually(Duration::from_secs(20), "ingest retrying", || async {
        Ok((get(&first.stats.retries) >= 2).then_some(()))
    })
    .await?;
    assert_eq!(get(&first.stats.dead_letters), 0);
    first.stop().await?;

    // Mended: the resumed session gets the message again, and its dead letter is stored.
    let grant = format!("GRANT INSERT ON dead_letters TO {}", migrations::APP_ROLE);
    sqlx::query(&grant).execute(&mut owner).await?;
    owner.close().await?;
    let second = world.consumer().await?;
    Plant::eventually(
        Duration::from_secs(10),
        "the dead letter stored",
        || async { Ok((get(&second.stats.dead_letters) == 1).then_some(())) },
    )
    .await?;
    second.stop().await?;
    let pool = world.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, world.tenant).await?;
    let letters: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT reason, payload FROM dead_letters")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_ne!(
        letters[0].0, "store_rejected",
        "the decoder's reason is kept"
    );
    assert_eq!(letters[0].1, payload);
    Ok(())
}

/// A database that refuses every write whatever it holds (here the readings' privilege
/// revoked) holds the messages, as one that is down does, instead of setting each aside as a
/// dead letter; once mended they are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_the_database_refuses_whatever_they_hold_are_held_until_it_is_mended()
-> anyhow::Result<()> {
    let world = World::new().await?;
    let mut owner = PgConnection::connect(&world.db.urls.owner_url).await?;
    let app = migrations::APP_ROLE;
    sqlx::query(&format!("REVOKE INSERT ON readings FROM {app}"))
        .execute(&mut owner)
        .await?;
    let ingest = world.consumer().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world
        .publish(vec![bearing(1, t0, 5)?, bearing(2, t0 + 5_000_000, 5)?])
        .await?;
    Plant::eventually(Duration::from_secs(20), "ingest holding", || async {
        Ok((get(&ingest.stats.retries) >= 3).then_some(()))
    })
    .await?;
    assert_eq!(get(&ingest.stats.dead_letters), 0, "nothing set aside");
    assert_eq!(get(&ingest.stats.batches_stored), 0);

    sqlx::query(&format!("GRANT INSERT ON readings TO {app}"))
        .execute(&mut owner)
        .await?;
    owner.close().await?;
    Plant::eventually(Duration::from_secs(20), "both batches stored", || async {
        Ok((get(&ingest.stats.batches_stored) == 2).then_some(()))
    })
    .await?;
    assert_eq!(get(&ingest.stats.dead_letters), 0);
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (2, 10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_broker_refuses_is_reported_and_not_taken_for_one() -> anyhow::Result<()>
{
    const ADMIN: (&str, &str) = ("admin", "admin password");
    const INGEST: (&str, &str) = ("ingest-acl", "ingest password");
    let dir = tempfile::tempdir()?;
    let broker = simulators::mosquitto::PrivateBroker::start_with_accounts(dir.path(), ADMIN)?;
    // Ingest's account may read Sparkplug B topics only.
    maintainpro_tests::broker_account(&broker, INGEST, "sparkplug-only", &["spBv1.0/#"])?;
    let mut world = World::new().await?;
    world.config.broker = broker.url();
    world.config.client_id = INGEST.0.to_owned();
    world.config.username = Some(INGEST.0.to_owned());
    world.config.password = Some(api::config::Secret::new(INGEST.1.to_owned()));
    let allowed = "spBv1.0/#".to_owned();
    world.config.subscribe = vec![allowed.clone(), world.config.subscribe[0].clone()];

    // One filter of two refused: the subscription is not taken as made.
    let refused = world.start_consumer().await;
    Plant::eventually(Duration::from_secs(20), "the refusal", || async {
        Ok((get(&refused.stats.subscriptions_refused) >= 1).then_some(()))
    })
    .await?;
    assert_eq!(get(&refused.stats.subscriptions), 0);
    refused.stop().await?;

    // The allowed filter alone is.
    world.config.subscribe = vec![allowed];
    let granted = world.consumer().await?;
    assert_eq!(get(&granted.stats.subscriptions_refused), 0);
    granted.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_after_its_connection_was_lost_is_acknowledged_only_as_redelivered()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = simulators::mosquitto::PrivateBroker::start(dir.path())?;
    let mut world = World::new().await?;
    world.config.broker = broker.url();
    let ingest = world.consumer().await?;
    let mut lock = world.lock_ledger().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(3, t0, 4)?]).await?;
    world.ingest_waits_for(&mut lock).await?;

    // The broker restarts while the message's transaction waits: the resumed session gets
    // the message again, on the new connection.
    broker.pause()?;
    broker.resume()?;
    Plant::eventually(
        Duration::from_secs(20),
        "the message delivered again",
        || async { Ok((get(&ingest.stats.messages) == 2).then_some(())) },
    )
    .await?;

    // Stored once; the first copy's ack is withheld (its packet id belongs to the lost
    // connection), the second copy's goes out.
    sqlx::query("COMMIT").execute(&mut lock).await?;
    lock.close().await?;
    Plant::eventually(Duration::from_secs(10), "both copies handled", || async {
        Ok(
            (get(&ingest.stats.batches_stored) == 1 && get(&ingest.stats.batches_duplicate) == 1)
                .then_some(()),
        )
    })
    .await?;
    // Counted just after the stored and duplicate counts.
    Plant::eventually(Duration::from_secs(10), "the ack withheld", || async {
        Ok((get(&ingest.stats.acks_withheld) == 1).then_some(()))
    })
    .await?;
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (1, 4));

    // The broker has the message acknowledged: the session, resumed again, gets nothing.
    world.nothing_comes_again().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_tag_or_its_asset_reaches_the_rules_at_the_next_message() -> anyhow::Result<()>
{
    let world = World::new().await?;
    let mut ingest = world.consumer().await?;
    // The listener subscribed (which also counts as a change heard).
    Plant::eventually(
        Duration::from_secs(20),
        "the directory listener",
        || async { Ok((get(&ingest.stats.directory_changes) > 0).then_some(())) },
    )
    .await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(1, t0, 1)?]).await?;
    let before = ingest.next_rule_inputs().await?[0].ctx.clone();

    // Each edit, once announced, is what the next message resolves to.
    let edits = [
        "UPDATE tags SET unit = 'degF' WHERE name = 'press-1.bearing_temp'",
        "UPDATE assets SET criticality = CASE criticality WHEN 5 THEN 4 ELSE 5 END
         WHERE id = (SELECT asset_id FROM tags WHERE name = 'press-1.bearing_temp')",
    ];
    let mut contexts = Vec::new();
    for (i, edit) in edits.into_iter().enumerate() {
        let heard = get(&ingest.stats.directory_changes);
        let mut tx = migrations::begin_tenant(&ingest.pool, world.tenant).await?;
        let changed = sqlx::query(edit).execute(&mut *tx).await?;
        anyhow::ensure!(changed.rows_affected() == 1, "{edit}");
        tx.commit().await?;
        Plant::eventually(Duration::from_secs(10), "the announcement", || async {
            Ok((get(&ingest.stats.directory_changes) > heard).then_some(()))
        })
        .await?;
        let seq = 2 + i as u64;
        let at = t0 + (seq as i64) * 1_000_000;
        world.publish(vec![bearing(seq, at, 1)?]).await?;
        contexts.push(ingest.next_rule_inputs().await?[0].ctx.clone());
    }
    assert_ne!(before.unit.as_deref(), Some("degF"));
    assert_eq!(contexts[0].unit.as_deref(), Some("degF"));
    assert_eq!(contexts[0].criticality, before.criticality);
    assert_ne!(contexts[1].criticality, before.criticality);
    assert_eq!(contexts[1].unit.as_deref(), Some("degF"));
    ingest.stop().await?;
    Ok(())
}

/// Transactions waiting for a lock on the batch ledger: ingest's current one, and those of
/// connections it gave up, whose server processes wait on until the lock frees.
async fn ledger_waiters(conn: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE relation = 'ingest_batches'::regclass AND NOT granted",
    )
    .fetch_one(conn)
    .await?)
}

/// A consumer that gives the database a second to answer, and its write of a message (batch
/// `seq`, `n` readings) waiting for the ledger lock the returned connection holds.
async fn write_left_unanswered(seq: u64, n: i64) -> anyhow::Result<(World, Running, PgConnection)> {
    let mut world = World::new().await?;
    world.config.database_timeout = Duration::from_secs(1);
    let ingest = world.consumer().await?;
    let mut lock = world.lock_ledger().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(seq, t0, n)?]).await?;
    world.ingest_waits_for(&mut lock).await?;
    Ok((world, ingest, lock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_database_does_not_answer_is_given_up_and_stored_once_later()
-> anyhow::Result<()> {
    let (world, ingest, mut lock) = write_left_unanswered(1, 5).await?;

    // Each second without an answer, ingest gives the connection up and tries on a new one;
    // the server processes of those it gave up still wait for the lock.
    Plant::eventually(Duration::from_secs(20), "two timeouts", || async {
        Ok((get(&ingest.stats.database_timeouts) >= 2).then_some(()))
    })
    .await?;
    assert!(
        ledger_waiters(&mut lock).await? >= 2,
        "the retry did not run on a new connection"
    );
    assert_eq!(get(&ingest.stats.batches_stored), 0);
    assert_eq!(world.stored().await?, (0, 0));

    // Released: the transactions given up find their client gone and roll back; the retry
    // stores the batch once.
    sqlx::query("COMMIT").execute(&mut lock).await?;
    Plant::eventually(Duration::from_secs(10), "the batch stored", || async {
        Ok((get(&ingest.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    Plant::eventually(Duration::from_secs(10), "no waiter left", || async {
        let mut conn = PgConnection::connect(&world.db.urls.owner_url).await?;
        let left = ledger_waiters(&mut conn).await?;
        conn.close().await?;
        Ok((left == 0).then_some(()))
    })
    .await?;
    lock.close().await?;
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (1, 5));

    // Acknowledged: the resumed session gets nothing again.
    world.nothing_comes_again().await?;
    Ok(())
}

/// A commit that outlasts `ingest.database_timeout` is given up but goes through: the retry
/// finds the batch in the ledger, and counts it as stored (once), not as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_given_up_that_went_through_counts_as_stored_once() -> anyhow::Result<()> {
    let mut world = World::new().await?;
    world.config.database_timeout = Duration::from_secs(2);
    let mut owner = PgConnection::connect(&world.db.urls.owner_url).await?;
    // The first ledger row's commit takes 3 s: ingest gives it up after 2 s and closes the
    // connection, but the server finishes the commit.
    sqlx::raw_sql(
        "CREATE SEQUENCE slow_commits;
         CREATE FUNCTION slow_first_commit() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER AS $$
         BEGIN
             IF nextval('slow_commits') = 1 THEN
                 PERFORM pg_sleep(3);
             END IF;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER slow_first_commit AFTER INSERT ON ingest_batches
             DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION slow_first_commit();",
    )
    .execute(&mut owner)
    .await?;
    owner.close().await?;
    let ingest = world.consumer().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(4, t0, 6)?]).await?;
    Plant::eventually(Duration::from_secs(20), "the batch stored", || async {
        Ok((get(&ingest.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    assert_eq!(get(&ingest.stats.database_timeouts), 1);
    assert_eq!(get(&ingest.stats.readings_stored), 6);
    assert_eq!(get(&ingest.stats.batches_duplicate), 0);
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (1, 6));
    world.nothing_comes_again().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_the_database_does_not_answer_is_given_up_on_a_closed_connection()
-> anyhow::Result<()> {
    let mut world = World::new().await?;
    world.config.database_timeout = Duration::from_secs(1);
    let ingest = world.consumer().await?;
    // The gateways locked away: the decode stage's first look-up gets no answer.
    let mut lock = lock_table(&world.db.urls.owner_url, "gateways", "ACCESS EXCLUSIVE").await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(1, t0, 3)?]).await?;
    Plant::eventually(Duration::from_secs(20), "two timeouts", || async {
        Ok((get(&ingest.stats.database_timeouts) >= 2).then_some(()))
    })
    .await?;
    // Each look-up given up closed its connection instead of leaving it with the pool,
    // whose ping would wait behind the lock: the pool holds the one being tried at most.
    let busy = ingest.pool.size() as usize - ingest.pool.num_idle();
    assert!(busy <= 1, "{busy} connections held by the pool");

    sqlx::query("COMMIT").execute(&mut lock).await?;
    lock.close().await?;
    Plant::eventually(Duration::from_secs(10), "the batch stored", || async {
        Ok((get(&ingest.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    ingest.stop().await?;
    assert_eq!(world.stored().await?, (1, 3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_database_does_not_answer_ends_and_leaves_the_message_with_the_broker()
-> anyhow::Result<()> {
    let (world, ingest, mut lock) = write_left_unanswered(2, 4).await?;

    // Asked to stop while its write waits: ingest gives the write up at the timeout and
    // stops without acknowledging (the disconnect grace is 5 s).
    tokio::time::timeout(Duration::from_secs(15), ingest.stop())
        .await
        .map_err(|_| anyhow::anyhow!("ingest did not stop while its write waited"))??;
    assert_eq!(world.stored().await?, (0, 0));

    // The broker kept the message: the resumed session stores it once.
    sqlx::query("COMMIT").execute(&mut lock).await?;
    lock.close().await?;
    let again = world.consumer().await?;
    Plant::eventually(Duration::from_secs(10), "the batch stored", || async {
        Ok((get(&again.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    again.stop().await?;
    assert_eq!(world.stored().await?, (1, 4));
    Ok(())
}

/// A stop stores and acknowledges what ingest had received before it, the decode queue
/// included, rather than leaving it to be delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_stores_and_acknowledges_what_was_received_before_it() -> anyhow::Result<()> {
    let world = World::new().await?;
    let ingest = world.consumer().await?;
    // The decode stage's first look-up of the gateway's tags waits behind this lock, so the
    // messages after the first wait in its queue.
    let mut lock = lock_table(&world.db.urls.owner_url, "tags", "ACCESS EXCLUSIVE").await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    let messages: Vec<Vec<u8>> = (1..=8)
        .map(|seq| bearing(seq, t0 + seq as i64 * 10_000_000, 3))
        .collect::<anyhow::Result<_>>()?;
    world.publish(messages).await?;
    wait_for_waiter(
        &mut lock,
        "SELECT count(*) FROM pg_locks WHERE relation = 'tags'::regclass AND NOT granted",
    )
    .await?;
    let stats = Arc::clone(&ingest.stats);
    Plant::eventually(Duration::from_secs(10), "all eight received", || async {
        Ok((get(&stats.received) == 8).then_some(()))
    })
    .await?;
    assert_eq!(
        get(&ingest.stats.messages),
        1,
        "seven wait in the decode queue"
    );

    // Asked to stop, then the look-up goes on: all eight are stored and acknowledged.
    let stats = ingest.stop_then_release(lock).await?;
    assert_eq!(get(&stats.messages), 8);
    assert_eq!(get(&stats.batches_stored), 8);
    assert_eq!(world.stored().await?, (8, 24));
    world.nothing_comes_again().await
}

/// At a stop, a write the database refuses for a passing reason (here a serialization
/// failure, once) is tried again: the database is up, so the message is stored and
/// acknowledged rather than left with the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_a_passing_reason_during_a_stop_is_stored_and_acknowledged()
-> anyhow::Result<()> {
    let world = World::new().await?;
    let mut owner = PgConnection::connect(&world.db.urls.owner_url).await?;
    sqlx::raw_sql(
        "CREATE SEQUENCE ledger_refusals;
         CREATE FUNCTION refuse_the_first_ledger_row() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER AS $$
         BEGIN
             IF nextval('ledger_refusals') = 1 THEN
                 RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_the_first_ledger_row BEFORE INSERT ON ingest_batches
             FOR EACH ROW EXECUTE FUNCTION refuse_the_first_ledger_row();",
    )
    .execute(&mut owner)
    .await?;
    owner.close().await?;
    let ingest = world.consumer().await?;
    let mut lock = world.lock_ledger().await?;
    let t0 = Timestamp::now().as_micros() - 60_000_000;
    world.publish(vec![bearing(5, t0, 3)?]).await?;
    world.ingest_waits_for(&mut lock).await?;

    // Asked to stop while its write waits; the write, let go, is refused once.
    let stats = ingest.stop_then_release(lock).await?;
    assert_eq!(get(&stats.retries), 1);
    assert_eq!(get(&stats.batches_stored), 1);
    assert_eq!(world.stored().await?, (1, 3));
    world.nothing_comes_again().await
}

/// A group's transaction commits with `synchronous_commit` on even where the role turned it
/// off (its acknowledgements promise the rows survive a crash of the database), and keeps a
/// setting that promises more.
#[tokio::test]
async fn a_groups_commit_waits_for_the_disk_where_the_role_turned_that_off() -> anyhow::Result<()> {
    let world = World::new().await?;
    let mut conn = PgConnection::connect(&world.db.urls.app_url).await?;
    for (session, in_transaction) in [
        ("off", "on"),
        ("on", "on"),
        ("local", "local"),
        ("remote_write", "remote_write"),
        ("remote_apply", "remote_apply"),
    ] {
        sqlx::query(&format!("SET synchronous_commit = {session}"))
            .execute(&mut conn)
            .await?;
        let mut tx = conn.begin().await?;
        sqlx::query(ingest::store::TRANSACTION_SETTINGS)
            .bind(migrations::TENANT_SETTING)
            .bind(world.tenant.to_string())
            .execute(&mut *tx)
            .await?;
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *tx)
            .await?;
        let tenant: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(migrations::TENANT_SETTING)
            .fetch_one(&mut *tx)
            .await?;
        tx.rollback().await?;
        assert_eq!(setting, in_transaction, "with {session}");
        assert_eq!(tenant, world.tenant.to_string());
    }
    conn.close().await?;
    Ok(())
}

/// Two batches a publisher numbered alike (its counter started over) are told from a
/// redelivery by what they say: the second is kept as a dead letter instead of being skipped,
/// while a true redelivery is still skipped; so within one group too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_batch_numbered_alike_is_kept_not_skipped() -> anyhow::Result<()> {
    let mut world = World::new().await?;
    world.config.subscribe.push(format!(
        "{}/{}/+/readings/json",
        model::topic::PREFIX,
        world.tenant
    ));
    let ingest = world.consumer().await?;
    let t0 = Timestamp::now().as_micros() - 600_000_000;
    let first = bearing(1, t0, 5)?;
    world.publish(vec![first.clone()]).await?;
    Plant::eventually(Duration::from_secs(10), "the first batch", || async {
        Ok((get(&ingest.stats.batches_stored) == 1).then_some(()))
    })
    .await?;
    // Batch 1 again, with other readings; then the first one delivered again.
    let other = bearing(1, t0 + 100_000_000, 3)?;
    world.publish(vec![other, first]).await?;
    let json_topic = model::topic::json_readings(
        TenantId::from_uuid(world.tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    let json = |value: f64| {
        format!(
            r#"{{"seq": 7, "readings": [{{"tag": "press-1.bearing_temp", "value": {value}, "ts": {}}}]}}"#,
            t0 / 1000
        )
        .into_bytes()
    };
    publish_all(
        &world.config.broker,
        &json_topic,
        vec![json(1.0), json(2.0), json(1.0)],
    )
    .await?;
    Plant::eventually(Duration::from_secs(10), "every message handled", || async {
        Ok((get(&ingest.stats.batches_stored) == 2
            && get(&ingest.stats.dead_letters) == 2
            && get(&ingest.stats.batches_duplicate) == 2)
            .then_some(()))
    })
    .await?;
    ingest.stop().await?;
    assert_eq!(
        world.stored().await?,
        (2, 6),
        "the first of each number only"
    );
    let pool = world.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, world.tenant).await?;
    let letters: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT topic, reason, payload FROM dead_letters ORDER BY topic")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|(_, reason, _)| reason == "sequence_reused")
    );
    assert_eq!(
        letters[0].2,
        bearing(1, t0 + 100_000_000, 3)?,
        "the other batch's bytes"
    );
    assert_eq!(letters[1].2, json(2.0));

    // Within one group: the first copy claims the number, a copy that says the same is a
    // duplicate, one that says something else is kept as a letter.
    let store = PgStore::new(pool);
    let gateway = world.demo_gateway(store.pool()).await?;
    let numbered = |digest: i64| {
        Some(Box::new(ingest::store::Numbered {
            digest,
            reused: DeadLetter::new(
                Some(world.tenant),
                &world.topic,
                "sequence_reused",
                format!("digest {digest}"),
                bytes::Bytes::from(digest.to_string()),
            ),
        }))
    };
    let batch = |digest: i64, value: f64| Item::Batch {
        tenant: world.tenant,
        gateway,
        seq: 9,
        rows: vec![Row {
            tag_id: 1,
            ts: Timestamp::from_micros(t0 - 3_600_000_000),
            value,
            quality: Quality::Good,
        }],
        rejected: None,
        birth: None,
        numbered: numbered(digest),
    };
    let written = store
        .write_group(&[batch(10, 1.0), batch(20, 2.0), batch(10, 1.0)])
        .await?;
    use ingest::store::Written;
    assert_eq!(
        written,
        [
            Written::Stored { rows: 1 },
            Written::Reused,
            Written::Duplicate
        ]
    );
    // Against the ledger: the same again is a duplicate, something else a letter.
    assert_eq!(
        store.write_group(&[batch(10, 1.0)]).await?,
        [Written::Duplicate]
    );
    assert_eq!(
        store.write_group(&[batch(20, 2.0)]).await?,
        [Written::Reused]
    );
    // A batch stored before digests were kept is taken as the same.
    let mut owner = PgConnection::connect(&world.db.urls.owner_url).await?;
    sqlx::query("SELECT set_config($1, $2, false)")
        .bind(migrations::TENANT_SETTING)
        .bind(world.tenant.to_string())
        .execute(&mut owner)
        .await?;
    let cleared = sqlx::query("UPDATE ingest_batches SET digest = NULL WHERE seq = 9")
        .execute(&mut owner)
        .await?;
    assert_eq!(cleared.rows_affected(), 1);
    owner.close().await?;
    assert_eq!(
        store.write_group(&[batch(20, 2.0)]).await?,
        [Written::Duplicate]
    );
    Ok(())
}

/// The upkeep's pruning deletes every organisation's ledger rows whose time to be kept has
/// passed, a step at a time, and no other; a batch written now is kept for as long as its
/// store says.
#[tokio::test]
async fn the_ledger_is_pruned_of_rows_no_longer_kept() -> anyhow::Result<()> {
    let world = World::new().await?;
    let other = seed_plant(&world.db.urls.app_url, "plant-b", "unused")
        .await?
        .tenant;
    let pool = world.db.app_pool().await;
    // Per organisation: `expired` rows kept until yesterday, one kept until tomorrow, one
    // from before the ledger kept a time (kept for good).
    let fill = |tenant: Uuid, expired: i64| {
        let pool = pool.clone();
        async move {
            let mut tx = migrations::begin_tenant(&pool, tenant).await?;
            sqlx::query(
                "INSERT INTO ingest_batches (tenant_id, gateway_id, seq, readings, keep_until)
                 SELECT $1, g.id, s, 1, CASE WHEN s <= $2 THEN now() - interval '1 day'
                                             WHEN s = $2 + 1 THEN now() + interval '1 day' END
                 FROM gateways g, generate_series(1, $2 + 2) AS s WHERE g.code = $3",
            )
            .bind(tenant)
            .bind(expired)
            .bind(DEMO_GATEWAY)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            anyhow::Ok(())
        }
    };
    let many = i64::from(ingest::store::PRUNE_STEP) * 2 + 5;
    fill(world.tenant, many).await?;
    fill(other, 3).await?;
    let store = PgStore::new(pool.clone());
    assert_eq!(store.prune_ledger().await?, (many + 3) as u64);
    assert_eq!(store.prune_ledger().await?, 0);
    for tenant in [world.tenant, other] {
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        let mut left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM ingest_batches")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        left.sort_unstable();
        let expired = if tenant == other { 3 } else { many };
        assert_eq!(left, [expired + 1, expired + 2], "the rows still kept");
    }

    // A batch written now is kept for as long as its store was told.
    let gateway = world.demo_gateway(&pool).await?;
    let day = Duration::from_secs(86_400);
    let batch = Item::Batch {
        tenant: world.tenant,
        gateway,
        seq: 1_000_000,
        rows: Vec::new(),
        rejected: None,
        birth: None,
        numbered: None,
    };
    PgStore::new(pool.clone())
        .with_ledger_keep(10 * day)
        .write_group(std::slice::from_ref(&batch))
        .await?;
    let mut tx = migrations::begin_tenant(&pool, world.tenant).await?;
    let days: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM keep_until - received_at)::float8 / 86400
         FROM ingest_batches WHERE seq = 1000000",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    assert!((days - 10.0).abs() < 0.01, "{days}");
    Ok(())
}
