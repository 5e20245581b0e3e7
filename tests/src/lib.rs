//! End-to-end test harness for MaintAInPro.
//!
//! # Layout
//! - [`mqtt_url`]: the broker the tests talk to (Mosquitto, started by `scripts/test.sh`).
//! - [`Plant`]: a fresh database with a seeded demo plant and the server's services running
//!   against it, plus helpers to log in and call the API.
//! - [`series`], [`demo_batch`], [`publish_all`]: readings as a gateway publishes them.
//!
//! Tests built on this harness use real services only: PostgreSQL, an MQTT broker, the
//! simulated PLC and the edge agent. Each test owns its database, its tenants and its MQTT
//! client ids.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use api::ApiConfig;
use api::config::Secret;
use ingest::IngestConfig;
use migrations::testing::TestDatabase;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use server::config::{DatabaseConfig, MetricsConfig, Role, RulesConfig};
use server::demo::{DEMO_RULES, SeededPlant, seed_plant};
use server::{ServerConfig, Services};
use uuid::Uuid;

/// `n` good-quality readings of `tag`, `step_micros` apart from `from_micros`, the i-th
/// valued `value(i)`.
pub fn series(
    tag: &str,
    from_micros: i64,
    step_micros: i64,
    n: i64,
    value: impl Fn(i64) -> f64,
) -> anyhow::Result<Vec<model::Reading>> {
    let tag = model::TagName::parse(tag)?;
    Ok((0..n)
        .map(|i| model::Reading {
            tag: tag.clone(),
            ts: model::Timestamp::from_micros(from_micros + i * step_micros),
            value: value(i),
            quality: model::Quality::Good,
        })
        .collect())
}

/// `readings` as the demo gateway's batch number `seq`, encoded as edge agents publish it.
pub fn demo_batch(seq: u64, readings: &[model::Reading]) -> anyhow::Result<Vec<u8>> {
    let gateway = model::GatewayId::parse(server::demo::DEMO_GATEWAY)?;
    Ok(model::wire::Batch::from_readings(gateway, seq, readings).encode())
}

/// The environment variable naming the test broker.
pub const MQTT_URL_VAR: &str = "MPTEST_MQTT_URL";

/// On a broker whose accounts the dynamic-security plugin keeps, a client `(user, password)`
/// (its client id the user name) with a role of its own allowed to subscribe to `patterns`.
pub fn broker_account(
    broker: &simulators::mosquitto::PrivateBroker,
    (user, password): (&str, &str),
    role: &str,
    patterns: &[&str],
) -> anyhow::Result<()> {
    broker.dynsec(&["createRole", role])?;
    for pattern in patterns {
        broker.dynsec(&["addRoleACL", role, "subscribePattern", pattern, "allow"])?;
    }
    broker.dynsec(&["createClient", user, "-c", user, "-p", password])?;
    broker.dynsec(&["addClientRole", user, role])?;
    Ok(())
}

/// The test broker's URL. Tests need a real broker; `scripts/test.sh` starts Mosquitto.
pub fn mqtt_url() -> anyhow::Result<String> {
    std::env::var(MQTT_URL_VAR).with_context(|| {
        format!(
            "{MQTT_URL_VAR} is not set: run the suite with scripts/test.sh, which starts Mosquitto"
        )
    })
}

pub const PASSWORD: &str = "correct horse battery staple";

/// The seeded tenants, for a configuration made before the server starts.
#[derive(Debug, Clone, Copy)]
pub struct Plant0 {
    pub tenant_a: Uuid,
    pub tenant_b: Uuid,
}

/// A database with two seeded tenants and the server running against it.
#[derive(Debug)]
pub struct Plant {
    pub db: TestDatabase,
    pub services: Services,
    pub tenant_a: SeededPlant,
    pub tenant_b: SeededPlant,
    pub broker: String,
    pub api: String,
    pub http: reqwest::Client,
    config: ServerConfig,
    /// Holds the plant's attachment directory until the plant is dropped.
    _files: tempfile::TempDir,
}

impl Plant {
    /// Seeds tenants "plant-a" and "plant-b" (same layout) and starts api, ingest and rules.
    pub async fn start() -> anyhow::Result<Plant> {
        Self::start_with_queue(IngestConfig::new("mqtt://unused").queue).await
    }

    /// As [`Plant::start`], with ingest's message queue of the given length.
    pub async fn start_with_queue(queue: usize) -> anyhow::Result<Plant> {
        Self::start_with(queue, Vec::new(), |_| {}, |_, _| {}).await
    }

    /// As [`Plant::start`], with the whole server configuration changed by `configure` after
    /// the tenants are seeded (e.g. another broker for ingest, with its login).
    pub async fn start_configured(
        configure: impl FnOnce(&Plant0, &mut ServerConfig),
    ) -> anyhow::Result<Plant> {
        Self::start_with(
            IngestConfig::new("mqtt://unused").queue,
            Vec::new(),
            |_| {},
            configure,
        )
        .await
    }

    /// As [`Plant::start`], with the API's settings changed by `configure` (e.g. lower rate
    /// limits).
    pub async fn start_with_api(configure: impl FnOnce(&mut ApiConfig)) -> anyhow::Result<Plant> {
        Self::start_with(
            IngestConfig::new("mqtt://unused").queue,
            Vec::new(),
            configure,
            |_, _| {},
        )
        .await
    }

    /// As [`Plant::start`], with the rules read (and watched) from `rule_files`.
    pub async fn start_with_rule_files(rule_files: Vec<PathBuf>) -> anyhow::Result<Plant> {
        Self::start_with(
            IngestConfig::new("mqtt://unused").queue,
            rule_files,
            |_| {},
            |_, _| {},
        )
        .await
    }

    async fn start_with(
        queue: usize,
        rule_files: Vec<PathBuf>,
        configure: impl FnOnce(&mut ApiConfig),
        configure_server: impl FnOnce(&Plant0, &mut ServerConfig),
    ) -> anyhow::Result<Plant> {
        // HTTP clients here and in the API use rustls with ring, installed once per process.
        api::webhooks::install_tls_provider();
        let broker = mqtt_url()?;
        let db = TestDatabase::create().await?;
        let pepper = Secret::new(Uuid::new_v4().simple().to_string().repeat(2));
        let hash = hash_password(&pepper, PASSWORD)?;
        let tenant_a = seed_plant(&db.urls.app_url, "plant-a", &hash).await?;
        let tenant_b = seed_plant(&db.urls.app_url, "plant-b", &hash).await?;
        let mut api = ApiConfig::new(
            "127.0.0.1:0".parse()?,
            Secret::new(format!(
                "{}{}",
                Uuid::new_v4().simple(),
                Uuid::new_v4().simple()
            )),
            pepper,
        );
        // Attachments go to a directory of this plant's own, removed with it.
        let files = tempfile::tempdir()?;
        api.attachments_dir = files.path().join("attachments");
        configure(&mut api);
        let config = ServerConfig {
            roles: vec![Role::Api, Role::Ingest, Role::Rules],
            database: DatabaseConfig {
                url: db.urls.app_url.clone(),
                owner_url: None,
                max_connections: 5,
                list_connections: 2,
            },
            api: Some(api),
            // Tests share one broker: each ingest takes only its own tenants' topics.
            ingest: Some(IngestConfig {
                client_id: format!("ingest-{}", Uuid::new_v4().simple()),
                subscribe: [tenant_a.tenant, tenant_b.tenant]
                    .iter()
                    .flat_map(|t| {
                        let tenant = format!("{}/{t}/+/readings", model::topic::PREFIX);
                        let mut filters = vec![format!("{tenant}/json"), tenant];
                        filters.extend(model::sparkplug::host_filters(&t.to_string(), "+"));
                        filters
                    })
                    .collect(),
                queue,
                ..IngestConfig::new(broker.clone())
            }),
            rules: RulesConfig {
                files: rule_files,
                ..RulesConfig::default()
            },
            metrics: MetricsConfig::default(),
        };
        let mut config = config;
        configure_server(
            &Plant0 {
                tenant_a: tenant_a.tenant,
                tenant_b: tenant_b.tenant,
            },
            &mut config,
        );
        let broker = config
            .ingest
            .as_ref()
            .map_or(broker, |ingest| ingest.broker.clone());
        let (services, api) = start_services(&config).await?;
        Ok(Plant {
            db,
            services,
            tenant_a,
            tenant_b,
            broker,
            api,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            config,
            _files: files,
        })
    }

    /// Stops the services (as a deployment would) and starts them again on the same
    /// database, with the same ingest client id (its persistent session keeps what the broker
    /// queued meanwhile). Returns the plant and what the stopped services did.
    pub async fn restart(self) -> anyhow::Result<(Plant, server::services::Summary)> {
        self.restart_after(async { Ok(()) }).await
    }

    /// As [`Plant::restart`], running `while_stopped` between the stop and the start: to
    /// publish what the broker keeps for ingest meanwhile.
    pub async fn restart_after(
        self,
        while_stopped: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<(Plant, server::services::Summary)> {
        let summary = self.services.stop().await;
        while_stopped.await?;
        let (services, api) = start_services(&self.config).await?;
        Ok((
            Plant {
                services,
                api,
                ..self
            },
            summary,
        ))
    }

    /// The id of the seeded tag `name` of tenant `tenant` (e.g. "press-1.bearing_temp").
    pub async fn tag_id(&self, tenant: Uuid, name: &str) -> anyhow::Result<i64> {
        self.id_by_name(tenant, "SELECT id FROM tags WHERE name = $1", name)
            .await
    }

    /// The id of the seeded asset `name` of tenant `tenant` (e.g. "Press 1").
    pub async fn asset_id(&self, tenant: Uuid, name: &str) -> anyhow::Result<Uuid> {
        self.id_by_name(tenant, "SELECT id FROM assets WHERE name = $1", name)
            .await
    }

    async fn id_by_name<T>(&self, tenant: Uuid, sql: &str, name: &str) -> anyhow::Result<T>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        let pool = self.db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        let id = sqlx::query_scalar(sql)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Adds a user of tenant `plant-a` with `role` and the password [`PASSWORD`].
    pub async fn add_user(&self, email: &str, role: &str) -> anyhow::Result<Uuid> {
        let pool = self.db.app_pool().await;
        let tenant = self.tenant_a.tenant;
        let id = Uuid::new_v4();
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        sqlx::query(
            "INSERT INTO users (id, tenant_id, email, display_name, password_hash, role)
             VALUES ($1, $2, $3, 'Test user', $4, $5)",
        )
        .bind(id)
        .bind(tenant)
        .bind(email)
        .bind(self.hash(PASSWORD)?)
        .bind(role)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Opens a work order of tenant `plant-a` the way the rules engine does: a raised alarm of
    /// rule `press-bearing-overheat` on `press-1.bearing_temp` (priority high).
    pub async fn rule_work_order(&self) -> anyhow::Result<Uuid> {
        use model::alarm::{AlarmEvent, AlarmSubject, WorkOrderDraft, WorkType};
        let tenant = self.tenant_a.tenant;
        let pool = self.db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        let (tag_id, asset): (i64, Uuid) =
            sqlx::query_as("SELECT id, asset_id FROM tags WHERE name = 'press-1.bearing_temp'")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        let event = AlarmEvent::Raised {
            subject: AlarmSubject {
                tenant: model::TenantId::from_uuid(tenant),
                asset: model::AssetId::from_uuid(asset),
                tag_id,
                tag: model::TagName::parse("press-1.bearing_temp")?,
                rule_id: "press-bearing-overheat".into(),
                failure_mode: "bearing-overheat".into(),
                severity: model::Severity::High,
            },
            at: model::Timestamp::now(),
            value: 91.0,
            work_order: WorkOrderDraft {
                title: "Bearing overheating on Press 1".into(),
                description: String::new(),
                work_type: WorkType::Corrective,
                priority: model::Priority::High,
                checklist: Vec::new(),
                repeat_window: Duration::from_secs(86_400),
            },
        };
        match api::WorkOrderService::new(pool).on_alarm(&event).await? {
            api::AlarmOutcome::Created { work_order } => Ok(work_order),
            other => bail!("expected a new work order, got {other:?}"),
        }
    }

    /// A password hash this plant's API accepts (hashed with its pepper).
    pub fn hash(&self, password: &str) -> anyhow::Result<String> {
        let api = self.config.api.as_ref().context("the plant runs the API")?;
        hash_password(&api.password_pepper, password)
    }

    /// The password hasher of this plant's API (its pepper), as `maintainpro admin` builds it.
    pub fn password_hasher(&self) -> anyhow::Result<api::password::PasswordHasher> {
        let api = self.config.api.as_ref().context("the plant runs the API")?;
        Ok(api::password::PasswordHasher::new(
            api.password_pepper.clone(),
        )?)
    }

    /// Logs in as the admin of tenant `slug` and returns the access token.
    pub async fn login(&self, slug: &str) -> anyhow::Result<String> {
        self.login_as(slug, server::demo::DEMO_EMAIL).await
    }

    /// `GET path` with an optional bearer token: status and JSON body.
    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    /// Logs in as `email` of tenant `slug` (password [`PASSWORD`]) and returns the token.
    pub async fn login_as(&self, slug: &str, email: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({ "tenant": slug, "email": email, "password": PASSWORD });
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
            )
            .await?;
        if status != 200 {
            bail!("login as {email} of {slug} failed: {status} {body}");
        }
        Ok(body["access_token"]
            .as_str()
            .context("token in response")?
            .to_owned())
    }

    /// A CSV upload (an import) with a bearer token: status and JSON body.
    pub async fn post_csv(
        &self,
        token: &str,
        path: &str,
        csv: &str,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let res = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(csv.to_owned())
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// A request with a JSON body that must succeed (2xx): its JSON answer.
    pub async fn send_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, answer) = self
            .send(method.clone(), path, Some(token), Some(body))
            .await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        Ok(answer)
    }

    /// Any request with an optional bearer token and JSON body: status and JSON body.
    /// Creates an API key named "gateway" with `scopes` as the admin of `token`; answers its
    /// text (shown once) and id.
    pub async fn new_api_key(
        &self,
        token: &str,
        scopes: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/api-keys",
                Some(token),
                Some(serde_json::json!({ "name": "gateway", "scopes": scopes })),
            )
            .await?;
        anyhow::ensure!(
            status == 201,
            "creating an API key answered {status}: {body}"
        );
        Ok((text(&body, "key")?, text(&body, "id")?))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// Waits (at most 20 s) until a statement in the plant's database waits for a lock, such
    /// as one a test holds: `what` names it in the error.
    pub async fn until_one_waits_for_a_lock(&self, what: &str) -> anyhow::Result<()> {
        let (admin_url, db_name) = (self.db.admin_url(), self.db.name.as_str());
        Self::eventually(Duration::from_secs(20), what, || async {
            let waiting = waiting_for_locks(admin_url, db_name).await?;
            Ok((waiting > 0).then_some(()))
        })
        .await
    }

    /// Polls `check` every 250 ms until it returns `Some`, or fails after `within`.
    pub async fn eventually<T, F, Fut>(
        within: Duration,
        what: &str,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Starts the services with the configured rule files, or the demo rules when there are none;
/// returns them and the API's base URL once ingest's subscription is confirmed.
async fn start_services(config: &ServerConfig) -> anyhow::Result<(Services, String)> {
    let rules = if config.rules.files.is_empty() {
        rules::RuleSet::parse("demo.toml", DEMO_RULES)
            .map_err(|d| anyhow::anyhow!("demo rules: {d:?}"))?
    } else {
        server::services::load_rule_files(&config.rules.files)?
    };
    let services = Services::start(config, Some(rules)).await?;
    let api = format!("http://{}", services.api_addr().context("api role runs")?);
    anyhow::ensure!(
        services.ingest_subscribed(Duration::from_secs(20)).await,
        "ingest's subscription was not confirmed within 20 s"
    );
    Ok((services, api))
}

/// A connection (as `url`, the owner's to lock any table) holding `LOCK TABLE {table} IN
/// {mode} MODE` in an open transaction: whatever needs the table in a conflicting mode waits
/// until the connection commits or closes.
pub async fn lock_table(url: &str, table: &str, mode: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query("BEGIN").execute(&mut conn).await?;
    sqlx::query(&format!("LOCK TABLE {table} IN {mode} MODE"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// How many backends of database `db_name` wait for a lock, seen through the cluster's
/// superuser (`admin_url`, which sees every role's backends).
pub async fn waiting_for_locks(admin_url: &str, db_name: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    let waiting = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1",
    )
    .bind(db_name)
    .fetch_one(&mut admin)
    .await?;
    admin.close().await?;
    Ok(waiting)
}

/// Publishes raw payloads with QoS 1 and waits for every PUBACK.
pub async fn publish_all(broker: &str, topic: &str, payloads: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let (host, port) = model::topic::broker_address(broker)?;
    let mut options =
        MqttOptions::new(format!("pub-{}", uuid::Uuid::new_v4().simple()), host, port);
    options.set_max_packet_size(2 << 20, 2 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let n = payloads.len();
    // The event loop must run while publishing: it is what drains the request channel.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                acked += 1;
            }
        }
        anyhow::Ok(eventloop)
    });
    for p in payloads {
        client.publish(topic, QoS::AtLeastOnce, false, p).await?;
    }
    let mut eventloop = tokio::time::timeout(Duration::from_secs(30), acks).await???;
    client.disconnect().await?;
    // Let the DISCONNECT go out before the connection is dropped.
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    Ok(())
}

fn hash_password(pepper: &Secret, password: &str) -> anyhow::Result<String> {
    api::password::PasswordHasher::new(pepper.clone())?
        .hash(password)
        .map_err(Into::into)
}

/// The text of `key` in a JSON answer; an error naming the key and the answer otherwise.
pub fn text(v: &serde_json::Value, key: &str) -> anyhow::Result<String> {
    Ok(v[key]
        .as_str()
        .with_context(|| format!("{key} in {v}"))?
        .to_owned())
}

/// The fields an error answer's `details` name, in order (none when it has no details).
pub fn error_fields(body: &serde_json::Value) -> Vec<&str> {
    body["error"]["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default()
}

/// A local SMTP sink for the tests of mail: accepts every message on 127.0.0.1 and keeps it.
pub mod smtp {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use api::config::SmtpSettings;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// `[api.smtp]` settings that deliver to the sink on `port`, polled every 100 ms.
    pub fn settings(port: u16) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: Some(port),
            tls: "none".into(),
            from: "MaintAInPro <cmms@plant-a.example>".into(),
            username: None,
            password: None,
            poll: Duration::from_millis(100),
        }
    }

    /// A message the sink received: its recipients and its data.
    #[derive(Debug, Clone)]
    pub struct Mail {
        pub to: Vec<String>,
        pub data: String,
    }

    /// An SMTP server on 127.0.0.1 that accepts every message and keeps it; returns its port.
    pub async fn smtp_sink(mails: Arc<Mutex<Vec<Mail>>>) -> anyhow::Result<u16> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let mails = Arc::clone(&mails);
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                    let mut to = Vec::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let answer: &[u8] =
                            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                                b"250-sink\r\n250 8BITMIME\r\n"
                            } else if upper.starts_with("RCPT TO:") {
                                to.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                                b"250 OK\r\n"
                            } else if upper.starts_with("DATA") {
                                let _ = write.write_all(b"354 go on\r\n").await;
                                let mut data = String::new();
                                while let Ok(Some(l)) = lines.next_line().await {
                                    if l == "." {
                                        break;
                                    }
                                    data.push_str(&l);
                                    data.push('\n');
                                }
                                mails.lock().expect("lock").push(Mail {
                                    to: std::mem::take(&mut to),
                                    data,
                                });
                                b"250 queued\r\n"
                            } else if upper.starts_with("QUIT") {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                break;
                            } else {
                                b"250 OK\r\n"
                            };
                        if write.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(port)
    }
}
