//! The CMMS API: tenants, users, work orders, and the work-order service rules call.
//!
//! # Layout
//! - [`config`]: listen address and token settings (`[api]` in the server's file).
//! - [`auth`]: access tokens, and the extractors that authenticate a request (a user, or an
//!   API key where the handler names the scope it needs).
//! - [`notify`]: email to assignees and requesters over SMTP, from the event log.
//! - [`password`]: the password policy and Argon2id hashing with the configured pepper.
//! - [`permissions`]: the documented permissions, the built-in roles' sets, custom roles'
//!   names and the generated permission matrix; pure.
//! - [`api_keys`]: API keys of gateways and services: scopes, the key's text, its keyed hash;
//!   pure.
//! - [`broker_accounts`]: the broker accounts of gateway keys (scope `readings:publish`) in
//!   Mosquitto's dynamic-security plugin: names, commands, the reconciliation plan; pure.
//! - [`broker_admin`]: sends those commands over MQTT, and the reconciler task.
//! - [`mfa`]: TOTP (RFC 6238) with replay protection, sealed secrets and recovery codes, pure.
//! - [`events`]: the tenant's event log, numbered in commit order, that live streams and
//!   webhooks read.
//! - [`inventory`]: the parts ledger's rules (reservations, consumption, adjustments, reorder
//!   points), pure and property-tested.
//! - [`error`]: the one error type of the HTTP boundary and its JSON shape.
//! - [`pm`]: preventive-maintenance schedules (calendar across DST and month ends, meters) and
//!   which occurrences to generate; pure.
//! - [`protect`]: client address behind trusted proxies, request ids, rate limits per address
//!   on authentication, per tenant and per API key, body limit, CORS allowlist, security headers.
//! - [`sessions`]: logins as sessions with rotating refresh tokens; reuse revokes the family.
//! - [`users`]: organisations and users: creation, passwords under the policy, disabling.
//! - [`audit`]: the append-only audit log and the request facts it records.
//! - [`webhooks`]: webhook delivery: SSRF checks, signatures, retries with backoff, the
//!   dispatcher task.
//! - [`work_order_flow`]: the work-order state machine (statuses, transitions, who may make
//!   each), pure.
//! - [`work_orders`]: the work-order service: at most one open work order per asset and
//!   failure mode, idempotent under retries.
//! - [`rules_status`]: the rule files in force and the last failed reload, written by the
//!   rules engine and served by the API.
//! - [`registry_csv`]: the CSV form of the asset and tag registers, parsed and checked; pure.
//! - [`reliability`]: failures, downtime, MTTR and MTBF over a period, from work orders; pure.
//! - [`openapi`]: the OpenAPI 3.1 document (hand-written per area in `api/openapi/`, merged)
//!   and its offline docs page.
//! - [`list_db`]: the work-order list's own connections, which read a page in one round trip
//!   (the tenant's transaction, the list and its end sent together).
//! - [`routes`]: the HTTP handlers, one module per resource.
//! - [`app`]: builds the router and serves it until shutdown.
//!
//! Every query on tenant data runs in a transaction that set the tenant for row-level security
//! (`migrations::begin_tenant`, or the same statements sent by [`list_db`]); the application
//! also filters by tenant itself, so isolation holds twice. Internal error details never reach
//! an HTTP response.

pub mod api_keys;
pub mod app;
pub mod audit;
pub mod auth;
pub mod broker_accounts;
pub mod broker_admin;
pub mod config;
pub mod error;
pub mod events;
pub mod inventory;
pub mod list_db;
pub mod mfa;
pub mod notify;
pub mod openapi;
pub mod password;
pub mod permissions;
pub mod pm;
pub mod protect;
pub mod registry_csv;
pub mod reliability;
pub mod routes;
pub mod rules_status;
pub mod session_cache;
pub mod sessions;
pub mod users;
pub mod webhooks;
pub mod work_order_flow;
pub mod work_orders;

pub use app::{Api, AppState};
pub use config::ApiConfig;
pub use rules_status::RulesStatus;
pub use work_orders::{AlarmOutcome, RecordedAlarm, RetireReason, WorkOrderService};
