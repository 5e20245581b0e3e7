//! The server's configuration file.
//!
//! ```toml
//! roles = ["api", "ingest", "rules"]     # which parts this process runs (default: all)
//!
//! [database]
//! url = "postgres://maintainpro_app:...@db:5432/maintainpro"   # the application role
//! owner_url = "postgres://maintainpro_owner:...@db:5432/maintainpro"  # optional: migrate on start
//! max_connections = 10
//! list_connections = 8                   # the work-order list's own connections (API role)
//!
//! [api]
//! listen = "0.0.0.0:8080"
//! jwt_secret = "..."                     # at least 32 bytes; prefer MAINTAINPRO_API__JWT_SECRET
//!
//! [ingest]
//! broker = "mqtt://127.0.0.1:1883"
//!
//! [rules]
//! files = ["rules/plant.toml"]
//! watch = true                           # reload on change; an invalid edit keeps the old rules
//! replay_horizon = "5m"                  # older raises are replayed data (see docs/RULES.md)
//! reorder_window = "0s"                  # evaluate readings up to this late in order
//! warm_up = "15m"                        # most stored history a fresh engine is fed
//! shards = 2                             # engines, each owning some assets' tags (default: CPUs)
//!
//! [metrics]
//! listen = "127.0.0.1:9464"             # Prometheus text format at /metrics
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use api::ApiConfig;
use ingest::IngestConfig;
use model::settings::{self, ConfigErrors, Report, Validate};
use serde::Deserialize;

pub const ENV_PREFIX: &str = "MAINTAINPRO_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Api,
    Ingest,
    Rules,
}

fn all_roles() -> Vec<Role> {
    vec![Role::Api, Role::Ingest, Role::Rules]
}
fn default_max_connections() -> u32 {
    10
}
fn default_list_connections() -> u32 {
    8
}

#[derive(Clone, Deserialize)]
pub struct DatabaseConfig {
    pub url: String,
    pub owner_url: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// The API's work-order list reads on connections of its own (`api::list_db`), at most
    /// this many, besides the `max_connections` of the shared pool.
    #[serde(default = "default_list_connections")]
    pub list_connections: u32,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"***")
            .field("owner_url", &self.owner_url.as_ref().map(|_| "***"))
            .field("max_connections", &self.max_connections)
            .field("list_connections", &self.list_connections)
            .finish()
    }
}

fn default_true() -> bool {
    true
}
fn default_replay_horizon() -> Duration {
    rules::paging::DEFAULT_HORIZON
}

fn default_warm_up() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_rules_database_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS))
}
/// More engines than this only add tasks and queues.
const MAX_SHARDS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
pub struct RulesConfig {
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Re-read the files when they change (checked every 2 s); an invalid edit keeps the
    /// running rules.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// A raise whose event time is older than this is replayed data: it opens a work order
    /// only if the condition is still active once the tag has caught up.
    #[serde(default = "default_replay_horizon", with = "humantime_serde")]
    pub replay_horizon: Duration,
    /// How late (event time) a reading may arrive and still be evaluated in order with its
    /// tag's others. Every evaluation waits this long: 0s (the default) evaluates at once
    /// and skips a reading older than its tag's last one.
    #[serde(default, with = "humantime_serde")]
    pub reorder_window: Duration,
    /// The most stored history a fresh engine (at start and at each reload) is fed, so that
    /// rolling baselines, windows and running delays carry on: as far back as the rules'
    /// windows and delays reach, and this far for rules that count readings. `0s` starts
    /// every engine empty.
    #[serde(default = "default_warm_up", with = "humantime_serde")]
    pub warm_up: Duration,
    /// Engines, each a task owning the tags of some assets (default: one per CPU).
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// How long building the engines (at start and at each reload) waits for the database
    /// to answer one step (a query, the next rows of the history) before it gives the step
    /// up and tries again.
    #[serde(default = "default_rules_database_timeout", with = "humantime_serde")]
    pub database_timeout: Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            watch: true,
            replay_horizon: default_replay_horizon(),
            reorder_window: Duration::ZERO,
            warm_up: default_warm_up(),
            shards: default_shards(),
            database_timeout: default_rules_database_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    #[serde(default = "all_roles")]
    pub roles: Vec<Role>,
    pub database: DatabaseConfig,
    pub api: Option<ApiConfig>,
    pub ingest: Option<IngestConfig>,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

impl ServerConfig {
    pub fn from_toml(source_name: &str, text: &str) -> Result<Self, ConfigErrors> {
        Self::from_toml_and(source_name, text, std::env::vars())
    }

    /// [`ServerConfig::from_toml`] with the environment `env`. The variables the program reads
    /// for itself under the same prefix (the admin command's new password) are not settings.
    fn from_toml_and(
        source_name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let env = env
            .into_iter()
            .filter(|(name, _)| name != crate::admin_cli::PASSWORD_VAR);
        settings::load(source_name, text, ENV_PREFIX, env)
    }

    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl Validate for ServerConfig {
    fn validate(&self, report: &mut Report) {
        if self.roles.is_empty() {
            report.error(
                "roles",
                "name at least one of \"api\", \"ingest\", \"rules\"",
            );
        }
        if !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            report.error("database.url", "must be a postgres:// URL");
        }
        if self.database.max_connections == 0 {
            report.error("database.max_connections", "must be at least 1");
        }
        if self.database.list_connections == 0 {
            report.error(
                "database.list_connections",
                "must be at least 1 (the work-order list reads on these connections)",
            );
        }
        match (&self.api, self.runs(Role::Api)) {
            (None, true) => {
                report.error("api", "the api role needs an [api] section with jwt_secret")
            }
            (Some(api), _) => {
                for (key, message) in api.problems() {
                    report.error(key, message);
                }
            }
            _ => {}
        }
        match (&self.ingest, self.runs(Role::Ingest)) {
            (None, true) => report.error(
                "ingest",
                "the ingest role needs an [ingest] section with broker",
            ),
            (Some(ingest), runs) => {
                for (key, message) in ingest.problems() {
                    report.error(key, message);
                }
                let max = usize::try_from(self.database.max_connections).unwrap_or(usize::MAX);
                if runs && ingest.writers >= max {
                    report.error(
                        "ingest.writers",
                        format!(
                            "{} writers need as many database connections, but database.max_connections is {max}; \
                             keep writers below it (the decode stage and the other roles share the pool)",
                            ingest.writers
                        ),
                    );
                }
            }
            _ => {}
        }
        if self.runs(Role::Rules) && !self.runs(Role::Ingest) {
            report.error(
                "roles",
                "the rules role evaluates what this process ingests; run it together with \"ingest\"",
            );
        }
        if self.rules.replay_horizon < Duration::from_secs(10) {
            report.error(
                "rules.replay_horizon",
                "must be at least 10s: live readings arrive seconds late, not less",
            );
        }
        if self.rules.reorder_window > Duration::from_secs(60) {
            report.error(
                "rules.reorder_window",
                "at most 60s: every evaluation waits this long",
            );
        }
        if self.rules.warm_up > Duration::from_secs(24 * 3600) {
            report.error(
                "rules.warm_up",
                "at most 24h: every start and every reload reads this much history back",
            );
        }
        if !(1..=MAX_SHARDS).contains(&self.rules.shards) {
            report.error(
                "rules.shards",
                format!("must be 1 to {MAX_SHARDS}; one per CPU is a good start"),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.rules.database_timeout)
        {
            report.error(
                "rules.database_timeout",
                "must be 1s-1h; reading a large history back can take the database seconds per \
                 step, so leave room",
            );
        }
        if self.runs(Role::Rules) && self.rules.files.is_empty() {
            report.error("rules.files", "the rules role needs at least one rule file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sections_are_all_reported() {
        let err = settings::load::<ServerConfig, _>(
            "server.toml",
            "[database]\nurl = 'mysql://x'\n[api]\njwt_secret = 'short'\nlisten = '127.0.0.1:1'",
            ENV_PREFIX,
            Vec::new(),
        )
        .unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "database.url",
            "api.jwt_secret",
            "api.password_pepper",
            "ingest",
            "rules.files",
        ] {
            assert!(paths.contains(&want), "missing {want}: {err}");
        }
    }

    #[test]
    fn ingest_writers_are_checked_against_the_range_and_the_pool() {
        let load = |writers: usize, pool: u32| {
            let text = format!(
                "roles = ['ingest']\n[database]\nurl = 'postgres://x/y'\nmax_connections = {pool}\n\
                 [ingest]\nbroker = 'mqtt://127.0.0.1'\nwriters = {writers}"
            );
            settings::load::<ServerConfig, _>("server.toml", &text, ENV_PREFIX, Vec::new())
                .err()
                .map(|err| err.to_string())
        };
        assert_eq!(load(3, 10), None);
        assert_eq!(load(1, 2), None);
        for (writers, pool, says) in [
            (0, 10, "must be 1-16"),
            (17, 40, "must be 1-16"),
            (4, 4, "database.max_connections is 4"),
        ] {
            let err = load(writers, pool).expect("refused");
            assert!(
                err.contains("ingest.writers") && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn the_admin_commands_new_password_is_not_taken_for_a_setting() {
        let text = "roles = ['api']\n[database]\nurl = 'postgres://x/y'\n[api]\n\
                    jwt_secret = '0123456789abcdef0123456789abcdef'\n\
                    password_pepper = '0123456789abcdef0123456789abcdef'";
        let env = |name: &str| vec![(name.to_owned(), "a new password".to_owned())];
        ServerConfig::from_toml_and("server.toml", text, env(crate::admin_cli::PASSWORD_VAR))
            .expect("the password variable is not a setting");
        let err = ServerConfig::from_toml_and("server.toml", text, env("MAINTAINPRO_NEW_PASSWRD"))
            .expect_err("an unknown setting");
        assert!(err.to_string().contains("new_passwrd"), "{err}");
    }

    #[test]
    fn the_ingest_queue_is_checked_against_the_packet_ids() {
        let load = |queue: u64| {
            let text = format!(
                "roles = ['ingest']\n[database]\nurl = 'postgres://x/y'\n\
                 [ingest]\nbroker = 'mqtt://127.0.0.1'\nqueue = {queue}"
            );
            settings::load::<ServerConfig, _>("server.toml", &text, ENV_PREFIX, Vec::new())
                .err()
                .map(|err| err.to_string())
        };
        assert_eq!(load(1), None);
        assert_eq!(load(65_535), None);
        for queue in [0, 65_536, 1 << 62] {
            let err = load(queue).expect("refused");
            assert!(
                err.contains("ingest.queue") && err.contains("must be 1-65535"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_ingest_linger_is_at_most_a_second_and_comes_from_the_environment_too() {
        let text = "roles = ['ingest']\n[database]\nurl = 'postgres://x/y'\n\
                    [ingest]\nbroker = 'mqtt://127.0.0.1'\nlinger = '5ms'";
        let config =
            ServerConfig::from_toml_and("server.toml", text, Vec::new()).expect("a valid file");
        let ingest = config.ingest.expect("the ingest section");
        assert_eq!(ingest.linger, std::time::Duration::from_millis(5));
        let over = vec![("MAINTAINPRO_INGEST__LINGER".to_owned(), "2s".to_owned())];
        let err =
            ServerConfig::from_toml_and("server.toml", text, over).expect_err("over a second");
        let err = err.to_string();
        assert!(
            err.contains("ingest.linger") && err.contains("must be 0-1s"),
            "{err}"
        );
    }

    #[test]
    fn ingest_topic_filters_must_be_filters() {
        let load = |filters: &str| {
            let text = format!(
                "roles = ['ingest']\n[database]\nurl = 'postgres://x/y'\n\
                 [ingest]\nbroker = 'mqtt://127.0.0.1'\nsubscribe = [{filters}]"
            );
            settings::load::<ServerConfig, _>("server.toml", &text, ENV_PREFIX, Vec::new())
                .err()
                .map(|err| err.to_string())
        };
        assert_eq!(load("'maintainpro/v1/+/+/readings', 'spBv1.0/#'"), None);
        let err = load("'plant/#/x', 'a/b+', ''").expect("refused");
        for filter in ["\"plant/#/x\"", "\"a/b+\"", "\"\""] {
            assert!(
                err.contains(&format!("{filter} is not an MQTT topic filter")),
                "{err}"
            );
        }
    }

    #[test]
    fn database_timeouts_are_durations_of_1s_to_1h() {
        for section in ["ingest", "rules"] {
            let load = |timeout: &str| {
                let setting = format!("database_timeout = '{timeout}'");
                let (ingest, rules) = match section {
                    "ingest" => (setting.as_str(), ""),
                    _ => ("", setting.as_str()),
                };
                let text = format!(
                    "roles = ['ingest']\n[database]\nurl = 'postgres://x/y'\n\
                     [ingest]\nbroker = 'mqtt://127.0.0.1'\n{ingest}\n[rules]\n{rules}"
                );
                settings::load::<ServerConfig, _>("server.toml", &text, ENV_PREFIX, Vec::new())
                    .map(|config| match section {
                        "ingest" => config.ingest.map(|i| i.database_timeout),
                        _ => Some(config.rules.database_timeout),
                    })
                    .map_err(|err| err.to_string())
            };
            assert_eq!(load("5s"), Ok(Some(Duration::from_secs(5))), "{section}");
            for refused in ["0s", "2h"] {
                let err = load(refused).expect_err(refused);
                assert!(
                    err.contains(&format!("{section}.database_timeout")),
                    "{err}"
                );
                assert!(err.contains("must be 1s-1h"), "{err}");
            }
            assert!(load("soon").is_err(), "{section}");
        }
    }

    #[test]
    fn how_far_from_the_clock_a_reading_may_be_is_checked() {
        let load = |settings: &str| {
            let text = format!(
                "roles = ['ingest']\n[database]\nurl = 'postgres://x/y'\n\
                 [ingest]\nbroker = 'mqtt://127.0.0.1'\n{settings}"
            );
            settings::load::<ServerConfig, _>("server.toml", &text, ENV_PREFIX, Vec::new())
                .map(|config| {
                    config
                        .ingest
                        .map(|i| (i.max_clock_ahead, i.max_reading_age))
                })
                .map_err(|err| err.to_string())
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(load(""), Ok(Some((Duration::from_secs(3600), 90 * day))));
        assert_eq!(
            load("max_clock_ahead = '5m'\nmax_reading_age = '2years'"),
            Ok(Some((
                Duration::from_secs(300),
                Duration::from_secs(63_115_200)
            )))
        );
        // Both wrong, both reported.
        let err = load("max_clock_ahead = '10s'\nmax_reading_age = '200years'").unwrap_err();
        assert!(
            err.contains("ingest.max_clock_ahead") && err.contains("must be 1m-100y"),
            "{err}"
        );
        assert!(
            err.contains("ingest.max_reading_age") && err.contains("must be 1h-100y"),
            "{err}"
        );
    }

    #[test]
    fn the_ledger_keeps_a_batch_until_a_copy_of_it_could_not_be_stored() {
        let mut ingest = ingest::IngestConfig::new("mqtt://127.0.0.1");
        let day = Duration::from_secs(86_400);
        assert_eq!(ingest.ledger_keep(), 91 * day + Duration::from_secs(3600));
        ingest.max_reading_age = Duration::MAX;
        assert!(ingest.ledger_keep() < Duration::from_secs(400 * 365 * 86_400));
    }

    #[test]
    fn the_example_configuration_is_valid_but_for_its_placeholders() {
        let text = include_str!("../../config/server.example.toml");
        // Only what an operator must fill in may be reported: nothing about unknown keys or
        // values the example gets wrong.
        if let Err(err) =
            settings::load::<ServerConfig, _>("server.example.toml", text, ENV_PREFIX, Vec::new())
        {
            for e in &err.errors {
                assert!(
                    !e.message.contains("unknown") && !e.path.starts_with("api.webhooks"),
                    "{err}"
                );
            }
        }
    }
}
