//! `maintainpro admin`: bootstrap and look after organisations and users from the command
//! line, with the server's configuration file (its database URL and password pepper).
//!
//! ```text
//! maintainpro admin --config server.toml create-tenant --slug acme --name "Acme Plant" --admin-email ops@acme.example
//! maintainpro admin --config server.toml create-user --tenant acme --email tech@acme.example --role technician
//! maintainpro admin --config server.toml reset-password --tenant acme --email tech@acme.example
//! maintainpro admin --config server.toml disable-user --tenant acme --email tech@acme.example
//! maintainpro admin --config server.toml enable-user --tenant acme --email tech@acme.example
//! maintainpro admin --config server.toml revoke-sessions --tenant acme --email tech@acme.example
//! ```
//!
//! A new password is read from `MAINTAINPRO_NEW_PASSWORD` when set (checked against the
//! policy, every problem listed); otherwise a random one is generated and printed once. Every
//! action is written to the audit log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use api::audit::RequestMeta;
use api::password::PasswordHasher;
use api::users::{self, NewUser, UserError};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::ServerConfig;

/// The environment variable a new password is read from.
pub const PASSWORD_VAR: &str = "MAINTAINPRO_NEW_PASSWORD";

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The server's configuration file: `[database] url` and `[api] password_pepper` are used.
    #[arg(long, short)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Create an organisation and its first admin.
    CreateTenant {
        /// 2-63 lower-case letters, digits and `-`: what users type at login.
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        admin_email: String,
        #[arg(long, default_value = "Administrator")]
        admin_name: String,
    },
    /// Create a user in an organisation.
    CreateUser {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        /// admin, manager, technician, requester, viewer, or a custom role of the
        /// organisation.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Give a user another role (built in or custom); it holds from the user's next request.
    SetRole {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
    /// Set a new password for a user and end the user's sessions.
    ResetPassword {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
    /// Disable a user: no login, every session ended.
    DisableUser {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled user again.
    EnableUser {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
    /// End every session of a user.
    RevokeSessions {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
}

/// Runs one admin command; prints what it did, or what was wrong.
pub async fn run(args: &AdminArgs) -> ExitCode {
    let password = std::env::var(PASSWORD_VAR).ok().filter(|p| !p.is_empty());
    match execute(args, password).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error(transparent)]
    User(#[from] UserError),
}

/// Runs one admin command and returns its report. `password`: the new password a command
/// sets, or `None` to generate one.
pub async fn execute(args: &AdminArgs, password: Option<String>) -> Result<String, AdminError> {
    let name = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).map_err(|source| AdminError::Read {
        path: name.clone(),
        source,
    })?;
    let config =
        ServerConfig::from_toml(&name, &text).map_err(|e| AdminError::Config(e.to_string()))?;
    let api = config.api.as_ref().ok_or_else(|| {
        AdminError::Config(format!(
            "{name}: the [api] section with password_pepper is needed to set passwords"
        ))
    })?;
    let hasher = PasswordHasher::new(api.password_pepper.clone())
        .map_err(|e| AdminError::Config(format!("{name}: api.password_pepper: {e}")))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.database.url)
        .await
        .map_err(AdminError::Connect)?;
    let meta = RequestMeta {
        ip: None,
        request_id: None,
        user_agent: Some("maintainpro admin".into()),
    };
    let result = command(&pool, &hasher, &args.command, password, &meta).await;
    pool.close().await;
    result
}

/// The new password: the one given, or a generated one (printed once by the caller).
fn new_password(given: &Option<String>) -> (String, bool) {
    match given {
        Some(p) => (p.clone(), false),
        None => (users::generate_password(), true),
    }
}

fn password_note(password: &str, generated: bool) -> String {
    if generated {
        format!("password: {password}\n(shown once; set {PASSWORD_VAR} to choose one instead)")
    } else {
        format!("password: as given in {PASSWORD_VAR}")
    }
}

async fn command(
    pool: &PgPool,
    hasher: &PasswordHasher,
    command: &AdminCommand,
    password: Option<String>,
    meta: &RequestMeta,
) -> Result<String, AdminError> {
    let user_of = |tenant: &str, email: &str| {
        let (tenant, email) = (tenant.to_owned(), email.to_owned());
        async move {
            let t = users::tenant_by_slug(pool, &tenant).await?;
            let u = users::user_by_email(pool, t, &email).await?;
            Ok::<_, UserError>((t, u))
        }
    };
    Ok(match command {
        AdminCommand::CreateTenant {
            slug,
            name,
            admin_email,
            admin_name,
        } => {
            let (password, generated) = new_password(&password);
            let admin = NewUser {
                email: admin_email,
                display_name: admin_name,
                role: "admin",
                password: &password,
            };
            let (tenant, user) =
                users::create_tenant(pool, hasher, slug, name, admin, meta).await?;
            format!(
                "organisation {slug} created (id {tenant})\nadmin {admin_email} created (id {user})\n{}",
                password_note(&password, generated)
            )
        }
        AdminCommand::CreateUser {
            tenant,
            email,
            role,
            name,
        } => {
            let t = users::tenant_by_slug(pool, tenant).await?;
            let (password, generated) = new_password(&password);
            let new = NewUser {
                email,
                display_name: name.as_deref().unwrap_or(email),
                role,
                password: &password,
            };
            let user = users::create_user(pool, hasher, t, tenant, new, None, meta).await?;
            format!(
                "user {email} ({role}) created in {tenant} (id {user})\n{}",
                password_note(&password, generated)
            )
        }
        AdminCommand::ResetPassword { tenant, email } => {
            let (t, u) = user_of(tenant, email).await?;
            let (password, generated) = new_password(&password);
            let account = users::Account {
                tenant: t,
                slug: tenant,
                user: u,
            };
            let ended = users::set_password(pool, hasher, account, &password, None, meta).await?;
            format!(
                "password of {email} set; {ended} session(s) ended\n{}",
                password_note(&password, generated)
            )
        }
        AdminCommand::SetRole {
            tenant,
            email,
            role,
        } => {
            let (t, u) = user_of(tenant, email).await?;
            let before = users::set_role(pool, t, u, role, None, meta).await?;
            format!("{email}: role {before} -> {role}")
        }
        AdminCommand::DisableUser { tenant, email } => {
            let (t, u) = user_of(tenant, email).await?;
            let ended = users::set_disabled(pool, t, u, true, None, meta).await?;
            format!("{email} disabled; {ended} session(s) ended")
        }
        AdminCommand::EnableUser { tenant, email } => {
            let (t, u) = user_of(tenant, email).await?;
            users::set_disabled(pool, t, u, false, None, meta).await?;
            format!("{email} enabled")
        }
        AdminCommand::RevokeSessions { tenant, email } => {
            let (t, u) = user_of(tenant, email).await?;
            let ended = users::revoke_sessions(pool, t, u, None, meta).await?;
            format!("{ended} session(s) of {email} ended")
        }
    })
}
