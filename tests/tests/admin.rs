//! `maintainpro admin` against a real database: the first tenant and admin, users under the
//! password policy, disabling and resetting, all audited. Needs `scripts/test.sh`.

use api::password::PasswordHasher;
use migrations::testing::TestDatabase;
use model::settings::Secret;
use server::admin_cli::{AdminArgs, AdminCommand, execute};

const PEPPER: &str = "a pepper of at least thirty-two bytes, for tests";

fn args(config: &std::path::Path, command: AdminCommand) -> AdminArgs {
    AdminArgs {
        config: config.to_owned(),
        command,
    }
}

#[tokio::test]
async fn the_first_tenant_and_its_users_are_created_from_the_command_line() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "roles = [\"api\"]\n[database]\nurl = \"{}\"\n[api]\njwt_secret = \"{}\"\npassword_pepper = \"{PEPPER}\"\n",
            db.urls.app_url,
            "j".repeat(32)
        ),
    )?;
    let report = execute(
        &args(
            &config,
            AdminCommand::CreateTenant {
                slug: "acme".into(),
                name: "Acme Plant".into(),
                admin_email: "ops@acme.example".into(),
                admin_name: "Ops".into(),
            },
        ),
        None,
    )
    .await?;
    assert!(report.contains("organisation acme created"), "{report}");
    let generated = report
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_default()
        .to_owned();
    assert!(generated.len() >= 20, "{report}");

    // The same slug again, a weak password, a bad role: refused, each saying why.
    let again = execute(
        &args(
            &config,
            AdminCommand::CreateTenant {
                slug: "acme".into(),
                name: "Acme".into(),
                admin_email: "x@acme.example".into(),
                admin_name: "X".into(),
            },
        ),
        None,
    )
    .await;
    assert!(again.is_err_and(|e| e.to_string().contains("exists already")));
    let create_user = |password: Option<&str>, role: &str| {
        let a = args(
            &config,
            AdminCommand::CreateUser {
                tenant: "acme".into(),
                email: "tech@acme.example".into(),
                role: role.into(),
                name: None,
            },
        );
        let password = password.map(str::to_owned);
        async move { execute(&a, password).await }
    };
    let weak = create_user(Some("password"), "technician").await;
    let message = weak.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("at least 12 characters"), "{message}");
    assert!(message.contains("commonly used"), "{message}");
    let bad_role = create_user(Some("a long and unusual passphrase"), "overlord").await;
    assert!(bad_role.is_err_and(|e| e.to_string().contains("overlord")));
    create_user(Some("a long and unusual passphrase"), "technician").await?;

    // Stored peppered: the configured pepper verifies it, another does not.
    let pool = db.app_pool().await;
    let tenant = api::users::tenant_by_slug(&pool, "acme").await?;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'tech@acme.example'")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    let hasher = PasswordHasher::new(Secret::new(PEPPER.to_owned()))?;
    assert!(hasher.verify("a long and unusual passphrase", &hash));
    let other = PasswordHasher::new(Secret::new(
        "another pepper of thirty-two bytes!!".to_owned(),
    ))?;
    assert!(!other.verify("a long and unusual passphrase", &hash));

    let on_tech = |command: fn(String, String) -> AdminCommand| {
        let a = args(&config, command("acme".into(), "tech@acme.example".into()));
        async move { execute(&a, None).await }
    };
    let report = on_tech(|tenant, email| AdminCommand::DisableUser { tenant, email }).await?;
    assert!(report.contains("disabled"), "{report}");
    let report = on_tech(|tenant, email| AdminCommand::ResetPassword { tenant, email }).await?;
    assert!(
        report.contains("password of tech@acme.example set"),
        "{report}"
    );

    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let disabled: bool =
        sqlx::query_scalar("SELECT disabled FROM users WHERE email = 'tech@acme.example'")
            .fetch_one(&mut *tx)
            .await?;
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    assert!(disabled);
    assert_eq!(
        actions,
        [
            "tenant.create",
            "user.create",
            "user.disable",
            "user.password_set"
        ]
    );
    Ok(())
}
