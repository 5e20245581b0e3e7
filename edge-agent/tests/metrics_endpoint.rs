//! The `edge-agent run` binary with `[metrics] listen`: its Prometheus endpoint answers with
//! the agent's counters while it polls a simulated PLC. The broker is left unreachable on
//! purpose: the agent keeps polling into its outbox, and the endpoint must not depend on the
//! uplink. Only 127.0.0.1 is touched.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use model::TenantId;
use simulators::{Scenario, spawn_modbus_plc};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Kills the agent when the test ends, whatever happened.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One plain HTTP/1.1 GET; the body, if the answer is 200.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Option<String>> {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("not an HTTP answer: {answer:?}");
    };
    Ok(head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_what_the_agent_polls() -> anyhow::Result<()> {
    let plc = spawn_modbus_plc("127.0.0.1:0".parse()?, Scenario::demo()).await?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ntenant = \"{}\"\nid = \"gw-metrics\"\n\n\
             [uplink]\nbroker = \"mqtt://127.0.0.1:{}\"\n\n\
             [outbox]\ndir = {}\n\n\
             [metrics]\nlisten = \"{metrics}\"\n\n\
             [[device]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"{}\"\n\
             poll_interval = \"100ms\"\n\n\
             [[device.tag]]\nname = \"press-1.bearing_temp\"\ntable = \"holding\"\n\
             address = 0\ndata_type = \"f32\"\n",
            TenantId::new_random(),
            free_port()?,
            toml::Value::String(dir.path().join("outbox").display().to_string()),
            plc.local_addr(),
        ),
    )?;
    let _agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .arg("run")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start edge-agent")?,
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = tokio::task::spawn_blocking(move || get(metrics, "/metrics")).await??;
        if let Some(body) = body
            && sample(&body, "maintainpro_edge_readings_polled_total").is_some_and(|n| n >= 3.0)
            && sample(&body, "maintainpro_edge_modbus_requests_total").is_some_and(|n| n >= 3.0)
        {
            assert!(body.contains("# TYPE maintainpro_edge_readings_polled_total counter"));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no polled readings on http://{metrics}/metrics within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
