//! The router and the server around it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::config::ApiConfig;
use crate::routes::{alarms, health, login, rules, work_orders};
use crate::rules_status::RulesStatus;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub keys: Arc<TokenKeys>,
    pub rules: Arc<RulesStatus>,
}

/// The router, without a socket (tests drive it with `oneshot`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/api/v1/auth/login", post(login::login))
        .route("/api/v1/work-orders", get(work_orders::list))
        .route("/api/v1/work-orders/{id}", get(work_orders::get))
        .route("/api/v1/rules/status", get(rules::status))
        .route("/api/v1/alarms", get(alarms::list))
        .route("/api/v1/alarms/{id}/acknowledge", post(alarms::acknowledge))
        .route(
            "/api/v1/alarms/{id}/shelve",
            post(alarms::shelve).delete(alarms::unshelve),
        )
        .with_state(state)
}

/// A bound API server, ready to serve.
#[derive(Debug)]
pub struct Api {
    listener: TcpListener,
    router: Router,
}

impl Api {
    /// Binds the listen address (port 0 picks a free port). `rules` is what the rules
    /// engine of this process reports (left default when it does not run one).
    pub async fn build(
        config: &ApiConfig,
        pool: PgPool,
        rules: Arc<RulesStatus>,
    ) -> std::io::Result<Api> {
        let listener = TcpListener::bind(config.listen).await?;
        let state = AppState {
            pool,
            keys: TokenKeys::new(config),
            rules,
        };
        Ok(Api {
            listener,
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "API listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
