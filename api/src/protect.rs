//! Protection at the HTTP boundary: who the client is, how much it may ask, and what every
//! response carries.
//!
//! It owns the client address (the peer, or the forwarded address when the peer is a
//! configured proxy), the request id, the rate limits, the body limit, CORS, the security
//! headers, and the one error shape for responses made outside handlers. It must never trust
//! a forwarded header from a peer that is not a configured proxy, never let one tenant's or
//! one address's traffic spend another's budget, and never pass on another layer's error text.
//!
//! [`layers`] wraps the routes, outermost first:
//! 1. the envelope: client address and request id in, a span around the request; on the way
//!    out `x-request-id`, the security headers, and every error body in the one shape with the
//!    request id;
//! 2. CORS, only when origins are allowed;
//! 3. the per-address limit on `/api/v1/auth/` (login and whatever joins it under that prefix);
//! 4. the request body limit.
//!
//! The per-tenant limit runs where the tenant is known for sure, in the
//! [`AuthUser`](crate::auth::AuthUser) extractor right after the token is verified, through
//! [`Protection::admit_tenant`]; the per-key limit of an API key right after the key is
//! verified, through [`Protection::admit_api_key`], so that nobody without the key can spend
//! its budget.
//!
//! Limits are counted in memory, per process: behind a load balancer spreading over `n`
//! processes a client gets up to `n` times its budget.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use model::TenantId;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument;
use uuid::Uuid;

use crate::audit::ClientIp;
use crate::config::ApiConfig;
use crate::error::{ApiError, ErrorBody};

/// Where the per-address limit applies.
const AUTH_PREFIX: &str = "/api/v1/auth";
/// The request id's header, on every request (as handlers see it) and every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest request id accepted from a proxy.
const MAX_REQUEST_ID: usize = 128;
/// A keyed limiter forgets keys back at a full budget once every this many checks.
const SWEEP_EVERY: u64 = 1024;

/// The limits and lists in force, built once from [`ApiConfig`].
pub struct Protection {
    trusted_proxies: Vec<TrustedProxy>,
    auth_per_address: KeyedLimiter<IpAddr>,
    per_tenant: KeyedLimiter<TenantId>,
    per_api_key: KeyedLimiter<Uuid>,
    max_body_bytes: usize,
    attachment_max_bytes: usize,
    cors_allowed_origins: Vec<HeaderValue>,
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protection")
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .finish_non_exhaustive()
    }
}

impl Protection {
    pub fn new(config: &ApiConfig) -> Arc<Self> {
        Arc::new(Self {
            trusted_proxies: config.trusted_proxies.clone(),
            auth_per_address: KeyedLimiter::new(config.auth_rate_per_ip, config.auth_burst_per_ip),
            per_tenant: KeyedLimiter::new(config.tenant_rate, config.tenant_burst),
            per_api_key: KeyedLimiter::new(config.api_key_rate, config.api_key_burst),
            max_body_bytes: config.max_body_bytes,
            attachment_max_bytes: config.attachment_max_bytes,
            cors_allowed_origins: config
                .cors_allowed_origins
                .iter()
                .map(|o| o.0.clone())
                .collect(),
        })
    }

    /// Spends one request of `tenant`'s budget, or says how long to wait.
    pub fn admit_tenant(&self, tenant: TenantId) -> Result<(), ApiError> {
        self.per_tenant.check(&tenant).map_err(|retry_after| {
            metrics::counter!("maintainpro_api_rate_limited_total", "limit" => "tenant")
                .increment(1);
            tracing::debug!(%tenant, ?retry_after, "tenant rate limit");
            ApiError::RateLimited { retry_after }
        })
    }

    /// Spends one request of API key `key`'s budget, or says how long to wait.
    pub fn admit_api_key(&self, key: Uuid) -> Result<(), ApiError> {
        self.per_api_key.check(&key).map_err(|retry_after| {
            metrics::counter!("maintainpro_api_rate_limited_total", "limit" => "api_key")
                .increment(1);
            tracing::debug!(api_key = %key, ?retry_after, "API key rate limit");
            ApiError::RateLimited { retry_after }
        })
    }

    fn admit_auth(&self, client: IpAddr) -> Result<(), ApiError> {
        self.auth_per_address
            .check(&address_key(client))
            .map_err(|retry_after| {
                metrics::counter!("maintainpro_api_rate_limited_total", "limit" => "auth_address")
                    .increment(1);
                tracing::debug!(%client, ?retry_after, "authentication rate limit");
                ApiError::RateLimited { retry_after }
            })
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        is_trusted(&self.trusted_proxies, peer)
    }

    fn cors(&self) -> Option<CorsLayer> {
        if self.cors_allowed_origins.is_empty() {
            return None;
        }
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(self.cors_allowed_origins.clone()))
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([REQUEST_ID, header::RETRY_AFTER])
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// Wraps `routes` and `uploads` in the protection layers (order in the module documentation);
/// `uploads` take bodies up to `attachment_max_bytes` instead of `max_body_bytes`.
pub fn layers(routes: Router, uploads: Router, protection: Arc<Protection>) -> Router {
    let routes = routes
        // The body limits are ours: axum's own default (2 MB) would disagree with them.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(protection.max_body_bytes))
        .merge(
            uploads
                .layer(DefaultBodyLimit::disable())
                .layer(RequestBodyLimitLayer::new(protection.attachment_max_bytes)),
        )
        .layer(from_fn_with_state(
            Arc::clone(&protection),
            limit_auth_per_address,
        ));
    let routes = match protection.cors() {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    #[cfg(feature = "rls-probe")]
    let routes = routes.layer(axum::middleware::from_fn(crate::auth::rls_probe::scope));
    routes.layer(from_fn_with_state(protection, envelope))
}

async fn envelope(
    State(protection): State<Arc<Protection>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    // Only a router driven without a socket (tests) has no peer: one anonymous client.
    let client = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| {
        client_ip(peer, &forwarded_for(req.headers()), |ip| {
            protection.is_trusted(ip)
        })
    });
    let from_proxy = peer.is_some_and(|peer| protection.is_trusted(peer));
    let request_id = request_id(req.headers(), from_proxy);
    req.extensions_mut().insert(ClientIp(client));
    // Handlers and the audit log read the id from the request, so a client's own header
    // must not stay there.
    req.headers_mut().insert(REQUEST_ID, request_id.clone());
    let id = request_id.to_str().unwrap_or_default().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        client = %client,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let response = next.run(req).instrument(span).await;
    finish(response, request_id, &id)
}

/// The way out: the error shape with the request id, then the headers every response carries.
fn finish(response: Response, request_id: HeaderValue, id: &str) -> Response {
    let error = match response.extensions().get::<ErrorBody>() {
        Some(body) => Some(body.clone()),
        None if (response.status().is_client_error() || response.status().is_server_error())
            && !is_json(response.headers()) =>
        {
            Some(ErrorBody::for_status(response.status()))
        }
        None => None,
    };
    let mut response = match error {
        Some(error) => {
            let (mut parts, _) = response.into_parts();
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body = error.to_json(Some(id)).to_string();
            parts.extensions.insert(error);
            Response::from_parts(parts, Body::from(body))
        }
        None => response,
    };
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    secure(headers);
    response
}

/// The headers of a JSON API that no page may frame, embed, sniff or cache.
fn secure(headers: &mut HeaderMap) {
    let set = [
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // A page that loads its own script and style (the API docs) sets its own policy;
    // everything else loads nothing.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    // A handler that means to be cached says so; nothing else is.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        })
}

async fn limit_auth_per_address(
    State(protection): State<Arc<Protection>>,
    req: Request,
    next: Next,
) -> Response {
    let under_auth = req
        .uri()
        .path()
        .strip_prefix(AUTH_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if under_auth {
        let client = req
            .extensions()
            .get::<ClientIp>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
        if let Err(e) = protection.admit_auth(client) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// The values of every `X-Forwarded-For` header, in order; a value that is not text stays
/// as an empty entry, which no address parses from.
fn forwarded_for(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect()
}

/// The client's address: the peer itself, unless the peer is a trusted proxy. Then the
/// `X-Forwarded-For` entries (`forwarded_for`: the header values in order, each a comma list)
/// are read from the right, each appended by the hop before it, and the first one that is not
/// a trusted proxy is the client. If every entry is a trusted proxy, the left-most one is; an
/// entry that is not an address stops the walk at the last address read, since nothing left
/// of it was written by a proxy we trust.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    let peer = peer.to_canonical();
    let mut client = peer;
    if !trusted(peer) {
        return client;
    }
    let entries = forwarded_for.iter().flat_map(|v| v.split(',')).rev();
    for entry in entries {
        let Some(ip) = parse_forwarded(entry) else {
            break;
        };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:5`,
/// `[2001:db8::1]:5`), as proxies write them.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

fn is_trusted(proxies: &[TrustedProxy], ip: IpAddr) -> bool {
    proxies.iter().any(|p| p.0.contains(&ip))
}

/// The key an address is limited under. An IPv6 client commonly holds a whole /64, so
/// counting its addresses one by one would give it 2^64 budgets: IPv6 is limited per /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// The request id: a proxy's, when the peer is a trusted proxy and the id is well formed
/// (1 to 128 letters, digits, `-`, `_`, `.`); otherwise a new UUID v4.
fn request_id(headers: &HeaderMap, from_proxy: bool) -> HeaderValue {
    let incoming = headers.get(REQUEST_ID).filter(|v| {
        from_proxy
            && (1..=MAX_REQUEST_ID).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
    });
    match incoming {
        Some(id) => id.clone(),
        None => HeaderValue::from_str(&Uuid::new_v4().to_string())
            .expect("a UUID is a valid header value"),
    }
}

/// A keyed in-memory limiter: each key has `burst` requests at once, refilled at `rate`.
///
/// Its memory is bounded by the keys seen recently: every [`SWEEP_EVERY`] checks it forgets
/// the keys whose budget is full again (`retain_recent`), so at most the keys active within
/// one refill period of `burst`, plus those of the last [`SWEEP_EVERY`] checks, are held.
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for KeyedLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(rate: Rate, burst: NonZeroU32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    pub fn with_clock(rate: Rate, burst: NonZeroU32, clock: C) -> Self {
        Self {
            limiter: RateLimiter::new(rate.quota(burst), DefaultKeyedStateStore::default(), clock),
            checks: AtomicU64::new(0),
        }
    }

    /// Spends one request of `key`'s budget, or answers how long until one is back.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// How many keys are held now.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// A sustained rate, `N/unit`: `10/min`, `50/s`, `1000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Rate {
    count: NonZeroU32,
    per: Duration,
}

impl Rate {
    /// A quota that refills one request every `per / count` and holds up to `burst`.
    fn quota(self, burst: NonZeroU32) -> Quota {
        Quota::with_period(self.per / self.count.get())
            .expect("parse refuses rates finer than one request per nanosecond")
            .allow_burst(burst)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: write a rate as N/s, N/min or N/h, N a whole number above 0");
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if u128::from(count.get()) > per.as_nanos() {
            return Err(format!("{s:?}: at most one request per nanosecond"));
        }
        Ok(Self { count, per })
    }
}

impl TryFrom<String> for Rate {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A proxy whose `X-Forwarded-For` and `X-Request-Id` are believed: an address
/// (`10.0.0.5`) or a network (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct TrustedProxy(IpNet);

impl TrustedProxy {
    /// A network of every address: trusting it lets any client choose its own address.
    pub fn is_everyone(&self) -> bool {
        self.0.prefix_len() == 0
    }
}

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let net = if s.contains('/') {
            s.parse::<IpNet>().ok().map(|n| n.trunc())
        } else {
            s.parse::<IpAddr>()
                .ok()
                .map(|ip| IpNet::from(ip.to_canonical()))
        };
        net.map(TrustedProxy).ok_or_else(|| {
            format!("{s:?}: write an IP address (10.0.0.5) or a network (10.0.0.0/8)")
        })
    }
}

impl TryFrom<String> for TrustedProxy {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A browser origin allowed to call the API: `https://host` or `https://host:port`, no path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct AllowedOrigin(HeaderValue);

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?}: write an origin as scheme://host[:port] (https://cmms.example.com), \
                 no path and no wildcard"
            )
        };
        let origin = s.trim().to_ascii_lowercase();
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(bad)?;
        let well_formed = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !well_formed {
            return Err(bad());
        }
        HeaderValue::from_str(&origin)
            .map(AllowedOrigin)
            .map_err(|_| bad())
    }
}

impl TryFrom<String> for AllowedOrigin {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_address_from_peer_and_forwarded_chain() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.7", "2001:db8:ffff::/48"]);
        // (peer, X-Forwarded-For values, client)
        let table: &[(&str, &[&str], &str)] = &[
            // No proxy: the peer, whatever the client claims.
            ("203.0.113.9", &[], "203.0.113.9"),
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            ("203.0.113.9", &["10.0.0.1, 198.51.100.1"], "203.0.113.9"),
            // One trusted proxy: the address it appended.
            ("10.1.2.3", &["198.51.100.1"], "198.51.100.1"),
            // A client's spoofed entry sits left of what the proxy appended.
            ("10.1.2.3", &["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
            // A chain of trusted proxies is walked through, header values in order.
            ("10.1.2.3", &["198.51.100.1, 192.0.2.7"], "198.51.100.1"),
            (
                "10.1.2.3",
                &["6.6.6.6", "198.51.100.1, 10.9.9.9"],
                "198.51.100.1",
            ),
            // Every hop trusted: the left-most.
            ("10.1.2.3", &["10.0.0.2, 10.0.0.3"], "10.0.0.2"),
            // A trusted proxy without the header (its own health check): itself.
            ("10.1.2.3", &[], "10.1.2.3"),
            // Garbage stops the walk at the last address read.
            ("10.1.2.3", &["garbage"], "10.1.2.3"),
            ("10.1.2.3", &["6.6.6.6, garbage, 10.0.0.9"], "10.0.0.9"),
            ("10.1.2.3", &[""], "10.1.2.3"),
            // Ports and IPv6, mapped IPv4 peers.
            ("10.1.2.3", &["198.51.100.1:4711"], "198.51.100.1"),
            ("10.1.2.3", &["[2001:db8::5]:443"], "2001:db8::5"),
            ("::ffff:10.1.2.3", &["198.51.100.1"], "198.51.100.1"),
            ("2001:db8:ffff::1", &["2001:db8::5"], "2001:db8::5"),
            ("::ffff:203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
        ];
        for (peer, xff, want) in table {
            let got = client_ip(ip(peer), xff, |a| is_trusted(&trusted, a));
            assert_eq!(got, ip(want), "peer {peer}, x-forwarded-for {xff:?}");
        }
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(address_key(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
    }

    #[test]
    fn request_ids_come_only_from_trusted_proxies_and_well_formed() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("lb-123.abc_D"));
        assert_eq!(request_id(&headers, true), "lb-123.abc_D");
        assert_ne!(request_id(&headers, false), "lb-123.abc_D");
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            headers.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&headers, true);
            assert!(Uuid::parse_str(id.to_str().unwrap()).is_ok(), "{bad:?}");
        }
    }

    #[test]
    fn rates_parse() {
        let rate: Rate = "10/min".parse().unwrap();
        assert_eq!(rate.per / rate.count.get(), Duration::from_secs(6));
        assert_eq!("50/s".parse::<Rate>().unwrap().per, Duration::from_secs(1));
        assert!("3 / hour".parse::<Rate>().is_ok());
        for bad in ["", "10", "0/s", "-1/s", "10/day", "x/s", "2000000000/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxies_and_origins_parse() {
        let p: TrustedProxy = "10.1.2.3/8".parse().unwrap();
        assert_eq!(p.0, "10.0.0.0/8".parse::<IpNet>().unwrap());
        let p: TrustedProxy = "192.0.2.7".parse().unwrap();
        assert!(p.0.contains(&ip("192.0.2.7")) && !p.0.contains(&ip("192.0.2.8")));
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        assert!("proxy.local".parse::<TrustedProxy>().is_err());

        let o: AllowedOrigin = "https://CMMS.example.com:8443".parse().unwrap();
        assert_eq!(o.0, "https://cmms.example.com:8443");
        for bad in [
            "*",
            "cmms.example.com",
            "https://",
            "https://x.com/",
            "ftp://x.com",
        ] {
            assert!(bad.parse::<AllowedOrigin>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_tenants_flood_leaves_another_its_budget() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::with_clock(
            "10/s".parse().unwrap(),
            NonZeroU32::new(3).unwrap(),
            clock.clone(),
        );
        let (flooding, quiet) = (TenantId::new_random(), TenantId::new_random());
        for _ in 0..3 {
            assert!(limiter.check(&flooding).is_ok());
        }
        for _ in 0..100 {
            assert_eq!(limiter.check(&flooding), Err(Duration::from_millis(100)));
        }
        for _ in 0..3 {
            assert!(limiter.check(&quiet).is_ok());
        }
        assert!(limiter.check(&quiet).is_err());
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check(&flooding).is_ok());
        assert!(limiter.check(&flooding).is_err());
    }

    #[test]
    fn keys_back_at_a_full_budget_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::with_clock(
            "1/s".parse().unwrap(),
            NonZeroU32::new(1).unwrap(),
            clock.clone(),
        );
        for n in 0..SWEEP_EVERY - 1 {
            let _ = limiter.check(&n);
        }
        assert_eq!(limiter.keys(), (SWEEP_EVERY - 1) as usize);
        clock.advance(Duration::from_secs(2));
        // The next check sweeps first: only its own key is left.
        assert!(limiter.check(&u64::MAX).is_ok());
        assert_eq!(limiter.keys(), 1);
    }
}
