//! [`DatabaseUrls`]: the owner's and the app's URLs of one database, derived from the admin
//! URL so that they reach the same server the same way (host or socket, port, TLS settings),
//! and never shown with their passwords.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use url::Url;

use crate::error::DbError;

/// The URLs of one MaintAInPro database, one per role. `Debug` shows them without passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrls {
    /// Logs in as [`OWNER_ROLE`](crate::OWNER_ROLE): for [`migrate`](crate::migrate) only.
    pub owner_url: String,
    /// Logs in as [`APP_ROLE`](crate::APP_ROLE): what the services use.
    pub app_url: String,
}

impl fmt::Debug for DatabaseUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrls")
            .field("owner_url", &redacted(&self.owner_url))
            .field("app_url", &redacted(&self.app_url))
            .finish()
    }
}

/// `url` with its password (in the authority or a `password=` parameter) replaced.
pub(crate) fn redacted(url: &str) -> String {
    let Ok(mut url) = Url::parse(url) else {
        return "<unparseable URL>".to_owned();
    };
    if url.password().is_some() && url.set_password(Some("REDACTED")).is_err() {
        return "<unparseable URL>".to_owned();
    }
    if url.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "REDACTED".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

/// The admin URL, parsed both ways: as a URL (to derive the role URLs from) and as connect
/// options (to connect with).
pub(crate) struct AdminUrl {
    url: Url,
    options: PgConnectOptions,
}

impl AdminUrl {
    pub(crate) fn parse(admin_url: &str) -> Result<Self, DbError> {
        let invalid = |reason: String| DbError::InvalidUrl {
            which: "admin",
            reason,
        };
        let url = Url::parse(admin_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "scheme {:?} is not postgres or postgresql",
                url.scheme()
            )));
        }
        let options = PgConnectOptions::from_str(admin_url)
            .map_err(|e| invalid(e.to_string()))?
            // The superuser session carries role passwords (as verifiers): keep its statements
            // out of the client's logs.
            .disable_statement_logging();
        Ok(Self { url, options })
    }

    /// Options for a superuser connection to `database` on the admin URL's server.
    pub(crate) fn options_for(&self, database: &str) -> PgConnectOptions {
        self.options.clone().database(database)
    }

    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// The URL that logs in as `role` with `password` to `database`, on the same server and
    /// with the same connection parameters (sslmode, socket directory, ...) as the admin URL.
    pub(crate) fn derive(
        &self,
        role: &str,
        password: &str,
        database: &str,
    ) -> Result<String, DbError> {
        let unusable = || DbError::InvalidUrl {
            which: "admin",
            reason: "it has no host to put a role and password on".to_owned(),
        };
        let mut url = self.url.clone();
        // A socket-only URL (postgres:///db?host=/run/postgresql) has an empty authority,
        // which cannot carry credentials; sqlx then connects through the `host` parameter's
        // socket and ignores this placeholder.
        if url.host_str().is_none_or(str::is_empty) {
            url.set_host(Some("localhost")).map_err(|_| unusable())?;
        }
        url.set_username(role).map_err(|_| unusable())?;
        // Encoded here: the url crate leaves `%` alone, and sqlx decodes the password.
        url.set_password(Some(&percent_encode(password)))
            .map_err(|_| unusable())?;
        url.set_path(&format!("/{database}"));
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| !matches!(key.as_ref(), "user" | "password" | "dbname"))
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(url.into())
    }
}

/// Percent-encodes every byte but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// How long a connection attempt may take before it is reported as a timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where `options` connect to, for error messages: `host:port/database` or the socket.
fn describe_target(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or("(default database)");
    match options.get_socket() {
        Some(dir) => format!("socket {}:{}/{database}", dir.display(), options.get_port()),
        None => format!("{}:{}/{database}", options.get_host(), options.get_port()),
    }
}

/// Connects with `options`, turning every failure into an error that names the target and the
/// role but not the password.
pub(crate) async fn connect(options: &PgConnectOptions) -> Result<PgConnection, DbError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(DbError::Connect {
            target: describe_target(options),
            role: options.get_username().to_owned(),
            source,
        }),
        Err(_) => Err(DbError::ConnectTimeout {
            target: describe_target(options),
            role: options.get_username().to_owned(),
            after: CONNECT_TIMEOUT,
        }),
    }
}

/// Parses a role URL (owner or app) into connect options.
pub(crate) fn role_options(which: &'static str, url: &str) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url).map_err(|e| DbError::InvalidUrl {
        which,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive(admin: &str, password: &str) -> String {
        AdminUrl::parse(admin)
            .expect("the test URL is valid")
            .derive("maintainpro_app", password, "t_db")
            .expect("the test URL has a host")
    }

    #[test]
    fn derived_url_keeps_server_and_parameters_and_replaces_credentials() {
        let url = derive(
            "postgres://postgres:admin%40pw@db.example:6543/postgres?sslmode=require&user=x&dbname=y&application_name=a",
            "app pw",
        );
        assert_eq!(
            url,
            "postgres://maintainpro_app:app%20pw@db.example:6543/t_db?sslmode=require&application_name=a"
        );
    }

    #[test]
    fn passwords_round_trip_through_sqlx() {
        for password in ["p@ss/w:rd?#%41", "it's \"quoted\" \\ ünï", "plain"] {
            let url = derive("postgres://postgres@127.0.0.1:5432/postgres", password);
            let options = PgConnectOptions::from_str(&url).expect("derived URLs parse");
            assert_eq!(options.get_username(), "maintainpro_app");
            assert_eq!(options.get_database(), Some("t_db"));
            assert_eq!(options.get_port(), 5432);
            assert_eq!(options.get_host(), "127.0.0.1");
            // sqlx keeps the password private; the decoded URL is the only way to compare.
            let reparsed = Url::parse(&url).expect("derived URLs parse");
            let decoded = percent_decode(reparsed.password().expect("a password is set"));
            assert_eq!(decoded, password);
        }
    }

    #[test]
    fn socket_urls_keep_their_socket() {
        let url = derive("postgres:///postgres?host=/run/postgresql", "pw");
        let options = PgConnectOptions::from_str(&url).expect("derived URLs parse");
        assert_eq!(
            options.get_socket().map(|p| p.display().to_string()),
            Some("/run/postgresql".to_owned())
        );
        assert_eq!(options.get_database(), Some("t_db"));
    }

    #[test]
    fn ipv6_hosts_survive() {
        let url = derive("postgres://postgres:pw@[::1]:5433/postgres", "pw");
        assert_eq!(url, "postgres://maintainpro_app:pw@[::1]:5433/t_db");
    }

    #[test]
    fn debug_redacts_passwords() {
        let urls = DatabaseUrls {
            owner_url: "postgres://maintainpro_owner:owner%20secret@h:1/d".to_owned(),
            app_url: "postgres://maintainpro_app@h:1/d?password=app-secret".to_owned(),
        };
        let shown = format!("{urls:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("maintainpro_owner:REDACTED@h:1/d"),
            "{shown}"
        );
        assert_eq!(redacted("not a url"), "<unparseable URL>");
    }

    #[test]
    fn non_postgres_schemes_are_rejected() {
        assert!(matches!(
            AdminUrl::parse("mysql://root@localhost/db"),
            Err(DbError::InvalidUrl { which: "admin", .. })
        ));
        assert!(matches!(
            AdminUrl::parse("not a url"),
            Err(DbError::InvalidUrl { which: "admin", .. })
        ));
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII hex");
                out.push(u8::from_str_radix(hex, 16).expect("valid hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("UTF-8 passwords")
    }
}
