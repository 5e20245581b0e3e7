//! The demo plant: everything MaintAInPro does, on one machine, from embedded defaults.
//!
//! A throwaway PostgreSQL cluster (unless a database URL is given), the embedded broker
//! (unless a broker URL is given), a simulated press PLC (Modbus TCP) whose bearing overheats
//! after a while, a simulated curing oven (an OPC-UA server), an edge agent polling the one
//! and subscribed to the other, and ingest, rules and the API. The breach becomes an
//! alarm, the alarm one work order, visible through the API. On stop, every part shuts down
//! in order and temporary data is removed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use api::ApiConfig;
use api::config::Secret;
use edge_agent::{Agent, AgentConfig};
use ingest::IngestConfig;
use migrations::throwaway::{Cluster, ClusterOptions};
use migrations::{DatabaseUrls, RoleSecrets};
use rules::RuleSet;
use simulators::{Scenario, spawn_modbus_plc};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::broker::EmbeddedBroker;
use crate::config::{DatabaseConfig, MetricsConfig, Role, RulesConfig, ServerConfig};
use crate::services::{Services, Summary};

/// The demo's rule file, shipped in the repository and embedded so the demo runs anywhere.
pub const DEMO_RULES: &str = include_str!("../../config/rules/demo.toml");
pub const DEMO_TENANT_SLUG: &str = "demo";
pub const DEMO_EMAIL: &str = "admin@demo.local";
pub const DEMO_GATEWAY: &str = "line-1-gw";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// A superuser URL of an existing cluster; `None` starts a throwaway one.
    pub admin_url: Option<String>,
    /// `mqtt://host:port` of an existing broker; `None` starts the embedded one.
    pub broker: Option<String>,
    pub listen: SocketAddr,
    /// When the simulated bearing starts to overheat.
    pub breach_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] migrations::throwaway::ClusterError),
    #[error(transparent)]
    Database(#[from] migrations::DbError),
    #[error("seeding the demo tenant failed: {0}")]
    Seed(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("cannot start the simulated PLC or its gateway: {0}")]
    Plc(std::io::Error),
    #[error("the built-in {what} is invalid: {detail}")]
    BuiltIn { what: &'static str, detail: String },
    #[error(transparent)]
    Services(#[from] crate::services::ServicesError),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("a role of the server stopped by itself (see the log above); the demo stopped too")]
    RoleEnded,
}

/// What the demo hands the user: where to look and how to log in.
#[derive(Debug, Clone)]
pub struct DemoAccess {
    pub api_url: String,
    pub tenant: String,
    pub email: String,
    pub password: String,
}

fn secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// A seeded demo plant.
#[derive(Debug, Clone, Copy)]
pub struct SeededPlant {
    pub tenant: Uuid,
}

/// Creates a tenant `slug` with an admin user, a site, the asset "Press 1" (criticality 4), the
/// gateway [`DEMO_GATEWAY`] and the press's tags, connected as the application role.
pub async fn seed_plant(
    app_url: &str,
    slug: &str,
    password_hash: &str,
) -> Result<SeededPlant, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(app_url)
        .await?;
    let tenant = Uuid::new_v4();
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, $2, 'Demo Plant')")
        .bind(tenant)
        .bind(slug)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, display_name, password_hash, role)
         VALUES ($1, $2, $3, 'Demo Admin', $4, 'admin')",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(DEMO_EMAIL)
    .bind(password_hash)
    .execute(&mut *tx)
    .await?;
    let site = Uuid::new_v4();
    sqlx::query("INSERT INTO sites (id, tenant_id, name) VALUES ($1, $2, 'Plant 1')")
        .bind(site)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let asset = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO assets (id, tenant_id, site_id, name, criticality, asset_class, labels)
         VALUES ($1, $2, $3, 'Press 1', 4, 'hydraulic-press', '{\"line\": \"1\"}')",
    )
    .bind(asset)
    .bind(tenant)
    .bind(site)
    .execute(&mut *tx)
    .await?;
    let gateway = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO gateways (id, tenant_id, code, name) VALUES ($1, $2, $3, 'Line 1 gateway')",
    )
    .bind(gateway)
    .bind(tenant)
    .bind(DEMO_GATEWAY)
    .execute(&mut *tx)
    .await?;
    for (name, unit) in DEMO_TAGS {
        sqlx::query("INSERT INTO tags (tenant_id, gateway_id, name, asset_id, unit) VALUES ($1, $2, $3, $4, $5)")
            .bind(tenant)
            .bind(gateway)
            .bind(format!("press-1.{name}"))
            .bind(asset)
            .bind(unit)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(SeededPlant { tenant })
}

/// Adds the asset "Oven 1" (criticality 3) and its tags ([`OVEN_TAGS`]) on the demo gateway of
/// `tenant`: the machine the demo agent reads over OPC-UA.
pub async fn seed_oven(app_url: &str, tenant: Uuid) -> Result<(), sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(app_url)
        .await?;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let asset = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO assets (id, tenant_id, site_id, name, criticality, asset_class, labels)
         SELECT $1, $2, id, 'Oven 1', 3, 'curing-oven', '{\"line\": \"1\"}' FROM sites LIMIT 1",
    )
    .bind(asset)
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    for (name, unit) in OVEN_TAGS {
        sqlx::query(
            "INSERT INTO tags (tenant_id, gateway_id, name, asset_id, unit)
             SELECT $1, id, $2, $3, $4 FROM gateways WHERE code = $5",
        )
        .bind(tenant)
        .bind(format!("oven-1.{name}"))
        .bind(asset)
        .bind(unit)
        .bind(DEMO_GATEWAY)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

/// The oven's signals and their units, served as OPC-UA variables.
pub const OVEN_TAGS: [(&str, &str); 2] = [("zone_temp", "degC"), ("fan_speed", "rpm")];

/// The oven's scenario: a curing zone held around 180 degC and a circulation fan.
pub fn oven_scenario() -> Result<Scenario, DemoError> {
    let text = r#"
seed = 7

[[signal]]
name = "oven-1.zone_temp"
address = 0
kind.sine = { base = 180.0, amplitude = 1.5, period = "90s" }
noise = 0.2

[[signal]]
name = "oven-1.fan_speed"
address = 2
kind.constant = { value = 1450.0 }
noise = 5.0
"#;
    Scenario::from_toml_str(text, "built-in oven scenario").map_err(|e| DemoError::BuiltIn {
        what: "oven scenario",
        detail: e.to_string(),
    })
}

/// The `[[opcua]]` section that reads the oven at `endpoint` (`ns` is its namespace index),
/// to append to [`agent_config`]'s text; the agent's OPC-UA certificates go to `pki_dir`.
pub fn oven_source(endpoint: &str, ns: u16, pki_dir: &std::path::Path) -> String {
    let mut text = format!(
        r#"
[[opcua]]
name = "oven-1"
endpoint = "{endpoint}"
pki_dir = {pki}
publishing_interval = "500ms"
"#,
        pki = toml::Value::String(pki_dir.display().to_string()),
    );
    for (name, unit) in OVEN_TAGS {
        text.push_str(&format!(
            "\n[[opcua.tag]]\nname = \"oven-1.{name}\"\nnode = \"ns={ns};s=oven-1.{name}\"\nunit = \"{unit}\"\n"
        ));
    }
    text
}

/// The demo PLC's signals (see `config/scenarios/demo.toml`) and their units; the register of
/// each is its position times two.
const DEMO_TAGS: [(&str, &str); 4] = [
    ("bearing_temp", "degC"),
    ("vibration", "mm/s"),
    ("motor_current", "A"),
    ("cycle_count", "cycles"),
];

/// The demo edge agent's configuration file for a plant of `tenant`, with its outbox in
/// `outbox_dir`.
pub fn agent_config(
    tenant: Uuid,
    broker: &str,
    plc: SocketAddr,
    outbox_dir: &std::path::Path,
) -> String {
    let mut text = format!(
        r#"
[gateway]
tenant = "{tenant}"
id = "{DEMO_GATEWAY}"

[uplink]
broker = "{broker}"
batch_max_age = "500ms"

[outbox]
dir = {outbox}

[[device]]
name = "press-1"
protocol = "modbus-tcp"
address = "{plc}"
poll_interval = "500ms"
"#,
        outbox = toml::Value::String(outbox_dir.display().to_string()),
    );
    for (i, (name, unit)) in DEMO_TAGS.iter().enumerate() {
        text.push_str(&format!(
            "\n[[device.tag]]\nname = \"press-1.{name}\"\ntable = \"holding\"\naddress = {}\ndata_type = \"f32\"\nunit = \"{unit}\"\n",
            i * 2
        ));
    }
    text
}

/// The demo PLC's scenario with the bearing breach moved to `breach_after`.
pub fn demo_scenario(breach_after: Duration) -> Result<Scenario, DemoError> {
    let base = Scenario::demo();
    let signals = base
        .signals()
        .iter()
        .cloned()
        .map(|mut s| {
            if let Some(b) = &mut s.breach {
                b.after = breach_after;
            }
            s
        })
        .collect();
    Scenario::new(base.seed(), signals).map_err(|e| DemoError::BuiltIn {
        what: "scenario",
        detail: e.to_string(),
    })
}

/// Runs the demo until `shutdown` completes. `on_ready` is told how to reach the API.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&DemoAccess),
) -> Result<Summary, DemoError> {
    let rules =
        RuleSet::parse("config/rules/demo.toml", DEMO_RULES).map_err(|d| DemoError::BuiltIn {
            what: "rule file",
            detail: d
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })?;

    // Database: a throwaway cluster unless one was given.
    let (cluster, admin_url) = match &options.admin_url {
        Some(url) => (None, url.clone()),
        None => {
            tracing::info!("starting a throwaway PostgreSQL cluster");
            let c = Cluster::start(ClusterOptions { fsync: false }).await?;
            let url = c.admin_url();
            (Some(c), url)
        }
    };
    let db_name = format!(
        "maintainpro_demo_{}",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let secrets = RoleSecrets {
        owner_password: secret(),
        app_password: secret(),
    };
    let urls: DatabaseUrls = migrations::bootstrap(&admin_url, &db_name, &secrets).await?;
    let layout = migrations::migrate(&urls.owner_url).await?;
    tracing::info!(database = %db_name, readings = %layout, "database ready");

    let password = Uuid::new_v4().simple().to_string()[..16].to_owned();
    let pepper = Secret::new(secret());
    let hash = {
        let p = password.clone();
        let hasher = api::password::PasswordHasher::new(pepper.clone())
            .map_err(|e| DemoError::Hash(e.to_string()))?;
        tokio::task::spawn_blocking(move || hasher.hash(&p))
            .await
            .map_err(|e| DemoError::Hash(e.to_string()))?
            .map_err(|e| DemoError::Hash(e.to_string()))?
    };
    let seeded = seed_plant(&urls.app_url, DEMO_TENANT_SLUG, &hash).await?;
    seed_oven(&urls.app_url, seeded.tenant).await?;

    let (embedded, broker_url) = match &options.broker {
        Some(url) => (None, url.clone()),
        None => {
            let b = EmbeddedBroker::start()?;
            let url = b.url();
            (Some(b), url)
        }
    };
    tracing::info!(broker = %broker_url, embedded = embedded.is_some(), "MQTT broker ready");

    let listen = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(l) => {
            drop(l);
            options.listen
        }
        Err(e) => {
            tracing::warn!(addr = %options.listen, error = %e, "API address busy; using a free port");
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    };
    // The demo's attachments go to a directory removed when it ends.
    let files_dir = tempfile::tempdir().map_err(DemoError::Plc)?;
    let mut api = ApiConfig::new(listen, Secret::new(secret()), pepper);
    api.attachments_dir = files_dir.path().join("attachments");
    let config = ServerConfig {
        roles: vec![Role::Api, Role::Ingest, Role::Rules],
        database: DatabaseConfig {
            url: urls.app_url.clone(),
            owner_url: None,
            max_connections: 8,
            list_connections: 4,
        },
        api: Some(api),
        ingest: Some(IngestConfig::new(broker_url.clone())),
        rules: RulesConfig::default(),
        metrics: MetricsConfig::default(),
    };
    let services = Services::start(&config, Some(rules)).await?;
    if !services.ingest_subscribed(Duration::from_secs(30)).await {
        tracing::warn!("ingest has not subscribed yet; starting the plant anyway");
    }

    let plc = spawn_modbus_plc(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        demo_scenario(options.breach_after)?,
    )
    .await
    .map_err(DemoError::Plc)?;
    tracing::info!(addr = %plc.local_addr(), breach_after = ?options.breach_after, "simulated press PLC running");
    let outbox_dir = tempfile::tempdir().map_err(DemoError::Plc)?;
    let oven = simulators::opcua::spawn_opcua_server(
        simulators::opcua::OpcUaServerSpec::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            outbox_dir.path().join("oven-pki"),
        ),
        oven_scenario()?,
    )
    .await
    .map_err(|e| DemoError::Plc(std::io::Error::other(e)))?;
    tracing::info!(endpoint = %oven.endpoint(), "simulated oven OPC-UA server running");
    let mut agent_text = agent_config(
        seeded.tenant,
        &broker_url,
        plc.local_addr(),
        &outbox_dir.path().join("outbox"),
    );
    agent_text.push_str(&oven_source(
        &oven.endpoint(),
        oven.namespace(),
        &outbox_dir.path().join("agent-pki"),
    ));
    let agent_config = AgentConfig::from_toml_with_env("demo edge agent", &agent_text, Vec::new())
        .map_err(|e| DemoError::BuiltIn {
            what: "edge agent configuration",
            detail: e.to_string(),
        })?;
    let stop_agent = tokio_util::sync::CancellationToken::new();
    let agent = {
        let stop = stop_agent.clone();
        tokio::spawn(Agent::build(agent_config).run_until(async move { stop.cancelled().await }))
    };

    let api_addr = services.api_addr().unwrap_or(listen);
    on_ready(&DemoAccess {
        api_url: format!("http://{api_addr}"),
        tenant: DEMO_TENANT_SLUG.to_owned(),
        email: DEMO_EMAIL.to_owned(),
        password,
    });

    let mut status = tokio::time::interval(Duration::from_secs(5));
    status.tick().await;
    tokio::pin!(shutdown);
    let mut role_ended = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = services.ended() => {
                role_ended = true;
                break;
            }
            _ = status.tick() => {
                let s = services.summary();
                tracing::info!(
                    readings_stored = s.readings_stored,
                    alarms_raised = s.alarms_raised,
                    work_orders_opened = s.work_orders_opened,
                    "plant status"
                );
            }
        }
    }

    tracing::info!("stopping the demo");
    stop_agent.cancel();
    match agent.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "edge agent stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "edge agent task failed"),
        Ok(Ok(())) => {}
    }
    if let Err(e) = plc.shutdown().await {
        tracing::warn!(error = %e, "simulated PLC stopped with an error");
    }
    if let Err(e) = oven.shutdown().await {
        tracing::warn!(error = %e, "simulated oven stopped with an error");
    }
    let summary = services.stop().await;
    match cluster {
        Some(c) => c.stop().await,
        None => drop_database(&admin_url, &db_name).await,
    }
    if role_ended {
        return Err(DemoError::RoleEnded);
    }
    Ok(summary)
}

/// Removes the demo database from a cluster the demo did not start.
async fn drop_database(admin_url: &str, db_name: &str) {
    let result = async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
        ))
        .execute(&pool)
        .await?;
        pool.close().await;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(database = db_name, error = %e, "could not drop the demo database");
    }
}
