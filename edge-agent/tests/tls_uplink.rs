//! The `mqtts://` uplink, and an `[[mqtt]]` source over TLS, against Mosquitto with a TLS listener that requires a client
//! certificate: certificates made for the run (a CA, the broker's for 127.0.0.1, the
//! gateway's), batches read back on a plain listener of the same broker. An agent trusting
//! another CA publishes nothing. And the uplink's TLS keys are checked before the agent
//! starts, every problem with its key.
//!
//! Needs the `mosquitto` binary (installed by `scripts/test.sh`).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use edge_agent::{Agent, AgentConfig};
use model::{GatewayId, TenantId};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use simulators::mosquitto::PrivateBroker;
use simulators::{Scenario, spawn_modbus_plc};
use tokio_util::sync::CancellationToken;

/// Writes `ca.pem` and, signed by it, `<name>.pem` and `<name>.key` for each of `leaves`
/// (name, subject alternative names) into `dir`.
fn certificates(dir: &Path, ca_name: &str, leaves: &[(&str, Vec<String>)]) -> anyhow::Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (name, sans) in leaves {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.clone())?;
        params.distinguished_name.push(DnType::CommonName, *name);
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    #[cfg(unix)]
    {
        // Mosquitto started as root reads its files as its own user.
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(dir)? {
            std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Makes the plant's certificates in `pki` (its CA, the broker's for 127.0.0.1, the gateway's
/// named `gateway`) and starts a private Mosquitto under `dir` with a plain listener and a TLS
/// listener that requires a client certificate; answers the broker and the TLS port.
fn tls_broker(dir: &Path, pki: &Path, gateway: &str) -> anyhow::Result<(PrivateBroker, u16)> {
    let local = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    certificates(
        pki,
        "Plant CA",
        &[("broker", local), ("gateway", vec![gateway.to_owned()])],
    )?;
    let tls_port = free_port()?;
    let broker = PrivateBroker::start_with(
        &dir.join("mq"),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.join("ca.pem").display(),
            pki.join("broker.pem").display(),
            pki.join("broker.key").display(),
        ),
    )?;
    Ok((broker, tls_port))
}

/// Counts the readings of the batches on `topic`, read on the broker's plain listener.
fn ledger(
    broker: &str,
    topic: String,
    cancel: CancellationToken,
) -> anyhow::Result<Arc<Mutex<usize>>> {
    let seen = Arc::new(Mutex::new(0));
    let out = Arc::clone(&seen);
    common::on_batches(broker, topic, cancel, move |batch| {
        *out.lock().expect("ledger lock") += batch.points.len();
    })?;
    Ok(seen)
}

fn config(
    tenant: TenantId,
    gateway: &str,
    uplink: &str,
    plc: std::net::SocketAddr,
    outbox: &Path,
) -> String {
    format!(
        "[gateway]\ntenant = \"{tenant}\"\nid = \"{gateway}\"\n\n[uplink]\n{uplink}\nbatch_max_age = \"100ms\"\n\n\
         [outbox]\ndir = {}\n\n[[device]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"{plc}\"\n\
         poll_interval = \"100ms\"\n\n[[device.tag]]\nname = \"bearing_temp\"\ntable = \"holding\"\naddress = 0\ndata_type = \"f32\"\n",
        toml::Value::String(outbox.display().to_string())
    )
}

fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_uplink_publishes_with_a_client_certificate_and_refuses_an_unknown_ca()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&pki)?;
    std::fs::create_dir_all(&other)?;
    certificates(&other, "Someone else's CA", &[])?;
    let (broker, tls_port) = tls_broker(dir.path(), &pki, "gw-tls")?;
    let tenant = TenantId::new_random();
    let stop_ledger = CancellationToken::new();
    let good = ledger(
        &broker.url(),
        model::topic::readings(tenant, &GatewayId::parse("gw-tls")?),
        stop_ledger.clone(),
    )?;
    let bad = ledger(
        &broker.url(),
        model::topic::readings(tenant, &GatewayId::parse("gw-badca")?),
        stop_ledger.clone(),
    )?;
    let plc = spawn_modbus_plc("127.0.0.1:0".parse()?, Scenario::demo()).await?;

    let uplink = |ca: &Path| {
        format!(
            "broker = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}",
            toml_path(&ca.join("ca.pem")),
            toml_path(&pki.join("gateway.pem")),
            toml_path(&pki.join("gateway.key")),
        )
    };
    let load = |text: String| {
        AgentConfig::from_toml_with_env("agent.toml", &text, Vec::new())
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let trusted = load(config(
        tenant,
        "gw-tls",
        &uplink(&pki),
        plc.local_addr(),
        &dir.path().join("out-1"),
    ))?;
    let untrusted = load(config(
        tenant,
        "gw-badca",
        &uplink(&other),
        plc.local_addr(),
        &dir.path().join("out-2"),
    ))?;

    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for c in [trusted, untrusted] {
        let until = stop.clone();
        agents.push(tokio::spawn(
            Agent::build(c).run_until(until.cancelled_owned()),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while *good.lock().expect("lock") < 10 {
        if tokio::time::Instant::now() > deadline {
            bail!("no readings arrived over TLS within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other agent polls as long, but its broker's certificate is not one it trusts.
    assert_eq!(*bad.lock().expect("lock"), 0);
    stop.cancel();
    for a in agents {
        a.await??;
    }
    stop_ledger.cancel();
    plc.shutdown().await?;
    drop(broker);
    Ok(())
}

#[test]
fn the_uplink_tls_keys_are_checked_before_the_agent_starts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    certificates(
        dir.path(),
        "Plant CA",
        &[("gateway", vec!["gw".to_owned()])],
    )?;
    let tenant = TenantId::new_random();
    let plc: std::net::SocketAddr = "127.0.0.1:5020".parse()?;
    let errors = |uplink: String| -> Vec<String> {
        match AgentConfig::from_toml_with_env(
            "agent.toml",
            &config(tenant, "gw", &uplink, plc, dir.path()),
            Vec::new(),
        ) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    };
    let ca = toml_path(&dir.path().join("ca.pem"));
    let cert = toml_path(&dir.path().join("gateway.pem"));
    let key = toml_path(&dir.path().join("gateway.key"));
    assert!(errors(format!("broker = \"mqtts://h\"\nca_file = {ca}\nclient_cert_file = {cert}\nclient_key_file = {key}")).is_empty());
    // TLS files on a plain broker.
    let e = errors(format!("broker = \"mqtt://h\"\nca_file = {ca}"));
    assert!(
        e.len() == 1 && e[0].starts_with("uplink.ca_file: applies only to a TLS broker"),
        "{e:?}"
    );
    // A certificate without its key.
    let e = errors(format!(
        "broker = \"mqtts://h\"\nca_file = {ca}\nclient_cert_file = {cert}"
    ));
    assert!(
        e.len() == 1 && e[0].starts_with("uplink.client_key_file:"),
        "{e:?}"
    );
    // A missing file, and a key where certificates belong.
    let e = errors(format!(
        "broker = \"mqtts://h\"\nca_file = {}",
        toml_path(&dir.path().join("nope.pem"))
    ));
    assert!(
        e.len() == 1 && e[0].starts_with("uplink.ca_file: cannot read certificates"),
        "{e:?}"
    );
    let e = errors(format!("broker = \"mqtts://h\"\nca_file = {key}"));
    assert!(
        e.len() == 1 && e[0].contains("holds no PEM certificate"),
        "{e:?}"
    );
    Ok(())
}

/// An `[[mqtt]]` source reads a local broker over TLS with a client certificate: a JSON
/// message published on the TLS listener becomes a reading the uplink (on the plain
/// listener) carries. A source whose TLS files are wrong is refused before the agent starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_source_reads_its_broker_over_tls() -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki)?;
    let (broker, tls_port) = tls_broker(dir.path(), &pki, "gw-src")?;
    let tenant = TenantId::new_random();
    let stop_ledger = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    common::on_batches(
        &broker.url(),
        model::topic::readings(tenant, &GatewayId::parse("gw-src")?),
        stop_ledger.clone(),
        move |batch| {
            out.lock().expect("ledger lock").extend(
                batch
                    .readings()
                    .map(|r| (r.tag.as_str().to_owned(), r.value)),
            );
        },
    )?;
    let root = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let source = |ca: &str| {
        format!(
            "[gateway]\ntenant = \"{tenant}\"\nid = \"gw-src\"\n\n[uplink]\nbroker = \"{}\"\nbatch_max_age = \"100ms\"\n\n\
             [outbox]\ndir = {}\n\n[[mqtt]]\nname = \"floor\"\nbroker = \"mqtts://127.0.0.1:{tls_port}\"\n\
             ca_file = {ca}\nclient_cert_file = {}\nclient_key_file = {}\n\n\
             [[mqtt.json]]\ntopic = \"{root}/+/state\"\ntag = \"{{2}}.temp\"\nvalue = \"/t\"\n",
            broker.url(),
            toml_path(&dir.path().join("outbox")),
            toml_path(&pki.join("gateway.pem")),
            toml_path(&pki.join("gateway.key")),
        )
    };
    // A key file where the CA certificates belong is named before anything starts.
    let refused = AgentConfig::from_toml_with_env(
        "agent.toml",
        &source(&toml_path(&pki.join("gateway.key"))),
        Vec::new(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        refused.contains("mqtt[0].ca_file") && refused.contains("holds no PEM certificate"),
        "{refused}"
    );
    let config = AgentConfig::from_toml_with_env(
        "agent.toml",
        &source(&toml_path(&pki.join("ca.pem"))),
        Vec::new(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let until = stop.clone();
    let agent = tokio::spawn(Agent::build(config).run_until(until.cancelled_owned()));

    // A publisher on the TLS listener, with the gateway's certificate too.
    let files = edge_agent::tls::TlsFiles {
        section: "test",
        ca_file: Some(&pki.join("ca.pem")),
        client_cert_file: Some(&pki.join("gateway.pem")),
        client_key_file: Some(&pki.join("gateway.key")),
    };
    let mut options = MqttOptions::new("tls-publisher", "127.0.0.1", tls_port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(edge_agent::tls::client_config(&files)?),
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Published again until it arrives: the agent's subscription may come after the first.
        client
            .publish(
                format!("{root}/pump-3/state"),
                QoS::AtLeastOnce,
                false,
                r#"{"t": 61.5}"#,
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(tag, value)| tag == "pump-3.temp" && *value == 61.5)
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no reading of the TLS source within 20 s");
        }
    }
    pump.abort();
    stop.cancel();
    agent.await??;
    stop_ledger.cancel();
    drop(broker);
    Ok(())
}
