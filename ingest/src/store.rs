//! The PostgreSQL side of ingest.
//!
//! Messages are written in groups, one transaction per group: first the (gateway, seq) rows of
//! its batches in `ingest_batches`, which conflict for batches stored before, then the readings
//! of the new batches by one binary COPY. Either all of it commits or none does, so a
//! redelivered batch is skipped exactly when it was stored. Grouping is what lets ingest keep
//! up with the database: one commit (one WAL flush) serves many messages. Several groups may be
//! written at once, on separate connections; the ledger's unique key settles a batch that two
//! of them carry (the second waits for the first to commit or roll back).
//!
//! The births of Sparkplug B nodes (`sparkplug_births`) go in the same transaction as the
//! birth or death that changed them, and are read back when ingest first meets a node after
//! a start ([`PgStore::load_births`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::copy::{self, Row};

/// Errors of the storage boundary, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or refused for a reason that may pass (connection lost,
    /// serialization failure, too many connections): retry later, do not ack.
    #[error("database unavailable: {0}")]
    Transient(sqlx::Error),
    /// The database refuses what the message would write (a value, a constraint, a limit),
    /// or interrupted the statement; retrying the same message alone cannot succeed.
    #[error("database rejected the write: {0}")]
    Permanent(sqlx::Error),
    /// The database refuses for a reason no message causes (a privilege revoked, a table or
    /// function missing, a server fault): every write would be refused alike, so ingest holds
    /// the messages, as while the database is down, until an operator mends it.
    #[error(
        "the database refuses ingest's writes whatever they hold, so the messages are held \
         until that is mended (check the application role's privileges and the migrations): {0}"
    )]
    Refused(sqlx::Error),
    /// The database did not answer within the store's timeout ([`PgStore::with_timeout`]):
    /// the connection was given up, and the operation may be tried again on another.
    #[error(
        "the database did not answer within {0:?}; trying again on a new connection \
         (if it is only slow, raise ingest.database_timeout)"
    )]
    TimedOut(Duration),
}

impl StoreError {
    /// Worth waiting out: the database was unreachable, refused for a passing reason, or did
    /// not answer in time.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::TimedOut(_))
    }

    /// A statement cancelled or denied a lock ([`migrations::is_interrupted`]): permanent,
    /// but worth a few more tries before the message is given up as refused.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, StoreError::Permanent(e) if migrations::is_interrupted(e))
    }
}

/// Whether a database error that does not pass by itself may come from what one message
/// holds: a value refused (SQLSTATE class 22, data exception), a constraint (23), a limit
/// (54: a row too large), an exception a function raised (P0), an interrupted statement
/// ([`migrations::is_interrupted`]), or an error of the client's (encoding a value). Any
/// other class (42: a privilege, a missing table or function; XX: an internal error; ...)
/// refuses every write alike.
fn could_be_the_message(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            migrations::is_interrupted(e)
                || db.code().is_none_or(|code| {
                    ["22", "23", "54", "P0"]
                        .iter()
                        .any(|class| code.starts_with(class))
                })
        }
        _ => true,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if migrations::is_transient(&e) {
            StoreError::Transient(e)
        } else if could_be_the_message(&e) {
            StoreError::Permanent(e)
        } else {
            StoreError::Refused(e)
        }
    }
}

/// A message ingest could not turn into readings.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Made with the letter and kept through its retries: a letter written again after a
    /// commit whose outcome ingest could not learn is skipped by its key (`letter_key`).
    pub key: Uuid,
    pub tenant: Option<Uuid>,
    pub topic: String,
    pub reason: &'static str,
    pub detail: String,
    pub payload: bytes::Bytes,
}

impl DeadLetter {
    /// A new letter of `payload` from `topic`, with a key of its own.
    pub fn new(
        tenant: Option<Uuid>,
        topic: &str,
        reason: &'static str,
        detail: String,
        payload: bytes::Bytes,
    ) -> Self {
        Self {
            key: Uuid::new_v4(),
            tenant,
            topic: topic.to_owned(),
            reason,
            detail,
            payload,
        }
    }
}

/// What a Sparkplug B birth or death changed in the births kept for its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirthRecord {
    /// The device, or empty for the node itself.
    pub device: String,
    /// The order ingest read the message in: of two records of one node or device, the one
    /// with the higher version stands, whichever transaction commits last.
    pub version: i64,
    /// The version of the node's birth the record belongs to (for the node, its own).
    pub node_version: i64,
    /// The birth's bytes, or `None` for a death.
    pub payload: Option<bytes::Bytes>,
}

/// The births stored for one Sparkplug B node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBirths {
    /// The highest version of any of the node's records: later records must be numbered
    /// above it.
    pub latest: i64,
    /// The node's current birth, `None` when the node died or was never born.
    pub born: Option<CurrentBirth>,
}

/// A node's current birth: its version, and its bytes with those of the devices born under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentBirth {
    pub version: i64,
    pub births: model::sparkplug::KeptBirths,
}

/// What a batch its publisher numbered said ([`model::wire::Batch::content_digest`]), and the
/// dead letter it becomes when the ledger holds its number for a batch that said something
/// else (`sequence_reused`: two batches numbered alike, as when a publisher's counter starts
/// over). Batches numbered by their content (Sparkplug B, JSON without `seq`) have none: a
/// second copy of one is a redelivery by construction.
#[derive(Debug, Clone)]
pub struct Numbered {
    pub digest: i64,
    pub reused: DeadLetter,
}

/// One message, ready to store.
#[derive(Debug, Clone)]
pub enum Item {
    /// A decoded batch: its ledger key, its rows, and the dead letter for the part of it that
    /// could not be stored (readings of unknown tags), if any. `birth` is what a Sparkplug B
    /// message changed in its node's births: written also when the batch is a duplicate,
    /// since the message was read again and moved the node's session again.
    Batch {
        tenant: Uuid,
        gateway: Uuid,
        seq: i64,
        rows: Vec<Row>,
        rejected: Option<DeadLetter>,
        birth: Option<BirthRecord>,
        /// Boxed: it holds a dead letter, and the enum moves through queues.
        numbered: Option<Box<Numbered>>,
    },
    Dead(DeadLetter),
}

impl Item {
    /// The tenant the item is stored for, when ingest knows it.
    pub fn tenant(&self) -> Option<Uuid> {
        match self {
            Item::Batch { tenant, .. } => Some(*tenant),
            Item::Dead(d) => d.tenant,
        }
    }
}

/// What storing an item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored {
        rows: usize,
    },
    /// The ledger already had this (gateway, seq), or an earlier item of the same group did:
    /// nothing was written.
    Duplicate,
    DeadLettered,
    /// The ledger had this (gateway, seq) for a batch that said something else: the batch
    /// was kept as its [`Numbered::reused`] dead letter.
    Reused,
}

/// Most ledger rows one pruning statement deletes ([`PgStore::prune_ledger`]).
pub const PRUNE_STEP: i32 = 20_000;

/// How long ingest waits for the database to answer one operation by default
/// (`ingest.database_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `operation`'s answer, or [`StoreError::TimedOut`] (the operation dropped) when the
/// database has not given it within `timeout`.
pub async fn answered_within<T, E: Into<StoreError>>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(answer) => answer.map_err(Into::into),
        Err(_) => Err(StoreError::TimedOut(timeout)),
    }
}

/// Hands `conn` back to the pool, or closes it when `answer` is [`StoreError::TimedOut`]:
/// mid-statement its state is unknown, and the pool would ping it first and could wait as
/// long again for the answer.
pub fn release<T>(conn: PoolConnection<Postgres>, answer: &Result<T, StoreError>) {
    if matches!(answer, Err(StoreError::TimedOut(_))) {
        drop(conn.detach());
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    timeout: Duration,
    /// How long the ledger keeps the number of a batch this store writes.
    ledger_keep: Duration,
}

impl PgStore {
    /// A store on `pool` that waits at most [`DEFAULT_TIMEOUT`] for an answer.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            timeout: DEFAULT_TIMEOUT,
            ledger_keep: crate::config::default_ledger_keep(),
        }
    }

    /// The same store, keeping the number of each batch it writes in the ledger for `keep`
    /// ([`crate::IngestConfig::ledger_keep`]: until a copy of the batch could not be stored
    /// anyway); after that the hourly upkeep ([`PgStore::prune_ledger`]) deletes it.
    pub fn with_ledger_keep(mut self, keep: Duration) -> Self {
        self.ledger_keep = keep;
        self
    }

    /// The same store, waiting at most `timeout` for the database to answer one operation (a
    /// group's transaction, a look-up). A connection that neither answers nor breaks (a
    /// stalled network, a server that hangs) would otherwise hold ingest, and its shutdown,
    /// for as long as the operating system keeps the connection open.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs a database operation of ingest's with the store's timeout: when the database has
    /// not answered in time, the operation is dropped and the answer is
    /// [`StoreError::TimedOut`]. A connection the operation took from the pool goes back to
    /// it, which reuses it only once it has answered a ping; operations on one connection use
    /// [`PgStore::on_connection`] instead, which closes it.
    pub async fn within<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        answered_within(self.timeout, operation).await
    }

    /// Stores a group of messages in one transaction: the ledger rows of every batch (per
    /// tenant, with row-level security scoped to that tenant), the dead letters, and one
    /// binary COPY with the rows of every batch not stored before, in the index's order.
    /// Either all of it commits or none does. Returns what became of each item, in order.
    ///
    /// When the database does not answer within the store's timeout, the connection is closed
    /// and the answer is [`StoreError::TimedOut`]: the transaction may then have committed or
    /// not, and a retry is safe either way, since the ledger skips the batches it stored.
    pub async fn write_group(&self, items: &[Item]) -> Result<Vec<Written>, StoreError> {
        let keep = self.ledger_keep;
        self.on_connection(async |conn| write_group_on(conn, items, keep).await)
            .await
    }

    /// Runs `operation` on a connection of the pool with the store's timeout (taking the
    /// connection is bounded by the pool's own acquire timeout instead: a pool kept busy is
    /// not the database failing to answer). When the database has not answered in time the
    /// connection is closed rather than handed back to the pool ([`release`]).
    pub async fn on_connection<T>(
        &self,
        operation: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let answer = self.within(operation(&mut conn)).await;
        release(conn, &answer);
        answer
    }

    /// The births kept for the node `gateway` of `tenant`, `None` when it has none.
    pub async fn load_births(
        &self,
        tenant: Uuid,
        gateway: Uuid,
    ) -> Result<Option<StoredBirths>, StoreError> {
        let mut rows: Vec<(String, i64, i64, Option<Vec<u8>>)> = self
            .on_connection(async |conn| {
                let mut tx = migrations::begin_tenant_on(conn, tenant).await?;
                let rows = sqlx::query_as(
                    "SELECT device, version, node_version, payload FROM sparkplug_births
                     WHERE gateway_id = $1",
                )
                .bind(gateway)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(rows)
            })
            .await?;
        let Some(latest) = rows.iter().map(|r| r.1).max() else {
            return Ok(None);
        };
        let node = rows
            .iter_mut()
            .find(|(device, ..)| device.is_empty())
            .and_then(|(_, version, _, payload)| Some((*version, payload.take()?)));
        let born = node.map(|(version, node)| {
            let devices = rows
                .into_iter()
                .filter(|(device, _, of, _)| !device.is_empty() && *of == version)
                .filter_map(|(device, _, _, payload)| Some((device, payload?)))
                .collect();
            CurrentBirth {
                version,
                births: model::sparkplug::KeptBirths { node, devices },
            }
        });
        Ok(Some(StoredBirths { latest, born }))
    }

    /// Deletes the ledger rows whose time to be kept has passed (every organisation's; see
    /// [`PgStore::with_ledger_keep`]), at most [`PRUNE_STEP`] per statement, until none is
    /// left; returns how many. Each step is one short statement, so the writers' inserts do
    /// not wait long for it, and dropping the future between steps leaves the rest for
    /// another time.
    pub async fn prune_ledger(&self) -> Result<u64, StoreError> {
        let mut pruned = 0;
        loop {
            let n: i32 = self
                .on_connection(async |conn| {
                    Ok(sqlx::query_scalar("SELECT prune_ingest_batches($1)")
                        .bind(PRUNE_STEP)
                        .fetch_one(conn)
                        .await?)
                })
                .await?;
            pruned += u64::try_from(n).unwrap_or(0);
            if n < PRUNE_STEP {
                break;
            }
        }
        Ok(pruned)
    }

    /// Creates upcoming daily partitions (a no-op on TimescaleDB). Returns how many were made.
    pub async fn ensure_partitions(&self) -> Result<i32, StoreError> {
        self.on_connection(async |conn| {
            Ok(
                sqlx::query_scalar("SELECT ensure_readings_partitions(7, 3)")
                    .fetch_one(conn)
                    .await?,
            )
        })
        .await
    }
}

/// The settings of a group's transaction, for one tenant at a time (`$1` the tenant setting's
/// name, `$2` the tenant): the tenant, and a commit that waits for the disk even where the
/// database or the role turned `synchronous_commit` off, since the acknowledgements that follow
/// the commit promise that the rows survive a crash of the database. A setting that promises
/// more (`remote_write`, `remote_apply`) stays.
pub const TRANSACTION_SETTINGS: &str = "SELECT set_config($1, $2, true), set_config('synchronous_commit', \
     CASE current_setting('synchronous_commit') WHEN 'off' THEN 'on' \
     ELSE current_setting('synchronous_commit') END, true)";

/// [`PgStore::write_group`]'s transaction, on `conn`.
async fn write_group_on(
    conn: &mut sqlx::PgConnection,
    items: &[Item],
    ledger_keep: Duration,
) -> Result<Vec<Written>, StoreError> {
    let mut outcome = vec![Written::Duplicate; items.len()];
    let mut by_tenant: BTreeMap<Option<Uuid>, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        by_tenant.entry(item.tenant()).or_default().push(i);
    }
    let mut tx = conn.begin().await?;
    let mut fresh_rows: Vec<&Row> = Vec::new();
    for (tenant, indexes) in &by_tenant {
        sqlx::query(TRANSACTION_SETTINGS)
            .bind(migrations::TENANT_SETTING)
            .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        // The first item with a given (gateway, seq) claims it; later copies in the same
        // group are duplicates, like copies already in the ledger, unless they say something
        // other than the batch the number stands for ([`Numbered`]). A copy in another
        // group written at the same time waits for that group's transaction; the rows go
        // in key order, so two groups never wait for each other.
        let mut claimed = HashSet::new();
        let (mut gateways, mut seqs, mut counts, mut digests, mut candidates) =
            (vec![], vec![], vec![], vec![], vec![]);
        for &i in indexes {
            if let Item::Batch {
                gateway,
                seq,
                rows,
                numbered,
                ..
            } = &items[i]
                && claimed.insert((*gateway, *seq))
            {
                gateways.push(*gateway);
                seqs.push(*seq);
                counts.push(i32::try_from(rows.len()).unwrap_or(i32::MAX));
                digests.push(numbered.as_ref().map(|n| n.digest));
                candidates.push(i);
            }
        }
        let inserted: HashSet<(Uuid, i64)> = if candidates.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_as::<_, (Uuid, i64)>(
                "INSERT INTO ingest_batches (tenant_id, gateway_id, seq, readings, digest,
                                             keep_until)
                 SELECT $1, g, s, r, d, now() + make_interval(secs => $6)
                 FROM UNNEST($2::uuid[], $3::bigint[], $4::int[], $5::bigint[]) AS t(g, s, r, d)
                 ORDER BY g, s
                 ON CONFLICT DO NOTHING
                 RETURNING gateway_id, seq",
            )
            .bind(tenant)
            .bind(&gateways)
            .bind(&seqs)
            .bind(&counts)
            .bind(&digests)
            .bind(ledger_keep.as_secs_f64())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };
        // What each number of a numbered batch stands for now: the group's first copy, where
        // it was inserted; otherwise the batch stored under it before this group, read back
        // (absent for one stored before digests were kept: copies of it are duplicates).
        let mut stored_digests: HashMap<(Uuid, i64), i64> = HashMap::new();
        let (mut taken_gateways, mut taken_seqs) = (vec![], vec![]);
        for ((&g, &s), digest) in gateways.iter().zip(&seqs).zip(&digests) {
            let Some(digest) = *digest else { continue };
            if inserted.contains(&(g, s)) {
                stored_digests.insert((g, s), digest);
            } else {
                taken_gateways.push(g);
                taken_seqs.push(s);
            }
        }
        if !taken_gateways.is_empty() {
            let stored = sqlx::query_as::<_, (Uuid, i64, i64)>(
                "SELECT b.gateway_id, b.seq, b.digest
                 FROM ingest_batches b
                 JOIN UNNEST($1::uuid[], $2::bigint[]) AS t(g, s) ON b.gateway_id = g AND b.seq = s
                 WHERE b.digest IS NOT NULL",
            )
            .bind(&taken_gateways)
            .bind(&taken_seqs)
            .fetch_all(&mut *tx)
            .await?;
            stored_digests.extend(stored.into_iter().map(|(g, s, d)| ((g, s), d)));
        }
        // In message order, so that a group's dead letters are numbered as its messages
        // came (groups written at once may interleave).
        let candidates: HashSet<usize> = candidates.into_iter().collect();
        for &i in indexes {
            match &items[i] {
                Item::Batch {
                    gateway,
                    seq,
                    rows,
                    rejected,
                    ..
                } if candidates.contains(&i) && inserted.contains(&(*gateway, *seq)) => {
                    outcome[i] = Written::Stored { rows: rows.len() };
                    fresh_rows.extend(rows.iter());
                    if let Some(letter) = rejected {
                        insert_dead_letter(&mut tx, letter).await?;
                    }
                }
                Item::Dead(letter) => {
                    insert_dead_letter(&mut tx, letter).await?;
                    outcome[i] = Written::DeadLettered;
                }
                Item::Batch {
                    gateway,
                    seq,
                    numbered: Some(numbered),
                    ..
                } if stored_digests
                    .get(&(*gateway, *seq))
                    .is_some_and(|&stored| stored != numbered.digest) =>
                {
                    insert_dead_letter(&mut tx, &numbered.reused).await?;
                    outcome[i] = Written::Reused;
                }
                Item::Batch { .. } => {}
            }
        }
        write_births(&mut tx, *tenant, indexes.iter().map(|&i| &items[i])).await?;
    }
    if !fresh_rows.is_empty() {
        // In the index's order (tag, newest first): consecutive rows then land on
        // neighbouring index pages rather than scattered over one page per tag
        // (bench/src/bin/index-bench.rs: about a tenth of the COPY's time when a second's
        // tags come shuffled).
        fresh_rows.sort_unstable_by_key(|r| (r.tag_id, std::cmp::Reverse(r.ts)));
        let mut copy_in = tx.copy_in_raw(copy::COPY_READINGS).await?;
        copy_in.send(copy::encode(fresh_rows.into_iter())).await?;
        copy_in.finish().await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Writes the birth records of one tenant's items: per node and device the latest, in key
/// order (so that two groups never wait for each other), each replacing a stored one only if
/// it is later.
async fn write_births<'a>(
    conn: &mut sqlx::PgConnection,
    tenant: Option<Uuid>,
    items: impl Iterator<Item = &'a Item>,
) -> Result<(), sqlx::Error> {
    let mut latest: BTreeMap<(Uuid, &str), &BirthRecord> = BTreeMap::new();
    for item in items {
        if let Item::Batch {
            gateway,
            birth: Some(birth),
            ..
        } = item
        {
            let slot = latest
                .entry((*gateway, birth.device.as_str()))
                .or_insert(birth);
            if birth.version > slot.version {
                *slot = birth;
            }
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let (mut gateways, mut devices, mut versions, mut nodes, mut payloads) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((gateway, device), birth) in &latest {
        gateways.push(*gateway);
        devices.push(*device);
        versions.push(birth.version);
        nodes.push(birth.node_version);
        payloads.push(birth.payload.as_deref());
    }
    sqlx::query(
        "INSERT INTO sparkplug_births AS b (tenant_id, gateway_id, device, version, node_version, payload)
         SELECT $1, g, d, v, n, p
         FROM UNNEST($2::uuid[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[]) AS t(g, d, v, n, p)
         ORDER BY g, d
         ON CONFLICT (gateway_id, device) DO UPDATE
         SET version = excluded.version, node_version = excluded.node_version,
             payload = excluded.payload, updated_at = now()
         WHERE b.version < excluded.version",
    )
    .bind(tenant)
    .bind(&gateways)
    .bind(&devices)
    .bind(&versions)
    .bind(&nodes)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// `text` as a PostgreSQL `text` value can hold it: the one character it cannot, NUL, shown
/// as U+FFFD. A dead letter's topic and detail come from the network, and a letter the
/// database refuses would hold ingest (the message is not acknowledged until something of it
/// is stored); its payload keeps the exact bytes.
fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

async fn insert_dead_letter(
    conn: &mut sqlx::PgConnection,
    letter: &DeadLetter,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (letter_key, tenant_id, topic, reason, detail, payload)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (letter_key) DO NOTHING",
    )
    .bind(letter.key)
    .bind(letter.tenant)
    .bind(storable_text(&letter.topic).as_ref())
    .bind(letter.reason)
    .bind(storable_text(&letter.detail).as_ref())
    .bind(letter.payload.as_ref())
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_the_database_cannot_hold_is_made_storable_and_the_rest_left_alone() {
        assert_eq!(storable_text("plant/a\0b"), "plant/a\u{FFFD}b");
        assert!(matches!(
            storable_text("plant/ab"),
            std::borrow::Cow::Borrowed("plant/ab")
        ));
    }
}
