//! The births of Sparkplug B nodes kept in the database (`sparkplug_births`): written with the
//! messages that change them, in the order ingest read those messages whatever order their
//! transactions commit in, and read back as the node's current birth with the devices born
//! under it. Needs `scripts/test.sh`.

use bytes::Bytes;
use ingest::store::{BirthRecord, Item, PgStore, StoredBirths};
use migrations::testing::TestDatabase;
use server::demo::{DEMO_GATEWAY, seed_plant};
use uuid::Uuid;

struct World {
    store: PgStore,
    tenant: Uuid,
    gateway: Uuid,
    other_tenant: Uuid,
    _db: TestDatabase,
}

async fn world() -> anyhow::Result<World> {
    let db = TestDatabase::create().await?;
    let tenant = seed_plant(&db.urls.app_url, "plant-a", "unused")
        .await?
        .tenant;
    let other_tenant = seed_plant(&db.urls.app_url, "plant-b", "unused")
        .await?
        .tenant;
    let pool = db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let gateway: Uuid = sqlx::query_scalar("SELECT id FROM gateways WHERE code = $1")
        .bind(DEMO_GATEWAY)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(World {
        store: PgStore::new(pool),
        tenant,
        gateway,
        other_tenant,
        _db: db,
    })
}

fn record(device: &str, version: i64, node_version: i64, payload: Option<&str>) -> BirthRecord {
    BirthRecord {
        device: device.into(),
        version,
        node_version,
        payload: payload.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    }
}

/// A current birth as text: its version, the node's bytes, and each device's.
type Born = Option<(i64, String, Vec<(String, String)>)>;

/// What [`World::born`] gives for a birth `version` with bytes `node` and these devices.
fn born(version: i64, node: &str, devices: &[(&str, &str)]) -> Born {
    let devices = devices
        .iter()
        .map(|(d, p)| ((*d).to_owned(), (*p).to_owned()))
        .collect();
    Some((version, node.to_owned(), devices))
}

impl World {
    /// One message per record, all in one transaction, each its own ledger batch.
    async fn write(&self, seq: i64, records: Vec<BirthRecord>) -> anyhow::Result<()> {
        let items: Vec<Item> = records
            .into_iter()
            .enumerate()
            .map(|(i, birth)| Item::Batch {
                tenant: self.tenant,
                gateway: self.gateway,
                seq: seq + i64::try_from(i).unwrap_or(0),
                rows: Vec::new(),
                rejected: None,
                birth: Some(birth),
                numbered: None,
            })
            .collect();
        self.store.write_group(&items).await?;
        Ok(())
    }

    async fn kept(&self) -> anyhow::Result<Option<StoredBirths>> {
        Ok(self.store.load_births(self.tenant, self.gateway).await?)
    }

    /// The current birth's version, bytes, and devices with their bytes, as text.
    async fn born(&self) -> anyhow::Result<Born> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(self.kept().await?.and_then(|k| k.born).map(|b| {
            let devices = b
                .births
                .devices
                .iter()
                .map(|(d, p)| (d.clone(), text(p)))
                .collect();
            (b.version, text(&b.births.node), devices)
        }))
    }
}

#[tokio::test]
async fn kept_births_follow_the_order_ingest_read_them_in() -> anyhow::Result<()> {
    let w = world().await?;
    assert_eq!(w.kept().await?, None, "nothing kept before the first birth");

    // A device's birth committed before the node birth it follows: both count.
    w.write(1, vec![record("pump", 11, 10, Some("pump@10"))])
        .await?;
    w.write(2, vec![record("", 10, 10, Some("node@10"))])
        .await?;
    assert_eq!(w.born().await?, born(10, "node@10", &[("pump", "pump@10")]));

    // The device died (version 12); its birth, written again by a transaction that commits
    // late (version 11), does not bring it back.
    w.write(3, vec![record("pump", 12, 10, None)]).await?;
    w.write(4, vec![record("pump", 11, 10, Some("pump@10"))])
        .await?;
    assert_eq!(w.born().await?, born(10, "node@10", &[]));

    // Two records of one device in one transaction: the later stands.
    w.write(
        5,
        vec![
            record("fan", 14, 10, Some("fan@14")),
            record("fan", 13, 10, Some("fan@13")),
        ],
    )
    .await?;
    assert_eq!(w.born().await?, born(10, "node@10", &[("fan", "fan@14")]));

    // The node is born again: the devices born under its earlier birth are not born under
    // this one, until they are born again.
    w.write(7, vec![record("", 20, 20, Some("node@20"))])
        .await?;
    assert_eq!(w.born().await?, born(20, "node@20", &[]));
    w.write(8, vec![record("pump", 21, 20, Some("pump@21"))])
        .await?;
    assert_eq!(w.born().await?, born(20, "node@20", &[("pump", "pump@21")]));

    // A message delivered again (its ledger batch is a duplicate) still moves the births: it
    // was read again, and moved the node's session again.
    w.write(8, vec![record("pump", 22, 20, Some("pump@22"))])
        .await?;
    assert_eq!(w.born().await?, born(20, "node@20", &[("pump", "pump@22")]));

    // The node died: nothing is born, and the next record must be numbered above 30.
    w.write(9, vec![record("", 30, 30, None)]).await?;
    assert_eq!(
        w.kept().await?,
        Some(StoredBirths {
            latest: 30,
            born: None
        })
    );

    // Another tenant sees none of it.
    assert_eq!(w.store.load_births(w.other_tenant, w.gateway).await?, None);
    Ok(())
}
