//! The Modbus source.
//!
//! Pure:
//! - [`decode`]: register words to engineering values and text, for every data type and byte
//!   order.
//! - [`plan`]: merges a device's tags into the fewest read requests.
//! - [`transport`]: how each device is reached, and which devices share a line.
//! - [`schedule`]: when each device of a line is due.
//! - [`failure`]: what a failed request means for retries and for the link.
//!
//! I/O:
//! - [`line`](mod@line): one link (TCP connection or serial port) and the devices polled over it.
//! - [`poller`]: the task that polls a line on its timers and hands readings to the agent.

pub mod decode;
pub mod failure;
pub mod line;
pub mod plan;
pub mod poller;
pub mod schedule;
pub mod transport;
