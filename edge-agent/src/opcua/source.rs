//! The task that reads one OPC-UA server and hands its readings to the agent.
//!
//! A source connects (choosing the server's endpoint that matches the configured security
//! policy and mode), then either subscribes (one monitored item per tag) or polls (one Read
//! of every tag per interval). The client library reconnects a lost session by itself and
//! restores its subscriptions; the source does not trust that alone:
//!
//! - a [`Watchdog`] rebuilds a subscription that delivered neither data nor a keep-alive
//!   within its bound, whatever the session says;
//! - a session whose event loop gave up is dropped and a new client connects from scratch,
//!   with backoff;
//! - every stop of the data is marked once with a bad reading per tag ([`GapMarker`]).
//!
//! Notifications travel from the library's callback to the source over a bounded channel;
//! should it fill (the agent stalled), the values that do not fit are counted as dropped.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use model::{GatewayId, Reading, TagName, Timestamp};
use opcua::client::{
    Client, ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore,
    Session, SessionPollResult,
};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue,
    DeadbandType, EndpointDescription, ExtensionObject, MessageSecurityMode,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NotificationMessage,
    ReadValueId, StatusChangeNotification, StatusCode, TimestampsToReturn, UserTokenPolicy,
    UserTokenType, match_extension_object_owned,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{Mode, OpcUaSourceConfig, OpcUaTagConfig, SecurityMode, SecurityPolicy};
use super::convert;
use super::watchdog::{GapMarker, Watchdog};
use crate::agent::{AgentStats, Chunk};
use crate::exception::ExceptionFilter;
use crate::modbus::decode::Scaling;
use crate::modbus::line::Sample;

/// Notification messages waiting for the source; beyond, their values are dropped and counted.
const INBOX: usize = 256;
/// Most nodes asked for in one Read or CreateMonitoredItems request.
const NODES_PER_REQUEST: usize = 500;
/// Backoff between connection attempts: from the first to the last, doubling.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often tags with a deadband are checked for a due heartbeat.
const HEARTBEAT_TICK: Duration = Duration::from_secs(1);

/// Why a source could not connect or read.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    #[error("cannot set up the OPC-UA client: {0}")]
    Setup(String),
    #[error("{endpoint} is unreachable: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error(
        "{endpoint} offers no endpoint with security_policy = {policy:?} and security_mode = \
         {mode:?}; it offers {offered}; configure one of those"
    )]
    NoMatchingEndpoint {
        endpoint: String,
        policy: &'static str,
        mode: SecurityMode,
        offered: String,
    },
    #[error(
        "{endpoint} does not accept {login} logins on its {policy}/{mode:?} endpoint; \
         {hint}"
    )]
    LoginNotOffered {
        endpoint: String,
        login: &'static str,
        policy: &'static str,
        mode: SecurityMode,
        hint: &'static str,
    },
    #[error(
        "{endpoint}: the session did not open within {timeout:?} (wrong credentials, an untrusted certificate, or a busy server; the server's log says which)"
    )]
    SessionNotOpened { endpoint: String, timeout: Duration },
    #[error("{endpoint}: {service} failed: {detail}")]
    Service {
        endpoint: String,
        service: &'static str,
        detail: String,
    },
}

/// A configured tag, resolved.
#[derive(Debug, Clone)]
struct Tag {
    name: TagName,
    node: NodeId,
    scaling: Scaling,
    config: OpcUaTagConfig,
}

/// What the subscription callback passes on.
#[derive(Debug)]
enum Notice {
    /// Data or a keep-alive: the subscription is alive.
    Alive(Vec<(u32, DataValue)>),
    /// The server changed the subscription's state (for example, it timed out).
    Status(StatusCode),
}

/// The subscription callback: hands notification messages to the source, never blocking the
/// client's event loop.
struct Inbox {
    tx: mpsc::Sender<Notice>,
    source: String,
    stats: Arc<AgentStats>,
}

impl OnSubscriptionNotificationCore for Inbox {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let mut values = Vec::new();
        let mut status = None;
        for object in notification.notification_data.into_iter().flatten() {
            match_extension_object_owned!(object,
                v: DataChangeNotification => {
                    values.extend(
                        v.monitored_items
                            .into_iter()
                            .flatten()
                            .map(|n| (n.client_handle, n.value)),
                    );
                },
                v: StatusChangeNotification => {
                    status = Some(v.status);
                }
            )
        }
        let n = values.len();
        if self.tx.try_send(Notice::Alive(values)).is_err() && n > 0 {
            self.stats.count_dropped(n as u64);
            metrics::counter!("maintainpro_edge_opcua_values_dropped_total", "source" => self.source.clone()).increment(n as u64);
            tracing::warn!(source = %self.source, values = n, "the agent is not keeping up; values dropped");
        }
        if let Some(s) = status {
            let _ = self.tx.try_send(Notice::Status(s));
        }
    }
}

/// Session events the source acts on.
#[derive(Debug)]
enum SessionEvent {
    Lost(StatusCode),
    Reconnected,
    /// The event loop stopped: the client gave up or was closed.
    Ended(String),
}

/// One `[[opcua]]` source, ready to run.
#[derive(Debug)]
pub struct OpcUaSource {
    config: OpcUaSourceConfig,
    gateway: GatewayId,
    tags: Vec<Tag>,
    stats: Arc<AgentStats>,
}

impl OpcUaSource {
    /// A source for `config`; tags whose node id does not parse (validation refuses them)
    /// are left out with an error logged.
    pub fn new(config: OpcUaSourceConfig, gateway: GatewayId, stats: Arc<AgentStats>) -> Self {
        let tags = config
            .tag
            .iter()
            .filter_map(|t| match NodeId::from_str(&t.node) {
                Ok(node) => Some(Tag {
                    name: t.name.clone(),
                    node,
                    scaling: t.conversion().scaling(),
                    config: t.clone(),
                }),
                Err(e) => {
                    tracing::error!(tag = %t.name, node = %t.node, error = %e, "not a node id; tag left out");
                    None
                }
            })
            .collect();
        Self {
            config,
            gateway,
            tags,
            stats,
        }
    }

    fn endpoint(&self) -> &str {
        &self.config.endpoint
    }

    fn client(&self) -> Result<Client, OpcUaError> {
        let c = &self.config;
        let mut builder = ClientBuilder::new()
            .application_name("MaintAInPro edge agent")
            .application_uri(c.application_uri(&self.gateway))
            .product_uri("urn:maintainpro:edge-agent")
            .pki_dir(&c.pki_dir)
            .create_sample_keypair(c.is_secure() && c.certificate_file.is_none())
            .trust_server_certs(c.trust_server_certificate)
            // Reconnects after a lost connection are the library's, without a limit; the
            // source starts over when its event loop ends all the same.
            .session_retry_limit(-1)
            .session_retry_initial(BACKOFF_FIRST)
            .session_retry_max(BACKOFF_MAX)
            .request_timeout(c.timeout)
            .keep_alive_interval(c.timeout.max(Duration::from_secs(1)))
            .session_timeout(60_000)
            .session_name(format!("maintainpro-edge-{}-{}", self.gateway, c.name));
        if let (Some(cert), Some(key)) = (&c.certificate_file, &c.private_key_file) {
            builder = builder.certificate_path(cert).private_key_path(key);
        }
        builder
            .client()
            .map_err(|errors| OpcUaError::Setup(errors.join("; ")))
    }

    fn identity(&self) -> (IdentityToken, UserTokenType) {
        match (&self.config.username, &self.config.password) {
            (Some(user), Some(password)) => (
                IdentityToken::UserName(user.clone(), password.expose().to_owned().into()),
                UserTokenType::UserName,
            ),
            _ => (IdentityToken::Anonymous, UserTokenType::Anonymous),
        }
    }

    /// Connects and waits for the session to open.
    async fn connect(&self) -> Result<Connection, OpcUaError> {
        let mut client = self.client()?;
        let endpoint = self.endpoint().to_owned();
        let unreachable = |e: opcua::types::Error| OpcUaError::Unreachable {
            endpoint: endpoint.clone(),
            detail: e.to_string(),
        };
        let offered = tokio::time::timeout(
            self.config.timeout,
            client.get_server_endpoints_from_url(endpoint.as_str()),
        )
        .await
        .map_err(|_| OpcUaError::Unreachable {
            endpoint: endpoint.clone(),
            detail: format!("no answer within {:?}", self.config.timeout),
        })?
        .map_err(unreachable)?;
        let policy = crypto_policy(self.config.security_policy);
        let mode = message_mode(self.config.security_mode);
        let Some(chosen) = offered.iter().find(|e| {
            e.security_mode == mode
                && opcua::crypto::SecurityPolicy::from_uri(e.security_policy_uri.as_ref()) == policy
        }) else {
            return Err(OpcUaError::NoMatchingEndpoint {
                endpoint,
                policy: self.config.security_policy.as_str(),
                mode: self.config.security_mode,
                offered: describe(&offered),
            });
        };
        let (identity, token_type) = self.identity();
        let accepts = chosen
            .user_identity_tokens
            .iter()
            .flatten()
            .any(|t| t.token_type == token_type);
        if !accepts {
            let (login, hint) = match token_type {
                UserTokenType::Anonymous => (
                    "anonymous",
                    "set username and password for an account on the server",
                ),
                _ => (
                    "user name",
                    "leave username and password out to connect anonymously, or choose another endpoint",
                ),
            };
            return Err(OpcUaError::LoginNotOffered {
                endpoint,
                login,
                policy: self.config.security_policy.as_str(),
                mode: self.config.security_mode,
                hint,
            });
        }
        let wanted: EndpointDescription = (
            endpoint.as_str(),
            policy.to_uri(),
            mode,
            UserTokenPolicy {
                token_type,
                ..UserTokenPolicy::anonymous()
            },
        )
            .into();
        let (session, event_loop) = client
            .connect_to_matching_endpoint(wanted, identity)
            .await
            .map_err(unreachable)?;
        let (events_tx, events) = mpsc::channel(16);
        let driver = tokio::spawn(async move {
            let stream = event_loop.enter();
            tokio::pin!(stream);
            let end = loop {
                let event = match stream.next().await {
                    None => break "closed".to_owned(),
                    Some(Err(status)) => break status.to_string(),
                    Some(Ok(SessionPollResult::ConnectionLost(s))) => SessionEvent::Lost(s),
                    Some(Ok(SessionPollResult::Reconnected(_))) => SessionEvent::Reconnected,
                    Some(Ok(_)) => continue,
                };
                if events_tx.send(event).await.is_err() {
                    return;
                }
            };
            let _ = events_tx.send(SessionEvent::Ended(end)).await;
        });
        let connection = Connection {
            session,
            driver,
            events,
        };
        let opened = tokio::time::timeout(
            self.config.timeout,
            connection.session.wait_for_connection(),
        )
        .await;
        if !matches!(opened, Ok(true)) {
            connection.close(Duration::ZERO).await;
            return Err(OpcUaError::SessionNotOpened {
                endpoint,
                timeout: self.config.timeout,
            });
        }
        Ok(connection)
    }

    /// Reads every tag once: what `edge-agent read --once` prints.
    pub async fn read_once(&self) -> Result<Vec<Sample>, OpcUaError> {
        let connection = self.connect().await?;
        let samples = self.read_all(&connection.session).await;
        connection.close(self.config.timeout).await;
        let (samples, _problems) = samples?;
        Ok(samples)
    }

    /// One Read of every tag (in requests of at most [`NODES_PER_REQUEST`] nodes).
    async fn read_all(
        &self,
        session: &Session,
    ) -> Result<(Vec<Sample>, Vec<(TagName, String)>), OpcUaError> {
        let mut samples = Vec::with_capacity(self.tags.len());
        let mut problems = Vec::new();
        for chunk in self.tags.chunks(NODES_PER_REQUEST) {
            let ids: Vec<ReadValueId> = chunk
                .iter()
                .map(|t| ReadValueId {
                    node_id: t.node.clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                })
                .collect();
            let values = session
                .read(&ids, TimestampsToReturn::Both, 0.0)
                .await
                .map_err(|e| OpcUaError::Service {
                    endpoint: self.endpoint().to_owned(),
                    service: "Read",
                    detail: e.to_string(),
                })?;
            let received = Timestamp::now();
            for (tag, value) in chunk.iter().zip(values.iter()) {
                let c = convert::sample(&tag.name, tag.scaling, value, received);
                if let Some(p) = c.problem {
                    problems.push((tag.name.clone(), p));
                }
                samples.push(c.sample);
            }
        }
        Ok((samples, problems))
    }

    /// Reads until `cancel`; readings go to `out`.
    #[tracing::instrument(skip_all, fields(source = %self.config.name))]
    pub async fn run(self, out: mpsc::Sender<Chunk>, cancel: CancellationToken) {
        let mut run = Running {
            exceptions: ExceptionFilter::for_conversions(
                self.config
                    .tag
                    .iter()
                    .map(|t| (t.name.clone(), t.conversion())),
            ),
            gaps: GapMarker::default(),
            last: std::collections::HashMap::new(),
            out,
        };
        let mut backoff = BACKOFF_FIRST;
        let mut reported = false;
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                c = self.connect() => c,
            };
            let mut connection = match connected {
                Ok(c) => c,
                Err(e) => {
                    if reported {
                        tracing::debug!(error = %e, "still cannot connect");
                    } else {
                        tracing::warn!(error = %e, "cannot connect; retrying with backoff");
                        reported = true;
                    }
                    self.count_error("connect");
                    if !run.mark_gap(&self.tags).await {
                        return;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            tracing::info!(endpoint = %self.endpoint(), mode = ?self.config.mode, tags = self.tags.len(), "connected");
            reported = false;
            backoff = BACKOFF_FIRST;
            let outcome = match self.config.mode {
                Mode::Subscribe => self.subscribed(&mut connection, &mut run, &cancel).await,
                Mode::Poll => self.polled(&mut connection, &mut run, &cancel).await,
            };
            connection.close(self.config.timeout).await;
            match outcome {
                Outcome::Cancelled | Outcome::AgentGone => return,
                Outcome::Reconnect(why) => {
                    tracing::warn!(reason = %why, "starting a new session");
                    metrics::counter!("maintainpro_edge_opcua_reconnects_total", "source" => self.config.name.clone()).increment(1);
                    if !run.mark_gap(&self.tags).await {
                        return;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(BACKOFF_FIRST) => {}
                    }
                }
            }
        }
    }

    /// Creates the subscription and its monitored items; items the server refuses are
    /// reported and get a bad reading.
    async fn subscribe(
        &self,
        session: &Session,
        run: &mut Running,
    ) -> Result<(u32, mpsc::Receiver<Notice>), OpcUaError> {
        let c = &self.config;
        let (tx, rx) = mpsc::channel(INBOX);
        let inbox = Inbox {
            tx,
            source: c.name.clone(),
            stats: Arc::clone(&self.stats),
        };
        let service = |service: &'static str| {
            move |e: opcua::types::Error| OpcUaError::Service {
                endpoint: c.endpoint.clone(),
                service,
                detail: e.to_string(),
            }
        };
        let id = session
            .create_subscription(
                c.publishing_interval,
                c.keep_alive_count.saturating_mul(3),
                c.keep_alive_count,
                0,
                0,
                true,
                inbox,
            )
            .await
            .map_err(service("CreateSubscription"))?;
        let mut refused = Vec::new();
        for (first, chunk) in self
            .tags
            .chunks(NODES_PER_REQUEST)
            .enumerate()
            .map(|(n, chunk)| (n * NODES_PER_REQUEST, chunk))
        {
            let items: Vec<MonitoredItemCreateRequest> = chunk
                .iter()
                .enumerate()
                .map(|(i, t)| self.monitored_item(first + i, t))
                .collect();
            let results = session
                .create_monitored_items(id, TimestampsToReturn::Both, items)
                .await
                .map_err(service("CreateMonitoredItems"))?;
            for (t, r) in chunk.iter().zip(results.iter()) {
                if r.result.status_code.is_bad() {
                    refused.push((t, r.result.status_code));
                }
            }
        }
        for (t, status) in refused {
            tracing::error!(tag = %t.name, node = %t.config.node, %status, "the server refused to monitor this node; check the node id");
            self.count_error("monitored_item");
            let reading = Reading {
                tag: t.name.clone(),
                ts: Timestamp::now(),
                value: 0.0,
                quality: model::Quality::Bad,
            };
            run.forward(vec![reading]).await;
        }
        Ok((id, rx))
    }

    fn monitored_item(&self, index: usize, t: &Tag) -> MonitoredItemCreateRequest {
        let filter = match t.config.server_deadband() {
            Some(band) => ExtensionObject::from_message(DataChangeFilter {
                trigger: DataChangeTrigger::StatusValue,
                deadband_type: DeadbandType::Absolute as u32,
                deadband_value: band,
            }),
            None => ExtensionObject::null(),
        };
        MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id: t.node.clone(),
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                // Handles are the tag's index plus one (0 lets the library choose).
                client_handle: u32::try_from(index + 1).unwrap_or(u32::MAX),
                sampling_interval: t.config.sampling_interval(&self.config).as_secs_f64() * 1000.0,
                filter,
                queue_size: t.config.queue_size(&self.config),
                discard_oldest: true,
            },
        }
    }

    async fn subscribed(
        &self,
        connection: &mut Connection,
        run: &mut Running,
        cancel: &CancellationToken,
    ) -> Outcome {
        let Connection {
            session, events, ..
        } = connection;
        let (mut id, mut notices) = match self.subscribe(session, run).await {
            Ok(s) => s,
            Err(e) => return Outcome::Reconnect(e.to_string()),
        };
        let bound = self.config.watchdog();
        let mut watchdog = Watchdog::new(bound, Instant::now().into_std());
        let mut connected = true;
        let mut heartbeat = tokio::time::interval(HEARTBEAT_TICK);
        loop {
            let deadline = Instant::from_std(watchdog.deadline());
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = session.delete_subscription(id).await;
                    return Outcome::Cancelled;
                }
                notice = notices.recv() => match notice {
                    Some(Notice::Alive(values)) => {
                        watchdog.sign(Instant::now().into_std());
                        if !values.is_empty() && !run.values(self, values).await {
                            return Outcome::AgentGone;
                        }
                    }
                    Some(Notice::Status(status)) => {
                        tracing::warn!(%status, "the server ended the subscription; rebuilding it");
                        if let Err(e) = self.rebuild(session, run, &mut id, &mut notices).await {
                            return Outcome::Reconnect(e.to_string());
                        }
                        watchdog = Watchdog::new(bound, Instant::now().into_std());
                    }
                    None => return Outcome::Reconnect("the subscription's callback was dropped".into()),
                },
                event = events.recv() => match event {
                    Some(SessionEvent::Lost(status)) => {
                        tracing::warn!(%status, "connection lost; the client reconnects");
                        connected = false;
                        if !run.mark_gap(&self.tags).await {
                            return Outcome::AgentGone;
                        }
                    }
                    Some(SessionEvent::Reconnected) => {
                        tracing::info!("reconnected; the subscription is restored");
                        connected = true;
                        watchdog = Watchdog::new(bound, Instant::now().into_std());
                    }
                    Some(SessionEvent::Ended(why)) => return Outcome::Reconnect(why),
                    None => return Outcome::Reconnect("the session's event loop stopped".into()),
                },
                _ = tokio::time::sleep_until(deadline), if connected => {
                    let silent = watchdog.silent_for(Instant::now().into_std());
                    tracing::warn!(?silent, "the subscription delivered neither data nor keep-alives; rebuilding it");
                    metrics::counter!("maintainpro_edge_opcua_subscription_rebuilds_total", "source" => self.config.name.clone()).increment(1);
                    if !run.mark_gap(&self.tags).await {
                        return Outcome::AgentGone;
                    }
                    if let Err(e) = self.rebuild(session, run, &mut id, &mut notices).await {
                        return Outcome::Reconnect(e.to_string());
                    }
                    watchdog = Watchdog::new(bound, Instant::now().into_std());
                }
                _ = heartbeat.tick(), if connected && !run.gaps.in_gap() => {
                    if !run.heartbeats().await {
                        return Outcome::AgentGone;
                    }
                }
            }
        }
    }

    /// Deletes the subscription (best effort: the server may have lost it) and creates it
    /// again.
    async fn rebuild(
        &self,
        session: &Session,
        run: &mut Running,
        id: &mut u32,
        notices: &mut mpsc::Receiver<Notice>,
    ) -> Result<(), OpcUaError> {
        let _ = tokio::time::timeout(self.config.timeout, session.delete_subscription(*id)).await;
        let (new_id, new_notices) = self.subscribe(session, run).await?;
        *id = new_id;
        *notices = new_notices;
        Ok(())
    }

    async fn polled(
        &self,
        connection: &mut Connection,
        run: &mut Running,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut interval = tokio::time::interval(self.config.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Outcome::Cancelled,
                event = connection.events.recv() => match event {
                    Some(SessionEvent::Lost(status)) => {
                        tracing::warn!(%status, "connection lost; the client reconnects");
                        if !run.mark_gap(&self.tags).await {
                            return Outcome::AgentGone;
                        }
                    }
                    Some(SessionEvent::Reconnected) => tracing::info!("reconnected"),
                    Some(SessionEvent::Ended(why)) => return Outcome::Reconnect(why),
                    None => return Outcome::Reconnect("the session's event loop stopped".into()),
                },
                _ = interval.tick() => {
                    match self.read_all(&connection.session).await {
                        Ok((samples, problems)) => {
                            for (tag, problem) in problems {
                                self.problem(&tag, &problem);
                            }
                            run.gaps.resumed();
                            let readings = samples.iter().filter_map(Sample::to_reading).collect();
                            if !run.forward(readings).await {
                                return Outcome::AgentGone;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "poll failed");
                            self.count_error("read");
                            if !run.mark_gap(&self.tags).await {
                                return Outcome::AgentGone;
                            }
                        }
                    }
                }
            }
        }
    }

    fn count_error(&self, kind: &'static str) {
        self.stats.count_device_error();
        metrics::counter!("maintainpro_edge_opcua_errors_total", "source" => self.config.name.clone(), "kind" => kind).increment(1);
    }

    fn problem(&self, tag: &TagName, problem: &str) {
        self.stats.count_decode_error();
        metrics::counter!("maintainpro_edge_opcua_problems_total", "source" => self.config.name.clone()).increment(1);
        tracing::warn!(%tag, %problem, "value not read");
    }
}

/// Why a session's work ended.
enum Outcome {
    Cancelled,
    AgentGone,
    Reconnect(String),
}

/// An open session and the task driving it.
struct Connection {
    session: Arc<Session>,
    driver: tokio::task::JoinHandle<()>,
    events: mpsc::Receiver<SessionEvent>,
}

impl Connection {
    /// Closes the session (waiting up to `grace` for the server) and stops its driver.
    async fn close(self, grace: Duration) {
        if !grace.is_zero() {
            let _ = tokio::time::timeout(grace, self.session.disconnect()).await;
        }
        self.driver.abort();
    }
}

/// A running source's state across sessions.
struct Running {
    exceptions: ExceptionFilter,
    gaps: GapMarker,
    /// The latest good reading of each tag with a deadband, for heartbeats.
    last: std::collections::HashMap<TagName, Reading>,
    out: mpsc::Sender<Chunk>,
}

impl Running {
    /// Converts a notification's values and forwards them; false once the agent is gone.
    async fn values(&mut self, source: &OpcUaSource, values: Vec<(u32, DataValue)>) -> bool {
        let received = Timestamp::now();
        let mut readings = Vec::with_capacity(values.len());
        for (handle, value) in values {
            let Some(tag) = (handle as usize)
                .checked_sub(1)
                .and_then(|i| source.tags.get(i))
            else {
                continue;
            };
            let c = convert::sample(&tag.name, tag.scaling, &value, received);
            if let Some(p) = &c.problem {
                source.problem(&tag.name, p);
            }
            if let Some(r) = c.sample.to_reading() {
                readings.push(r);
            }
        }
        self.gaps.resumed();
        self.forward(readings).await
    }

    /// Marks a gap (once); false once the agent is gone.
    async fn mark_gap(&mut self, tags: &[Tag]) -> bool {
        let marks = self
            .gaps
            .gap(tags.iter().map(|t| &t.name), Timestamp::now());
        self.last.clear();
        self.forward(marks).await
    }

    /// Repeats each deadband tag's latest value now, for the filter to pass when its
    /// heartbeat is due: a subscription reports only changes, and a healthy one vouches that
    /// the value still holds.
    async fn heartbeats(&mut self) -> bool {
        if self.last.is_empty() {
            return true;
        }
        let now = Timestamp::now();
        let repeats = self
            .last
            .values()
            .map(|r| Reading {
                ts: now,
                ..r.clone()
            })
            .collect();
        self.forward(repeats).await
    }

    /// Applies report by exception and hands the readings to the agent.
    async fn forward(&mut self, mut readings: Vec<Reading>) -> bool {
        for r in &readings {
            if self.exceptions.has(&r.tag) && r.quality != model::Quality::Bad {
                self.last.insert(r.tag.clone(), r.clone());
            }
        }
        self.exceptions.retain(&mut readings);
        if readings.is_empty() {
            return true;
        }
        self.out.send(readings.into()).await.is_ok()
    }
}

fn crypto_policy(p: SecurityPolicy) -> opcua::crypto::SecurityPolicy {
    match p {
        SecurityPolicy::None => opcua::crypto::SecurityPolicy::None,
        SecurityPolicy::Basic256Sha256 => opcua::crypto::SecurityPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => opcua::crypto::SecurityPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss => opcua::crypto::SecurityPolicy::Aes256Sha256RsaPss,
    }
}

fn message_mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// The server's endpoints as `policy/mode` pairs, for an error message.
fn describe(endpoints: &[EndpointDescription]) -> String {
    let mut pairs: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let policy = opcua::crypto::SecurityPolicy::from_uri(e.security_policy_uri.as_ref());
            format!("{policy}/{:?}", e.security_mode)
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    if pairs.is_empty() {
        "nothing".to_owned()
    } else {
        pairs.join(", ")
    }
}
