//! Following a channel on which the database announces, by organisation, that something a
//! process keeps in memory has changed (the triggers of the migrations `session_check_notify`
//! `directory_notify` and `directory_additions`). The payload of an announcement is the
//! organisation's id, `+` and the id for an addition (something new, which makes only what
//! was not found stale), or `*` for every organisation (a table emptied at once).
//!
//! [`follow`] keeps one connection subscribed and tells an [`Audience`] what it hears. An
//! announcement made while no connection was subscribed is lost, so the audience hears of
//! every subscription and every lost connection, and forgets everything at both.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use uuid::Uuid;

/// What keeps something per organisation that announcements make stale.
pub trait Audience {
    /// The connection subscribed (`true`) or was lost (`false`): what was announced while no
    /// connection was subscribed is not known, so everything kept is stale.
    fn set_listening(&self, listening: bool);
    /// Something of `tenant`'s changed.
    fn forget_tenant(&self, tenant: Uuid);
    /// Something was added to `tenant`'s: what was looked for and not found is stale.
    /// By default, as [`Audience::forget_tenant`].
    fn forget_not_found(&self, tenant: Uuid) {
        self.forget_tenant(tenant);
    }
    /// Something of an organisation not known here changed, or of every organisation.
    fn forget_all(&self);
}

/// How long a stopping listener waits for its connection to be handed back and closed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Subscribes to `channel` on a connection made as `pool` makes them (outside it, which it
/// would hold for good) and tells `audience` what is announced; reconnects with backoff (1 s
/// doubling to 30 s) when the connection fails. Runs until `stop` completes, then closes its
/// connection (waiting at most 5 s), so that a database stopped right after finds none of
/// ours still open. `what` names the listener in the log.
pub async fn follow(
    pool: &PgPool,
    channel: &str,
    what: &str,
    audience: &impl Audience,
    stop: impl Future<Output = ()>,
) {
    let current = Mutex::new(None);
    tokio::select! {
        () = follow_on(pool, &current, channel, what, audience) => {}
        () = stop => {}
    }
    audience.set_listening(false);
    // The listener just dropped hands its connection back after an `UNLISTEN`; closing its
    // pool waits for that and closes it.
    let own = current
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(own) = own
        && tokio::time::timeout(CLOSE_GRACE, own.close())
            .await
            .is_err()
    {
        tracing::warn!(
            "the {what} listener's connection did not close in {CLOSE_GRACE:?}; leaving it"
        );
    }
}

/// Listens again and again, each time on a connection of a pool of its own (kept in
/// `current` for the stop to close): a connection given up may take minutes to be
/// released, and must not hold the next one back.
async fn follow_on(
    pool: &PgPool,
    current: &Mutex<Option<PgPool>>,
    channel: &str,
    what: &str,
    audience: &impl Audience,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*pool.connect_options()).clone());
        *current.lock().unwrap_or_else(PoisonError::into_inner) = Some(own.clone());
        let mut subscribed = false;
        let e = listen(&own, channel, what, audience, &mut subscribed).await;
        if subscribed {
            // It had subscribed: a new failure starts the backoff over.
            backoff = Duration::from_secs(1);
            audience.set_listening(false);
        }
        tracing::warn!(
            error = %e,
            retry_in = ?backoff,
            "the {what} listener lost its database connection; changes are not heard until \
             it is back"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection's life: subscribe, then pass each announcement on. Returns why it ended.
async fn listen(
    own: &PgPool,
    channel: &str,
    what: &str,
    audience: &impl Audience,
    subscribed: &mut bool,
) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(own).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    // Announcements made while disconnected are lost: a lost connection must end this
    // subscription (and make the audience forget everything), not be mended silently.
    listener.eager_reconnect(false);
    if let Err(e) = listener.listen(channel).await {
        return e;
    }
    *subscribed = true;
    audience.set_listening(true);
    tracing::info!(channel, "{what} listener subscribed");
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload().parse::<Uuid>() {
                Ok(tenant) => audience.forget_tenant(tenant),
                Err(_)
                    if let Some(Ok(tenant)) = notification
                        .payload()
                        .strip_prefix('+')
                        .map(str::parse::<Uuid>) =>
                {
                    audience.forget_not_found(tenant)
                }
                Err(_) if notification.payload() == "*" => audience.forget_all(),
                Err(_) => {
                    tracing::warn!(
                        channel,
                        payload = notification.payload(),
                        "an announcement without an organisation id; forgetting everything"
                    );
                    audience.forget_all();
                }
            },
            Ok(None) => {
                return sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the listening connection was lost",
                ));
            }
            Err(e) => return e,
        }
    }
}
