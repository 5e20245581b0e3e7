//! `edge-agent read` as a user runs it: the binary against a simulated PLC on 127.0.0.1,
//! with a scenario of constant signals so that every printed value is known exactly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value as Json;
use simulators::{PlcHandle, Scenario, spawn_modbus_plc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Bounds each test; generous for a loaded machine, it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(30);

async fn within_deadline(test: impl Future<Output = ()>) {
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("the test finished within its deadline");
}

/// The f32 whose four bytes are the ASCII text "PUMP": a string tag over its registers reads
/// the text back.
const PUMP: f32 = 14_314_455_040.0;

async fn plc() -> PlcHandle {
    let scenario = Scenario::from_toml_str(
        &format!(
            "[[signal]]\nname = \"temp\"\naddress = 0\nkind.constant = {{ value = 21.5 }}\n\
             [[signal]]\nname = \"label\"\naddress = 2\nkind.constant = {{ value = {PUMP:.1} }}\n\
             [[signal]]\nname = \"count\"\naddress = 4\nkind.constant = {{ value = 1234 }}\n"
        ),
        "read-test",
    )
    .expect("the test scenario is valid");
    spawn_modbus_plc(SocketAddr::from(([127, 0, 0, 1], 0)), scenario)
        .await
        .expect("the PLC binds a free loopback port")
}

fn write_config(dir: &Path, plc: SocketAddr) -> PathBuf {
    let text = format!(
        r#"
[gateway]
tenant = "8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11"
id = "gw-read"

[uplink]
broker = "mqtt://127.0.0.1:1"

[[device]]
name = "plc"
protocol = "modbus-tcp"
address = "{plc}"
poll_interval = "100ms"
retries = 0

[[device.tag]]
name = "plc.temp"
table = "holding"
address = 0
data_type = "f32"
unit = "degC"

[[device.tag]]
name = "plc.label"
table = "holding"
address = 2
data_type = "string"
length = 2

[[device.tag]]
name = "plc.count_pct"
table = "input"
address = 4
data_type = "f32"
raw_min = 0
raw_max = 2000
eng_min = 0
eng_max = 100
unit = "%"

[[device.tag]]
name = "plc.temp_x10"
table = "holding"
address = 0
data_type = "f32"
scale = 10.0

[[device.tag]]
name = "plc.beyond"
table = "holding"
address = 1001
data_type = "u16"
"#
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("the temporary directory is writable");
    path
}

fn edge_agent(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    command
        .arg("read")
        .arg(config)
        .args(args)
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    command
}

async fn run(args: &[&str], config: &Path) -> Output {
    edge_agent(args, config)
        .output()
        .await
        .expect("the edge-agent binary runs")
}

fn json_lines(output: &Output) -> Vec<Json> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn once_as_json_prints_every_tag_decoded() {
    within_deadline(async {
        let plc = plc().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), plc.local_addr());

        let output = run(&["--once", "--json"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let lines = json_lines(&output);
        let by_tag = |tag: &str| -> &Json {
            lines
                .iter()
                .find(|l| l["tag"] == tag)
                .unwrap_or_else(|| panic!("no line for {tag} in {lines:?}"))
        };
        assert_eq!(lines.len(), 5, "{lines:?}");
        let expected = [
            ("plc.temp", Json::from(21.5), Json::from("degC"), "good"),
            ("plc.label", Json::from("PUMP"), Json::Null, "good"),
            ("plc.count_pct", Json::from(61.7), Json::from("%"), "good"),
            ("plc.temp_x10", Json::from(215.0), Json::Null, "good"),
            // Past the PLC's last register: the Modbus exception becomes a bad value.
            ("plc.beyond", Json::Null, Json::Null, "bad"),
        ];
        for (tag, value, unit, quality) in expected {
            let line = by_tag(tag);
            assert_eq!(line["value"], value, "{line}");
            assert_eq!(line["unit"], unit, "{line}");
            assert_eq!(line["quality"], quality, "{line}");
            let ts = line["ts"].as_str().expect("ts is a string");
            assert!(ts.ends_with('Z') && ts.contains('T'), "{line}");
        }
        plc.shutdown().await.expect("the PLC stops");
    })
    .await;
}

#[tokio::test]
async fn a_tag_filter_and_the_table() {
    within_deadline(async {
        let plc = plc().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), plc.local_addr());

        let output = run(&["--once", "--json", "--tag", "plc.label"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let lines = json_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["value"], "PUMP");

        let output = run(&["--once"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let table = String::from_utf8_lossy(&output.stdout);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 6, "{table}");
        assert!(rows[0].starts_with("TAG "), "{table}");
        let temp: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(&temp[..4], ["plc.temp", "21.5", "degC", "good"], "{table}");
        // Rows come in the order of the configuration, whatever order the reads took.
        assert!(
            rows[2].starts_with("plc.label ") && rows[2].contains("\"PUMP\""),
            "{table}"
        );
        assert!(
            rows[5].starts_with("plc.beyond ") && rows[5].contains(" bad "),
            "{table}"
        );
        plc.shutdown().await.expect("the PLC stops");
    })
    .await;
}

#[tokio::test]
async fn without_once_it_repeats_until_interrupted() {
    within_deadline(async {
        let plc = plc().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), plc.local_addr());

        let mut child = edge_agent(&["--json", "--tag", "plc.temp"], &config)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the edge-agent binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut stamps = Vec::new();
        while stamps.len() < 3 {
            let line = lines
                .next_line()
                .await
                .expect("stdout is readable")
                .expect("the command keeps printing");
            let json: Json = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(json["value"], 21.5, "{line}");
            stamps.push(json["ts"].as_str().expect("ts is a string").to_owned());
        }
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");

        let pid = child.id().expect("the child runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits i32")),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("the child can be signalled");
        let status = child.wait().await.expect("the child is waited for");
        assert!(status.success(), "{status:?}");
        plc.shutdown().await.expect("the PLC stops");
    })
    .await;
}

#[tokio::test]
async fn configuration_errors_exit_with_2() {
    within_deadline(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), SocketAddr::from(([127, 0, 0, 1], 9)));

        let output = run(&["--once", "--tag", "plc.tmp"], &config).await;
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("\"plc.tmp\""), "{stderr}");
        assert!(stderr.contains("plc.temp, plc.label"), "{stderr}");

        std::fs::write(&config, "[gateway]\nid = 3\n").expect("writable");
        let output = run(&["--once"], &config).await;
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
    })
    .await;
}

#[tokio::test]
async fn injected_faults_reach_the_agent_as_a_field_engineer_would_see_them() {
    within_deadline(async {
        let faulty = Scenario::from_toml_str(
            "[[signal]]\nname = \"temp\"\naddress = 0\nkind.constant = { value = 21.5 }\n\
             [[signal.fault]]\nkind = \"dropout\"\nat = \"0s\"\nduration = \"1h\"\n\
             [[signal]]\nname = \"pressure\"\naddress = 2\nkind.constant = { value = 4.0 }\n\
             [[signal.fault]]\nkind = \"spike\"\nat = \"0s\"\nduration = \"1h\"\nvalue = 99.0\n",
            "faults",
        )
        .expect("the fault scenario is valid");
        let lost = Scenario::from_toml_str(
            "[[signal]]\nname = \"temp\"\naddress = 0\nkind.constant = { value = 21.5 }\n\
             [[outage]]\nat = \"0s\"\nduration = \"1h\"\n",
            "outage",
        )
        .expect("the outage scenario is valid");
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let faulty = spawn_modbus_plc(loopback, faulty).await.expect("a PLC");
        let lost = spawn_modbus_plc(loopback, lost).await.expect("a PLC");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("agent.toml");
        let device = |name: &str, addr: SocketAddr, tags: &[(&str, u16)]| {
            let mut text = format!(
                "\n[[device]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\naddress = \"{addr}\"\nretries = 0\n"
            );
            for (tag, address) in tags {
                text.push_str(&format!(
                    "\n[[device.tag]]\nname = \"{name}.{tag}\"\ntable = \"holding\"\naddress = {address}\ndata_type = \"f32\"\n"
                ));
            }
            text
        };
        let text = format!(
            "[gateway]\ntenant = \"8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11\"\nid = \"gw-faults\"\n\n\
             [uplink]\nbroker = \"mqtt://127.0.0.1:1\"\n{}{}",
            device(
                "press",
                faulty.local_addr(),
                &[("temp", 0), ("pressure", 2)]
            ),
            device("remote", lost.local_addr(), &[("temp", 0)]),
        );
        std::fs::write(&config, text).expect("the temporary directory is writable");

        let output = run(&["--once", "--json"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let lines = json_lines(&output);
        let quality = |tag: &str| {
            let line = lines
                .iter()
                .find(|l| l["tag"] == tag)
                .unwrap_or_else(|| panic!("no line for {tag} in {lines:?}"));
            (line["value"].clone(), line["quality"].clone())
        };
        // A dropout (NaN in the registers) and a lost link (a gateway exception) are bad
        // readings; a spike is a good reading of a wrong value, for the rules to judge.
        assert_eq!(quality("press.temp"), (Json::Null, Json::from("bad")));
        assert_eq!(quality("press.pressure"), (Json::from(99.0), Json::from("good")));
        assert_eq!(quality("remote.temp"), (Json::Null, Json::from("bad")));
        faulty.shutdown().await.expect("the PLC stops");
        lost.shutdown().await.expect("the PLC stops");
    })
    .await;
}

/// Publishes `body` on `topic` as a retained message (QoS 1) and returns once the broker has
/// it.
async fn publish_retained(broker: &str, topic: &str, body: &str) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let (host, port) = model::topic::broker_address(broker).expect("a broker URL");
    let options = MqttOptions::new(
        format!("read-pub-{}", uuid::Uuid::new_v4().simple()),
        host,
        port,
    );
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    client
        .publish(topic, QoS::AtLeastOnce, true, body.as_bytes().to_vec())
        .await
        .expect("the publish is queued");
    while !matches!(
        eventloop.poll().await.expect("the broker answers"),
        Event::Incoming(Packet::PubAck(_))
    ) {}
    client.disconnect().await.expect("the disconnect is queued");
    while !matches!(
        eventloop.poll().await.expect("the broker answers"),
        Event::Outgoing(Outgoing::Disconnect)
    ) {}
}

/// An MQTT source is watched as well: its JSON messages print as readings, with a tag filter
/// too, and a tag no device has is not an error when an MQTT source may bring it.
#[tokio::test]
async fn mqtt_sources_are_watched_for_the_listen_window() {
    within_deadline(async {
        let broker = std::env::var("MPTEST_MQTT_URL")
            .expect("MPTEST_MQTT_URL is not set: run scripts/test.sh");
        let plc = plc().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = format!("read-{}", uuid::Uuid::new_v4().simple());
        let config = write_config(dir.path(), plc.local_addr());
        let mut text = std::fs::read_to_string(&config).expect("the config was written");
        text.push_str(&format!(
            r#"
[[mqtt]]
name = "floor"
broker = "{broker}"

[[mqtt.json]]
topic = "{root}/+/state"
tag = "{{2}}.temp"
value = "/t"
timestamp = "/ts"
"#
        ));
        std::fs::write(&config, text).expect("the config is writable");
        publish_retained(
            &broker,
            &format!("{root}/pump-7/state"),
            r#"{"t": 48.25, "ts": 1796205600000}"#,
        )
        .await;

        let output = run(&["--once", "--json", "--listen", "2s"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let lines = json_lines(&output);
        assert_eq!(
            lines.len(),
            6,
            "five device tags and the MQTT one: {lines:?}"
        );
        let pump = lines
            .iter()
            .find(|l| l["tag"] == "pump-7.temp")
            .unwrap_or_else(|| panic!("no MQTT reading in {lines:?}"));
        assert_eq!(pump["value"], 48.25, "{pump}");
        assert_eq!(pump["quality"], "good", "{pump}");
        assert!(
            pump["ts"]
                .as_str()
                .is_some_and(|ts| ts.starts_with("2026-12-02T10:00:00")),
            "{pump}"
        );

        let output = run(
            &["--once", "--json", "--listen", "2s", "--tag", "pump-7.temp"],
            &config,
        )
        .await;
        assert!(output.status.success(), "{output:?}");
        let lines = json_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["tag"], "pump-7.temp");

        let output = run(&["--once", "--listen", "soon"], &config).await;
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("not a duration"),
            "{output:?}"
        );
        publish_retained(&broker, &format!("{root}/pump-7/state"), "").await;
        plc.shutdown().await.expect("the PLC stops");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_servers_are_read_once_with_text_units_and_bad_nodes() {
    within_deadline(async {
        let pki = tempfile::tempdir().expect("a temporary directory");
        let scenario = Scenario::from_toml_str(
            "[[signal]]\nname = \"oven.temp\"\naddress = 0\nkind.constant = { value = 180.25 }\n",
            "read-opcua",
        )
        .expect("the test scenario is valid");
        let server = simulators::opcua::spawn_opcua_server(
            simulators::opcua::OpcUaServerSpec::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                pki.path().join("server"),
            ),
            scenario,
        )
        .await
        .expect("the OPC-UA server starts");
        // The server's product name is a text variable of the standard namespace.
        let config = pki.path().join("agent.toml");
        let text = format!(
            r#"
[gateway]
tenant = "8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11"
id = "gw-read"

[uplink]
broker = "mqtt://127.0.0.1:1"

[[opcua]]
name = "oven-plc"
endpoint = "{}"
pki_dir = "{}"

[[opcua.tag]]
name = "oven.temp"
node = "{}"
unit = "degC"

[[opcua.tag]]
name = "oven.product_name"
node = "i=2261"

[[opcua.tag]]
name = "oven.missing"
node = "ns={};s=NoSuchVariable"
"#,
            server.endpoint(),
            pki.path().join("client").display(),
            server.node_id("oven.temp"),
            server.namespace(),
        );
        std::fs::write(&config, text).expect("the temporary directory is writable");

        let output = run(&["--once", "--json"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let lines = json_lines(&output);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["tag"], "oven.temp");
        assert_eq!(lines[0]["value"], Json::from(180.25));
        assert_eq!(lines[0]["unit"], "degC");
        assert_eq!(lines[0]["quality"], "good");
        assert_eq!(lines[1]["tag"], "oven.product_name");
        assert!(lines[1]["value"].is_string(), "{}", lines[1]);
        assert_eq!(lines[2]["tag"], "oven.missing");
        assert_eq!(lines[2]["quality"], "bad", "{}", lines[2]);

        let output = run(&["--once", "--tag", "oven.temp"], &config).await;
        assert!(output.status.success(), "{output:?}");
        let table = String::from_utf8_lossy(&output.stdout);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table.contains("180.25") && table.contains("degC"),
            "{table}"
        );
        server.shutdown().await.expect("the server stops");
    })
    .await;
}
