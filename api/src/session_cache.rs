//! The session check of access tokens, remembered in the process.
//!
//! Every request with an access token asks the database whether its session is still live
//! and what its user's role allows now ([`crate::sessions::active_role`]). The answer changes
//! only when a session, a user or a custom role changes; the database then announces the
//! organisation on the channel [`CHANNEL`] (triggers of migration `session_check_notify`).
//! This cache keeps answers while a listener on that channel is connected ([`run`]), and
//! forgets an organisation's answers when it hears of a change:
//!
//! - **Only while listening.** Without a subscribed listener (before it connects, after its
//!   connection fails, in a process that does not run it) every check goes to the database.
//!   Reconnecting forgets everything, since announcements made meanwhile are lost.
//! - **No stale answer stored.** A check that read the database before a change but stores
//!   its answer after the change was announced would keep a revoked session alive: every
//!   announcement moves a generation counter, and an answer is stored only when the counter
//!   has not moved since the check began ([`SessionCache::ticket`]).
//! - **Bounded.** An answer is used until the session expires or for `max_age`, whichever is
//!   sooner, so that a listener whose connection died without an error cannot keep answers
//!   forever; the cache holds at most [`CAPACITY`] sessions.
//!
//! A change made through this process's own sign-in, session, user or role endpoints makes
//! it forget every answer before the response leaves ([`crate::app`]), so the caller's next
//! request sees it. For a change made elsewhere (another API process, the command line, SQL)
//! what remains is the announcement's way from the database to this process (about a
//! millisecond on one machine): a request in that window still passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::permissions::Permissions;

/// The channel the database announces session, user and role changes on; the payload is the
/// organisation's id, or `*` for every organisation.
pub const CHANNEL: &str = "maintainpro_session_checks";

/// The most sessions remembered at once; when full, the cache starts over.
pub const CAPACITY: usize = 100_000;

/// A session check's answer: the user's role and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub role: String,
    pub permissions: Permissions,
}

#[derive(Debug)]
struct Entry {
    tenant: Uuid,
    user: Uuid,
    answer: Answer,
    session_expires: DateTime<Utc>,
    stored: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    listening: bool,
    generation: u64,
    entries: HashMap<Uuid, Entry>,
}

/// See the module documentation. Cheap to share: the handlers hold an `Arc`.
#[derive(Debug)]
pub struct SessionCache {
    max_age: Duration,
    inner: Mutex<Inner>,
}

/// Taken before a check reads the database; the answer is stored only if nothing was
/// announced since ([`SessionCache::store`]).
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl SessionCache {
    /// A cache keeping answers for at most `max_age`; zero turns it off.
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            max_age,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-done: the map is only inserted
        // into or cleared.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The remembered answer for the session `session` of `user` in `tenant`, when the cache
    /// is listening, the answer is younger than `max_age` and the session has not expired.
    pub fn get(
        &self,
        tenant: Uuid,
        session: Uuid,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Option<Answer> {
        let inner = self.lock();
        if !inner.listening {
            return None;
        }
        let entry = inner.entries.get(&session)?;
        (entry.tenant == tenant
            && entry.user == user
            && entry.session_expires > now
            && entry.stored.elapsed() < self.max_age)
            .then(|| entry.answer.clone())
    }

    /// A ticket for a check about to read the database; `None` when answers are not kept.
    pub fn ticket(&self) -> Option<Ticket> {
        let inner = self.lock();
        (inner.listening && !self.max_age.is_zero()).then_some(Ticket(inner.generation))
    }

    /// Remembers a live session's answer, read from the database after `ticket` was taken,
    /// unless something was announced since.
    pub fn store(
        &self,
        ticket: Ticket,
        tenant: Uuid,
        session: Uuid,
        user: Uuid,
        answer: Answer,
        session_expires: DateTime<Utc>,
    ) {
        let mut inner = self.lock();
        if !inner.listening || inner.generation != ticket.0 {
            return;
        }
        if inner.entries.len() >= CAPACITY {
            inner.entries.clear();
        }
        inner.entries.insert(
            session,
            Entry {
                tenant,
                user,
                answer,
                session_expires,
                stored: Instant::now(),
            },
        );
    }

    /// Something about `tenant`'s sessions, users or roles changed: forget its answers.
    pub fn forget_tenant(&self, tenant: Uuid) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.retain(|_, entry| entry.tenant != tenant);
    }

    /// Forgets every answer (a change whose organisation is not known here).
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }

    /// The listener subscribed (`true`) or lost its connection (`false`); either way every
    /// answer is forgotten.
    pub fn set_listening(&self, listening: bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
        inner.listening = listening;
        metrics::gauge!("maintainpro_session_cache_listening").set(f64::from(u8::from(listening)));
    }

    /// Whether answers are kept now.
    pub fn listening(&self) -> bool {
        self.lock().listening
    }
}

/// Listens on [`CHANNEL`] with a connection made as `pool` makes them (outside it) until
/// `closing` turns true, feeding `cache`, then closes that connection; reconnects with
/// backoff (1 s doubling to 30 s) when the connection fails
/// ([`migrations::announcements::follow`]). Does nothing when the cache is off.
pub async fn run(pool: PgPool, cache: Arc<SessionCache>, mut closing: watch::Receiver<bool>) {
    if cache.max_age.is_zero() {
        return;
    }
    let stop = async move {
        // An error means the sender is gone: nothing can ask any more, so stop as well.
        let _ = closing.wait_for(|closing| *closing).await;
    };
    migrations::announcements::follow(&pool, CHANNEL, "session-check", &*cache, stop).await;
}

impl migrations::announcements::Audience for SessionCache {
    fn set_listening(&self, listening: bool) {
        if !listening {
            metrics::counter!("maintainpro_session_cache_reconnects_total").increment(1);
        }
        SessionCache::set_listening(self, listening);
    }

    fn forget_tenant(&self, tenant: Uuid) {
        SessionCache::forget_tenant(self, tenant);
    }

    fn forget_all(&self) {
        SessionCache::forget_all(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            role: "technician".to_owned(),
            permissions: Permissions::builtin("technician").unwrap_or_default(),
        }
    }

    fn later() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    #[test]
    fn nothing_is_kept_or_answered_until_listening() {
        let cache = SessionCache::new(Duration::from_secs(30));
        let (t, s, u) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(cache.ticket().is_none());
        cache.set_listening(true);
        let ticket = cache.ticket().expect("listening");
        cache.store(ticket, t, s, u, answer(), later());
        assert_eq!(cache.get(t, s, u, Utc::now()), Some(answer()));
        cache.set_listening(false);
        assert_eq!(cache.get(t, s, u, Utc::now()), None);
        cache.set_listening(true);
        assert_eq!(cache.get(t, s, u, Utc::now()), None, "reconnecting forgets");
    }

    #[test]
    fn an_answer_read_before_an_announcement_is_not_stored() {
        let cache = SessionCache::new(Duration::from_secs(30));
        cache.set_listening(true);
        let (t, s, u) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let ticket = cache.ticket().expect("listening");
        // Another organisation's change moves the counter too: the store is refused.
        cache.forget_tenant(Uuid::new_v4());
        cache.store(ticket, t, s, u, answer(), later());
        assert_eq!(cache.get(t, s, u, Utc::now()), None);
        let stale = cache.ticket().expect("listening");
        cache.set_listening(true);
        cache.store(stale, t, s, u, answer(), later());
        assert_eq!(cache.get(t, s, u, Utc::now()), None);
    }

    #[test]
    fn an_announcement_forgets_its_organisation_only() {
        let cache = SessionCache::new(Duration::from_secs(30));
        cache.set_listening(true);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (sa, sb, u) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let ticket = cache.ticket().expect("listening");
        cache.store(ticket, a, sa, u, answer(), later());
        cache.store(ticket, b, sb, u, answer(), later());
        cache.forget_tenant(a);
        assert_eq!(cache.get(a, sa, u, Utc::now()), None);
        assert_eq!(cache.get(b, sb, u, Utc::now()), Some(answer()));
    }

    #[test]
    fn an_answer_holds_only_for_its_tenant_user_expiry_and_age() {
        let cache = SessionCache::new(Duration::from_millis(50));
        cache.set_listening(true);
        let (t, s, u) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let expires = Utc::now() + chrono::Duration::seconds(10);
        let ticket = cache.ticket().expect("listening");
        cache.store(ticket, t, s, u, answer(), expires);
        assert_eq!(cache.get(Uuid::new_v4(), s, u, Utc::now()), None, "tenant");
        assert_eq!(cache.get(t, s, Uuid::new_v4(), Utc::now()), None, "user");
        assert_eq!(cache.get(t, s, u, expires), None, "expired session");
        assert_eq!(cache.get(t, s, u, Utc::now()), Some(answer()));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(t, s, u, Utc::now()), None, "older than max_age");
    }

    #[test]
    fn a_cache_with_no_age_keeps_nothing() {
        let cache = SessionCache::new(Duration::ZERO);
        cache.set_listening(true);
        assert!(cache.ticket().is_none());
    }
}
