//! Which transport a device is reached through, and which devices share one. Pure: opening
//! the transport is [`crate::modbus::line`]'s job.
//!
//! A Modbus TCP device gets its own connection. RTU devices sit on a bus: the devices of one
//! serial port, or behind one serial-to-Ethernet converter (`modbus-rtu-over-tcp` to the same
//! `address`), share the line, so they are polled one after another over one link. A bus
//! carries one request at a time, and most ports and converters accept a single opener.

use std::collections::HashMap;

use crate::config::{DeviceConfig, Protocol, SerialSettings};

/// How the requests of a device (or of the devices of a line) travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP to `host:port`.
    Tcp { address: String },
    /// RTU frames over a TCP connection to `host:port`.
    RtuOverTcp { address: String },
    /// RTU frames on a local serial port.
    RtuSerial(SerialSettings),
}

/// The framing of a link, which decides what a failure says about the link itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP: one device per connection, answers matched by transaction id.
    Tcp,
    /// RTU: a bus where one unit's silence says nothing about the others.
    Rtu,
}

impl Transport {
    /// The transport of a device as configured; an error names what is missing (only for a
    /// configuration that was not validated).
    pub fn of(device: &DeviceConfig) -> Result<Self, String> {
        let address = || {
            device
                .address
                .clone()
                .ok_or_else(|| format!("device {:?} has no address", device.name))
        };
        Ok(match device.protocol {
            Protocol::ModbusTcp => Transport::Tcp {
                address: address()?,
            },
            Protocol::ModbusRtuOverTcp => Transport::RtuOverTcp {
                address: address()?,
            },
            Protocol::ModbusRtu => {
                Transport::RtuSerial(device.serial_settings().ok_or_else(|| {
                    format!("device {:?} needs `device` and `baud_rate`", device.name)
                })?)
            }
        })
    }

    pub fn framing(&self) -> Framing {
        match self {
            Transport::Tcp { .. } => Framing::Tcp,
            Transport::RtuOverTcp { .. } | Transport::RtuSerial(_) => Framing::Rtu,
        }
    }

    /// What the transport connects to, for logs.
    pub fn endpoint(&self) -> String {
        match self {
            Transport::Tcp { address } => format!("modbus-tcp://{address}"),
            Transport::RtuOverTcp { address } => format!("modbus-rtu-over-tcp://{address}"),
            Transport::RtuSerial(s) => format!("modbus-rtu:{}", s.path.display()),
        }
    }
}

/// What makes two devices share a line: the same converter address or the same serial port,
/// written the same way in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LineKey {
    Converter(String),
    SerialPort(std::path::PathBuf),
}

fn line_key(device: &DeviceConfig) -> Option<LineKey> {
    match Transport::of(device).ok()? {
        Transport::Tcp { .. } => None,
        Transport::RtuOverTcp { address } => Some(LineKey::Converter(address)),
        Transport::RtuSerial(s) => Some(LineKey::SerialPort(s.path)),
    }
}

/// Splits devices into lines: lists of indexes into `devices`, each polled by one task over
/// one link. A Modbus TCP device (or one whose transport is incomplete) is a line of its own;
/// RTU devices with the same converter address or serial port share one. Lines are ordered by
/// their first device, and devices within a line keep their configuration order.
pub fn group_devices(devices: &[DeviceConfig]) -> Vec<Vec<usize>> {
    let mut lines: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<LineKey, usize> = HashMap::new();
    for (i, device) in devices.iter().enumerate() {
        match line_key(device) {
            Some(key) => match by_key.get(&key) {
                Some(&line) => lines[line].push(i),
                None => {
                    by_key.insert(key, lines.len());
                    lines.push(vec![i]);
                }
            },
            None => lines.push(vec![i]),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parity;

    fn devices(entries: &[(&str, &str)]) -> Vec<DeviceConfig> {
        let mut text = String::from(
            "[gateway]\ntenant = \"8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11\"\nid = \"gw\"\n\
             [uplink]\nbroker = \"mqtt://127.0.0.1\"\n",
        );
        for (n, (protocol, at)) in entries.iter().enumerate() {
            let at = if *protocol == "modbus-rtu" {
                format!("device = \"{at}\"\nbaud_rate = 9600")
            } else {
                format!("address = \"{at}\"")
            };
            text.push_str(&format!(
                "[[device]]\nname = \"d{n}\"\nprotocol = \"{protocol}\"\nunit_id = {}\n{at}\n",
                n + 1
            ));
        }
        match crate::AgentConfig::from_toml_with_env("t.toml", &text, Vec::new()) {
            Ok(c) => c.device,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn devices_share_a_line_by_port_or_converter_and_tcp_devices_never() {
        let d = devices(&[
            ("modbus-tcp", "10.0.0.1:502"),
            ("modbus-rtu", "/dev/ttyUSB0"),
            ("modbus-tcp", "10.0.0.1:502"),
            ("modbus-rtu-over-tcp", "10.0.0.9:4001"),
            ("modbus-rtu", "/dev/ttyUSB1"),
            ("modbus-rtu", "/dev/ttyUSB0"),
            ("modbus-rtu-over-tcp", "10.0.0.9:4001"),
            ("modbus-rtu-over-tcp", "10.0.0.9:4002"),
            ("modbus-rtu", "/dev/ttyUSB0"),
        ]);
        assert_eq!(
            group_devices(&d),
            vec![
                vec![0],
                vec![1, 5, 8],
                vec![2],
                vec![3, 6],
                vec![4],
                vec![7]
            ]
        );
        assert!(group_devices(&[]).is_empty());
    }

    #[test]
    fn a_serial_transport_fills_in_the_line_defaults() {
        let d = devices(&[("modbus-rtu", "/dev/ttyS1"), ("modbus-tcp", "plc:502")]);
        assert_eq!(
            Transport::of(&d[0]),
            Ok(Transport::RtuSerial(SerialSettings {
                path: "/dev/ttyS1".into(),
                baud_rate: 9600,
                parity: Parity::Even,
                stop_bits: 1,
                data_bits: 8,
            }))
        );
        assert_eq!(Transport::of(&d[0]).map(|t| t.framing()), Ok(Framing::Rtu));
        assert_eq!(Transport::of(&d[1]).map(|t| t.framing()), Ok(Framing::Tcp));
        let mut incomplete = d[1].clone();
        incomplete.address = None;
        assert!(Transport::of(&incomplete).is_err());
        // An incomplete device is a line of its own rather than joining another.
        assert_eq!(
            group_devices(&[incomplete.clone(), incomplete]),
            vec![vec![0], vec![1]]
        );
    }
}
