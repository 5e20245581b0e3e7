//! HTTP handlers, one module per resource.

pub mod health;
pub mod login;
pub mod work_orders;
