//! Ingest reads its broker over TLS: Mosquitto with a TLS listener that requires a client
//! certificate (certificates made for the run), ingest on `mqtts://` with the plant's CA and
//! its own certificate, a gateway publishing on the broker's plain listener. And the TLS keys
//! of `[ingest]` are checked with the rest of the configuration. Needs `scripts/test.sh`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ingest::{Consumer, IngestConfig, PgStore};
use maintainpro_tests::{Plant, demo_batch, publish_all, series};
use migrations::testing::TestDatabase;
use model::{GatewayId, TenantId, Timestamp};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use server::demo::{DEMO_GATEWAY, seed_plant};
use simulators::mosquitto::PrivateBroker;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Writes `ca.pem` and, signed by it, `broker.pem`/`.key` (for 127.0.0.1) and
/// `ingest.pem`/`.key` into `dir`, readable by Mosquitto's own user.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Plant CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (name, sans) in [
        ("broker", vec!["127.0.0.1".to_owned()]),
        ("ingest", vec!["maintainpro-ingest".to_owned()]),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_reads_its_broker_over_tls_with_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki)?;
    certificates(&pki)?;
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let broker = PrivateBroker::start_with(
        &dir.path().join("mq"),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.join("ca.pem").display(),
            pki.join("broker.pem").display(),
            pki.join("broker.key").display(),
        ),
    )?;

    let db = TestDatabase::create().await?;
    let tenant = seed_plant(&db.urls.app_url, "plant-a", "unused")
        .await?
        .tenant;
    let config = IngestConfig {
        client_id: format!("ingest-{}", Uuid::new_v4().simple()),
        subscribe: vec![format!("{}/{tenant}/+/readings", model::topic::PREFIX)],
        ca_file: Some(pki.join("ca.pem")),
        client_cert_file: Some(pki.join("ingest.pem")),
        client_key_file: Some(pki.join("ingest.key")),
        ..IngestConfig::new(format!("mqtts://127.0.0.1:{tls_port}"))
    };
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    // Each wrong key is named.
    let plain = IngestConfig {
        broker: broker.url(),
        ..config.clone()
    };
    let keys: Vec<String> = plain.problems().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "ingest.ca_file",
            "ingest.client_cert_file",
            "ingest.client_key_file"
        ]
    );
    let swapped = IngestConfig {
        ca_file: Some(pki.join("ingest.key")),
        ..config.clone()
    };
    let problems = swapped.problems();
    assert!(
        problems.len() == 1
            && problems[0].0 == "ingest.ca_file"
            && problems[0].1.contains("holds no PEM certificate"),
        "{problems:?}"
    );

    let pool = db.app_pool().await;
    let consumer = Consumer::new(config, PgStore::new(pool.clone()), None);
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(consumer.run_until(async move { stop.cancelled().await }))
    };
    Plant::eventually(
        Duration::from_secs(20),
        "the subscription over TLS",
        || async { Ok((stats.subscriptions.load(Ordering::Relaxed) > 0).then_some(())) },
    )
    .await?;

    // A gateway publishes on the plain listener; ingest receives it over TLS.
    let readings = series(
        "press-1.bearing_temp",
        Timestamp::now().as_micros() - 60_000_000,
        1_000_000,
        5,
        |i| 60.0 + i as f64,
    )?;
    let batch = demo_batch(1, &readings)?;
    let topic = model::topic::readings(
        TenantId::from_uuid(tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    publish_all(&broker.url(), &topic, vec![batch]).await?;
    let stored = Plant::eventually(Duration::from_secs(20), "the readings stored", || async {
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_readings")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((n >= 5).then_some(n))
    })
    .await?;
    assert_eq!(stored, 5);
    stop.cancel();
    task.await??;
    pool.close().await;
    drop(broker);
    Ok(())
}
