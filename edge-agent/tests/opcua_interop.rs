//! The OPC-UA source against an independent server: asyncua, a Python implementation
//! (`tests/asyncua_server.py`, run with the Python of `MPTEST_PYTHON`, which
//! `scripts/test.sh` sets up with asyncua installed).
//!
//! Checks every scalar type's conversion, a bad status, text, and a subscription over a
//! signed and encrypted channel with a user name login.

mod python_peer;

use std::sync::Arc;
use std::time::Duration;

use edge_agent::agent::Chunk;
use edge_agent::config::OpcUaSourceConfig;
use edge_agent::modbus::line::Value;
use edge_agent::opcua::source::OpcUaSource;
use edge_agent::{AgentConfig, AgentStats};
use model::{GatewayId, Quality};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bounds each test; generous for a loaded machine, it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(90);

struct Asyncua {
    _child: Child,
    _pki: tempfile::TempDir,
    port: u16,
    namespace: u16,
}

/// Starts the asyncua server and waits until it listens.
async fn asyncua() -> Asyncua {
    let pki = tempfile::tempdir().expect("a temporary directory");
    let (child, line) =
        python_peer::start("asyncua_server.py", &[pki.path().as_os_str()], "asyncua").await;
    let mut words = line.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(port)), Some(Ok(namespace))) = (words.next(), words.next()) else {
        panic!("the server printed {line:?} instead of a port and a namespace index");
    };
    Asyncua {
        _child: child,
        _pki: pki,
        port,
        namespace,
    }
}

const VARIABLES: [&str; 14] = [
    "Flag", "Tiny", "Octet", "Small", "Word", "Medium", "Big", "Huge", "Vast", "Ratio", "Level",
    "State", "Counter", "Broken",
];

fn config(
    server: &Asyncua,
    pki: &std::path::Path,
    settings: &str,
    names: &[&str],
) -> OpcUaSourceConfig {
    let tags: String = names
        .iter()
        .map(|n| {
            format!(
                "[[opcua.tag]]\nname = \"peer.{}\"\nnode = \"ns={};s={n}\"\n",
                n.to_lowercase(),
                server.namespace
            )
        })
        .collect();
    let text = format!(
        r#"
[gateway]
tenant = "0b7e4a6e-5f0c-4d7e-9a53-3a1e0f0a0001"
id = "interop-gw"

[uplink]
broker = "mqtt://127.0.0.1:1883"

[[opcua]]
name = "asyncua"
endpoint = "opc.tcp://127.0.0.1:{}/"
pki_dir = "{}"
timeout = "5s"
{settings}
{tags}
"#,
        server.port,
        pki.display()
    );
    AgentConfig::from_toml_with_env("interop.toml", &text, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .opcua
        .remove(0)
}

fn source(config: OpcUaSourceConfig) -> OpcUaSource {
    OpcUaSource::new(
        config,
        GatewayId::parse("interop-gw").expect("gateway id"),
        Arc::new(AgentStats::default()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scalar_type_of_an_asyncua_server_reads_as_its_value() {
    tokio::time::timeout(DEADLINE, async {
        let server = asyncua().await;
        let pki = tempfile::tempdir().expect("a temporary directory");
        let samples = source(config(&server, pki.path(), "", &VARIABLES))
            .read_once()
            .await
            .unwrap_or_else(|e| panic!("read once: {e}"));
        let by_tag = |name: &str| {
            samples
                .iter()
                .find(|s| s.tag.as_str() == format!("peer.{name}"))
                .unwrap_or_else(|| panic!("no sample for {name}: {samples:?}"))
        };
        for (name, expected) in [
            ("flag", 1.0),
            ("tiny", -7.0),
            ("octet", 200.0),
            ("small", -1234.0),
            ("word", 65_000.0),
            ("medium", -70_000.0),
            ("big", 4_000_000_000.0),
            ("huge", -1_099_511_627_776.0),
            ("vast", 1_125_899_906_842_624.0),
            ("ratio", 1.5),
            ("level", 3.25),
        ] {
            let s = by_tag(name);
            assert_eq!(s.value, Some(Value::Number(expected)), "{s:?}");
            assert_eq!(s.quality, Quality::Good, "{s:?}");
        }
        assert_eq!(by_tag("state").value, Some(Value::Text("RUNNING".into())));
        assert_eq!(by_tag("counter").quality, Quality::Good);
        let broken = by_tag("broken");
        assert_eq!(broken.quality, Quality::Bad, "{broken:?}");
        assert_eq!(broken.value, None);
    })
    .await
    .expect("the test finished within its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_sign_and_encrypt_with_a_user_name_streams_from_asyncua() {
    tokio::time::timeout(DEADLINE, async {
        let server = asyncua().await;
        let pki = tempfile::tempdir().expect("a temporary directory");
        let settings = r#"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
trust_server_certificate = true
username = "operator"
password = "interop-pass"
publishing_interval = "200ms"
"#;
        let config = config(&server, pki.path(), settings, &["Counter"]);
        let (tx, mut rx) = mpsc::channel::<Chunk>(64);
        let cancel = CancellationToken::new();
        tokio::spawn(source(config).run(tx, cancel.clone()));
        let mut values = Vec::new();
        while values.len() < 5 {
            let chunk = rx.recv().await.expect("the source keeps running");
            for r in chunk.readings {
                assert_eq!(r.quality, Quality::Good, "{r:?}");
                values.push(r.value);
            }
        }
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "the counter only grows: {values:?}"
        );
        cancel.cancel();
    })
    .await
    .expect("the test finished within its deadline");
}
