//! The `mqtts://` uplink against Mosquitto with a TLS listener that requires a client
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
    let local = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    certificates(
        &pki,
        "Plant CA",
        &[("broker", local), ("gateway", vec!["gw-tls".to_owned()])],
    )?;
    certificates(&other, "Someone else's CA", &[])?;
    let tls_port = free_port()?;
    let broker = PrivateBroker::start_with(
        &dir.path().join("mq"),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.join("ca.pem").display(),
            pki.join("broker.pem").display(),
            pki.join("broker.key").display(),
        ),
    )?;
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
