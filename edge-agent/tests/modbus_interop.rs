//! The Modbus source against peers it did not write:
//!
//! - pymodbus, an independent implementation whose own conversion encodes the values
//!   (`tests/pymodbus_server.py`, run with the Python of `MPTEST_PYTHON`, which
//!   `scripts/test.sh` sets up);
//! - the simulators' PLC speaking RTU over TCP, read by the agent's poller;
//! - scripted RTU peers, over TCP and on a pseudo-terminal (a serial line without hardware),
//!   where one unit stays silent.

mod python_peer;

use std::collections::HashMap;
use std::future::{self, Future, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent::config::DeviceConfig;
use edge_agent::modbus::line::{Line, Sample, TagScope, Value};
use edge_agent::modbus::poller::pollers;
use edge_agent::modbus::transport::group_devices;
use edge_agent::{AgentConfig, AgentStats};
use model::{Quality, Reading};
use simulators::{Scenario, spawn_modbus_rtu_over_tcp_plc};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// Bounds each test; generous for a loaded machine, it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(30);

async fn within_deadline(test: impl Future<Output = ()>) {
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("the test finished within its deadline");
}

fn devices(body: &str) -> Vec<DeviceConfig> {
    let text = format!(
        "[gateway]\ntenant = \"8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11\"\nid = \"gw-interop\"\n\
         [uplink]\nbroker = \"mqtt://127.0.0.1:1\"\n{body}"
    );
    match AgentConfig::from_toml_with_env("interop.toml", &text, Vec::new()) {
        Ok(config) => config.device,
        Err(e) => panic!("{e}"),
    }
}

fn by_tag(samples: &[Sample]) -> HashMap<&str, &Sample> {
    samples.iter().map(|s| (s.tag.as_str(), s)).collect()
}

fn number(v: f64) -> Option<Value> {
    Some(Value::Number(v))
}

fn text(t: &str) -> Option<Value> {
    Some(Value::Text(t.to_owned()))
}

/// The pymodbus server; killed when dropped (its standard input closes then too).
struct Pymodbus {
    _child: Child,
    port: u16,
}

async fn start_pymodbus() -> Pymodbus {
    let (child, line) = python_peer::start("pymodbus_server.py", &[], "pymodbus").await;
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("the server printed {line:?} instead of a port: {e}"));
    Pymodbus {
        _child: child,
        port,
    }
}

#[tokio::test]
async fn values_pymodbus_encoded_decode_to_the_same_values() {
    within_deadline(async {
        let server = start_pymodbus().await;
        let port = server.port;
        let devices = devices(&format!(
            r#"
[[device]]
name = "py"
protocol = "modbus-tcp"
address = "127.0.0.1:{port}"
unit_id = 1
timeout = "2s"

[[device.tag]]
name = "hr.f32_abcd"
table = "holding"
address = 0
data_type = "f32"

[[device.tag]]
name = "hr.f32_cdab"
table = "holding"
address = 2
data_type = "f32"
byte_order = "CDAB"

[[device.tag]]
name = "hr.i32"
table = "holding"
address = 4
data_type = "i32"

[[device.tag]]
name = "hr.u32_cdab"
table = "holding"
address = 6
data_type = "u32"
byte_order = "CDAB"

[[device.tag]]
name = "hr.u16"
table = "holding"
address = 8
data_type = "u16"

[[device.tag]]
name = "hr.i16"
table = "holding"
address = 9
data_type = "i16"

[[device.tag]]
name = "hr.text"
table = "holding"
address = 10
data_type = "string"
length = 6

[[device.tag]]
name = "hr.text_badc"
table = "holding"
address = 16
data_type = "string"
length = 4
byte_order = "BADC"

[[device.tag]]
name = "hr.f64"
table = "holding"
address = 20
data_type = "f64"

[[device.tag]]
name = "hr.level"
table = "holding"
address = 24
data_type = "u16"
raw_min = 0
raw_max = 27648
eng_min = 0
eng_max = 100

[[device.tag]]
name = "hr.flag"
table = "holding"
address = 25
data_type = "bool"
bit = 5

[[device.tag]]
name = "hr.unmapped"
table = "holding"
address = 200
data_type = "u16"

[[device.tag]]
name = "coil.0"
table = "coil"
address = 0
data_type = "bool"

[[device.tag]]
name = "coil.1"
table = "coil"
address = 1
data_type = "bool"

[[device.tag]]
name = "coil.3"
table = "coil"
address = 3
data_type = "bool"

[[device.tag]]
name = "di.1"
table = "discrete"
address = 1
data_type = "bool"

[[device.tag]]
name = "ir.u16"
table = "input"
address = 0
data_type = "u16"

[[device.tag]]
name = "ir.f32"
table = "input"
address = 1
data_type = "f32"
"#
        ));
        let stats = Arc::new(AgentStats::default());
        let mut line = Line::new(devices, TagScope::All, Arc::clone(&stats));
        let expected = [
            ("hr.f32_abcd", number(21.5)),
            ("hr.f32_cdab", number(-3.25)),
            ("hr.i32", number(-123_456.0)),
            ("hr.u32_cdab", number(70_000.0)),
            ("hr.u16", number(54_321.0)),
            ("hr.i16", number(-42.0)),
            ("hr.text", text("PUMP-7")),
            ("hr.text_badc", text("MOTOR")),
            ("hr.f64", number(1234.5678)),
            ("hr.level", number(50.0)),
            ("hr.flag", number(1.0)),
            // pymodbus answers an address outside its blocks with an exception.
            ("hr.unmapped", None),
            ("coil.0", number(1.0)),
            ("coil.1", number(0.0)),
            ("coil.3", number(1.0)),
            ("di.1", number(1.0)),
            ("ir.u16", number(777.0)),
            ("ir.f32", number(9.75)),
        ];
        // Twice: the exception of the first poll leaves the connection usable.
        for poll in 1..=2 {
            let samples = line.poll_once().await;
            assert_eq!(samples.len(), expected.len(), "{samples:?}");
            let got = by_tag(&samples);
            for (tag, value) in &expected {
                let sample = got[tag];
                assert_eq!(&sample.value, value, "poll {poll}: {tag}");
                let quality = if value.is_some() {
                    Quality::Good
                } else {
                    Quality::Bad
                };
                assert_eq!(sample.quality, quality, "poll {poll}: {tag}");
            }
            assert_eq!(AgentStats::get(&stats.device_errors), poll);
        }
        // One request per table and holding block, each poll; no retries of the exception.
        assert_eq!(AgentStats::get(&stats.requests), 2 * 5);
    })
    .await;
}

fn constant_scenario() -> Scenario {
    Scenario::from_toml_str(
        "[[signal]]\nname = \"temp\"\naddress = 0\nkind.constant = { value = 21.5 }\n\
         [[signal]]\nname = \"count\"\naddress = 4\nkind.constant = { value = 1234 }\n",
        "interop",
    )
    .expect("the test scenario is valid")
}

#[tokio::test]
async fn the_poller_reads_rtu_devices_behind_one_converter_over_one_line() {
    within_deadline(async {
        let plc = spawn_modbus_rtu_over_tcp_plc(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            constant_scenario(),
        )
        .await
        .expect("the PLC binds a free loopback port");
        let at = plc.local_addr();
        let devices = devices(&format!(
            r#"
[[device]]
name = "drive-1"
protocol = "modbus-rtu-over-tcp"
address = "{at}"
unit_id = 1
poll_interval = "20ms"

[[device.tag]]
name = "drive-1.temp"
table = "holding"
address = 0
data_type = "f32"

[[device.tag]]
name = "drive-1.label"
table = "holding"
address = 0
data_type = "string"
length = 2

[[device]]
name = "drive-2"
protocol = "modbus-rtu-over-tcp"
address = "{at}"
unit_id = 2
poll_interval = "20ms"

[[device.tag]]
name = "drive-2.count"
table = "input"
address = 4
data_type = "f32"
deadband = 0.5
"#
        ));
        assert_eq!(group_devices(&devices), [vec![0, 1]]);
        let stats = Arc::new(AgentStats::default());
        let (tx, mut rx) = mpsc::channel::<edge_agent::agent::Chunk>(64);
        let mut lines = pollers(&devices, &tx, &stats);
        assert_eq!(lines.len(), 1, "one poller for the shared line");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(lines.remove(0).run(cancel.clone()));

        let mut readings: Vec<Reading> = Vec::new();
        while readings
            .iter()
            .filter(|r| r.tag.as_str() == "drive-1.temp")
            .count()
            < 5
        {
            readings.extend(rx.recv().await.expect("the poller keeps sending").readings);
        }
        cancel.cancel();
        task.await.expect("the poller stops cleanly");

        let count = |tag: &str| readings.iter().filter(|r| r.tag.as_str() == tag).count();
        // The string tag is never published; the constant count with a deadband is
        // forwarded once, while drive-1 was polled at least five times.
        assert_eq!(count("drive-1.label"), 0, "{readings:?}");
        assert_eq!(count("drive-2.count"), 1, "{readings:?}");
        for r in &readings {
            let want = if r.tag.as_str() == "drive-1.temp" {
                21.5
            } else {
                1234.0
            };
            assert_eq!((r.value, r.quality), (want, Quality::Good), "{r:?}");
        }
        // Every poll got its answer: nothing failed, nothing was retried.
        assert_eq!(AgentStats::get(&stats.device_errors), 0);
        assert!(plc.requests_served() >= 10, "{}", plc.requests_served());
        plc.shutdown().await.expect("the PLC stops");
    })
    .await;
}

/// A scripted RTU bus: the units in `answering` reply to holding-register reads with their
/// own unit id in every register; any other unit stays silent, as an absent device does.
#[derive(Debug, Clone)]
struct Bus {
    answering: Vec<u8>,
    requests: Arc<Mutex<HashMap<u8, u32>>>,
}

impl Bus {
    fn new(answering: &[u8]) -> Self {
        Self {
            answering: answering.to_vec(),
            requests: Arc::default(),
        }
    }

    fn requests_to(&self, unit: u8) -> u32 {
        let requests = self
            .requests
            .lock()
            .expect("the counter lock is never poisoned");
        requests.get(&unit).copied().unwrap_or(0)
    }
}

impl Service for Bus {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let unit = request.slave;
        *self
            .requests
            .lock()
            .expect("the counter lock is never poisoned")
            .entry(unit)
            .or_default() += 1;
        if !self.answering.contains(&unit) {
            return future::ready(Ok(None));
        }
        future::ready(match request.request {
            Request::ReadHoldingRegisters(_, count) => {
                Ok(Some(Response::ReadHoldingRegisters(vec![
                    u16::from(unit);
                    usize::from(count)
                ])))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

fn unit_devices(protocol_and_place: &str, units: &[u8]) -> Vec<DeviceConfig> {
    let mut body = String::new();
    for unit in units {
        body.push_str(&format!(
            "[[device]]\nname = \"unit-{unit}\"\n{protocol_and_place}\nunit_id = {unit}\n\
             timeout = \"150ms\"\nretries = 1\nretry_backoff = \"10ms\"\n\
             [[device.tag]]\nname = \"unit-{unit}.value\"\ntable = \"holding\"\naddress = 0\n\
             data_type = \"u16\"\n"
        ));
    }
    devices(&body)
}

/// Unit 1 answers and unit 2 is silent on every poll.
fn assert_one_answers_two_is_silent(samples: &[Sample]) {
    let got = by_tag(samples);
    assert_eq!(got["unit-1.value"].value, number(1.0), "{samples:?}");
    assert_eq!(got["unit-2.value"].quality, Quality::Bad, "{samples:?}");
}

/// Serves `bus` as RTU over TCP on a free loopback port. Returns the address, the count of
/// connections accepted so far, and the server task (abort it at the end).
async fn serve_over_tcp(bus: &Bus) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let at = listener
        .local_addr()
        .expect("a bound listener has an address");
    let connections = Arc::new(AtomicUsize::new(0));
    let server = {
        let (bus, connections) = (bus.clone(), Arc::clone(&connections));
        tokio::spawn(async move {
            let on_connected = |stream: TcpStream, _peer: SocketAddr| {
                connections.fetch_add(1, Ordering::Relaxed);
                future::ready(Ok(Some((bus.clone(), stream))))
            };
            tokio_modbus::server::rtu_over_tcp::Server::new(listener)
                .serve(&on_connected, |_error| {})
                .await
        })
    };
    (at, connections, server)
}

#[tokio::test]
async fn a_silent_unit_leaves_the_shared_line_open() {
    within_deadline(async {
        let bus = Bus::new(&[1]);
        let (at, connections, server) = serve_over_tcp(&bus).await;
        let place = format!("protocol = \"modbus-rtu-over-tcp\"\naddress = \"{at}\"");
        let stats = Arc::new(AgentStats::default());

        let mut line = Line::new(
            unit_devices(&place, &[1, 2]),
            TagScope::All,
            Arc::clone(&stats),
        );
        for _ in 0..2 {
            assert_one_answers_two_is_silent(&line.poll_once().await);
        }
        assert_eq!(
            connections.load(Ordering::Relaxed),
            1,
            "the line was reopened"
        );
        assert_eq!(bus.requests_to(1), 2);
        // Two polls, each an attempt and one retry.
        assert_eq!(bus.requests_to(2), 4);

        // Alone on its line, the silent unit makes the whole line silent: each poll
        // reopens it, in case the converter itself is gone.
        let mut alone = Line::new(unit_devices(&place, &[2]), TagScope::All, stats);
        for _ in 0..2 {
            let samples = alone.poll_once().await;
            assert_eq!(samples[0].quality, Quality::Bad, "{samples:?}");
        }
        assert_eq!(connections.load(Ordering::Relaxed), 3);
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn request_pause_spaces_the_requests_of_a_device() {
    within_deadline(async {
        let bus = Bus::new(&[1]);
        let (at, _, server) = serve_over_tcp(&bus).await;
        // Two tags too far apart to share a request: two requests per poll.
        let devices = devices(&format!(
            "[[device]]\nname = \"slow\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"{at}\"\n\
             request_pause = \"150ms\"\n\
             [[device.tag]]\nname = \"a\"\ntable = \"holding\"\naddress = 0\ndata_type = \"u16\"\n\
             [[device.tag]]\nname = \"b\"\ntable = \"holding\"\naddress = 500\ndata_type = \"u16\"\n"
        ));
        let mut line = Line::new(devices, TagScope::All, Arc::new(AgentStats::default()));
        let started = tokio::time::Instant::now();
        let samples = line.poll_once().await;
        let took = started.elapsed();
        assert!(samples.iter().all(|s| s.value == number(1.0)), "{samples:?}");
        assert_eq!(bus.requests_to(1), 2);
        assert!(took >= Duration::from_millis(150), "{took:?}");
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn units_on_a_serial_line_share_the_port() {
    within_deadline(async {
        // A pseudo-terminal stands in for an RS-485 adapter: the agent opens the terminal's
        // path like a serial port, and the scripted bus answers on the other side.
        let (bus_side, agent_side) =
            tokio_serial::SerialStream::pair().expect("the system provides pseudo-terminals");
        let path =
            tokio_serial::SerialPort::name(&agent_side).expect("a pseudo-terminal has a path");
        let bus = Bus::new(&[1, 3]);
        let server = tokio::spawn(
            tokio_modbus::server::rtu::Server::new(bus_side).serve_forever(bus.clone()),
        );
        let place = format!(
            "protocol = \"modbus-rtu\"\ndevice = {}\nbaud_rate = 19200",
            toml::Value::String(path)
        );
        let devices = unit_devices(&place, &[1, 2, 3]);
        assert_eq!(group_devices(&devices), [vec![0, 1, 2]]);
        let mut line = Line::new(devices, TagScope::All, Arc::new(AgentStats::default()));
        for _ in 0..2 {
            let samples = line.poll_once().await;
            assert_one_answers_two_is_silent(&samples);
            assert_eq!(
                by_tag(&samples)["unit-3.value"].value,
                number(3.0),
                "{samples:?}"
            );
        }
        assert_eq!(
            [1, 2, 3].map(|unit| bus.requests_to(unit)),
            [2, 4, 2],
            "every unit asked on every poll, the silent one retried"
        );
        server.abort();
        // The agent's end of the terminal stays open until here, so the bus never sees a
        // hang-up while the line is briefly closed.
        drop(agent_side);
    })
    .await;
}
