//! Resolves what a batch names (tenant, gateway code, tag names) to database ids and the
//! context rules need, caching per gateway. Names not cached are looked up; names still
//! unknown then are registered when the tenant's ingest policy allows it.
//!
//! What is cached is forgotten when the database announces a change of the organisation's
//! gateways, tags, assets or ingest policy on [`CHANNEL`] (migrations `directory_notify` and
//! `directory_additions`), heard by [`Changes`], so that an edit (a tag moved to another
//! asset, a new unit, an asset's criticality) reaches the rules at the next message rather
//! than at the next start. Gateway codes and tag names not found (nor registered) are
//! remembered too, at most [`MAX_UNKNOWN`] of them, so that a gateway that keeps sending a
//! name nobody registered costs no lookup per message; an addition of a gateway, a tag or an
//! organisation, or a policy change, is announced and makes them forgotten. A message
//! resolved in the moment between a change's commit and its announcement's arrival (about a
//! millisecond on one machine) still gets the old answer. Everything is also forgotten every
//! [`MAX_AGE`], in case the listener's connection died without an error (a dropped TCP flow)
//! and announcements stopped coming. An edit reaches what the rules engine reads off each
//! reading (unit, asset name, criticality); what it decided at a tag's first reading (which
//! rules select the tag, by asset, class or labels) waits for its next reload.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use model::{AssetId, Criticality, GatewayId, TagName, TenantId};
use rules::{Labels, TagContext};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::consumer::IngestStats;
use crate::store::{PgStore, StoreError};

/// A gateway of a tenant and the tags resolved so far.
#[derive(Debug)]
pub struct GatewayEntry {
    pub id: Uuid,
    pub tags: HashMap<TagName, Arc<TagContext>>,
    /// Names looked up, not found and not registered.
    unknown: HashSet<TagName>,
}

#[derive(Debug)]
pub struct Directory {
    gateways: HashMap<(TenantId, GatewayId), GatewayEntry>,
    /// Gateway codes not found, with whether their tenant exists.
    unknown_gateways: HashMap<(TenantId, GatewayId), bool>,
    changes: Arc<Changes>,
    /// When everything was last forgotten.
    fresh_since: Instant,
}

/// The longest an entry is used without being looked up again, announcement or not.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// The most unknown gateway codes and tag names remembered at once (all tenants); past it,
/// further ones are looked up at every message until everything is next forgotten. Bounds
/// the memory a publisher sending ever new names can take.
pub const MAX_UNKNOWN: usize = 100_000;

/// The channel the database announces changes of gateways, tags, assets and ingest policies
/// on; the payload is the organisation's id, `+` and the id for an addition, or `*` for every
/// organisation.
pub const CHANNEL: &str = "maintainpro_directory";

/// What the announcements on [`CHANNEL`] made stale since the directory last looked, shared
/// by the listener ([`migrations::announcements::follow`]) and the [`Directory`].
#[derive(Debug)]
pub struct Changes {
    stale: Mutex<Stale>,
    /// Whether the listener is subscribed: only then can an addition be heard, and so only
    /// then are names not found remembered.
    listening: AtomicBool,
    /// Counts what was heard ([`IngestStats::directory_changes`]).
    stats: Arc<IngestStats>,
}

#[derive(Debug, Default)]
struct Stale {
    all: bool,
    tenants: HashSet<Uuid>,
    /// Organisations with an addition: only their names not found are stale.
    not_found: HashSet<Uuid>,
}

impl Changes {
    pub fn new(stats: Arc<IngestStats>) -> Self {
        Self {
            stale: Mutex::default(),
            listening: AtomicBool::new(false),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stale> {
        // Nothing is left half-done under the lock: a flag set, a set inserted into or taken.
        self.stale
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a lookup in the database ([`IngestStats::directory_lookups`]).
    fn looked_up(&self) {
        self.stats.directory_lookups.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_ingest_directory_lookups_total").increment(1);
    }

    fn mark(&self, stale: impl FnOnce(&mut Stale)) {
        stale(&mut self.lock());
        self.stats.directory_changes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_ingest_directory_changes_total").increment(1);
    }
}

impl migrations::announcements::Audience for Changes {
    fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
        // What was announced while no connection listened is not known.
        self.mark(|s| s.all = true);
    }

    fn forget_not_found(&self, tenant: Uuid) {
        self.mark(|s| {
            s.not_found.insert(tenant);
        });
    }

    fn forget_tenant(&self, tenant: Uuid) {
        self.mark(|s| {
            s.tenants.insert(tenant);
        });
    }

    fn forget_all(&self) {
        self.mark(|s| s.all = true);
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Resolved<'a> {
    Gateway(&'a GatewayEntry),
    UnknownGateway { tenant_exists: bool },
}

impl Directory {
    /// A directory that forgets what `changes` hears of.
    pub fn new(changes: Arc<Changes>) -> Self {
        Self {
            gateways: HashMap::new(),
            unknown_gateways: HashMap::new(),
            changes,
            fresh_since: Instant::now(),
        }
    }

    /// Forgets what was announced as changed since the last call, and everything once
    /// [`MAX_AGE`] has passed since it last did.
    fn forget_changed(&mut self) {
        if self.fresh_since.elapsed() >= MAX_AGE {
            self.forget_all();
        }
        let (all, tenants, not_found) = {
            let mut s = self.changes.lock();
            if !s.all && s.tenants.is_empty() && s.not_found.is_empty() {
                return;
            }
            (
                std::mem::take(&mut s.all),
                std::mem::take(&mut s.tenants),
                std::mem::take(&mut s.not_found),
            )
        };
        if all {
            self.forget_all();
            return;
        }
        let of = |set: &HashSet<Uuid>, (tenant, _): &(TenantId, GatewayId)| {
            set.contains(&tenant.as_uuid())
        };
        self.gateways.retain(|key, _| !of(&tenants, key));
        self.unknown_gateways
            .retain(|key, _| !of(&tenants, key) && !of(&not_found, key));
        for (key, entry) in &mut self.gateways {
            if of(&not_found, key) {
                entry.unknown.clear();
            }
        }
    }

    fn forget_all(&mut self) {
        self.gateways.clear();
        self.unknown_gateways.clear();
        self.fresh_since = Instant::now();
    }

    /// How many more names not found may be remembered: none while the listener is not
    /// subscribed (an addition would go unheard), else up to [`MAX_UNKNOWN`] in all. Counted
    /// only on a lookup, which costs a round trip to the database anyway.
    fn room_for_unknown(&self, listening: bool) -> usize {
        if !listening {
            return 0;
        }
        let remembered = self.unknown_gateways.len()
            + self
                .gateways
                .values()
                .map(|g| g.unknown.len())
                .sum::<usize>();
        MAX_UNKNOWN.saturating_sub(remembered)
    }

    /// Resolves the gateway and the given tag names, querying only what is not cached. Each
    /// lookup waits at most the store's timeout ([`PgStore::on_connection`]: a connection that
    /// does not answer is closed).
    pub async fn resolve<'a>(
        &'a mut self,
        store: &PgStore,
        tenant: TenantId,
        gateway: &GatewayId,
        names: &[TagName],
    ) -> Result<Resolved<'a>, StoreError> {
        // Before the lookups, so that an announcement heard while they run is applied to
        // what they cache, at the next message.
        self.forget_changed();
        let listening = self.changes.listening.load(Ordering::Relaxed);
        let key = (tenant, gateway.clone());
        if let Some(&tenant_exists) = self.unknown_gateways.get(&key) {
            return Ok(Resolved::UnknownGateway { tenant_exists });
        }
        if !self.gateways.contains_key(&key) {
            self.changes.looked_up();
            let found = store
                .on_connection(async |conn| find_gateway(conn, tenant, gateway).await)
                .await?;
            let id = match found {
                Ok(id) => id,
                Err(tenant_exists) => {
                    if self.room_for_unknown(listening) > 0 {
                        self.unknown_gateways.insert(key, tenant_exists);
                    }
                    return Ok(Resolved::UnknownGateway { tenant_exists });
                }
            };
            self.gateways.insert(
                key.clone(),
                GatewayEntry {
                    id,
                    tags: HashMap::new(),
                    unknown: HashSet::new(),
                },
            );
        }
        let missing: Vec<&str> = {
            let entry = &self.gateways[&key];
            names
                .iter()
                .filter(|n| !entry.tags.contains_key(*n) && !entry.unknown.contains(*n))
                .map(TagName::as_str)
                .collect()
        };
        if !missing.is_empty() {
            self.changes.looked_up();
            let mut room = self.room_for_unknown(listening);
            let entry = self
                .gateways
                .get_mut(&key)
                .expect("inserted above when missing");
            let gateway_id = entry.id;
            let found = store
                .on_connection(async |conn| find_tags(conn, tenant, gateway_id, &missing).await)
                .await?;
            // Cached only once committed: the tags auto-registered exist only then, and a
            // commit that fails or times out must leave no id of theirs behind.
            for ctx in found {
                entry.tags.insert(ctx.tag.clone(), Arc::new(ctx));
            }
            for name in names {
                if room > 0 && !entry.tags.contains_key(name) && entry.unknown.insert(name.clone())
                {
                    room -= 1;
                }
            }
        }
        Ok(Resolved::Gateway(&self.gateways[&key]))
    }
}

/// The id of `tenant`'s gateway `code`, or (`Err`) whether the tenant exists.
async fn find_gateway(
    conn: &mut PgConnection,
    tenant: TenantId,
    code: &GatewayId,
) -> Result<Result<Uuid, bool>, StoreError> {
    let mut tx = migrations::begin_tenant_on(conn, tenant.as_uuid()).await?;
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM gateways WHERE code = $1")
        .bind(code.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let found = match id {
        Some(id) => Ok(id),
        None => Err(sqlx::query("SELECT 1 FROM tenants WHERE id = $1")
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()),
    };
    tx.commit().await?;
    Ok(found)
}

/// The contexts of the `missing` tags of gateway `gateway` found, and of those registered
/// when the tenant's policy allows it (committed when this returns).
async fn find_tags(
    conn: &mut PgConnection,
    tenant: TenantId,
    gateway: Uuid,
    missing: &[&str],
) -> Result<Vec<TagContext>, StoreError> {
    let mut tx = migrations::begin_tenant_on(conn, tenant.as_uuid()).await?;
    let rows = sqlx::query(&format!(
        "{TAG_CONTEXT_QUERY} WHERE t.gateway_id = $1 AND t.name = ANY($2)"
    ))
    .bind(gateway)
    .bind(missing)
    .fetch_all(&mut *tx)
    .await?;
    let mut found = Vec::new();
    for row in &rows {
        // A name the edge could never send has nothing to resolve.
        if let Some(ctx) = tag_context(row, tenant)? {
            found.push(ctx);
        }
    }
    let unknown: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|n| !found.iter().any(|ctx| ctx.tag.as_str() == *n))
        .collect();
    if !unknown.is_empty() {
        for row in auto_register(&mut tx, tenant, gateway, &unknown).await? {
            if let Some(ctx) = tag_context(&row, tenant)? {
                found.push(ctx);
            }
        }
    }
    tx.commit().await?;
    Ok(found)
}

/// Registers the `unknown` tags of gateway `gateway` when the tenant's policy allows it
/// (`tenant_ingest_policy`), as many as its tag limit leaves room for, and audits it
/// (`tag.auto_register`); returns the rows of [`TAG_CONTEXT_QUERY`] of those registered and of
/// those another transaction registered since the caller looked. Nothing when the policy does
/// not allow it. In the caller's tenant transaction.
async fn auto_register(
    tx: &mut sqlx::PgConnection,
    tenant: TenantId,
    gateway: Uuid,
    unknown: &[&str],
) -> Result<Vec<PgRow>, StoreError> {
    let policy: Option<(bool, i32)> = sqlx::query_as(
        "SELECT auto_register_tags, max_tags_per_gateway FROM tenant_ingest_policy
         WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((true, limit)) = policy else {
        return Ok(Vec::new());
    };
    // One registration at a time per gateway, so that the limit holds.
    sqlx::query("SELECT id FROM gateways WHERE id = $1 FOR UPDATE")
        .bind(gateway)
        .execute(&mut *tx)
        .await?;
    // Names another transaction registered since the look-up (the API, an import, another
    // ingest process) exist now: they take no place under the limit, and are returned below.
    let registered: Vec<String> = sqlx::query_scalar(
        "INSERT INTO tags (tenant_id, gateway_id, name, auto_registered_at)
         SELECT $1, $2, n.name, now()
         FROM unnest($3::text[]) AS n(name)
         WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.gateway_id = $2 AND t.name = n.name)
         LIMIT greatest(0, $4 - (SELECT count(*) FROM tags WHERE gateway_id = $2))
         ON CONFLICT (gateway_id, name) DO NOTHING
         RETURNING name",
    )
    .bind(tenant.as_uuid())
    .bind(gateway)
    .bind(unknown)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    if !registered.is_empty() {
        sqlx::query(
            "INSERT INTO audit_log (tenant_id, action, outcome, target_type, target_id, detail)
             VALUES ($1, 'tag.auto_register', 'success', 'gateway', $2,
                     jsonb_build_object('tags', $3::text[]))",
        )
        .bind(tenant.as_uuid())
        .bind(gateway.to_string())
        .bind(&registered)
        .execute(&mut *tx)
        .await?;
        metrics::counter!("maintainpro_ingest_tags_auto_registered_total")
            .increment(registered.len() as u64);
        tracing::info!(%tenant, %gateway, tags = registered.len(), "tags registered from ingest");
    }
    // Those registered here and those registered meanwhile by others.
    Ok(sqlx::query(&format!(
        "{TAG_CONTEXT_QUERY} WHERE t.gateway_id = $1 AND t.name = ANY($2)"
    ))
    .bind(gateway)
    .bind(unknown)
    .fetch_all(&mut *tx)
    .await?)
}

/// Selects what [`tag_context`] reads of a tag (`t`) and its asset (`a`); callers add their
/// `WHERE` and `ORDER BY`. Run it in a tenant-scoped transaction. A tag's labels are its
/// asset's with its own on top (`||` keeps the right-hand value of a key both have).
pub const TAG_CONTEXT_QUERY: &str =
    "SELECT t.id, t.name, t.unit, t.asset_id, a.name AS asset_name, a.criticality,
            a.asset_class, COALESCE(a.labels, '{}'::jsonb) || t.labels AS labels
     FROM tags t LEFT JOIN assets a ON a.id = t.asset_id";

/// The rules' view of a tag from a row of [`TAG_CONTEXT_QUERY`]; `None` for a stored name
/// that is not a valid tag name (no gateway could send it).
pub fn tag_context(row: &PgRow, tenant: TenantId) -> Result<Option<TagContext>, sqlx::Error> {
    let name: String = row.try_get("name")?;
    let Ok(tag) = TagName::parse(name) else {
        return Ok(None);
    };
    let criticality: Option<i16> = row.try_get("criticality")?;
    Ok(Some(TagContext {
        tenant,
        tag_id: row.try_get("id")?,
        tag,
        unit: row.try_get("unit")?,
        asset: row
            .try_get::<Option<Uuid>, _>("asset_id")?
            .map(AssetId::from_uuid),
        asset_name: row
            .try_get::<Option<String>, _>("asset_name")?
            .unwrap_or_default(),
        asset_class: row.try_get("asset_class")?,
        labels: row.try_get::<Json<Labels>, _>("labels")?.0,
        criticality: criticality
            .and_then(|c| u8::try_from(c).ok())
            .and_then(Criticality::new)
            .unwrap_or(Criticality::DEFAULT),
    }))
}
