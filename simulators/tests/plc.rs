//! The PLC against tokio-modbus's own client, over real sockets on 127.0.0.1.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use simulators::registers::decode_f32;
use simulators::{PlcHandle, Scenario, spawn_modbus_plc, spawn_modbus_rtu_over_tcp_plc};
use tokio_modbus::ExceptionCode;
use tokio_modbus::client::{Context, Reader, Writer, rtu, tcp};
use tokio_modbus::slave::{Slave, SlaveContext};

/// Bounds each real-time test; generous for loopback on a loaded machine, it only turns a
/// hang into a failure. The paused-time test has no deadline: a pending timer would let
/// tokio's auto-advance jump the PLC's clock while a request is in flight.
const DEADLINE: Duration = Duration::from_secs(5);

async fn within_deadline(test: impl Future<Output = ()>) {
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("the test finished within its deadline");
}

async fn start() -> (PlcHandle, Context) {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let plc = spawn_modbus_plc(any_port, Scenario::demo())
        .await
        .expect("the PLC binds a free loopback port");
    assert_ne!(plc.local_addr().port(), 0);
    let client = connect(&plc).await;
    (plc, client)
}

async fn connect(plc: &PlcHandle) -> Context {
    tcp::connect(plc.local_addr())
        .await
        .expect("the client connects to the PLC")
}

async fn stop(plc: PlcHandle) {
    plc.shutdown().await.expect("the PLC stops cleanly");
}

fn demo_value(name: &str, t: f64) -> f32 {
    let value = Scenario::demo()
        .value_of(name, t)
        .expect("the demo has this signal");
    value as f32
}

/// The demo's four values, decoded from a read of registers 0..8.
async fn read_demo(client: &mut Context) -> [f32; 4] {
    let words = client
        .read_holding_registers(0, 8)
        .await
        .expect("the connection held")
        .expect("the read was accepted");
    assert_eq!(words.len(), 8);
    let value = |i: usize| decode_f32([words[2 * i], words[2 * i + 1]]);
    [value(0), value(1), value(2), value(3)]
}

#[tokio::test]
async fn serves_the_demo_and_refuses_illegal_reads_without_dropping_the_client() {
    within_deadline(async {
        let (plc, mut client) = start().await;

        let [bearing, vibration, current, cycles] = read_demo(&mut client).await;
        // Near t = 0 every sine sits close to its base; the bounds add noise and a second of drift.
        assert!(
            (bearing - 62.0).abs() <= 0.5 + 0.4,
            "bearing_temp {bearing}"
        );
        assert!(
            (vibration - 2.5).abs() <= 0.1 + 0.2,
            "vibration {vibration}"
        );
        assert!(
            (current - 41.0).abs() <= 1.0 + 1.0,
            "motor_current {current}"
        );
        assert!((0.0..=1.0).contains(&cycles), "cycle_count {cycles}");

        let refusals = [
            (
                client.read_holding_registers(999, 4).await,
                ExceptionCode::IllegalDataAddress,
            ),
            (
                client.read_input_registers(0, 126).await,
                ExceptionCode::IllegalDataValue,
            ),
        ];
        for (reply, expected) in refusals {
            assert_eq!(reply.expect("the connection held"), Err(expected));
        }
        let write = client.write_single_register(0, 7).await;
        assert_eq!(
            write.expect("the connection held"),
            Err(ExceptionCode::IllegalFunction)
        );

        // Input registers are the same image, on the same connection that saw the refusals.
        let input = client
            .read_input_registers(6, 2)
            .await
            .expect("the connection held")
            .expect("the read was accepted");
        let cycles_again = decode_f32([input[0], input[1]]);
        assert!(
            cycles_again >= cycles && cycles_again <= 1.5,
            "{cycles_again}"
        );

        assert_eq!(plc.requests_served(), 5);
        stop(plc).await;
        // After shutdown the connection is closed: the next request fails instead of hanging.
        let after = client.read_holding_registers(0, 2).await;
        assert!(after.is_err(), "{after:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn paused_time_drives_the_demo_into_its_breach() {
    let (plc, mut client) = start().await;
    // With the clock paused the PLC is exactly at t = 0: values are known to the bit.
    let at_start = read_demo(&mut client).await;
    let expected = ["bearing_temp", "vibration", "motor_current", "cycle_count"]
        .map(|name| demo_value(name, 0.0));
    assert_eq!(at_start, expected);

    tokio::time::advance(Duration::from_secs(30)).await;
    let [bearing, _, _, cycles] = read_demo(&mut client).await;
    assert_eq!(bearing, demo_value("bearing_temp", 30.0));
    assert!((bearing - 92.0).abs() <= 0.5, "bearing_temp {bearing}");
    assert_eq!(cycles, 15.0);

    assert_eq!(plc.requests_served(), 2);
    stop(plc).await;
}

#[tokio::test]
async fn every_connection_is_counted() {
    within_deadline(async {
        let (plc, mut first) = start().await;
        let mut second = connect(&plc).await;
        for _ in 0..3 {
            read_demo(&mut first).await;
            read_demo(&mut second).await;
        }
        assert_eq!(plc.requests_served(), 6);
        stop(plc).await;
    })
    .await;
}

#[tokio::test]
async fn the_rtu_variant_answers_rtu_frames_and_ignores_broadcasts() {
    within_deadline(async {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let plc = spawn_modbus_rtu_over_tcp_plc(any_port, Scenario::demo())
            .await
            .expect("the PLC binds a free loopback port");
        let stream = tokio::net::TcpStream::connect(plc.local_addr())
            .await
            .expect("the client connects to the PLC");
        let mut client = rtu::attach_slave(stream, Slave(7));

        let [bearing, ..] = read_demo(&mut client).await;
        assert!((bearing - 62.0).abs() <= 0.9, "bearing_temp {bearing}");
        let refused = client.read_holding_registers(999, 4).await;
        assert_eq!(
            refused.expect("the connection held"),
            Err(ExceptionCode::IllegalDataAddress)
        );

        // No RTU device answers a broadcast: the read finds silence, not an error.
        client.set_slave(Slave::broadcast());
        let silence = tokio::time::timeout(
            Duration::from_millis(200),
            client.read_holding_registers(0, 2),
        )
        .await;
        assert!(silence.is_err(), "a broadcast was answered: {silence:?}");

        // The same connection goes on serving addressed requests.
        client.set_slave(Slave(1));
        read_demo(&mut client).await;
        assert_eq!(plc.requests_served(), 3);
        stop(plc).await;
    })
    .await;
}
