//! The I/O of gateway keys' broker accounts ([`crate::broker_accounts`]): commands sent to
//! Mosquitto's dynamic-security plugin over MQTT, and the reconciler task.
//!
//! Each exchange is one short connection (clean session, a random client id suffix): connect
//! with the plugin admin's login, subscribe to the answers, publish the commands, wait for the
//! answers that carry this exchange's correlation. Key changes are rare, so a connection per
//! exchange costs nothing and never leaves a stale session behind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::broker_accounts::{
    self, Answer, Command, KeyState, Memory, Pass, Refusal, Request, Responses,
};
use crate::config::BrokerAccountsSettings;

/// Why an exchange with the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerAdminError {
    #[error("api.broker_accounts.broker {0:?} is not mqtt://host[:port] or mqtts://host[:port]")]
    BadBroker(String),
    #[error("TLS of api.broker_accounts: {0}")]
    Tls(String),
    #[error("cannot reach the broker {broker}: {detail}")]
    Unreachable { broker: String, detail: String },
    #[error(
        "the broker {broker} refused the login of api.broker_accounts ({code}): check username and password"
    )]
    LoginRefused { broker: String, code: String },
    #[error(
        "the broker {broker} did not answer within {timeout:?}: is Mosquitto's dynamic-security plugin loaded, and does api.broker_accounts.username hold its admin role?"
    )]
    NoAnswer { broker: String, timeout: Duration },
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Accounts listed per exchange, and removed per exchange: each message stays far below the
/// packet limit ([`MAX_PACKET`]).
const PAGE: usize = 500;
/// The largest MQTT packet either way: a page of names, or of commands.
const MAX_PACKET: usize = 1024 * 1024;

/// Sends commands to the dynamic-security plugin of one broker.
#[derive(Debug, Clone)]
pub struct BrokerAdmin {
    settings: BrokerAccountsSettings,
}

impl BrokerAdmin {
    pub fn new(settings: BrokerAccountsSettings) -> Self {
        Self { settings }
    }

    pub fn settings(&self) -> &BrokerAccountsSettings {
        &self.settings
    }

    /// A correlation unique to one exchange: `<nonce>-<n>`.
    fn correlations() -> impl FnMut() -> String {
        let nonce = Uuid::new_v4().simple().to_string();
        let mut n = 0u32;
        move || {
            n += 1;
            format!("{nonce}-{n}")
        }
    }

    /// Gives key `key` of `tenant` (whose whole text is `text`) its broker account.
    pub async fn provision(
        &self,
        tenant: Uuid,
        key: Uuid,
        key_name: &str,
        text: &str,
    ) -> Result<(), BrokerAdminError> {
        let commands =
            broker_accounts::provision(tenant, key, key_name, text, &mut Self::correlations());
        let answers = self.exchange(&commands).await?;
        broker_accounts::check(&commands, &answers)?;
        metrics::counter!("maintainpro_broker_accounts_created_total").increment(1);
        Ok(())
    }

    /// Removes the accounts named; an account that is gone already is no error.
    pub async fn remove(&self, usernames: &[String]) -> Result<(), BrokerAdminError> {
        if usernames.is_empty() {
            return Ok(());
        }
        for chunk in usernames.chunks(PAGE) {
            let mut correlation = Self::correlations();
            let commands: Vec<Command> = chunk
                .iter()
                .map(|username| Command::DeleteClient {
                    username: username.clone(),
                    correlation: correlation(),
                })
                .collect();
            let answers = self.exchange(&commands).await?;
            broker_accounts::check(&commands, &answers)?;
            metrics::counter!("maintainpro_broker_accounts_removed_total")
                .increment(chunk.len() as u64);
        }
        Ok(())
    }

    /// Every account of the plugin, by user name, a page at a time.
    pub async fn list(&self) -> Result<Vec<String>, BrokerAdminError> {
        let mut all = Vec::new();
        loop {
            let commands = [Command::ListClients {
                verbose: false,
                count: PAGE as i64,
                offset: all.len() as i64,
                correlation: Self::correlations()(),
            }];
            let answers = self.exchange(&commands).await?;
            broker_accounts::check(&commands, &answers)?;
            let (page, total) = broker_accounts::listed_clients(&answers[0])?;
            let last = page.len() < PAGE || all.len() + page.len() >= total;
            all.extend(page);
            if last {
                return Ok(all);
            }
        }
    }

    fn options(&self) -> Result<MqttOptions, BrokerAdminError> {
        let s = &self.settings;
        let endpoint = model::topic::broker_endpoint(&s.broker)
            .map_err(|_| BrokerAdminError::BadBroker(s.broker.clone()))?;
        let mut suffix = [0u8; 4];
        OsRng.fill_bytes(&mut suffix);
        let client_id = format!("{}-{}", s.client_id, hex(&suffix));
        let mut options = MqttOptions::new(client_id, endpoint.host, endpoint.port);
        if endpoint.tls {
            let tls = mqtt_tls::client_config(&s.tls_files())
                .map_err(|e| BrokerAdminError::Tls(format!("{}: {e}", e.key())))?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_credentials(&s.username, s.password.expose());
        Ok(options)
    }

    /// Sends `commands` and answers their answers (in no particular order), once every
    /// command has one (the last answer to a command counts).
    #[tracing::instrument(skip_all, fields(broker = %self.settings.broker, commands = commands.len()))]
    pub async fn exchange(&self, commands: &[Command]) -> Result<Vec<Answer>, BrokerAdminError> {
        let options = self.options()?;
        let payload = serde_json::to_vec(&Request { commands })
            .expect("commands are strings, numbers and booleans");
        let wanted: HashSet<&str> = commands.iter().map(Command::correlation).collect();
        let broker = self.settings.broker.clone();
        let (client, mut events) = AsyncClient::new(options, 8);
        let work = async {
            let mut answers: HashMap<String, Answer> = HashMap::new();
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            return Err(BrokerAdminError::LoginRefused {
                                broker: broker.clone(),
                                code: format!("{:?}", ack.code),
                            });
                        }
                        client
                            .subscribe(broker_accounts::RESPONSE_TOPIC, QoS::AtLeastOnce)
                            .await
                            .map_err(|e| unreachable(&broker, e))?;
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack
                            .return_codes
                            .contains(&rumqttc::SubscribeReasonCode::Failure)
                        {
                            return Err(BrokerAdminError::Refused(Refusal {
                                command: "subscribe",
                                error: format!(
                                    "{} may not read the plugin's answers: give it the plugin's admin role",
                                    self.settings.username
                                ),
                            }));
                        }
                        client
                            .publish(
                                broker_accounts::CONTROL_TOPIC,
                                QoS::AtLeastOnce,
                                false,
                                payload.clone(),
                            )
                            .await
                            .map_err(|e| unreachable(&broker, e))?;
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if p.topic == broker_accounts::RESPONSE_TOPIC =>
                    {
                        // Answers to other admins' commands arrive here too: only ours count.
                        let Ok(responses) = serde_json::from_slice::<Responses>(&p.payload) else {
                            continue;
                        };
                        for answer in responses.responses {
                            if let Some(c) = answer.correlation.clone()
                                && wanted.contains(c.as_str())
                            {
                                answers.insert(c, answer);
                            }
                        }
                        if answers.len() == wanted.len() {
                            return Ok(answers.into_values().collect::<Vec<_>>());
                        }
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        return Err(BrokerAdminError::LoginRefused {
                            broker: broker.clone(),
                            code: format!("{code:?}"),
                        });
                    }
                    Err(e) => return Err(unreachable(&broker, e)),
                }
            }
        };
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(timeout, work).await;
        // A polite goodbye, briefly; the broker drops the connection anyway.
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while let Ok(event) = events.poll().await {
                    if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        match result {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(e)) => {
                metrics::counter!("maintainpro_broker_accounts_errors_total").increment(1);
                Err(e)
            }
            Err(_) => {
                metrics::counter!("maintainpro_broker_accounts_errors_total").increment(1);
                Err(BrokerAdminError::NoAnswer {
                    broker: self.settings.broker.clone(),
                    timeout,
                })
            }
        }
    }
}

fn unreachable(broker: &str, e: impl std::fmt::Display) -> BrokerAdminError {
    BrokerAdminError::Unreachable {
        broker: broker.to_owned(),
        detail: e.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Broker(#[from] BrokerAdminError),
    #[error("reading the API keys: {0}")]
    Database(#[from] sqlx::Error),
}

/// Every organisation, and every key of theirs that holds (or held) the scope
/// `readings:publish`, with whether it is live.
async fn publishing_keys(
    pool: &PgPool,
) -> Result<(HashSet<Uuid>, HashMap<(Uuid, Uuid), KeyState>), sqlx::Error> {
    // Tenants' ids are readable across tenants; each tenant's keys only under its own.
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(pool)
        .await?;
    let mut keys = HashMap::new();
    for &tenant in &tenants {
        let mut tx = migrations::begin_tenant(pool, tenant).await?;
        let rows: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT id, revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
             FROM api_keys WHERE tenant_id = $1 AND 'readings:publish' = ANY (scopes)",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (id, live) in rows {
            let state = if live { KeyState::Live } else { KeyState::Dead };
            keys.insert((tenant, id), state);
        }
    }
    Ok((tenants.into_iter().collect(), keys))
}

/// One pass: accounts listed first, keys read afterwards (so that a key committed in between
/// is seen), then the plan carried out. Answers what the next pass must remember.
async fn reconcile(
    pool: &PgPool,
    admin: &BrokerAdmin,
    before: &Memory,
) -> Result<Memory, ReconcileError> {
    let accounts = admin.list().await?;
    let (tenants, keys) = publishing_keys(pool).await?;
    // The row of a key being created commits right after its account is made (within the
    // exchange's timeout); two intervals more leave a slow commit ample room.
    let grace = admin.settings.timeout + 2 * admin.settings.reconcile;
    let (plan, memory) = broker_accounts::plan(
        Pass {
            accounts: &accounts,
            keys: &keys,
            tenants: &tenants,
        },
        before,
        std::time::Instant::now(),
        grace,
    );
    if !plan.remove.is_empty() {
        admin.remove(&plan.remove).await?;
        tracing::info!(accounts = ?plan.remove, "broker accounts of revoked, expired or unknown API keys removed");
    }
    for (tenant, key) in &plan.missing {
        tracing::warn!(
            %tenant,
            api_key = %key,
            "the API key with readings:publish has no broker account (the broker's account \
             store was lost or edited): its gateway cannot connect; rotate the key"
        );
    }
    metrics::gauge!("maintainpro_broker_accounts_missing").set(plan.missing.len() as f64);
    Ok(memory)
}

/// Reconciles every `reconcile` interval until `closing` turns true.
pub async fn run(pool: PgPool, admin: Arc<BrokerAdmin>, mut closing: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(admin.settings.reconcile);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = closing.changed() => {
                if changed.is_err() || *closing.borrow() {
                    return;
                }
                continue;
            }
        }
        match reconcile(&pool, &admin, &memory).await {
            Ok(next) => memory = next,
            Err(e) => {
                tracing::warn!(error = %e, "reconciling gateway keys' broker accounts failed; retrying at the next interval");
            }
        }
    }
}
