//! An OPC-UA server that serves a scenario: one `Double` variable per signal, updated on a
//! fixed interval with the signal's value and a source timestamp.
//!
//! Variables are `ns=<index>;s=<signal name>` in the namespace [`NAMESPACE_URI`] (index 2 on
//! this server), under an `Objects/Plant` folder. A signal in dropout reads as
//! `BadSensorFailure` without a value; during a scenario outage every variable reads
//! `BadNoCommunication`, as a gateway server that lost its field devices reports.
//!
//! The server offers security None and Basic256Sha256 (Sign, SignAndEncrypt), each with
//! anonymous logins (unless turned off) and the user accounts the spec lists. It creates
//! its own certificate in `pki_dir` and trusts every client certificate: it is a simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken};
use opcua::types::{DataValue, DateTime, MessageSecurityMode, NodeId, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Scenario;

/// The namespace of the simulated plant's variables.
pub const NAMESPACE_URI: &str = "urn:maintainpro:plant-sim";

/// How a simulated OPC-UA server is reached.
#[derive(Debug, Clone)]
pub struct OpcUaServerSpec {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the server keeps its certificate and the client certificates it has seen.
    pub pki_dir: PathBuf,
    /// Accept anonymous logins.
    pub anonymous: bool,
    /// User name and password pairs accepted.
    pub users: Vec<(String, String)>,
    /// How often the variables take their next value.
    pub interval: Duration,
}

impl OpcUaServerSpec {
    /// Anonymous logins only, on `listen`, updating every 100 ms.
    pub fn new(listen: SocketAddr, pki_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            pki_dir: pki_dir.into(),
            anonymous: true,
            users: Vec::new(),
            interval: Duration::from_millis(100),
        }
    }
}

/// A running OPC-UA server. Dropping the handle leaves the server running until the runtime
/// stops; [`OpcUaHandle::shutdown`] stops it and waits.
pub struct OpcUaHandle {
    local_addr: SocketAddr,
    namespace: u16,
    handle: ServerHandle,
    server: JoinHandle<Result<(), String>>,
    updater: JoinHandle<()>,
}

impl std::fmt::Debug for OpcUaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaHandle")
            .field("local_addr", &self.local_addr)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl OpcUaHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `opc.tcp://<address>/`, the URL clients connect to.
    pub fn endpoint(&self) -> String {
        format!("opc.tcp://{}/", self.local_addr)
    }

    /// The namespace index of the signals' variables.
    pub fn namespace(&self) -> u16 {
        self.namespace
    }

    /// The node id of the signal called `name`, in text form.
    pub fn node_id(&self, name: &str) -> String {
        format!("ns={};s={name}", self.namespace)
    }

    /// Stops the server, closing every session, and waits for it.
    pub async fn shutdown(self) -> Result<(), String> {
        self.updater.abort();
        self.handle.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("the server task failed: {e}")),
            Err(_) => Err("the server did not stop within 10 s".to_owned()),
        }
    }
}

/// Binds `spec.listen` and serves `scenario` over OPC-UA until the handle is shut down. Time
/// in the scenario starts now.
pub async fn spawn_opcua_server(
    spec: OpcUaServerSpec,
    scenario: Scenario,
) -> Result<OpcUaHandle, String> {
    let listener = TcpListener::bind(spec.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", spec.listen))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let mut tokens: Vec<String> = Vec::new();
    if spec.anonymous {
        tokens.push(ANONYMOUS_USER_TOKEN_ID.to_owned());
    }
    let mut builder = ServerBuilder::new()
        .application_name("MaintAInPro plant simulator")
        .application_uri("urn:maintainpro:plant-sim:server")
        .product_uri("urn:maintainpro:plant-sim")
        .host(local_addr.ip().to_string())
        .port(local_addr.port())
        .discovery_urls(vec![format!("opc.tcp://{local_addr}/")])
        .pki_dir(&spec.pki_dir)
        .create_sample_keypair(true)
        .trust_client_certs(true)
        .diagnostics_enabled(false)
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_owned(),
                ..Default::default()
            },
            "plant",
        ));
    for (n, (user, password)) in spec.users.iter().enumerate() {
        let id = format!("user-{n}");
        builder = builder.add_user_token(
            &id,
            ServerUserToken::user_pass(user.as_str(), password.as_str()),
        );
        tokens.push(id);
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    for (id, policy, mode) in [
        ("none", SecurityPolicy::None, MessageSecurityMode::None),
        (
            "basic256sha256-sign",
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::Sign,
        ),
        (
            "basic256sha256-sign-encrypt",
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        ),
    ] {
        builder = builder.add_endpoint(id, ("/", policy, mode, tokens.as_slice()));
    }
    let (server, handle) = builder.build()?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or("the server has no plant node manager")?;
    let namespace = handle
        .get_namespace_index(NAMESPACE_URI)
        .ok_or("the plant namespace was not registered")?;
    let nodes = add_variables(&manager, namespace, &scenario);
    let server = tokio::spawn(server.run_with(listener));
    let updater = tokio::spawn(update(
        manager,
        handle.clone(),
        scenario,
        nodes,
        spec.interval,
    ));
    tracing::info!(%local_addr, namespace, "opc-ua plc listening");
    Ok(OpcUaHandle {
        local_addr,
        namespace,
        handle,
        server,
        updater,
    })
}

fn add_variables(manager: &SimpleNodeManager, namespace: u16, scenario: &Scenario) -> Vec<NodeId> {
    let space = manager.address_space();
    let mut space = space.write();
    let folder = NodeId::new(namespace, "Plant");
    space.add_folder(&folder, "Plant", "Plant", &NodeId::objects_folder_id());
    let nodes: Vec<NodeId> = scenario
        .signals()
        .iter()
        .map(|s| NodeId::new(namespace, s.name.as_str()))
        .collect();
    let variables = scenario
        .signals()
        .iter()
        .zip(&nodes)
        .map(|(s, id)| opcua::nodes::Variable::new(id, s.name.as_str(), s.name.as_str(), 0.0f64))
        .collect();
    space.add_variables(variables, &folder);
    nodes
}

async fn update(
    manager: Arc<SimpleNodeManager>,
    handle: ServerHandle,
    scenario: Scenario,
    nodes: Vec<NodeId>,
    interval: Duration,
) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let now = DateTime::now();
        let outage = scenario.outage_at(t).is_some();
        let values = scenario.signals().iter().zip(&nodes).map(|(signal, id)| {
            let value = scenario
                .value_of(signal.name.as_str(), t)
                .unwrap_or(f64::NAN);
            let data = if outage {
                bad(StatusCode::BadNoCommunication, now)
            } else if value.is_finite() {
                DataValue::new_at(value, now)
            } else {
                bad(StatusCode::BadSensorFailure, now)
            };
            (id, None, data)
        });
        if let Err(status) = manager.set_values(handle.subscriptions(), values) {
            tracing::warn!(%status, "cannot update the variables");
        }
    }
}

fn bad(status: StatusCode, at: DateTime) -> DataValue {
    DataValue {
        value: None,
        status: Some(status),
        source_timestamp: Some(at),
        server_timestamp: Some(at),
        ..DataValue::null()
    }
}
