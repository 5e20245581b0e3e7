//! Simulated plant equipment for demos, CI and benchmarks.
//!
//! The crate owns everything that pretends to be a plant: signals that behave like sensors
//! (waveforms, noise, faults that develop over time), scenarios that group them, and a
//! Modbus PLC (TCP, or RTU frames over TCP) that serves them, so that the edge agent, ingest
//! and the rules can be run end to end without hardware.
//!
//! # Layout
//! - [`signal`]: one measurement's waveform, noise, optional breach and injected instrument
//!   faults (spike, drift, stuck value, dropout), as a pure function of a seed and the time
//!   since start.
//! - [`scenario`]: a checked set of signals loaded from TOML (`config/scenarios/demo.toml`)
//!   or built in ([`Scenario::demo`]), the register reads it answers, and the PLC's outages
//!   (times when every read gets a Modbus exception, such as a lost link behind a gateway).
//! - [`registers`]: the register map's rules: `f32` in two registers high word first, which
//!   reads are legal. Pure.
//! - [`plc`]: the Modbus server around a scenario: Modbus TCP ([`spawn_modbus_plc`]) or RTU
//!   frames over TCP ([`spawn_modbus_rtu_over_tcp_plc`]).
//! - [`opcua`]: an OPC-UA server around a scenario ([`opcua::spawn_opcua_server`]), with
//!   security None and Basic256Sha256, anonymous and user name logins.
//! - [`load`]: the load generator: numbered batches of readings for many tags, published to a
//!   broker as a fleet of edge agents would (benchmarks and load tests).
//! - [`sparkplug`]: a Sparkplug B edge node publishing a scenario to a broker (births with
//!   aliases, data by alias, deaths as MQTT will and on comms loss, rebirth on command).
//! - [`mosquitto`]: a private Mosquitto process that tests can stop and restart with its
//!   persistent sessions (needs the `mosquitto` binary).
//! - `src/bin/plant-sim.rs`: the command-line program serving a scenario.
//!
//! Simulated values are deterministic: the same scenario and seed give the same value at
//! the same time since start, so a failing test or a benchmark can be replayed.
//!
//! This crate never binds anything but the listener address its caller gives it (the
//! program's default is 127.0.0.1), never connects anywhere but the broker its caller names,
//! and has no database.

pub mod load;
pub mod mosquitto;
pub mod opcua;
pub mod plc;
pub mod registers;
pub mod scenario;
pub mod signal;
pub mod sparkplug;

pub use plc::{ModbusPlc, PlcHandle, spawn_modbus_plc, spawn_modbus_rtu_over_tcp_plc};
pub use registers::ReadError;
pub use scenario::{Outage, OutageAnswer, Scenario, ScenarioError};
pub use signal::{Breach, Fault, Signal, SignalKind};
