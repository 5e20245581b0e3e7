//! A Modbus PLC serving a [`Scenario`]'s registers, over Modbus TCP
//! ([`spawn_modbus_plc`]) or as RTU frames over TCP ([`spawn_modbus_rtu_over_tcp_plc`]),
//! the way a serial device behind a transparent serial-to-Ethernet converter answers.
//!
//! [`ModbusPlc::answer`] decides what a request gets, as a pure function of the request and
//! the time since start; the server around it only measures that time, counts requests and
//! moves frames. Holding and input registers are the same image, because gateways are
//! configured for either and the demo should work with both. Nothing here writes: every
//! function code but 3 and 4 is refused with the IllegalFunction exception. Every unit id is
//! answered the same, except that the RTU variant, like every RTU device, never answers a
//! broadcast (unit 0).

use std::future::{self, Future, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tracing::Instrument;

use crate::registers::ReadError;
use crate::scenario::{OutageAnswer, Scenario};

/// The simulated PLC itself, without a socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPlc {
    scenario: Scenario,
}

impl ModbusPlc {
    pub fn new(scenario: Scenario) -> Self {
        Self { scenario }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// What the PLC answers to `request` `t` seconds after it started.
    pub fn answer(&self, t: f64, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        if let Some(answer) = self.scenario.outage_at(t) {
            return Err(match answer {
                OutageAnswer::GatewayTargetFailedToRespond => ExceptionCode::GatewayTargetDevice,
                OutageAnswer::GatewayPathUnavailable => ExceptionCode::GatewayPathUnavailable,
                OutageAnswer::ServerDeviceFailure => ExceptionCode::ServerDeviceFailure,
                OutageAnswer::ServerDeviceBusy => ExceptionCode::ServerDeviceBusy,
            });
        }
        match *request {
            Request::ReadHoldingRegisters(start, count) => self
                .read(t, start, count)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(start, count) => {
                self.read(t, start, count).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn read(&self, t: f64, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        self.scenario
            .read_registers(t, start, count)
            .map_err(|e| match e {
                ReadError::BadCount { .. } => ExceptionCode::IllegalDataValue,
                ReadError::OutOfRange { .. } => ExceptionCode::IllegalDataAddress,
            })
    }
}

/// The per-connection service: the shared PLC plus the clock and counter every connection
/// of one server shares.
#[derive(Debug, Clone)]
struct PlcService {
    plc: Arc<ModbusPlc>,
    started: Instant,
    served: Arc<AtomicU64>,
}

impl PlcService {
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        let t = self.started.elapsed().as_secs_f64();
        let answer = self.plc.answer(t, request);
        // Counted before the response is written, so a client that has its answer always
        // finds it counted.
        self.served.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(?request, ok = answer.is_ok(), t, "modbus request");
        answer
    }
}

impl Service for PlcService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        future::ready(self.answer(&request))
    }
}

/// The service of the RTU variant, which sees the unit id of each request.
#[derive(Debug, Clone)]
struct RtuPlcService(PlcService);

impl Service for RtuPlcService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        if request.slave == 0 {
            // A broadcast: every device on the bus acts on it, none answers.
            return future::ready(Ok(None));
        }
        future::ready(self.0.answer(&request.request).map(Some))
    }
}

/// How the PLC frames its answers.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Tcp,
    RtuOverTcp,
}

/// A running PLC. Dropping the handle stops the PLC as well, without waiting for it;
/// [`PlcHandle::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct PlcHandle {
    local_addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl PlcHandle {
    /// The address the PLC listens on; with port 0 requested, the port the system chose.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Requests answered so far, exceptions included, over all connections.
    pub fn requests_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes every client connection and waits for the server task. An
    /// error means the server had already stopped on its own, for example because accepting
    /// a connection failed.
    pub async fn shutdown(self) -> io::Result<()> {
        // The task may already have ended with an error, in which case nobody receives this;
        // that error is what the join below reports.
        let _ = self.stop.send(());
        self.task.await.map_err(io::Error::other)?
    }
}

/// Binds `listen` (port 0 picks a free port) and serves `scenario` there over Modbus TCP
/// until the returned handle is shut down or dropped. Time in the scenario starts now, on the
/// tokio clock, so a test running with paused time controls what the PLC reports.
pub async fn spawn_modbus_plc(listen: SocketAddr, scenario: Scenario) -> io::Result<PlcHandle> {
    spawn(listen, scenario, Framing::Tcp).await
}

/// Like [`spawn_modbus_plc`], but speaking RTU frames (unit id, PDU, CRC) over the TCP
/// connection, as an RTU device behind a transparent serial-to-Ethernet converter does.
pub async fn spawn_modbus_rtu_over_tcp_plc(
    listen: SocketAddr,
    scenario: Scenario,
) -> io::Result<PlcHandle> {
    spawn(listen, scenario, Framing::RtuOverTcp).await
}

async fn spawn(listen: SocketAddr, scenario: Scenario, framing: Framing) -> io::Result<PlcHandle> {
    let listener = TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let service = PlcService {
        plc: Arc::new(ModbusPlc::new(scenario)),
        started: Instant::now(),
        served: Arc::new(AtomicU64::new(0)),
    };
    let served = Arc::clone(&service.served);
    for signal in service.plc.scenario().signals() {
        tracing::info!(
            name = signal.name.as_str(),
            registers = format!("{}..={}", signal.address, u32::from(signal.address) + 1),
            kind = ?signal.kind,
            breach = ?signal.breach,
            "serving signal"
        );
    }
    tracing::info!(%local_addr, ?framing, seed = service.plc.scenario().seed(), "modbus plc listening");
    let (stop, stopped) = oneshot::channel::<()>();
    let stop_signal = async {
        // A dropped handle closes the channel, which stops the server just like a send.
        let _ = stopped.await;
    };
    let span = tracing::info_span!("modbus_plc", %local_addr);
    let task = match framing {
        Framing::Tcp => tokio::spawn(serve_tcp(listener, service, stop_signal).instrument(span)),
        Framing::RtuOverTcp => tokio::spawn(
            serve_rtu_over_tcp(listener, RtuPlcService(service), stop_signal).instrument(span),
        ),
    };
    Ok(PlcHandle {
        local_addr,
        served,
        stop,
        task,
    })
}

/// Hands every accepted connection its own copy of `service`.
fn on_connected<S: Clone>(
    service: &S,
) -> impl Fn(TcpStream, SocketAddr) -> Ready<io::Result<Option<(S, TcpStream)>>> + '_ {
    move |stream, peer| {
        tracing::debug!(%peer, "client connected");
        future::ready(Ok(Some((service.clone(), stream))))
    }
}

fn on_process_error(error: io::Error) {
    tracing::debug!(%error, "client connection ended with an error");
}

fn log_end<T>(result: &io::Result<T>) {
    match result {
        Ok(_) => tracing::info!("modbus plc stopped"),
        Err(error) => tracing::error!(%error, "modbus plc stopped accepting connections"),
    }
}

async fn serve_tcp(
    listener: TcpListener,
    service: PlcService,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> io::Result<()> {
    // Aborting drops the accept loop, which cancels every connection task it spawned.
    let result = tokio_modbus::server::tcp::Server::new(listener)
        .serve_until(&on_connected(&service), on_process_error, stop)
        .await;
    log_end(&result);
    result.map(drop)
}

async fn serve_rtu_over_tcp(
    listener: TcpListener,
    service: RtuPlcService,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> io::Result<()> {
    let result = tokio_modbus::server::rtu_over_tcp::Server::new(listener)
        .serve_until(&on_connected(&service), on_process_error, stop)
        .await;
    log_end(&result);
    result.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::time::Duration;

    use crate::scenario::Outage;

    #[test]
    fn holding_and_input_registers_are_the_same_image() {
        let plc = ModbusPlc::new(Scenario::demo());
        let holding = plc.answer(12.0, &Request::ReadHoldingRegisters(0, 8));
        let input = plc.answer(12.0, &Request::ReadInputRegisters(0, 8));
        let (Ok(Response::ReadHoldingRegisters(h)), Ok(Response::ReadInputRegisters(i))) =
            (holding, input)
        else {
            panic!("reads were refused");
        };
        assert_eq!(h, i);
        assert_eq!(Ok(h), plc.scenario().read_registers(12.0, 0, 8));
    }

    #[test]
    fn an_outage_answers_every_read_with_its_exception_for_its_duration() {
        let outages = vec![
            Outage {
                at: Duration::from_secs(10),
                duration: Duration::from_secs(5),
                answer: OutageAnswer::GatewayTargetFailedToRespond,
            },
            Outage {
                at: Duration::from_secs(20),
                duration: Duration::from_secs(1),
                answer: OutageAnswer::ServerDeviceFailure,
            },
        ];
        let plc = ModbusPlc::new(
            Scenario::demo()
                .with_outages(outages)
                .expect("valid outages"),
        );
        let read = Request::ReadHoldingRegisters(0, 2);
        assert!(plc.answer(9.9, &read).is_ok());
        assert_eq!(
            plc.answer(10.0, &read),
            Err(ExceptionCode::GatewayTargetDevice)
        );
        assert!(plc.answer(15.0, &read).is_ok());
        assert_eq!(
            plc.answer(20.5, &read),
            Err(ExceptionCode::ServerDeviceFailure)
        );
    }

    #[test]
    fn refusals_map_to_modbus_exceptions() {
        let plc = ModbusPlc::new(Scenario::demo());
        let table = [
            (
                Request::ReadHoldingRegisters(0, 0),
                ExceptionCode::IllegalDataValue,
            ),
            (
                Request::ReadInputRegisters(0, 126),
                ExceptionCode::IllegalDataValue,
            ),
            (
                Request::ReadHoldingRegisters(999, 3),
                ExceptionCode::IllegalDataAddress,
            ),
            (
                Request::WriteSingleRegister(0, 1),
                ExceptionCode::IllegalFunction,
            ),
            (
                Request::WriteMultipleRegisters(0, Cow::Owned(vec![1, 2])),
                ExceptionCode::IllegalFunction,
            ),
            (Request::ReadCoils(0, 8), ExceptionCode::IllegalFunction),
        ];
        for (request, expected) in table {
            assert_eq!(plc.answer(0.0, &request), Err(expected), "{request:?}");
        }
    }
}
