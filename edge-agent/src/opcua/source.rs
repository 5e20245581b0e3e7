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
//! should it fill (the agent stalled), the values that do not fit are counted as dropped,
//! logged once per overflow, and the gap is marked.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    ReadValueId, StatusChangeNotification, StatusCode, TimestampsToReturn, UserTokenType,
    match_extension_object_owned,
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
const INBOX: usize = 64;
/// Most values the server puts in one notification message: with [`INBOX`], a bound on the
/// values held in memory.
const MAX_PER_PUBLISH: u32 = 2_000;
/// Most nodes asked for in one Read or CreateMonitoredItems request.
const NODES_PER_REQUEST: usize = 500;
/// Backoff between connection attempts: from the first to the last, doubling.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Failed reconnects in a row after which the source starts over with a new client.
const RECONNECT_ATTEMPTS: u32 = 5;
/// Reads in a row that fail before a polling source starts over.
const POLL_FAILURES: u32 = 3;
/// How often refused monitored items are tried again.
const RETRY_REFUSED: Duration = Duration::from_secs(30);
/// How often subscribed tags are checked for a due heartbeat.
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
        "{endpoint}: the server offers this security at {offered}; set endpoint to that URL \
         (with the host and port you reach the server at)"
    )]
    OtherPath { endpoint: String, offered: String },
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
        "{endpoint}: the session did not open within {timeout:?}: the server accepted the \
         connection but did not answer (busy, or stuck); it is tried again"
    )]
    SessionNotOpened { endpoint: String, timeout: Duration },
    #[error(
        "{endpoint}: the session was refused ({status}): check username and password, and \
         that each side trusts the other's certificate (an untrusted server certificate lands \
         in the rejected folder of pki_dir)"
    )]
    SessionRefused { endpoint: String, status: String },
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
    /// Set when values had to be dropped; the source marks the gap.
    overflowed: Arc<AtomicBool>,
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
        // A closed inbox belongs to a subscription the source has replaced: nothing waits
        // for it.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Notice::Alive(values))
            && n > 0
        {
            self.stats.count_dropped(n as u64);
            metrics::counter!("maintainpro_edge_opcua_values_dropped_total", "source" => self.source.clone()).increment(n as u64);
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(source = %self.source, values = n, "the agent is not keeping up; values dropped and the gap marked");
            }
        }
        if let Some(s) = status
            && self.tx.try_send(Notice::Status(s)).is_err()
        {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }
}

/// The subscription a session works with.
struct Sub {
    notices: mpsc::Receiver<Notice>,
    /// Set by the callback when it dropped values.
    overflowed: Arc<AtomicBool>,
    /// The watchdog's bound: as configured, and at least three keep-alive periods as the
    /// server revised them.
    bound: Duration,
    /// Tags whose monitored item the server refused, by index; tried again periodically.
    refused: Vec<usize>,
}

/// Session events the source acts on.
#[derive(Debug)]
enum SessionEvent {
    Lost(StatusCode),
    Reconnected,
    /// A (re)connection attempt failed; the library tries again.
    Failed(StatusCode),
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
    /// Watching for `edge-agent read`: every value is shown, deadbands do not apply.
    watch: bool,
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
            watch: false,
        }
    }

    /// The source as `edge-agent read` runs it: every value shown, no deadbands.
    pub fn watching(mut self) -> Self {
        self.watch = true;
        self
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
            // Made once in pki_dir when no certificate is configured, so that switching a
            // source to a secure mode later needs no extra step.
            .create_sample_keypair(c.certificate_file.is_none())
            .trust_server_certs(c.trust_server_certificate)
            // Reconnects after a lost connection are the library's; after
            // RECONNECT_ATTEMPTS failures in a row the source starts over with a new client,
            // which asks the server for its endpoints (and certificate) again.
            .session_retry_limit(-1)
            // Three keep-alive reads without an answer end the connection: a network that
            // swallows traffic is noticed in poll mode too.
            .max_failed_keep_alive_count(3)
            .session_retry_initial(BACKOFF_FIRST)
            .session_retry_max(BACKOFF_MAX)
            .request_timeout(c.timeout)
            .keep_alive_interval(c.timeout.max(Duration::from_secs(1)))
            .session_timeout(60_000)
            .session_name(format!("maintainpro-edge-{}-{}", self.gateway, c.name))
            .endpoint("configured", {
                let mut e = opcua::client::ClientEndpoint::new(c.endpoint.as_str());
                e.security_policy = crypto_policy(c.security_policy).to_str().to_owned();
                e.security_mode = format!("{:?}", c.security_mode);
                e
            })
            .default_endpoint("configured");
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
        let secured = |e: &&EndpointDescription| {
            e.security_mode == mode
                && opcua::crypto::SecurityPolicy::from_uri(e.security_policy_uri.as_ref()) == policy
        };
        let Some(chosen) = offered
            .iter()
            .filter(secured)
            .find(|e| url_path(e.endpoint_url.as_ref()) == url_path(&endpoint))
        else {
            if let Some(elsewhere) = offered.iter().find(secured) {
                return Err(OpcUaError::OtherPath {
                    endpoint,
                    offered: elsewhere.endpoint_url.as_ref().to_owned(),
                });
            }
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
        // The endpoint as the server describes it (certificate, token policies), reached at
        // the configured host and port: a server behind port forwarding or NAT advertises
        // an address the gateway may not be able to use.
        let mut chosen = chosen.clone();
        chosen.endpoint_url = endpoint.as_str().into();
        let (session, event_loop) = client
            .connect_to_endpoint_directly(chosen, identity)
            .map_err(unreachable)?;
        // Events are few (losses, reconnects, failures); the channel never holds up the
        // library's event loop.
        let (events_tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let stream = event_loop.enter();
            tokio::pin!(stream);
            let mut failures = 0;
            let end = loop {
                let event = match stream.next().await {
                    None => break "closed".to_owned(),
                    Some(Err(status)) => break status.to_string(),
                    Some(Ok(SessionPollResult::ConnectionLost(s))) => SessionEvent::Lost(s),
                    Some(Ok(SessionPollResult::Reconnected(_))) => {
                        failures = 0;
                        SessionEvent::Reconnected
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(s))) => {
                        failures += 1;
                        if failures >= RECONNECT_ATTEMPTS {
                            break format!(
                                "{failures} reconnects in a row failed, the last with {s}"
                            );
                        }
                        SessionEvent::Failed(s)
                    }
                    Some(Ok(_)) => continue,
                };
                if events_tx.send(event).is_err() {
                    return;
                }
            };
            let _ = events_tx.send(SessionEvent::Ended(end));
        });
        let mut connection = Connection {
            session,
            driver,
            events,
        };
        // The first failure ends the attempt with its reason (a wrong password is not tried
        // again and again); a silent server ends it after `timeout`.
        let opened = tokio::time::timeout(self.config.timeout, async {
            tokio::select! {
                opened = connection.session.wait_for_connection() => opened.then_some(()).ok_or(None),
                event = connection.events.recv() => match event {
                    Some(SessionEvent::Reconnected) => Ok(()),
                    Some(SessionEvent::Failed(status)) => Err(Some(status.to_string())),
                    Some(SessionEvent::Ended(why)) => Err(Some(why)),
                    Some(SessionEvent::Lost(status)) => Err(Some(status.to_string())),
                    None => Err(None),
                },
            }
        })
        .await;
        match opened {
            Ok(Ok(())) => Ok(connection),
            Ok(Err(Some(status))) => {
                connection.close(Duration::ZERO).await;
                Err(OpcUaError::SessionRefused { endpoint, status })
            }
            Ok(Err(None)) | Err(_) => {
                connection.close(Duration::ZERO).await;
                Err(OpcUaError::SessionNotOpened {
                    endpoint,
                    timeout: self.config.timeout,
                })
            }
        }
    }

    /// Reads every tag once: what `edge-agent read --once` prints. Values the server could
    /// not give are bad samples, their reasons logged.
    pub async fn read_once(&self) -> Result<Vec<Sample>, OpcUaError> {
        let connection = self.connect().await?;
        let read = self.read_all(&connection.session).await;
        connection.close(self.grace()).await;
        let (samples, problems) = read?;
        for (tag, problem) in problems {
            if let Some(problem) = problem {
                tracing::warn!(%tag, %problem, "value not read");
            }
        }
        Ok(samples)
    }

    /// A bad sample of every tag at `at`: what `read --once` shows for a server it cannot
    /// read.
    pub fn unreadable(&self, at: Timestamp) -> Vec<Sample> {
        self.tags
            .iter()
            .map(|t| Sample {
                tag: t.name.clone(),
                value: None,
                ts: at,
                quality: model::Quality::Bad,
            })
            .collect()
    }

    /// How long a stopping source waits for the server.
    fn grace(&self) -> Duration {
        self.config.timeout.min(Duration::from_secs(2))
    }

    /// One Read of every tag (in requests of at most [`NODES_PER_REQUEST`] nodes), and for
    /// each tag the reason its value is not good data, if it is not.
    async fn read_all(
        &self,
        session: &Session,
    ) -> Result<(Vec<Sample>, Vec<(TagName, Option<String>)>), OpcUaError> {
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
            if values.len() != chunk.len() {
                return Err(OpcUaError::Service {
                    endpoint: self.endpoint().to_owned(),
                    service: "Read",
                    detail: format!("{} values answered for {} nodes", values.len(), chunk.len()),
                });
            }
            let received = Timestamp::now();
            for (tag, value) in chunk.iter().zip(values.iter()) {
                let c = convert::sample(&tag.name, tag.scaling, value, received);
                problems.push((tag.name.clone(), problem(c.problem, value)));
                samples.push(c.sample);
            }
        }
        Ok((samples, problems))
    }

    /// Reads until `cancel`; readings go to `out`.
    #[tracing::instrument(skip_all, fields(source = %self.config.name))]
    pub async fn run(self, out: mpsc::Sender<Chunk>, cancel: CancellationToken) {
        let exceptions = if self.watch {
            ExceptionFilter::default()
        } else {
            ExceptionFilter::for_conversions(
                self.config
                    .tag
                    .iter()
                    .map(|t| (t.name.clone(), self.config.effective_conversion(t))),
            )
        };
        let mut run = Running {
            exceptions,
            gaps: GapMarker::default(),
            last_gap: None,
            last: HashMap::new(),
            source_ts: HashMap::new(),
            text: HashSet::new(),
            reported: HashSet::new(),
            data_seen: false,
            out,
        };
        let mut backoff = BACKOFF_FIRST;
        let mut reported = false;
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                c = self.connect() => c,
            };
            let wait = match connected {
                Ok(mut connection) => {
                    tracing::info!(endpoint = %self.endpoint(), mode = ?self.config.mode, tags = self.tags.len(), "connected");
                    reported = false;
                    run.data_seen = false;
                    // Every request of the session's work is abandoned at once on a stop;
                    // closing the session then deletes its subscriptions.
                    let outcome = tokio::select! {
                        _ = cancel.cancelled() => Outcome::Cancelled,
                        o = async {
                            match self.config.mode {
                                Mode::Subscribe => self.subscribed(&mut connection, &mut run).await,
                                Mode::Poll => self.polled(&mut connection, &mut run).await,
                            }
                        } => o,
                    };
                    connection.close(self.grace()).await;
                    let Outcome::Reconnect(why) = outcome else {
                        return;
                    };
                    tracing::warn!(reason = %why, "starting a new session");
                    metrics::counter!("maintainpro_edge_opcua_reconnects_total", "source" => self.config.name.clone()).increment(1);
                    // A session that delivered data was healthy: start the backoff over.
                    if run.data_seen {
                        backoff = BACKOFF_FIRST;
                    }
                    backoff
                }
                Err(e) => {
                    if reported {
                        tracing::debug!(error = %e, "still cannot connect");
                    } else {
                        tracing::warn!(error = %e, "cannot connect; retrying with backoff");
                        reported = true;
                    }
                    self.count_error("connect");
                    backoff
                }
            };
            if !run.mark_gap(&self.tags).await {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Creates the subscription and its monitored items. Items the server refuses are
    /// reported, get a bad reading, and are listed for retrying.
    async fn subscribe(&self, session: &Session, run: &mut Running) -> Result<Sub, Outcome> {
        let c = &self.config;
        let (tx, notices) = mpsc::channel(INBOX);
        let overflowed = Arc::new(AtomicBool::new(false));
        let inbox = Inbox {
            tx,
            overflowed: Arc::clone(&overflowed),
            source: c.name.clone(),
            stats: Arc::clone(&self.stats),
        };
        let keep_alive = c.keep_alive_count();
        let id = session
            .create_subscription(
                c.publishing_interval(),
                keep_alive.saturating_mul(3),
                keep_alive,
                MAX_PER_PUBLISH,
                0,
                true,
                inbox,
            )
            .await
            .map_err(|e| self.failed("CreateSubscription", &e))?;
        // The server may have revised the interval and the keep-alive count: the watchdog
        // waits for what the server will actually do.
        let revised = session.subscription_state().lock().get(id).map(|s| {
            s.publishing_interval()
                .saturating_mul(s.max_keep_alive_count().max(1))
        });
        let bound = match revised {
            Some(period) => self.config.watchdog().max(period.saturating_mul(3)),
            None => self.config.watchdog(),
        };
        let all: Vec<usize> = (0..self.tags.len()).collect();
        let refused = self.add_items(session, id, &all).await?;
        let mut marks = Vec::new();
        for &(i, status) in &refused {
            let t = &self.tags[i];
            let hint = if matches!(
                status,
                StatusCode::BadNodeIdUnknown | StatusCode::BadNodeIdInvalid
            ) {
                "check the node id"
            } else {
                "tried again every 30 s"
            };
            tracing::error!(tag = %t.name, node = %t.config.node, %status, hint, "the server refused to monitor this node");
            self.count_error("monitored_item");
            marks.push(Reading {
                tag: t.name.clone(),
                ts: Timestamp::now(),
                value: 0.0,
                quality: model::Quality::Bad,
            });
        }
        if !run.forward(marks).await {
            return Err(Outcome::AgentGone);
        }
        Ok(Sub {
            notices,
            overflowed,
            bound,
            refused: refused.into_iter().map(|(i, _)| i).collect(),
        })
    }

    /// Adds the monitored items of the tags at `indices` to subscription `id`; returns the
    /// ones the server refused. An item refused for its deadband filter (a server that has
    /// no deadbands, or a variable that is not a number) is asked for again without it.
    async fn add_items(
        &self,
        session: &Session,
        id: u32,
        indices: &[usize],
    ) -> Result<Vec<(usize, StatusCode)>, Outcome> {
        let mut refused = Vec::new();
        for chunk in indices.chunks(NODES_PER_REQUEST) {
            let mut pending: Vec<(usize, bool)> = chunk.iter().map(|&i| (i, true)).collect();
            while !pending.is_empty() {
                let items: Vec<MonitoredItemCreateRequest> = pending
                    .iter()
                    .map(|&(i, filtered)| self.monitored_item(i, filtered))
                    .collect();
                let results = session
                    .create_monitored_items(id, TimestampsToReturn::Both, items)
                    .await
                    .map_err(|e| self.failed("CreateMonitoredItems", &e))?;
                let mut again = Vec::new();
                for (n, &(i, filtered)) in pending.iter().enumerate() {
                    let status = results
                        .get(n)
                        .map_or(StatusCode::BadUnexpectedError, |r| r.result.status_code);
                    if !status.is_bad() {
                        continue;
                    }
                    let filter_refused = matches!(
                        status,
                        StatusCode::BadFilterNotAllowed
                            | StatusCode::BadMonitoredItemFilterUnsupported
                            | StatusCode::BadMonitoredItemFilterInvalid
                            | StatusCode::BadDeadbandFilterInvalid
                    );
                    if filtered && filter_refused && self.tags[i].config.server_deadband().is_some()
                    {
                        again.push((i, false));
                    } else {
                        refused.push((i, status));
                    }
                }
                pending = again;
            }
        }
        Ok(refused)
    }

    fn monitored_item(&self, index: usize, filtered: bool) -> MonitoredItemCreateRequest {
        let t = &self.tags[index];
        let filter = match t.config.server_deadband().filter(|_| filtered) {
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

    /// A service failure that ends the session's work.
    fn failed(&self, service: &'static str, e: &opcua::types::Error) -> Outcome {
        Outcome::Reconnect(
            OpcUaError::Service {
                endpoint: self.config.endpoint.clone(),
                service,
                detail: e.to_string(),
            }
            .to_string(),
        )
    }

    /// Whether the session holds one subscription with every item the source asked for
    /// (after the library re-created it following a reconnect, say).
    fn subscription_complete(&self, session: &Session, sub: &Sub) -> bool {
        let state = session.subscription_state().lock();
        let ids = state.subscription_ids().unwrap_or_default();
        let expected = self.tags.len() - sub.refused.len();
        ids.len() == 1
            && state
                .get(ids[0])
                .is_some_and(|s| s.monitored_items().count() >= expected)
    }

    async fn subscribed(&self, connection: &mut Connection, run: &mut Running) -> Outcome {
        let Connection {
            session, events, ..
        } = connection;
        let mut sub = match self.subscribe(session, run).await {
            Ok(sub) => sub,
            Err(outcome) => return outcome,
        };
        let now = || Instant::now().into_std();
        let mut watchdog = Watchdog::new(sub.bound, now());
        let mut connected = true;
        let mut heartbeat = tokio::time::interval(HEARTBEAT_TICK);
        let mut retry = tokio::time::interval_at(Instant::now() + RETRY_REFUSED, RETRY_REFUSED);
        loop {
            let deadline = Instant::from_std(watchdog.deadline());
            // Biased: session events first (a loss is marked before data that follows the
            // reconnect), then data (a backlog of notifications is read before the watchdog
            // may call the subscription silent).
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(SessionEvent::Lost(status)) => {
                        tracing::warn!(%status, "connection lost; the client reconnects");
                        self.count_loss();
                        connected = false;
                        if !run.mark_gap(&self.tags).await {
                            return Outcome::AgentGone;
                        }
                    }
                    Some(SessionEvent::Reconnected) => {
                        // The session's first opening is reported as well.
                        let after_loss = !connected;
                        connected = true;
                        watchdog = Watchdog::new(sub.bound, now());
                        if !after_loss {
                            continue;
                        }
                        tracing::info!("reconnected");
                        if !self.subscription_complete(session, &sub) {
                            tracing::warn!("the subscription came back incomplete; rebuilding it");
                            if let Err(outcome) = self.rebuild(session, run, &mut sub).await {
                                return outcome;
                            }
                            watchdog = Watchdog::new(sub.bound, now());
                        } else if let Err(outcome) = self.resync(session, run).await {
                            // A reactivated session sends no values that did not change:
                            // read them, so the gap ends for steady tags too.
                            return outcome;
                        }
                    }
                    Some(SessionEvent::Failed(status)) => {
                        tracing::debug!(%status, "reconnect failed; the client tries again");
                    }
                    Some(SessionEvent::Ended(why)) => return Outcome::Reconnect(why),
                    None => return Outcome::Reconnect("the session's event loop stopped".into()),
                },
                notice = sub.notices.recv() => match notice {
                    Some(Notice::Alive(values)) => {
                        watchdog.sign(now());
                        if sub.overflowed.swap(false, Ordering::Relaxed)
                            && !run.mark_gap(&self.tags).await
                        {
                            return Outcome::AgentGone;
                        }
                        if !values.is_empty() && !run.values(self, values).await {
                            return Outcome::AgentGone;
                        }
                    }
                    Some(Notice::Status(status)) if status.is_bad() => {
                        tracing::warn!(%status, "the server ended the subscription; rebuilding it");
                        if let Err(outcome) = self.rebuild(session, run, &mut sub).await {
                            return outcome;
                        }
                        watchdog = Watchdog::new(sub.bound, now());
                    }
                    Some(Notice::Status(status)) => {
                        tracing::info!(%status, "subscription status changed");
                    }
                    None => return Outcome::Reconnect("the subscription's callback was dropped".into()),
                },
                _ = tokio::time::sleep_until(deadline), if connected => {
                    let silent = watchdog.silent_for(now());
                    tracing::warn!(?silent, "the subscription delivered neither data nor keep-alives; rebuilding it");
                    if let Err(outcome) = self.rebuild(session, run, &mut sub).await {
                        return outcome;
                    }
                    watchdog = Watchdog::new(sub.bound, now());
                }
                _ = retry.tick(), if connected && !sub.refused.is_empty() => {
                    let ids = session.subscription_state().lock().subscription_ids().unwrap_or_default();
                    if let Some(&id) = ids.first() {
                        match self.add_items(session, id, &sub.refused).await {
                            Ok(still) => {
                                let added = sub.refused.len() - still.len();
                                if added > 0 {
                                    tracing::info!(added, "monitored items the server refused before are added");
                                }
                                sub.refused = still.into_iter().map(|(i, _)| i).collect();
                            }
                            Err(outcome) => return outcome,
                        }
                    }
                }
                _ = heartbeat.tick(), if connected && !run.gaps.in_gap() => {
                    if !run.heartbeats().await {
                        return Outcome::AgentGone;
                    }
                }
            }
        }
    }

    /// Reads every tag and forwards the values: after a session was reactivated, when the
    /// server sends only what changes.
    async fn resync(&self, session: &Session, run: &mut Running) -> Result<(), Outcome> {
        let (samples, problems) = self
            .read_all(session)
            .await
            .map_err(|e| Outcome::Reconnect(e.to_string()))?;
        run.note_problems(self, problems);
        if run.samples(samples, Timestamp::now()).await {
            Ok(())
        } else {
            Err(Outcome::AgentGone)
        }
    }

    /// Marks the gap, hands over what the old subscription still delivered, deletes every
    /// subscription of the session (best effort: the server may have lost them; after a
    /// reconnect the library may have made new ones) and creates the subscription again.
    async fn rebuild(
        &self,
        session: &Session,
        run: &mut Running,
        sub: &mut Sub,
    ) -> Result<(), Outcome> {
        metrics::counter!("maintainpro_edge_opcua_subscription_rebuilds_total", "source" => self.config.name.clone()).increment(1);
        while let Ok(notice) = sub.notices.try_recv() {
            if let Notice::Alive(values) = notice
                && !run.values(self, values).await
            {
                return Err(Outcome::AgentGone);
            }
        }
        if !run.mark_gap(&self.tags).await {
            return Err(Outcome::AgentGone);
        }
        let _ = tokio::time::timeout(self.config.timeout, delete_all(session)).await;
        *sub = self.subscribe(session, run).await?;
        Ok(())
    }

    async fn polled(&self, connection: &mut Connection, run: &mut Running) -> Outcome {
        let mut interval = tokio::time::interval(self.config.poll_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lost = false;
        let mut failures = 0;
        loop {
            tokio::select! {
                biased;
                event = connection.events.recv() => match event {
                    Some(SessionEvent::Lost(status)) => {
                        tracing::warn!(%status, "connection lost; the client reconnects");
                        self.count_loss();
                        lost = true;
                        if !run.mark_gap(&self.tags).await {
                            return Outcome::AgentGone;
                        }
                    }
                    Some(SessionEvent::Reconnected) => {
                        if std::mem::take(&mut lost) {
                            tracing::info!("reconnected");
                        }
                    }
                    Some(SessionEvent::Failed(status)) => {
                        tracing::debug!(%status, "reconnect failed; the client tries again");
                    }
                    Some(SessionEvent::Ended(why)) => return Outcome::Reconnect(why),
                    None => return Outcome::Reconnect("the session's event loop stopped".into()),
                },
                _ = interval.tick() => {
                    match self.read_all(&connection.session).await {
                        Ok((samples, problems)) => {
                            failures = 0;
                            run.note_problems(self, problems);
                            if !run.polled(samples, Timestamp::now()).await {
                                return Outcome::AgentGone;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "poll failed");
                            self.count_error("read");
                            failures += 1;
                            if !run.mark_gap(&self.tags).await {
                                return Outcome::AgentGone;
                            }
                            if failures >= POLL_FAILURES {
                                return Outcome::Reconnect(format!("{failures} reads in a row failed, the last with {e}"));
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

    fn count_loss(&self) {
        metrics::counter!("maintainpro_edge_opcua_connection_losses_total", "source" => self.config.name.clone()).increment(1);
    }

    fn count_problem(&self) {
        self.stats.count_decode_error();
        metrics::counter!("maintainpro_edge_opcua_problems_total", "source" => self.config.name.clone()).increment(1);
    }
}

/// Why a value is not good data, if it is not: it could not be converted, or the server
/// answered with a bad status.
fn problem(conversion: Option<String>, value: &DataValue) -> Option<String> {
    conversion.or_else(|| {
        value
            .status
            .filter(|s| s.is_bad())
            .map(|s| format!("the server answered {s}"))
    })
}

/// Deletes every subscription the session knows.
async fn delete_all(session: &Session) {
    let ids = session
        .subscription_state()
        .lock()
        .subscription_ids()
        .unwrap_or_default();
    if !ids.is_empty() {
        let _ = session.delete_subscriptions(&ids).await;
    }
}

/// Why a session's work ended.
enum Outcome {
    Cancelled,
    AgentGone,
    Reconnect(String),
}

/// An open session and the task driving it; dropping it stops the task.
struct Connection {
    session: Arc<Session>,
    driver: tokio::task::JoinHandle<()>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
}

impl Connection {
    /// Closes the session, which deletes its subscriptions (waiting up to `grace` for the
    /// server), and stops its driver.
    async fn close(self, grace: Duration) {
        if !grace.is_zero() {
            let _ = tokio::time::timeout(grace, self.session.disconnect()).await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A running source's state across sessions.
struct Running {
    exceptions: ExceptionFilter,
    gaps: GapMarker,
    /// When the latest gap was marked: values stamped earlier are restamped on receipt, so
    /// that they come after the mark (a steady value re-read after an outage, say).
    last_gap: Option<Timestamp>,
    /// The latest good value and quality of each tag reported by exception, for heartbeats.
    last: HashMap<TagName, (f64, model::Quality)>,
    /// Polling: each tag's latest source timestamp, to tell a new value from the same one
    /// read again.
    source_ts: HashMap<TagName, Timestamp>,
    /// Tags whose variable holds text now: no readings, not even bad ones.
    text: HashSet<TagName>,
    /// Tags whose current problem has been logged (logged again once it clears and recurs).
    reported: HashSet<TagName>,
    /// The current session delivered data.
    data_seen: bool,
    out: mpsc::Sender<Chunk>,
}

impl Running {
    /// Converts a notification's values and forwards them; false once the agent is gone.
    async fn values(&mut self, source: &OpcUaSource, values: Vec<(u32, DataValue)>) -> bool {
        let received = Timestamp::now();
        let mut samples = Vec::with_capacity(values.len());
        for (handle, value) in values {
            let Some(tag) = (handle as usize)
                .checked_sub(1)
                .and_then(|i| source.tags.get(i))
            else {
                continue;
            };
            if value.status.is_some_and(|s| s.overflow()) {
                metrics::counter!("maintainpro_edge_opcua_queue_overflows_total", "source" => source.config.name.clone()).increment(1);
                tracing::debug!(tag = %tag.name, "the server's queue for this item overflowed; samples were discarded there");
            }
            let c = convert::sample(&tag.name, tag.scaling, &value, received);
            self.note_problem(source, &tag.name, problem(c.problem, &value));
            samples.push(c.sample);
        }
        self.samples(samples, received).await
    }

    /// Polled samples: a value whose source timestamp did not change since the last poll is
    /// the same value read again, stamped with the time of this poll (report by exception
    /// then passes it only when its heartbeat is due).
    async fn polled(&mut self, mut samples: Vec<Sample>, received: Timestamp) -> bool {
        for s in &mut samples {
            match self.source_ts.get_mut(&s.tag) {
                Some(previous) if *previous == s.ts => s.ts = received,
                Some(previous) => *previous = s.ts,
                None => {
                    self.source_ts.insert(s.tag.clone(), s.ts);
                }
            }
        }
        self.samples(samples, received).await
    }

    /// Forwards samples that show the source is delivering again.
    async fn samples(&mut self, mut samples: Vec<Sample>, received: Timestamp) -> bool {
        for s in &mut samples {
            match &s.value {
                Some(crate::modbus::line::Value::Text(_)) => {
                    self.text.insert(s.tag.clone());
                }
                Some(crate::modbus::line::Value::Number(_)) => {
                    self.text.remove(&s.tag);
                }
                None => {}
            }
            if self.last_gap.is_some_and(|gap| s.ts <= gap) {
                s.ts = received;
            }
        }
        self.gaps.resumed();
        self.data_seen = true;
        self.forward(samples.iter().filter_map(Sample::to_reading).collect())
            .await
    }

    /// Counts every problem and logs each tag's once, until the tag reads cleanly again;
    /// `outcomes` holds each tag read, with its problem if it had one.
    fn note_problems(&mut self, source: &OpcUaSource, outcomes: Vec<(TagName, Option<String>)>) {
        for (tag, problem) in outcomes {
            self.note_problem(source, &tag, problem);
        }
    }

    /// One tag's outcome, as [`Running::note_problems`] takes them.
    fn note_problem(&mut self, source: &OpcUaSource, tag: &TagName, problem: Option<String>) {
        match problem {
            Some(problem) => {
                source.count_problem();
                if !self.reported.contains(tag) {
                    tracing::warn!(%tag, %problem, "value not read");
                    self.reported.insert(tag.clone());
                }
            }
            None if !self.reported.is_empty() => {
                self.reported.remove(tag);
            }
            None => {}
        }
    }

    /// Marks a gap (once); false once the agent is gone.
    async fn mark_gap(&mut self, tags: &[Tag]) -> bool {
        let at = Timestamp::now();
        let marks = self.gaps.gap(tags.iter().map(|t| &t.name), at);
        if !marks.is_empty() {
            self.last_gap = Some(at);
        }
        self.last.clear();
        self.forward(marks).await
    }

    /// Repeats each reported-by-exception tag's latest value now, for the filter to pass
    /// when its heartbeat is due: a subscription reports only changes, and a healthy one
    /// vouches that the value still holds.
    async fn heartbeats(&mut self) -> bool {
        if self.last.is_empty() {
            return true;
        }
        let now = Timestamp::now();
        let repeats = self
            .last
            .iter()
            .map(|(tag, &(value, quality))| Reading {
                tag: tag.clone(),
                ts: now,
                value,
                quality,
            })
            .collect();
        self.forward(repeats).await
    }

    /// Applies report by exception and hands the readings to the agent.
    async fn forward(&mut self, mut readings: Vec<Reading>) -> bool {
        readings.retain(|r| !self.text.contains(&r.tag));
        for r in &readings {
            if r.quality == model::Quality::Bad || !self.exceptions.has(&r.tag) {
                continue;
            }
            match self.last.get_mut(&r.tag) {
                Some(latest) => *latest = (r.value, r.quality),
                None => {
                    self.last.insert(r.tag.clone(), (r.value, r.quality));
                }
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

/// The path of an `opc.tcp://` URL, without trailing slashes (`""` for the root).
fn url_path(url: &str) -> &str {
    let rest = url.strip_prefix("opc.tcp://").unwrap_or(url);
    rest.find('/')
        .map_or("", |i| &rest[i..])
        .trim_end_matches('/')
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
