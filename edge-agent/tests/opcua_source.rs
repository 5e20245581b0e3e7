//! The OPC-UA source against our simulated OPC-UA server: subscriptions that survive a server
//! restart, polling over a signed and encrypted channel with a user name, and the errors a
//! field engineer gets for a wrong login or a security setting the server does not offer.
//!
//! Everything listens on 127.0.0.1 and keeps its certificates in temporary directories.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use edge_agent::agent::Chunk;
use edge_agent::config::OpcUaSourceConfig;
use edge_agent::opcua::source::{OpcUaError, OpcUaSource};
use edge_agent::{AgentConfig, AgentStats};
use model::{GatewayId, Quality, Reading};
use simulators::Scenario;
use simulators::opcua::{OpcUaHandle, OpcUaServerSpec, spawn_opcua_server};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Two signals of the demo plant, as the simulator names them.
fn signals() -> (String, String) {
    let demo = Scenario::demo();
    let names: Vec<String> = demo
        .signals()
        .iter()
        .take(2)
        .map(|s| s.name.as_str().to_owned())
        .collect();
    (names[0].clone(), names[1].clone())
}

/// An `[[opcua]]` section read from TOML, as the agent reads it (validation included).
fn source_config(section: &str) -> anyhow::Result<OpcUaSourceConfig> {
    let text = format!(
        r#"
[gateway]
tenant = "0b7e4a6e-5f0c-4d7e-9a53-3a1e0f0a0001"
id = "opc-gw"

[uplink]
broker = "mqtt://127.0.0.1:1883"

{section}
"#
    );
    let config = AgentConfig::from_toml_with_env("test.toml", &text, Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(config.opcua[0].clone())
}

fn tags(server: &OpcUaHandle) -> String {
    let (a, b) = signals();
    format!(
        r#"
[[opcua.tag]]
name = "{a}"
node = "{}"

[[opcua.tag]]
name = "{b}"
node = "{}"
sampling_interval = "100ms"
"#,
        server.node_id(&a),
        server.node_id(&b)
    )
}

async fn start(spec: OpcUaServerSpec) -> anyhow::Result<OpcUaHandle> {
    spawn_opcua_server(spec, Scenario::demo())
        .await
        .map_err(anyhow::Error::msg)
}

/// Runs the source and returns what it hands over, until the token is cancelled.
fn run(config: OpcUaSourceConfig, cancel: &CancellationToken) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(64);
    let source = OpcUaSource::new(
        config,
        GatewayId::parse("opc-gw").expect("gateway id"),
        Arc::new(AgentStats::default()),
    );
    tokio::spawn(source.run(tx, cancel.clone()));
    rx
}

/// Waits up to `within` for readings that satisfy `done`, collecting everything seen.
async fn until(
    rx: &mut mpsc::Receiver<Chunk>,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&[Reading]) -> bool,
) -> anyhow::Result<Vec<Reading>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done(&seen) {
            return Ok(seen);
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(chunk)) => seen.extend(chunk.readings),
            Ok(None) => bail!("the source stopped while waiting for {what}"),
            Err(_) => bail!(
                "no {what} within {within:?}; saw {} readings: {seen:?}",
                seen.len()
            ),
        }
    }
}

/// Waits until both tags of [`signals`] showed at least `n` different good values.
async fn both_streaming(
    rx: &mut mpsc::Receiver<Chunk>,
    within: Duration,
    what: &str,
    n: usize,
) -> anyhow::Result<Vec<Reading>> {
    let (a, b) = signals();
    until(rx, within, what, |seen| {
        good_values(seen, &a).len() >= n && good_values(seen, &b).len() >= n
    })
    .await
}

fn good_values(seen: &[Reading], tag: &str) -> HashSet<u64> {
    seen.iter()
        .filter(|r| r.tag.as_str() == tag && r.quality == Quality::Good)
        .map(|r| r.value.to_bits())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_by_itself_after_the_server_restarts() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let spec = OpcUaServerSpec::new("127.0.0.1:0".parse()?, pki.path().join("server"));
    let server = start(spec.clone()).await?;
    assert_eq!(
        server.namespace(),
        2,
        "the documented node ids are ns=2;s=<signal>"
    );
    let addr = server.local_addr();
    let config = source_config(&format!(
        r#"
[[opcua]]
name = "sim"
endpoint = "{}"
pki_dir = "{}"
publishing_interval = "200ms"
keep_alive_count = 5
{}
"#,
        server.endpoint(),
        pki.path().join("client").display(),
        tags(&server)
    ))?;
    let (a, b) = signals();
    let cancel = CancellationToken::new();
    let mut rx = run(config, &cancel);

    // Both tags stream changing, good values with their source timestamps.
    let seen = both_streaming(&mut rx, Duration::from_secs(20), "values of both tags", 3).await?;
    let now = model::Timestamp::now();
    assert!(
        seen.iter()
            .all(|r| r.ts.micros_since(now).abs() < 10_000_000),
        "source timestamps are the server's sampling times"
    );

    // The server goes away: the gap is marked once per tag with a bad reading.
    server.shutdown().await.map_err(anyhow::Error::msg)?;
    let seen = until(&mut rx, Duration::from_secs(30), "gap marks", |seen| {
        [&a, &b].iter().all(|t| {
            seen.iter()
                .any(|r| r.tag.as_str() == t.as_str() && r.quality == Quality::Bad)
        })
    })
    .await?;
    let marked = seen.iter().filter(|r| r.quality == Quality::Bad).count();
    assert_eq!(marked, 2, "one mark per tag: {seen:?}");

    // The same server comes back on the same port: data resumes without anyone acting.
    let mut spec = spec;
    spec.listen = addr;
    let server = start(spec).await?;
    both_streaming(
        &mut rx,
        Duration::from_secs(60),
        "values after the restart",
        2,
    )
    .await?;
    cancel.cancel();
    server.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_over_sign_and_encrypt_with_a_user_name() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let mut spec = OpcUaServerSpec::new("127.0.0.1:0".parse()?, pki.path().join("server"));
    spec.anonymous = false;
    spec.users = vec![("operator".into(), "s3cret-pass".into())];
    let server = start(spec).await?;
    let section = |extra: &str| {
        format!(
            r#"
[[opcua]]
name = "secure"
endpoint = "{}"
pki_dir = "{}"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
trust_server_certificate = true
mode = "poll"
poll_interval = "200ms"
timeout = "5s"
{extra}
{}
"#,
            server.endpoint(),
            pki.path().join("client").display(),
            tags(&server).replace("sampling_interval = \"100ms\"", "")
        )
    };

    let config = source_config(&section(
        "username = \"operator\"\npassword = \"s3cret-pass\"",
    ))?;
    let once = OpcUaSource::new(
        config.clone(),
        GatewayId::parse("opc-gw")?,
        Arc::new(AgentStats::default()),
    )
    .read_once()
    .await
    .context("read once")?;
    assert_eq!(once.len(), 2);
    assert!(once.iter().all(|s| s.quality == Quality::Good), "{once:?}");

    let cancel = CancellationToken::new();
    let mut rx = run(config, &cancel);
    both_streaming(&mut rx, Duration::from_secs(20), "polled values", 3).await?;
    cancel.cancel();

    // Signed only, not encrypted: the other secure endpoint the server offers.
    let signed = source_config(
        &section("username = \"operator\"\npassword = \"s3cret-pass\"")
            .replace("\"SignAndEncrypt\"", "\"Sign\""),
    )?;
    let once = OpcUaSource::new(signed, GatewayId::parse("opc-gw")?, Arc::default())
        .read_once()
        .await
        .context("read once, signed")?;
    assert!(once.iter().all(|s| s.quality == Quality::Good), "{once:?}");

    // Anonymous is not offered: the error says so and how to fix it.
    let anonymous = source_config(&section(""))?;
    let err = OpcUaSource::new(anonymous, GatewayId::parse("opc-gw")?, Arc::default())
        .read_once()
        .await
        .expect_err("anonymous is refused");
    assert!(matches!(err, OpcUaError::LoginNotOffered { .. }), "{err}");
    assert!(
        err.to_string().contains("set username and password"),
        "{err}"
    );

    // A wrong password: refused at the first attempt (not tried again and again), with the
    // server's reason.
    let wrong = source_config(&section("username = \"operator\"\npassword = \"wrong\""))?;
    let err = OpcUaSource::new(wrong, GatewayId::parse("opc-gw")?, Arc::default())
        .read_once()
        .await
        .expect_err("a wrong password is refused");
    assert!(matches!(err, OpcUaError::SessionRefused { .. }), "{err}");
    assert!(err.to_string().contains("username and password"), "{err}");

    // A policy the server does not offer: the error lists what it offers.
    let text = section("username = \"operator\"\npassword = \"s3cret-pass\"")
        .replace("Basic256Sha256", "Aes256_Sha256_RsaPss");
    let err = OpcUaSource::new(
        source_config(&text)?,
        GatewayId::parse("opc-gw")?,
        Arc::default(),
    )
    .read_once()
    .await
    .expect_err("no such endpoint");
    assert!(
        err.to_string().contains("Basic256Sha256/SignAndEncrypt"),
        "{err}"
    );
    server.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(())
}

/// A TCP relay between the agent and the server that can stop passing bytes while keeping
/// every connection open: a network that silently swallows traffic.
struct Relay {
    addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> anyhow::Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let gate = Arc::clone(&open);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pass(cr, sw, Arc::clone(&gate)));
                tokio::spawn(pass(sr, cw, Arc::clone(&gate)));
            }
        });
        Ok(Relay { addr, open })
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while the gate is open; while it is shut, what arrives is held back
/// and dropped, and nothing is written.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.load(std::sync::atomic::Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err()
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_goes_silent_on_an_open_connection_is_detected_and_recovered()
-> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let server = start(OpcUaServerSpec::new(
        "127.0.0.1:0".parse()?,
        pki.path().join("server"),
    ))
    .await?;
    let relay = Relay::start(server.local_addr()).await?;
    let config = source_config(&format!(
        r#"
[[opcua]]
name = "behind-relay"
endpoint = "opc.tcp://{}/"
pki_dir = "{}"
publishing_interval = "200ms"
keep_alive_count = 5
watchdog = "3s"
timeout = "2s"
{}
"#,
        relay.addr,
        pki.path().join("client").display(),
        tags(&server)
    ))?;
    let cancel = CancellationToken::new();
    let mut rx = run(config, &cancel);
    both_streaming(
        &mut rx,
        Duration::from_secs(20),
        "values before the silence",
        2,
    )
    .await?;

    // The network swallows everything; the TCP connection stays up. Nothing says the
    // subscription is gone but its silence: the gap must be marked all the same.
    relay.set_open(false);
    until(&mut rx, Duration::from_secs(30), "gap marks", |seen| {
        seen.iter().any(|r| r.quality == Quality::Bad)
    })
    .await?;

    // Traffic flows again: data resumes with no one acting.
    relay.set_open(true);
    both_streaming(
        &mut rx,
        Duration::from_secs(90),
        "values after the silence",
        2,
    )
    .await?;
    cancel.cancel();
    server.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_value_shows_good_again_after_a_network_blip() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    // A value that never changes: the server reports it once per subscription, never again.
    let steady = Scenario::from_toml_str(
        "[[signal]]\nname = \"tank.level\"\naddress = 0\nkind.constant = { value = 42.5 }\n",
        "steady",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = spawn_opcua_server(
        OpcUaServerSpec::new("127.0.0.1:0".parse()?, pki.path().join("server")),
        steady,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let relay = Relay::start(server.local_addr()).await?;
    let config = source_config(&format!(
        r#"
[[opcua]]
name = "steady"
endpoint = "opc.tcp://{}/"
pki_dir = "{}"
publishing_interval = "200ms"
keep_alive_count = 5
timeout = "1s"

[[opcua.tag]]
name = "tank.level"
node = "{}"
"#,
        relay.addr,
        pki.path().join("client").display(),
        server.node_id("tank.level"),
    ))?;
    let cancel = CancellationToken::new();
    let mut rx = run(config, &cancel);
    let good = |seen: &[Reading]| {
        seen.iter()
            .any(|r| r.quality == Quality::Good && r.value == 42.5)
    };
    until(&mut rx, Duration::from_secs(20), "the steady value", good).await?;

    relay.set_open(false);
    let marked = until(&mut rx, Duration::from_secs(30), "the gap mark", |seen| {
        seen.iter().any(|r| r.quality == Quality::Bad)
    })
    .await?;
    let gap = marked
        .iter()
        .find(|r| r.quality == Quality::Bad)
        .map(|r| r.ts)
        .context("a mark")?;
    relay.set_open(true);

    // The value did not change, so no notification carries it: the source must read it, and
    // stamp it after the mark, for the tag to show good again before any heartbeat.
    let resumed = until(
        &mut rx,
        Duration::from_secs(45),
        "the value after the blip",
        good,
    )
    .await?;
    let back = resumed
        .iter()
        .find(|r| r.quality == Quality::Good)
        .context("a good reading")?;
    assert!(back.ts > gap, "{back:?} comes after the mark at {gap:?}");
    cancel.cancel();
    server.shutdown().await.map_err(anyhow::Error::msg)?;
    Ok(())
}
