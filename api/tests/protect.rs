//! The protection layers, driven through the router without a socket or a database: the
//! pool points nowhere and gives up at once, so a request that gets as far as the database
//! fails fast with a 500, and every other answer here comes from before it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::app::{AppState, router};
use api::config::{ApiConfig, Secret};
use api::list_db::ListPool;
use api::rules_status::RulesStatus;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use model::TenantId;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

fn config() -> ApiConfig {
    ApiConfig::new(
        "127.0.0.1:0".parse().expect("an address"),
        Secret::new("x".repeat(32)),
        Secret::new("p".repeat(32)),
    )
}

fn app(config: &ApiConfig) -> Router {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(100))
        .connect_lazy("postgres://unused@127.0.0.1:1/x")
        .expect("a URL");
    let lists = ListPool::new("postgres://unused@127.0.0.1:1/x", 1).expect("a URL");
    router(
        AppState::new(config, pool, lists, Arc::new(RulesStatus::default()))
            .expect("a valid pepper"),
    )
}

/// `config` with fields set from JSON, the way the configuration file sets them.
fn config_with(fields: Value) -> ApiConfig {
    let mut all = json!({ "jwt_secret": "x".repeat(32), "password_pepper": "p".repeat(32) });
    for (k, v) in fields.as_object().expect("an object") {
        all[k] = v.clone();
    }
    serde_json::from_value(all).expect("a valid [api] section")
}

struct Sent {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(app: &Router, req: Request<Body>) -> Sent {
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Sent {
        status,
        headers,
        body,
    }
}

fn request(method: Method, path: &str, peer: &str) -> axum::http::request::Builder {
    let peer: SocketAddr = format!("{peer}:40000").parse().expect("an address");
    Request::builder()
        .method(method)
        .uri(path)
        .extension(ConnectInfo(peer))
}

/// A login attempt that the handler refuses before any database work (missing fields).
fn login_from(peer: &str) -> Request<Body> {
    request(Method::POST, "/api/v1/auth/login", peer)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("a request")
}

/// The request got past the limits to the handler, which refused its empty body.
fn reached_handler(sent: &Sent) -> bool {
    sent.status.is_client_error() && sent.status != StatusCode::TOO_MANY_REQUESTS
}

fn assert_secure(headers: &HeaderMap) {
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(
            headers.get(name).map(|v| v.as_bytes()),
            Some(value.as_bytes()),
            "{name}"
        );
    }
}

fn request_id(headers: &HeaderMap) -> &str {
    headers["x-request-id"].to_str().expect("text")
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_a_request_id() {
    let app = app(&config());
    let ok = send(
        &app,
        request(Method::GET, "/health/live", "203.0.113.9")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_secure(&ok.headers);
    assert!(Uuid::parse_str(request_id(&ok.headers)).is_ok());

    let missing = send(
        &app,
        request(Method::GET, "/no/such/route", "203.0.113.9")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_secure(&missing.headers);
    assert_eq!(missing.body["error"]["code"], "not_found");
    assert_eq!(
        missing.body["error"]["request_id"],
        request_id(&missing.headers)
    );
    assert_ne!(request_id(&missing.headers), request_id(&ok.headers));
}

#[tokio::test]
async fn wrong_methods_answer_in_the_error_shape() {
    let app = app(&config());
    let sent = send(
        &app,
        request(Method::DELETE, "/health/live", "203.0.113.9")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(sent.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(sent.body["error"]["code"], "method_not_allowed");
    assert!(sent.headers.contains_key(header::ALLOW));
    assert_eq!(sent.headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_in_the_error_shape() {
    let app = app(&config());
    let big = vec![b' '; 2 * 1024 * 1024];
    // Announced by Content-Length, refused before the handler runs.
    let announced = request(Method::POST, "/api/v1/auth/login", "203.0.113.9")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big.clone()))
        .expect("a request");
    // Sent without a length, refused while it is read.
    let streamed = request(Method::POST, "/api/v1/auth/login", "203.0.113.10")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("a request");
    for req in [announced, streamed] {
        let sent = send(&app, req).await;
        assert_eq!(sent.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(sent.body["error"]["code"], "payload_too_large");
        assert_eq!(sent.body["error"]["message"], "request body too large");
        assert_eq!(sent.body["error"]["request_id"], request_id(&sent.headers));
        assert_secure(&sent.headers);
    }
}

#[tokio::test]
async fn authentication_is_limited_per_client_address() {
    let app = app(&config_with(
        json!({ "auth_rate_per_ip": "1/h", "auth_burst_per_ip": 3 }),
    ));
    for _ in 0..3 {
        let sent = send(&app, login_from("198.51.100.1")).await;
        assert!(reached_handler(&sent), "{} {}", sent.status, sent.body);
    }
    let refused = send(&app, login_from("198.51.100.1")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers[header::RETRY_AFTER]
        .to_str()
        .expect("text")
        .parse()
        .expect("whole seconds");
    assert!((3000..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    assert_eq!(
        refused.body["error"]["request_id"],
        request_id(&refused.headers)
    );
    assert_secure(&refused.headers);

    // Every endpoint under the prefix shares the budget; the rest of the API does not.
    let other_auth = send(
        &app,
        request(Method::POST, "/api/v1/auth/anything", "198.51.100.1")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(other_auth.status, StatusCode::TOO_MANY_REQUESTS);
    let health = send(
        &app,
        request(Method::GET, "/health/live", "198.51.100.1")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);

    // Another address is not limited by the first one's flood.
    let other = send(&app, login_from("198.51.100.2")).await;
    assert!(reached_handler(&other), "{}", other.status);

    // A forwarded address from a peer that is not a trusted proxy changes nothing.
    let mut spoofed = login_from("198.51.100.1");
    spoofed
        .headers_mut()
        .insert("x-forwarded-for", "192.0.2.200".parse().expect("a value"));
    assert_eq!(
        send(&app, spoofed).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = app(&config_with(json!({
        "auth_rate_per_ip": "1/h",
        "auth_burst_per_ip": 1,
        "trusted_proxies": ["10.0.0.0/8"],
    })));
    let via_proxy = |client: &str| {
        let mut req = login_from("10.0.0.1");
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("6.6.6.6, {client}").parse().expect("a value"),
        );
        req
    };
    assert!(reached_handler(
        &send(&app, via_proxy("198.51.100.1")).await
    ));
    assert_eq!(
        send(&app, via_proxy("198.51.100.1")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(reached_handler(
        &send(&app, via_proxy("198.51.100.2")).await
    ));
}

#[tokio::test]
async fn request_ids_are_taken_only_from_trusted_proxies() {
    let app = app(&config_with(json!({ "trusted_proxies": ["10.0.0.1"] })));
    let with_id = |peer: &str| {
        request(Method::GET, "/no/such/route", peer)
            .header("x-request-id", "lb-7f3a.1")
            .body(Body::empty())
            .expect("a request")
    };
    let from_proxy = send(&app, with_id("10.0.0.1")).await;
    assert_eq!(request_id(&from_proxy.headers), "lb-7f3a.1");
    assert_eq!(from_proxy.body["error"]["request_id"], "lb-7f3a.1");

    let from_client = send(&app, with_id("203.0.113.9")).await;
    assert!(Uuid::parse_str(request_id(&from_client.headers)).is_ok());
    assert_eq!(
        from_client.body["error"]["request_id"],
        request_id(&from_client.headers)
    );
}

#[tokio::test]
async fn cors_answers_only_allowlisted_origins() {
    let get_from = |origin: &str| {
        request(Method::GET, "/health/live", "203.0.113.9")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .expect("a request")
    };
    let allow_origin = header::ACCESS_CONTROL_ALLOW_ORIGIN;

    let closed = app(&config());
    let sent = send(&closed, get_from("https://cmms.example.com")).await;
    assert!(!sent.headers.contains_key(&allow_origin));

    let open = app(&config_with(
        json!({ "cors_allowed_origins": ["https://cmms.example.com"] }),
    ));
    let allowed = send(&open, get_from("https://cmms.example.com")).await;
    assert_eq!(allowed.headers[&allow_origin], "https://cmms.example.com");
    let other = send(&open, get_from("https://evil.example.net")).await;
    assert!(!other.headers.contains_key(&allow_origin));

    let preflight = request(Method::OPTIONS, "/api/v1/alarms/x/shelve", "203.0.113.9")
        .header(header::ORIGIN, "https://cmms.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "DELETE")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .body(Body::empty())
        .expect("a request");
    let sent = send(&open, preflight).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(sent.headers[&allow_origin], "https://cmms.example.com");
    let methods = sent.headers[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .expect("text");
    assert!(
        methods.contains("DELETE") && methods.contains("PATCH"),
        "{methods}"
    );
    assert_secure(&sent.headers);
}

#[test]
fn protection_settings_are_checked() {
    let defaults = config_with(json!({}));
    assert!(defaults.problems().is_empty());
    assert_eq!(defaults.max_body_bytes, 1024 * 1024);
    assert!(defaults.trusted_proxies.is_empty() && defaults.cors_allowed_origins.is_empty());

    let bad = config_with(json!({ "max_body_bytes": 10, "trusted_proxies": ["0.0.0.0/0"] }));
    let keys: Vec<_> = bad.problems().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["api.max_body_bytes", "api.trusted_proxies"]);

    for fields in [
        json!({ "auth_rate_per_ip": "10 per minute" }),
        json!({ "tenant_burst": 0 }),
        json!({ "trusted_proxies": ["proxy.local"] }),
        json!({ "cors_allowed_origins": ["*"] }),
    ] {
        let mut all = json!({ "jwt_secret": "x".repeat(32), "password_pepper": "p".repeat(32) });
        for (k, v) in fields.as_object().expect("an object") {
            all[k] = v.clone();
        }
        assert!(
            serde_json::from_value::<ApiConfig>(all).is_err(),
            "{fields}"
        );
    }
}

#[tokio::test]
async fn one_tenants_flood_does_not_spend_another_tenants_budget() {
    let config = config_with(json!({ "tenant_rate": "1/h", "tenant_burst": 1 }));
    let app = app(&config);
    let keys = api::auth::TokenKeys::new(&config);
    let as_tenant = |tenant: TenantId| {
        let token = keys
            .issue(Uuid::new_v4(), tenant, "admin", Uuid::new_v4())
            .expect("a token");
        request(Method::GET, "/api/v1/rules/status", "203.0.113.9")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("a request")
    };
    let (flooding, quiet) = (TenantId::new_random(), TenantId::new_random());
    // Within its budget the request goes on to the session check, which needs the database.
    let first = send(&app, as_tenant(flooding)).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Over it, the answer comes before any database work.
    for _ in 0..20 {
        let refused = send(&app, as_tenant(flooding)).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.body["error"]["code"], "rate_limited");
        assert!(refused.headers.contains_key(header::RETRY_AFTER));
    }
    let other = send(&app, as_tenant(quiet)).await;
    assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
}
