//! Webhook delivery: each tenant's webhooks receive the events of its log
//! ([`crate::events`]) whose kinds they chose, in order, signed, retried with exponential
//! backoff, logged, and disabled after repeated failure. Targets are checked against SSRF at
//! every delivery.
//!
//! - Pure: [`is_public`] (which addresses a webhook may reach), [`signature`] (the
//!   `X-MaintAInPro-Signature` header), [`backoff`].
//! - I/O: [`check_target`] resolves a URL and checks every address; [`run`] is the
//!   dispatcher, one task per API process, which ends when the server shuts down.
//!
//! Delivery is at least once: a crash after a receiver answered and before the answer is
//! recorded delivers that event again. Receivers recognise a repeat by the event's number
//! (`X-MaintAInPro-Event-Seq`, and `seq` in the body). Each webhook's state row is locked
//! (`FOR UPDATE SKIP LOCKED`) while one of its events is delivered, so two API processes never
//! deliver the same webhook at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::WebhookSettings;
use crate::mfa::MfaKeys;
use crate::routes::live::events_after;

/// Whether `ip` is on the public internet: not loopback, private, link-local, shared
/// (CGNAT), documentation, benchmarking, multicast, broadcast, unspecified or reserved, nor an
/// IPv6 form of one of those (IPv4-mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible and other reserved ::/96
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: receivers recompute it with
/// their secret and refuse old timestamps, so a captured delivery cannot be replayed later.
pub fn signature(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "t={unix_secs},v1={}",
        data_encoding::HEXLOWER.encode(&digest)
    )
}

/// How long to wait after attempt `attempts` (1 = the first) failed: `base`, then doubling,
/// at most an hour.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the URL is not valid: {0}")]
    BadUrl(String),
    #[error("use an http:// or https:// URL without user name or password")]
    Scheme,
    #[error("the host does not resolve: {0}")]
    Unresolved(String),
    #[error(
        "the host resolves to {0}, a private, loopback or otherwise non-public address; an admin can allow such targets for this webhook (allow_private)"
    )]
    NotPublic(IpAddr),
}

/// A target checked for one delivery: the URL and the addresses it may be sent to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: reqwest::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Parses `url`, resolves its host and checks every address (all must be public unless
/// `allow_private`). The delivery then connects only to these addresses, so a DNS answer that
/// changes in between (rebinding) cannot redirect it.
pub async fn check_target(url: &str, allow_private: bool) -> Result<Target, TargetError> {
    let url = reqwest::Url::parse(url).map_err(|e| TargetError::BadUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(TargetError::Scheme);
    }
    let host = url
        .host_str()
        .ok_or_else(|| TargetError::BadUrl("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| TargetError::BadUrl("no port".into()))?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| TargetError::Unresolved(e.to_string()))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolved("no addresses".into()));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(TargetError::NotPublic(bad.ip()));
    }
    Ok(Target { url, host, addrs })
}

/// The result of one delivery attempt.
#[derive(Debug)]
struct Attempt {
    outcome: &'static str,
    status: Option<i32>,
    error: Option<String>,
    took: Duration,
}

async fn deliver(
    settings: &WebhookSettings,
    target: Result<Target, TargetError>,
    secret: &[u8],
    seq: i64,
    kind: &str,
    body: Vec<u8>,
) -> Attempt {
    let started = Instant::now();
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            return Attempt {
                outcome: "refused",
                status: None,
                error: Some(e.to_string()),
                took: started.elapsed(),
            };
        }
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .user_agent(concat!("MaintAInPro-Webhooks/", env!("CARGO_PKG_VERSION")))
        .resolve_to_addrs(&target.host, &target.addrs)
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return Attempt {
                outcome: "failed",
                status: None,
                error: Some(format!("cannot build the HTTP client: {e}")),
                took: started.elapsed(),
            };
        }
    };
    let now = Utc::now().timestamp();
    let result = client
        .post(target.url)
        .header("content-type", "application/json")
        .header("x-maintainpro-event", kind)
        .header("x-maintainpro-event-seq", seq.to_string())
        .header("x-maintainpro-signature", signature(secret, now, &body))
        .body(body)
        .send()
        .await;
    let took = started.elapsed();
    match result {
        Ok(response) if response.status().is_success() => Attempt {
            outcome: "delivered",
            status: Some(i32::from(response.status().as_u16())),
            error: None,
            took,
        },
        Ok(response) => Attempt {
            outcome: "failed",
            status: Some(i32::from(response.status().as_u16())),
            error: Some(format!("the receiver answered {}", response.status())),
            took,
        },
        Err(e) => Attempt {
            outcome: "failed",
            status: None,
            error: Some(error_text(&e)),
            took,
        },
    }
}

/// A reqwest error with its causes, cut to what the log column holds.
fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(500).collect()
}

/// What the dispatcher needs.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub keys: MfaKeys,
    pub settings: WebhookSettings,
}

/// Makes ring the process's TLS crypto provider, which reqwest's rustls (built without one)
/// needs before any HTTP client is built; a provider already installed is kept. Called when
/// the API is built; programs that build HTTP clients before that call it first.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Delivers due events of every tenant's enabled webhooks every `settings.poll`, until
/// `closing` turns true.
pub async fn run(dispatcher: Dispatcher, mut closing: watch::Receiver<bool>) {
    install_tls_provider();
    tracing::info!("webhook dispatcher started");
    loop {
        if *closing.borrow() {
            break;
        }
        if let Err(e) = dispatch_once(&dispatcher).await {
            tracing::warn!(error = %e, "webhook dispatch failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(dispatcher.settings.poll) => {}
            _ = closing.changed() => {}
        }
    }
    tracing::info!("webhook dispatcher stopped");
}

/// One round over every tenant that has an enabled webhook.
pub async fn dispatch_once(d: &Dispatcher) -> Result<(), sqlx::Error> {
    // Tenants' ids are readable across tenants; each tenant's webhooks only under its own.
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(&d.pool)
        .await?;
    for tenant in tenants {
        let mut tx = migrations::begin_tenant(&d.pool, tenant).await?;
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM webhooks WHERE tenant_id = $1 AND enabled
               AND (next_attempt_at IS NULL OR next_attempt_at <= now())",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for webhook in due {
            // Up to 100 events per webhook per round, so one busy webhook does not hold back
            // the others for long.
            for _ in 0..100 {
                if !deliver_next(d, tenant, webhook).await? {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct WebhookRow {
    url: String,
    event_kinds: Vec<String>,
    secret_sealed: Vec<u8>,
    allow_private: bool,
    after_seq: i64,
    attempts: i32,
    failed_in_a_row: i32,
}

/// Delivers the next event of one webhook, if one is due; returns whether to go on with the
/// next (the event was delivered or given up).
async fn deliver_next(d: &Dispatcher, tenant: Uuid, webhook: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = migrations::begin_tenant(&d.pool, tenant).await?;
    let row: Option<WebhookRow> = sqlx::query_as(
        "SELECT url, event_kinds, secret_sealed, allow_private, after_seq, attempts,
                failed_in_a_row
         FROM webhooks WHERE tenant_id = $1 AND id = $2 AND enabled
           AND (next_attempt_at IS NULL OR next_attempt_at <= now())
         FOR UPDATE SKIP LOCKED",
    )
    .bind(tenant)
    .bind(webhook)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(w) = row else {
        return Ok(false);
    };
    let Some(event) = events_after(&d.pool, tenant, w.after_seq, &w.event_kinds, 1)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(false);
    };
    let secret = match d.keys.open(webhook, &w.secret_sealed) {
        Ok(s) => s,
        Err(_) => {
            disable(
                &mut tx,
                tenant,
                webhook,
                "its secret cannot be opened (was the pepper changed?); create it again",
            )
            .await?;
            tx.commit().await?;
            return Ok(false);
        }
    };
    let body = serde_json::to_vec(&json!({
        "seq": event.seq,
        "kind": event.kind,
        "subject_id": event.subject_id,
        "at": event.at,
        "tenant_id": tenant,
        "payload": event.payload,
    }))
    .expect("an event serializes");
    let target = check_target(&w.url, w.allow_private).await;
    let attempt = deliver(&d.settings, target, &secret, event.seq, &event.kind, body).await;
    let number = w.attempts + 1;
    sqlx::query(
        "INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_seq, attempt, outcome,
                                         status_code, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant)
    .bind(webhook)
    .bind(event.seq)
    .bind(number)
    .bind(attempt.outcome)
    .bind(attempt.status)
    .bind(&attempt.error)
    .bind(i32::try_from(attempt.took.as_millis()).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    metrics::counter!("maintainpro_webhook_deliveries_total", "outcome" => attempt.outcome)
        .increment(1);
    let go_on = if attempt.outcome == "delivered" {
        sqlx::query(
            "UPDATE webhooks SET after_seq = $3, attempts = 0, next_attempt_at = NULL,
                                 failed_in_a_row = 0
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(webhook)
        .bind(event.seq)
        .execute(&mut *tx)
        .await?;
        true
    } else if number as u32 >= d.settings.max_attempts {
        // Given up: the event is logged as failed, the webhook goes on with the next one.
        let failed = w.failed_in_a_row + 1;
        sqlx::query(
            "UPDATE webhooks SET after_seq = $3, attempts = 0, next_attempt_at = NULL,
                                 failed_in_a_row = $4
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(webhook)
        .bind(event.seq)
        .bind(failed)
        .execute(&mut *tx)
        .await?;
        tracing::warn!(%webhook, seq = event.seq, "webhook event given up after {number} attempts");
        if failed as u32 >= d.settings.disable_after {
            let reason = format!(
                "{failed} events in a row could not be delivered (last: {})",
                attempt.error.as_deref().unwrap_or("no answer")
            );
            disable(&mut tx, tenant, webhook, &reason).await?;
            false
        } else {
            true
        }
    } else {
        let wait = backoff(d.settings.retry_base, number as u32);
        sqlx::query(
            "UPDATE webhooks SET attempts = $3, next_attempt_at = now() + $4
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(webhook)
        .bind(number)
        .bind(wait)
        .execute(&mut *tx)
        .await?;
        false
    };
    tx.commit().await?;
    Ok(go_on)
}

async fn disable(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    webhook: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let reason: String = reason.chars().take(600).collect();
    sqlx::query(
        "UPDATE webhooks SET enabled = false, disabled_reason = $3 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(webhook)
    .bind(&reason)
    .execute(&mut *conn)
    .await?;
    crate::events::emit(
        conn,
        tenant,
        "webhook.disabled",
        webhook,
        &json!({ "webhook_id": webhook, "reason": reason }),
    )
    .await?;
    tracing::warn!(%webhook, reason, "webhook disabled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private} must not be public");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public} must be public");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // RFC 4231 test case 2 key and data, framed as "<t>.<body>".
        let sig = signature(b"Jefe", 1, b"what do ya want for nothing?");
        assert!(sig.starts_with("t=1,v1="), "{sig}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1.what do ya want for nothing?");
        let expected = data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1,v1={expected}"));
        assert_ne!(signature(b"Jefe", 2, b"x"), signature(b"Jefe", 1, b"x"));
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, 2), Duration::from_secs(20));
        assert_eq!(backoff(base, 4), Duration::from_secs(80));
        assert_eq!(backoff(base, 30), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn targets_are_checked_before_every_delivery() {
        assert_eq!(
            check_target("ftp://example.com/x", false)
                .await
                .unwrap_err(),
            TargetError::Scheme
        );
        assert_eq!(
            check_target("http://user:pw@93.184.216.34/", false)
                .await
                .unwrap_err(),
            TargetError::Scheme
        );
        assert!(matches!(
            check_target("http://127.0.0.1:9/hook", false).await,
            Err(TargetError::NotPublic(_))
        ));
        assert!(matches!(
            check_target("http://[::1]:9/hook", false).await,
            Err(TargetError::NotPublic(_))
        ));
        assert!(matches!(
            check_target("http://localhost:9/hook", false).await,
            Err(TargetError::NotPublic(_))
        ));
        let allowed = check_target("http://127.0.0.1:9/hook", true).await.unwrap();
        assert_eq!(allowed.addrs, ["127.0.0.1:9".parse().unwrap()]);
    }
}
