//! The router and the server around it.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::api_keys::ApiKeyHasher;
use crate::auth::TokenKeys;
use crate::config::ApiConfig;
use crate::list_db::ListPool;
use crate::mfa::MfaKeys;
use crate::password::{PasswordError, PasswordHasher};
use crate::protect::{self, Protection};
use crate::routes::{
    alarms, api_keys, assets, attachments, audit, dead_letters, devices, docs, health, live, login,
    mfa, parts, password, password_reset, pm, privacy, readings, registry, reliability, roles,
    rules, sessions, sla, teams, users, webhooks, work_orders,
};
use crate::rules_status::RulesStatus;
use crate::sessions::Lifetimes;

/// What every handler can reach: [`Shared`] behind one reference count. axum clones the
/// state for every request that extracts it; cloning each field instead (the pepper, the
/// mailer's settings) showed in the list benchmark's profile.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub pool: PgPool,
    /// The work-order list's connections ([`crate::list_db`]).
    pub lists: ListPool,
    pub keys: Arc<TokenKeys>,
    pub lifetimes: Lifetimes,
    pub rules: Arc<RulesStatus>,
    pub protection: Arc<Protection>,
    pub passwords: PasswordHasher,
    /// Seals TOTP secrets and hashes recovery codes; derived from the password pepper.
    pub mfa: MfaKeys,
    /// Hashes API keys; derived from the password pepper.
    pub api_keys: ApiKeyHasher,
    /// What an asset's QR code links to (`[api] asset_link`).
    pub asset_link: Option<Arc<str>>,
    /// Where work-order attachments are stored.
    pub attachments_dir: Arc<std::path::PathBuf>,
    /// Mail sent on a request's behalf (password resets); `None` without `[api.smtp]`.
    pub mailer: Option<crate::notify::Mailer>,
    /// The link of a password-reset mail (`[api] reset_link`).
    pub reset_link: Option<Arc<str>>,
    /// Keeps gateway keys' broker accounts; `None` without `[api.broker_accounts]`.
    pub broker_accounts: Option<Arc<crate::broker_admin::BrokerAdmin>>,
    /// Access tokens' session checks, remembered while the database's announcements of
    /// changes are heard.
    pub session_cache: Arc<crate::session_cache::SessionCache>,
    /// Turns true when the server shuts down: long-lived responses (event streams) end.
    pub closing: watch::Receiver<bool>,
    closing_tx: Arc<watch::Sender<bool>>,
    /// What a request leaves to run after its answer (the audit entry of a refusal, a
    /// password-reset mail): the stop waits for it within [`STOP_GRACE`].
    pub after_answer: TaskTracker,
}

impl AppState {
    /// What the handlers of an API with `config` reach. Fails only on a password pepper
    /// that `ApiConfig::problems` reports too.
    pub fn new(
        config: &ApiConfig,
        pool: PgPool,
        lists: ListPool,
        rules: Arc<RulesStatus>,
    ) -> Result<Self, PasswordError> {
        crate::webhooks::install_tls_provider();
        #[cfg(feature = "rls-probe")]
        tracing::warn!(
            "built with the rls-probe test switch: a request header can make handlers filter \
             by another tenant (row-level security still applies); never deploy this build"
        );
        let (closing_tx, closing) = watch::channel(false);
        Ok(Self(Arc::new(Shared {
            pool,
            lists,
            keys: TokenKeys::new(config),
            lifetimes: Lifetimes {
                refresh_token: config.refresh_token_ttl,
                session: config.session_max_age,
            },
            rules,
            protection: Protection::new(config),
            passwords: PasswordHasher::new(config.password_pepper.clone())?,
            mfa: MfaKeys::new(&config.password_pepper),
            api_keys: ApiKeyHasher::new(&config.password_pepper),
            asset_link: config.asset_link.as_deref().map(Arc::from),
            attachments_dir: Arc::new(config.attachments_dir.clone()),
            mailer: config.smtp.as_ref().and_then(crate::notify::Mailer::new),
            reset_link: config.reset_link.as_deref().map(Arc::from),
            broker_accounts: config
                .broker_accounts
                .clone()
                .map(|settings| Arc::new(crate::broker_admin::BrokerAdmin::new(settings))),
            session_cache: crate::session_cache::SessionCache::new(config.session_cache),
            closing,
            closing_tx: Arc::new(closing_tx),
            after_answer: TaskTracker::new(),
        })))
    }
}

/// The router, without a socket (tests drive it with `oneshot`), inside the protection
/// layers.
pub fn router(state: AppState) -> Router {
    let protection = Arc::clone(&state.protection);
    let routes = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/api/v1/openapi.json", get(docs::document))
        .route("/api/v1/docs", get(docs::page))
        .route("/api/v1/docs/docs.js", get(docs::script))
        .route("/api/v1/docs/docs.css", get(docs::style))
        .route("/api/v1/auth/login", post(login::login))
        .route("/api/v1/auth/login/mfa", post(login::login_mfa))
        .route("/api/v1/auth/mfa", delete(mfa::disable))
        .route("/api/v1/auth/mfa/enroll", post(mfa::enroll))
        .route("/api/v1/auth/mfa/confirm", post(mfa::confirm))
        .route("/api/v1/auth/mfa/recovery-codes", post(mfa::recovery_codes))
        .route("/api/v1/auth/password", post(password::change))
        .route("/api/v1/auth/password-reset", post(password_reset::request))
        .route(
            "/api/v1/auth/password-reset/confirm",
            post(password_reset::confirm),
        )
        .route("/api/v1/users/{id}/reset-mfa", post(mfa::reset_user))
        .route("/api/v1/users/{id}/role", put(roles::set_user_role))
        .route("/api/v1/users", get(users::list).post(users::create))
        .route("/api/v1/users/{id}", get(users::get).patch(users::update))
        .route("/api/v1/permissions", get(roles::permissions))
        .route("/api/v1/roles", get(roles::list).post(roles::create))
        .route(
            "/api/v1/roles/{id}",
            get(roles::get).patch(roles::update).delete(roles::delete),
        )
        .route("/api/v1/users/{id}/export", get(privacy::export))
        .route("/api/v1/users/{id}/erase", post(privacy::erase))
        .route(
            "/api/v1/organisation/mfa-policy",
            get(mfa::policy).put(mfa::set_policy),
        )
        .route(
            "/api/v1/organisation/ingest-policy",
            get(registry::ingest_policy).put(registry::set_ingest_policy),
        )
        .route("/api/v1/auth/refresh", post(sessions::refresh))
        .route("/api/v1/auth/logout", post(sessions::logout))
        .route("/api/v1/auth/sessions", get(sessions::list))
        .route("/api/v1/auth/sessions/{id}", delete(sessions::revoke))
        .route(
            "/api/v1/users/{id}/revoke-sessions",
            post(sessions::revoke_user),
        )
        .route(
            "/api/v1/api-keys",
            get(api_keys::list).post(api_keys::create),
        )
        .route("/api/v1/api-keys/{id}", delete(api_keys::revoke))
        .route("/api/v1/api-keys/{id}/rotate", post(api_keys::rotate))
        .route(
            "/api/v1/work-orders",
            get(work_orders::list).post(work_orders::create),
        )
        .route(
            "/api/v1/work-orders/{id}",
            get(work_orders::get).patch(work_orders::update),
        )
        .route(
            "/api/v1/work-orders/{id}/status",
            post(work_orders::change_status),
        )
        .route("/api/v1/work-orders/{id}/assign", post(work_orders::assign))
        .route(
            "/api/v1/work-orders/{id}/comments",
            post(work_orders::comment),
        )
        .route(
            "/api/v1/work-orders/{id}/time-logs",
            post(work_orders::log_time),
        )
        .route(
            "/api/v1/work-orders/{id}/checklist",
            post(work_orders::add_checklist_item),
        )
        .route(
            "/api/v1/work-orders/{id}/checklist/{item}",
            put(work_orders::tick_checklist_item),
        )
        .route("/api/v1/teams", get(teams::list).post(teams::create))
        .route("/api/v1/sla-policies", get(sla::list).put(sla::set))
        .route(
            "/api/v1/sites",
            get(assets::list_sites).post(assets::create_site),
        )
        .route("/api/v1/sites/{id}/areas", post(assets::create_area))
        .route("/api/v1/assets", get(assets::list).post(assets::create))
        .route(
            "/api/v1/assets/{id}",
            get(assets::get).patch(assets::update),
        )
        .route("/api/v1/assets/{id}/qr.svg", get(assets::qr_svg))
        .route("/api/v1/assets/{id}/qr.png", get(assets::qr_png))
        .route(
            "/api/v1/assets/{id}/readings",
            get(readings::asset_readings),
        )
        .route("/api/v1/tags/{id}/readings", get(readings::tag_readings))
        .route("/api/v1/reliability", get(reliability::report))
        .route(
            "/api/v1/gateways",
            get(registry::list_gateways).post(registry::create_gateway),
        )
        .route(
            "/api/v1/gateways/{id}/devices",
            get(devices::list).post(devices::create),
        )
        .route(
            "/api/v1/devices/{id}",
            axum::routing::patch(devices::update).delete(devices::delete),
        )
        .route("/api/v1/tags", get(registry::list_tags))
        .route(
            "/api/v1/tags/{id}",
            axum::routing::patch(registry::update_tag),
        )
        .route("/api/v1/assets/export.csv", get(registry::export_assets))
        .route("/api/v1/tags/export.csv", get(registry::export_tags))
        .route("/api/v1/events/stream", get(live::stream))
        .route("/api/v1/pm-schedules", get(pm::list).post(pm::create))
        .route("/api/v1/pm-schedules/{id}", get(pm::get).patch(pm::update))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/webhooks/{id}",
            axum::routing::patch(webhooks::update).delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/v1/stock-locations",
            get(parts::list_locations).post(parts::create_location),
        )
        .route(
            "/api/v1/parts",
            get(parts::list_parts).post(parts::create_part),
        )
        .route("/api/v1/parts/{id}", get(parts::get_part))
        .route("/api/v1/parts/{id}/movements", post(parts::add_movement))
        .route(
            "/api/v1/parts/{id}/stock/{location}",
            put(parts::set_levels),
        )
        .route(
            "/api/v1/work-orders/{id}/parts",
            post(work_orders::plan_part),
        )
        .route(
            "/api/v1/work-orders/{id}/parts/{line}/use",
            post(work_orders::use_part),
        )
        .route("/api/v1/teams/{id}/members", put(teams::replace_members))
        .route("/api/v1/rules/status", get(rules::status))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/export", get(audit::export))
        .route("/api/v1/dead-letters", get(dead_letters::list))
        .route(
            "/api/v1/dead-letters/{id}/payload",
            get(dead_letters::payload),
        )
        .route("/api/v1/alarms", get(alarms::list))
        .route("/api/v1/alarms/{id}/acknowledge", post(alarms::acknowledge))
        .route(
            "/api/v1/alarms/{id}/shelve",
            post(alarms::shelve).delete(alarms::unshelve),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.session_cache),
            forget_session_checks_after_account_changes,
        ))
        .with_state(state.clone());
    // Attachments take bodies up to their own limit, not the API's general one.
    let uploads = Router::new()
        .route("/api/v1/assets/import", post(registry::import_assets))
        .route("/api/v1/tags/import", post(registry::import_tags))
        .route(
            "/api/v1/work-orders/{id}/attachments",
            post(attachments::upload),
        )
        .route(
            "/api/v1/work-orders/{id}/attachments/{attachment}",
            get(attachments::download).delete(attachments::delete),
        )
        .with_state(state);
    protect::layers(routes, uploads, protection)
}

/// After a request that may have changed sessions, users or roles (any method but a read, on
/// the sign-in, session, user and role endpoints), this process forgets every remembered
/// session check before the response leaves: the caller's next request sees the change at
/// once. Other processes hear of it from the database ([`crate::session_cache`]).
async fn forget_session_checks_after_account_changes(
    axum::extract::State(cache): axum::extract::State<Arc<crate::session_cache::SessionCache>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let changes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) && ["/api/v1/auth/", "/api/v1/users", "/api/v1/roles"]
        .iter()
        .any(|prefix| request.uri().path().starts_with(prefix));
    let response = next.run(request).await;
    if changes {
        cache.forget_all();
    }
    response
}

/// How long a stop waits, in all, for the API's requests in flight and its background tasks'
/// current round.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A bound API server, ready to serve.
#[derive(Debug)]
pub struct Api {
    listener: TcpListener,
    router: Router,
    closing: Arc<watch::Sender<bool>>,
    dispatcher: crate::webhooks::Dispatcher,
    pm_interval: std::time::Duration,
    smtp: Option<crate::config::SmtpSettings>,
    broker_accounts: Option<Arc<crate::broker_admin::BrokerAdmin>>,
    session_cache: Arc<crate::session_cache::SessionCache>,
    after_answer: TaskTracker,
}

impl Api {
    /// Binds the listen address (port 0 picks a free port). `rules` is what the rules
    /// engine of this process reports (left default when it does not run one).
    pub async fn build(
        config: &ApiConfig,
        pool: PgPool,
        lists: ListPool,
        rules: Arc<RulesStatus>,
    ) -> std::io::Result<Api> {
        let listener = TcpListener::bind(config.listen).await?;
        let state = AppState::new(config, pool, lists, rules).map_err(std::io::Error::other)?;
        let dispatcher = crate::webhooks::Dispatcher {
            pool: state.pool.clone(),
            keys: state.mfa.clone(),
            settings: config.webhooks.clone(),
        };
        Ok(Api {
            listener,
            closing: Arc::clone(&state.closing_tx),
            dispatcher,
            pm_interval: config.pm_interval,
            smtp: config.smtp.clone(),
            broker_accounts: state.broker_accounts.clone(),
            session_cache: Arc::clone(&state.session_cache),
            after_answer: state.after_answer.clone(),
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish (with what
    /// they left to run after their answer) and the background tasks end their round, for at
    /// most [`STOP_GRACE`] in all (a database that stopped answering must not hold the
    /// stop): requests still running then are left to the process's exit, tasks still busy
    /// are aborted, each logged. Each request knows its peer's address, which [`protect`]
    /// resolves to the client's.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "API listening");
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let closing = self.closing;
        let pool = self.dispatcher.pool.clone();
        let mut tasks = vec![
            (
                "the webhook dispatcher",
                tokio::spawn(crate::webhooks::run(self.dispatcher, closing.subscribe())),
            ),
            (
                "the preventive-maintenance scheduler",
                tokio::spawn(pm::run(pool.clone(), self.pm_interval, closing.subscribe())),
            ),
            (
                "the session-check listener",
                tokio::spawn(crate::session_cache::run(
                    pool.clone(),
                    self.session_cache,
                    closing.subscribe(),
                )),
            ),
        ];
        if let Some(admin) = self.broker_accounts {
            tasks.push((
                "the broker account reconciler",
                tokio::spawn(crate::broker_admin::run(
                    pool.clone(),
                    admin,
                    closing.subscribe(),
                )),
            ));
        }
        if let Some(smtp) = self.smtp {
            tasks.push((
                "the email notifier",
                tokio::spawn(crate::notify::run(pool, smtp, closing.subscribe())),
            ));
        }
        let mut closed = closing.subscribe();
        let closing_after = Arc::clone(&closing);
        let shutdown = async move {
            shutdown.await;
            // Event streams end, so that graceful shutdown does not wait for them forever.
            closing.send_replace(true);
        };
        let serve = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown)
            .into_future();
        tokio::pin!(serve);
        let served = tokio::select! {
            served = &mut serve => Some(served),
            // An error means the sender is gone, which it is not while this runs.
            _ = closed.wait_for(|closed| *closed) => None,
        };
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let served = match served {
            Some(served) => served,
            None => match tokio::time::timeout_at(deadline, &mut serve).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(
                        "requests still in flight {STOP_GRACE:?} after the stop; left to end \
                         with the process"
                    );
                    Ok(())
                }
            },
        };
        closing_after.send_replace(true);
        self.after_answer.close();
        if tokio::time::timeout_at(deadline, self.after_answer.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.after_answer.len(),
                "work requests left after their answer (audit entries, mails) still running \
                 {STOP_GRACE:?} after the stop; left to end with the process"
            );
        }
        for (what, mut task) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
                Err(_) => {
                    task.abort();
                    tracing::warn!("{what} still busy {STOP_GRACE:?} after the stop; aborted");
                }
            }
        }
        served
    }
}
