//! Email notifications over SMTP, when `[api.smtp]` is set: a task per API process reads each
//! tenant's event log after where it stopped (`notification_cursors`) and mails
//!
//! - the assignee of a work order assigned (`work_order.assigned`), or every member of the
//!   team it is assigned to, and the assignee of one a schedule opened assigned
//!   (`work_order.opened_by_schedule`);
//! - the requester of a work order whose status changes (`work_order.status_changed`), unless
//!   they made the change themselves.
//!
//! Every mail sent or failed is logged (`notifications`). Mail is best effort: a failure is
//! retried twice at once and then logged, and the notifier goes on (the work order is in the
//! API either way). Disabled users get nothing. Which mails an event makes is [`recipients`]'s
//! question, pure; the text is [`compose`]'s.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::SmtpSettings;
use crate::routes::live::{LoggedEvent, events_after};

/// The event kinds that may make mail.
pub const KINDS: [&str; 3] = [
    "work_order.assigned",
    "work_order.opened_by_schedule",
    "work_order.status_changed",
];

/// Who an event concerns, before their addresses are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    User(Uuid),
    Team(Uuid),
}

/// What one event of a work order means for mail: who gets one. `requested_by` and
/// `assignees` are the work order's now; `actor` made the change.
pub fn recipients(
    kind: &str,
    payload: &Value,
    requested_by: Option<Uuid>,
    assignee: (Option<Uuid>, Option<Uuid>),
) -> Vec<Recipient> {
    let actor = payload["actor"]
        .as_str()
        .and_then(|a| a.parse::<Uuid>().ok());
    let mut out = Vec::new();
    match kind {
        "work_order.assigned" => {
            let detail = &payload["detail"];
            if let Some(user) = detail["user_id"].as_str().and_then(|u| u.parse().ok())
                && Some(user) != actor
            {
                out.push(Recipient::User(user));
            }
            if let Some(team) = detail["team_id"].as_str().and_then(|t| t.parse().ok()) {
                out.push(Recipient::Team(team));
            }
        }
        "work_order.opened_by_schedule" => {
            if let Some(user) = assignee.0 {
                out.push(Recipient::User(user));
            }
            if let Some(team) = assignee.1 {
                out.push(Recipient::Team(team));
            }
        }
        "work_order.status_changed" => {
            if let Some(requester) = requested_by
                && Some(requester) != actor
            {
                out.push(Recipient::User(requester));
            }
        }
        _ => {}
    }
    out
}

/// The subject and text of the mail about `kind` on a work order titled `title`.
pub fn compose(kind: &str, payload: &Value, title: &str, id: Uuid) -> (String, String) {
    let short: String = title.chars().take(120).collect();
    match kind {
        "work_order.status_changed" => {
            let to = payload["detail"]["to"].as_str().unwrap_or("changed");
            let comment = payload["detail"]["comment"].as_str().unwrap_or("");
            (
                format!("Work order {to}: {short}"),
                format!(
                    "The work order \"{title}\" is now {to}.\n{}\nWork order {id}\n",
                    if comment.is_empty() {
                        String::new()
                    } else {
                        format!("Comment: {comment}\n")
                    }
                ),
            )
        }
        _ => (
            format!("Assigned to you: {short}"),
            format!(
                "The work order \"{title}\" is assigned to you (or your team).\n\nWork order {id}\n"
            ),
        ),
    }
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

fn transport(s: &SmtpSettings) -> Result<Transport, lettre::transport::smtp::Error> {
    let mut builder = match s.tls.as_str() {
        "tls" => Transport::relay(&s.host)?.port(s.port.unwrap_or(465)),
        "none" => Transport::builder_dangerous(&s.host).port(s.port.unwrap_or(25)),
        _ => Transport::starttls_relay(&s.host)?.port(s.port.unwrap_or(587)),
    };
    if let (Some(user), Some(password)) = (&s.username, &s.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.timeout(Some(Duration::from_secs(15))).build())
}

/// Sends notifications every `settings.poll` until `closing` turns true.
pub async fn run(pool: PgPool, settings: SmtpSettings, mut closing: watch::Receiver<bool>) {
    crate::webhooks::install_tls_provider();
    let Some(Mailer {
        transport: mailer,
        from,
    }) = Mailer::new(&settings)
    else {
        return;
    };
    tracing::info!(host = %settings.host, "email notifications on");
    loop {
        if *closing.borrow() {
            break;
        }
        if let Err(e) = round(&pool, &mailer, &from, &closing).await {
            tracing::warn!(error = %e, "notification round failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.poll) => {}
            _ = closing.changed() => {}
        }
    }
}

/// One pass over every tenant's new events. Once `closing` turns true no further event is
/// mailed: the cursor is moved past those mailed and the round ends, so that a stop that
/// has to abort the task (its grace spent) sends at most one event's mails again.
pub async fn round(
    pool: &PgPool,
    mailer: &Transport,
    from: &Mailbox,
    closing: &watch::Receiver<bool>,
) -> Result<(), sqlx::Error> {
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(pool)
        .await?;
    let kinds: Vec<String> = KINDS.iter().map(|k| (*k).to_owned()).collect();
    for tenant in tenants {
        if *closing.borrow() {
            break;
        }
        let mut tx = migrations::begin_tenant(pool, tenant).await?;
        // A tenant's first round starts at its latest event: no mail about the past.
        sqlx::query(
            "INSERT INTO notification_cursors (tenant_id, after_seq)
             VALUES ($1, coalesce((SELECT max(seq) FROM events WHERE tenant_id = $1), 0))
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        // Locked for the round: two API processes do not mail the same event twice.
        let after: Option<i64> = sqlx::query_scalar(
            "SELECT after_seq FROM notification_cursors WHERE tenant_id = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut after) = after else {
            continue;
        };
        let events = events_after(pool, tenant, after, &kinds, 200).await?;
        for event in &events {
            if *closing.borrow() {
                break;
            }
            mail_event(&mut tx, tenant, event, mailer, from).await?;
            after = event.seq;
        }
        sqlx::query("UPDATE notification_cursors SET after_seq = $2 WHERE tenant_id = $1")
            .bind(tenant)
            .bind(after)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// What a mail needs of its work order.
#[derive(Debug, sqlx::FromRow)]
struct Subject {
    title: String,
    requested_by: Option<Uuid>,
    assignee_user: Option<Uuid>,
    assignee_team: Option<Uuid>,
}

async fn mail_event(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    event: &LoggedEvent,
    mailer: &Transport,
    from: &Mailbox,
) -> Result<(), sqlx::Error> {
    let Ok(id) = event.subject_id.parse::<Uuid>() else {
        return Ok(());
    };
    let work_order: Option<Subject> = sqlx::query_as(
        "SELECT title, requested_by, assignee_user, assignee_team FROM work_orders
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(Subject {
        title,
        requested_by,
        assignee_user: user,
        assignee_team: team,
    }) = work_order
    else {
        return Ok(());
    };
    let mut users = Vec::new();
    for r in recipients(&event.kind, &event.payload, requested_by, (user, team)) {
        match r {
            Recipient::User(u) => users.push(u),
            Recipient::Team(t) => users.extend(
                sqlx::query_scalar::<_, Uuid>(
                    "SELECT user_id FROM team_members WHERE tenant_id = $1 AND team_id = $2",
                )
                .bind(tenant)
                .bind(t)
                .fetch_all(&mut *conn)
                .await?,
            ),
        }
    }
    users.sort();
    users.dedup();
    let addresses: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, email, display_name FROM users
         WHERE tenant_id = $1 AND id = ANY($2) AND NOT disabled ORDER BY email",
    )
    .bind(tenant)
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?;
    let (subject, text) = compose(&event.kind, &event.payload, &title, id);
    for (user, email, name) in addresses {
        let error = send(mailer, from, &email, &name, &subject, &text)
            .await
            .err();
        metrics::counter!("maintainpro_notifications_total", "outcome" => if error.is_none() { "sent" } else { "failed" })
            .increment(1);
        if let Some(e) = &error {
            tracing::warn!(%user, error = %e, "a notification could not be sent");
        }
        sqlx::query(
            "INSERT INTO notifications (tenant_id, event_seq, user_id, email, subject, outcome, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant)
        .bind(event.seq)
        .bind(user)
        .bind(&email)
        .bind(&subject)
        .bind(if error.is_none() { "sent" } else { "failed" })
        .bind(error.map(|e| e.chars().take(500).collect::<String>()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A ready SMTP transport and sender, for mail sent on a request's behalf (password resets)
/// rather than from the event log.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    /// The mailer of `settings`; `None`, logged, when they cannot make one (the config check
    /// reports the same problems at start).
    pub fn new(settings: &SmtpSettings) -> Option<Mailer> {
        match (transport(settings), settings.from.parse::<Mailbox>()) {
            (Ok(transport), Ok(from)) => Some(Mailer { transport, from }),
            (Err(e), _) => {
                tracing::error!(error = %e, "cannot set up SMTP; no email will be sent");
                None
            }
            (_, Err(e)) => {
                tracing::error!(error = %e, "api.smtp.from is not an address; no email will be sent");
                None
            }
        }
    }

    /// Sends one mail to `name <email>`, trying three times.
    pub async fn send(
        &self,
        email: &str,
        name: &str,
        subject: &str,
        text: &str,
    ) -> Result<(), String> {
        send(&self.transport, &self.from, email, name, subject, text).await
    }
}

/// Sends one mail, trying three times.
async fn send(
    mailer: &Transport,
    from: &Mailbox,
    email: &str,
    name: &str,
    subject: &str,
    text: &str,
) -> Result<(), String> {
    let to = format!("{name} <{email}>")
        .parse::<Mailbox>()
        .or_else(|_| email.parse::<Mailbox>())
        .map_err(|e| format!("not an address: {e}"))?;
    let message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .body(text.to_owned())
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..3 {
        match mailer.send(message.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assignments_mail_the_assignee_but_not_who_assigned_themself() {
        let (me, tech, team) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let payload = json!({ "actor": me, "detail": { "user_id": tech, "team_id": team } });
        assert_eq!(
            recipients(
                "work_order.assigned",
                &payload,
                None,
                (Some(tech), Some(team))
            ),
            [Recipient::User(tech), Recipient::Team(team)]
        );
        let claimed = json!({ "actor": tech, "detail": { "user_id": tech } });
        assert!(recipients("work_order.assigned", &claimed, None, (Some(tech), None)).is_empty());
    }

    #[test]
    fn requesters_hear_of_status_changes_they_did_not_make() {
        let (req, tech) = (Uuid::from_u128(5), Uuid::from_u128(6));
        let by_tech = json!({ "actor": tech, "detail": { "to": "in_progress" } });
        assert_eq!(
            recipients(
                "work_order.status_changed",
                &by_tech,
                Some(req),
                (Some(tech), None)
            ),
            [Recipient::User(req)]
        );
        let by_req = json!({ "actor": req, "detail": { "to": "cancelled" } });
        assert!(
            recipients(
                "work_order.status_changed",
                &by_req,
                Some(req),
                (None, None)
            )
            .is_empty()
        );
        assert!(recipients("work_order.comment", &by_tech, Some(req), (None, None)).is_empty());
        let (subject, text) = compose("work_order.status_changed", &by_tech, "Guard loose", req);
        assert_eq!(subject, "Work order in_progress: Guard loose");
        assert!(text.contains("is now in_progress"));
    }
}
