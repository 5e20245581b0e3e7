//! Gateway API keys as broker logins, against Mosquitto with its dynamic-security plugin set up
//! as docs/GATEWAY.md sets it up: an edge agent logs in with a `readings:publish` key and its
//! readings are stored; the key publishes only its own organisation's readings and subscribes
//! to nothing; revoking, rotating and expiring keys end their logins; an account no key stands
//! behind is removed; and a broker that cannot be reached makes no key at all.
//!
//! Needs `scripts/test.sh` (PostgreSQL, Mosquitto with `mosquitto_ctrl`).

use std::time::Duration;

use anyhow::Context;
use api::config::{BrokerAccountsSettings, Secret};
use edge_agent::{Agent, AgentConfig};
use maintainpro_tests::{Plant, demo_batch, series, text};
use model::{GatewayId, TenantId, Timestamp};
use reqwest::Method;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::json;
use server::demo::{DEMO_GATEWAY, agent_config, demo_scenario};
use simulators::mosquitto::PrivateBroker;
use simulators::spawn_modbus_plc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ADMIN: (&str, &str) = ("broker-admin", "broker admin password of the test");
const INGEST: (&str, &str) = ("maintainpro-ingest", "ingest password of the test");
const KEYS: &str = "/api/v1/api-keys";

/// A private broker with the plugin, and ingest's account as the gateway guide makes it.
fn accounts_broker(dir: &std::path::Path) -> anyhow::Result<PrivateBroker> {
    let broker = PrivateBroker::start_with_accounts(dir, ADMIN)?;
    maintainpro_tests::broker_account(
        &broker,
        INGEST,
        "maintainpro-ingest",
        &["maintainpro/v1/#", "spBv1.0/#"],
    )?;
    Ok(broker)
}

/// A plant whose API keeps broker accounts on `broker` (reconciling every second) and whose
/// ingest reads that broker with its own login.
async fn plant_on(broker: &PrivateBroker) -> anyhow::Result<Plant> {
    let url = broker.url();
    Plant::start_configured(|_, config| {
        if let Some(api) = config.api.as_mut() {
            // The tests fill an organisation's key allowance.
            api.tenant_rate = "100000/s".parse().expect("a rate");
            api.tenant_burst = std::num::NonZeroU32::new(100_000).expect("not zero");
            api.broker_accounts = Some(BrokerAccountsSettings {
                reconcile: Duration::from_secs(1),
                ..BrokerAccountsSettings::new(url.clone(), ADMIN.0, Secret::new(ADMIN.1.to_owned()))
            });
        }
        if let Some(ingest) = config.ingest.as_mut() {
            ingest.broker = url.clone();
            ingest.client_id = INGEST.0.to_owned();
            ingest.username = Some(INGEST.0.to_owned());
            ingest.password = Some(Secret::new(INGEST.1.to_owned()));
        }
    })
    .await
}

/// The broker user name of a key's text.
fn username(key: &str) -> anyhow::Result<&str> {
    Ok(model::gateway_key::broker_login(key)
        .context("a key's shape")?
        .1)
}

/// A login with `key`, under the client id its account is bound to (`client_id` None) or
/// another.
fn options(broker: &str, key: &str, client_id: Option<&str>) -> anyhow::Result<MqttOptions> {
    let endpoint = model::topic::broker_endpoint(broker)?;
    let name = username(key).unwrap_or(key);
    let mut options = MqttOptions::new(client_id.unwrap_or(name), endpoint.host, endpoint.port);
    options.set_credentials(name, key);
    Ok(options)
}

/// Whether the broker takes `key` as a login.
async fn logs_in(broker: &str, key: &str) -> anyhow::Result<bool> {
    logs_in_as(broker, key, None).await
}

/// Whether the broker takes `key` as a login under `client_id` (None: the key's own).
async fn logs_in_as(broker: &str, key: &str, client_id: Option<&str>) -> anyhow::Result<bool> {
    let (_client, mut events) = AsyncClient::new(options(broker, key, client_id)?, 8);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(true),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(_)) => return Ok(false),
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
    })
    .await
    .context("no answer to a login within 5 s")?
}

/// Waits until the broker answers `want` to a login with `key`.
async fn until_login(broker: &str, key: &str, want: bool, what: &str) -> anyhow::Result<()> {
    Plant::eventually(Duration::from_secs(30), what, || async {
        Ok((logs_in(broker, key).await? == want).then_some(()))
    })
    .await
}

/// A batch of `n` readings of the demo press's bearing temperature, stamped half an hour ago
/// (the agent's readings are current: [`old_readings_of`] tells them apart).
fn batch(seq: u64, n: i64) -> anyhow::Result<Vec<u8>> {
    let half_an_hour_ago = Timestamp::now().as_micros() - 1_800_000_000;
    let readings = series("press-1.bearing_temp", half_an_hour_ago, 1_000, n, |i| {
        40.0 + i as f64
    })?;
    demo_batch(seq, &readings)
}

async fn readings_of(plant: &Plant, tenant: Uuid) -> anyhow::Result<i64> {
    count(plant, tenant, "SELECT count(*) FROM tenant_readings").await
}

/// Readings of `tenant` older than a quarter of an hour: those of [`batch`].
async fn old_readings_of(plant: &Plant, tenant: Uuid) -> anyhow::Result<i64> {
    count(
        plant,
        tenant,
        "SELECT count(*) FROM tenant_readings WHERE ts < now() - interval '15 minutes'",
    )
    .await
}

async fn count(plant: &Plant, tenant: Uuid, query: &str) -> anyhow::Result<i64> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let n = sqlx::query_scalar(query).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_key_publishes_its_organisations_readings_and_nothing_else() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let broker = accounts_broker(dir.path())?;
    let plant = plant_on(&broker).await?;
    let admin = plant.login("plant-a").await?;
    let (key, id) = plant.new_api_key(&admin, &["readings:publish"]).await?;
    let listed = broker.dynsec(&["listClients"])?;
    assert!(listed.contains(username(&key)?), "{listed}");
    assert!(
        !logs_in(&plant.broker, "mpak.guess").await?,
        "anonymous guess"
    );

    // The edge agent logs in with the key and its readings are stored.
    let plc = spawn_modbus_plc(
        "127.0.0.1:0".parse()?,
        demo_scenario(Duration::from_secs(3600))?,
    )
    .await?;
    let files = tempfile::tempdir()?;
    let text = agent_config(
        plant.tenant_a.tenant,
        &plant.broker,
        plc.local_addr(),
        &files.path().join("outbox"),
    )
    .replacen(
        &format!("broker = \"{}\"", plant.broker),
        &format!("broker = \"{}\"\napi_key = \"{key}\"", plant.broker),
        1,
    );
    anyhow::ensure!(text.contains("api_key"), "the uplink takes the key: {text}");
    let config = AgentConfig::from_toml_with_env("gateway", &text, Vec::new())?;
    let stop = CancellationToken::new();
    let agent = {
        let stop = stop.clone();
        tokio::spawn(Agent::build(config).run_until(async move { stop.cancelled().await }))
    };
    Plant::eventually(Duration::from_secs(30), "the agent's readings", || async {
        Ok((readings_of(&plant, plant.tenant_a.tenant).await? >= 20).then_some(()))
    })
    .await?;
    stop.cancel();
    agent.await??;

    // The key may publish its own organisation's readings only, and subscribe to nothing.
    let (client, mut events) = AsyncClient::new(options(&plant.broker, &key, None)?, 16);
    let b_topic = model::topic::readings(
        TenantId::from_uuid(plant.tenant_b.tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    let a_topic = model::topic::readings(
        TenantId::from_uuid(plant.tenant_a.tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    client
        .subscribe("maintainpro/v1/#", QoS::AtLeastOnce)
        .await?;
    client
        .publish(&b_topic, QoS::AtLeastOnce, false, batch(1_000_001, 7)?)
        .await?;
    client
        .publish(&a_topic, QoS::AtLeastOnce, false, batch(1_000_002, 5)?)
        .await?;
    let before = old_readings_of(&plant, plant.tenant_a.tenant).await?;
    let sub_refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await? {
                return anyhow::Ok(
                    ack.return_codes
                        .iter()
                        .all(|c| *c == SubscribeReasonCode::Failure),
                );
            }
        }
    })
    .await??;
    assert!(sub_refused, "a gateway key subscribes to nothing");
    // Keep the connection served while ingest stores the batch on A's topic, which was sent
    // after the one on B's; the task ends when the broker closes the connection.
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    Plant::eventually(
        Duration::from_secs(15),
        "the batch on its own topic",
        || async {
            Ok((old_readings_of(&plant, plant.tenant_a.tenant).await? >= before + 5).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        readings_of(&plant, plant.tenant_b.tenant).await?,
        0,
        "another organisation's topic"
    );

    // The account is bound to its client id: the key cannot take over ingest's connection
    // (or any other client's).
    assert!(
        !logs_in_as(&plant.broker, &key, Some(INGEST.0)).await?,
        "ingest's client id"
    );
    assert!(
        !logs_in_as(&plant.broker, &key, Some("edge-line-1-gw")).await?,
        "another client id"
    );

    // A wrong secret is refused; revoking the key ends its connection and its login.
    let wrong = format!("{}.{}", username(&key)?, "A".repeat(43));
    assert!(!logs_in(&plant.broker, &wrong).await?, "a wrong secret");
    let (status, body) = plant
        .send(Method::DELETE, &format!("{KEYS}/{id}"), Some(&admin), None)
        .await?;
    assert_eq!(status, 204, "{body}");
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .context("a revoked key's connection stays open")??;
    assert!(!logs_in(&plant.broker, &key).await?, "a revoked key");
    drop(client);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_expiries_orphans_and_an_unreachable_broker_keep_accounts_and_keys_in_step()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = accounts_broker(dir.path())?;
    let plant = plant_on(&broker).await?;
    let admin = plant.login("plant-a").await?;
    let url = plant.broker.clone();

    // A rotation without overlap ends the old login at once.
    let (first, first_id) = plant.new_api_key(&admin, &["readings:publish"]).await?;
    assert!(logs_in(&url, &first).await?);
    let (status, body) = plant
        .send(
            Method::POST,
            &format!("{KEYS}/{first_id}/rotate"),
            Some(&admin),
            Some(json!({ "overlap": "0s" })),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (second, second_id) = (text(&body, "key")?, text(&body, "id")?);
    assert!(!logs_in(&url, &first).await?, "rotated without overlap");
    assert!(logs_in(&url, &second).await?, "the replacement");

    // With an overlap, the old login works until the overlap ends, then the reconciler
    // removes it.
    let (status, body) = plant
        .send(
            Method::POST,
            &format!("{KEYS}/{second_id}/rotate"),
            Some(&admin),
            Some(json!({ "overlap": "6s" })),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let third = text(&body, "key")?;
    assert!(logs_in(&url, &second).await?, "within the overlap");
    until_login(&url, &second, false, "the overlap's end").await?;
    assert!(logs_in(&url, &third).await?);

    // An account no key stands behind (a creation rolled back) is removed; the plugin's own
    // accounts are not.
    let orphan = model::gateway_key::username(plant.tenant_a.tenant, Uuid::new_v4());
    broker.dynsec(&["createClient", &orphan, "-p", "orphan password"])?;
    Plant::eventually(Duration::from_secs(30), "the orphan removed", || async {
        Ok((!broker.dynsec(&["listClients"])?.contains(&orphan)).then_some(()))
    })
    .await?;
    let listed = broker.dynsec(&["listClients"])?;
    assert!(
        listed.contains(ADMIN.0) && listed.contains(INGEST.0),
        "{listed}"
    );
    assert!(
        listed.contains(username(&third)?),
        "a live key's account stays: {listed}"
    );

    // A key without readings:publish has no account; one with every scope has.
    let (reader, _) = plant.new_api_key(&admin, &["work_orders:read"]).await?;
    assert!(
        !broker
            .dynsec(&["listClients"])?
            .contains(username(&reader)?)
    );
    let every: Vec<&str> = api::api_keys::Scope::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let (all, _) = plant.new_api_key(&admin, &every).await?;
    assert!(logs_in(&url, &all).await?, "a key with every scope");

    // The broker away: no key is made, and none is left behind.
    broker.pause()?;
    let (status, body) = plant
        .send(
            Method::POST,
            KEYS,
            Some(&admin),
            Some(json!({ "name": "while the broker is away", "scopes": ["readings:publish"] })),
        )
        .await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no key was made"),
        "{body}"
    );
    let (status, list) = plant.get(KEYS, Some(&admin)).await?;
    assert_eq!(status, 200);
    assert!(
        !list.to_string().contains("while the broker is away"),
        "{list}"
    );
    broker.resume()?;
    let (again, _) = plant.new_api_key(&admin, &["readings:publish"]).await?;
    assert!(logs_in(&url, &again).await?);

    // A key whose row is refused after its account was made (the organisation holds the most
    // live keys it may) takes its account back.
    let accounts = |listed: String| -> usize {
        listed
            .lines()
            .filter(|l| l.trim().starts_with("mpak."))
            .count()
    };
    let before = accounts(broker.dynsec(&["listClients"])?);
    assert!(before >= 3, "the live keys' accounts are listed");
    let (status, list) = plant.get(KEYS, Some(&admin)).await?;
    assert_eq!(status, 200);
    let live = list["items"].as_array().map_or(0, |items| {
        items.iter().filter(|k| k["status"] == "active").count()
    });
    for _ in live..api::api_keys::MAX_LIVE_KEYS as usize {
        plant.new_api_key(&admin, &["rules:read"]).await?;
    }
    let (status, body) = plant
        .send(
            Method::POST,
            KEYS,
            Some(&admin),
            Some(json!({ "name": "one too many", "scopes": ["readings:publish"] })),
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        accounts(broker.dynsec(&["listClients"])?),
        before,
        "no account is left behind"
    );
    Ok(())
}
