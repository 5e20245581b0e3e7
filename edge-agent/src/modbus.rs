//! The Modbus source.
//!
//! - [`decode`]: register words to engineering values, for every data type and byte order.
//! - [`plan`]: merges a device's tags into the fewest read requests.
//! - [`poller`]: the per-device task that runs the plan on a timer over Modbus TCP.

pub mod decode;
pub mod plan;
pub mod poller;
