//! TOTP multi-factor authentication against the real server and database: enrollment, the
//! second login step, replayed codes, recovery codes, the lockout after wrong codes, the
//! organisation's policy, password change and an admin's reset. Needs `scripts/test.sh`.
//!
//! Codes are computed here from the secret the API hands out, with the API's own TOTP
//! functions, at the current time step (the skew at explicit times is unit-tested in
//! `api::mfa`).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use api::mfa;
use maintainpro_tests::{PASSWORD, Plant};
use reqwest::Method;
use serde_json::{Value, json};
use server::demo::DEMO_EMAIL;
use uuid::Uuid;

const NEW_PASSWORD: &str = "spindle bearing gasket 42";

fn now_step() -> anyhow::Result<u64> {
    Ok(mfa::step(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    ))
}

/// The code of the base32 `secret` at time step `step`.
fn code(secret: &str, step: u64) -> anyhow::Result<String> {
    let secret = mfa::secret_from_base32(secret).context("base32 secret")?;
    Ok(mfa::code_for_step(&secret, step))
}

fn field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v[key].as_str().with_context(|| format!("{key} in {v}"))
}

async fn post(
    plant: &Plant,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    plant.send(Method::POST, path, token, Some(body)).await
}

/// The first step of a login: status and body.
async fn login(plant: &Plant, slug: &str, email: &str, password: &str) -> anyhow::Result<Value> {
    let body = json!({ "tenant": slug, "email": email, "password": password });
    let (status, body) = post(plant, "/api/v1/auth/login", None, body).await?;
    anyhow::ensure!(status == 200, "login answered {status}: {body}");
    Ok(body)
}

async fn login_mfa(plant: &Plant, mfa_token: &str, factor: Value) -> anyhow::Result<(u16, Value)> {
    let mut body = factor;
    body["mfa_token"] = mfa_token.into();
    post(plant, "/api/v1/auth/login/mfa", None, body).await
}

/// Enrolls and confirms MFA with `token` at the current step; returns the secret, the step
/// confirmed and the confirmation's body.
async fn enroll_and_confirm(plant: &Plant, token: &str) -> anyhow::Result<(String, u64, Value)> {
    let (status, enrolled) = post(plant, "/api/v1/auth/mfa/enroll", Some(token), json!({})).await?;
    anyhow::ensure!(status == 200, "enroll answered {status}: {enrolled}");
    let secret = field(&enrolled, "secret")?.to_owned();
    let step = now_step()?;
    let body = json!({ "code": code(&secret, step)? });
    let (status, confirmed) = post(plant, "/api/v1/auth/mfa/confirm", Some(token), body).await?;
    anyhow::ensure!(status == 200, "confirm answered {status}: {confirmed}");
    Ok((secret, step, confirmed))
}

fn recovery_codes(confirmed: &Value) -> anyhow::Result<Vec<String>> {
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .with_context(|| format!("recovery codes in {confirmed}"))?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(codes.len() == 10, "{confirmed}");
    Ok(codes)
}

async fn works(plant: &Plant, access: &str) -> anyhow::Result<bool> {
    let (status, _) = plant.get("/api/v1/work-orders", Some(access)).await?;
    Ok(status == 200)
}

async fn user_id(plant: &Plant, tenant: Uuid, email: &str) -> anyhow::Result<Uuid> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let id = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// The tenant's audit entries, oldest first, as (action, outcome).
async fn audit_actions(plant: &Plant, tenant: Uuid) -> anyhow::Result<Vec<(String, String)>> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let rows = sqlx::query_as("SELECT action, outcome FROM audit_log ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_enrollment_login_replay_and_recovery_codes() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let access = plant.login("plant-a").await?;

    // Enrolling again before confirming replaces the secret.
    let enroll = "/api/v1/auth/mfa/enroll";
    let (status, first) = post(&plant, enroll, Some(&access), json!({})).await?;
    assert_eq!(status, 200, "{first}");
    let (status, second) = post(&plant, enroll, Some(&access), json!({})).await?;
    assert_eq!(status, 200, "{second}");
    let (old, secret) = (
        field(&first, "secret")?,
        field(&second, "secret")?.to_owned(),
    );
    assert_ne!(old, secret);
    assert_eq!(secret.len(), 32);
    assert_eq!(
        field(&second, "otpauth_uri")?,
        format!(
            "otpauth://totp/MaintAInPro:admin%40demo.local?secret={secret}&issuer=MaintAInPro&algorithm=SHA1&digits=6&period=30"
        )
    );
    let s = now_step()?;
    let confirm = "/api/v1/auth/mfa/confirm";
    let (status, body) = post(
        &plant,
        confirm,
        Some(&access),
        json!({ "code": code(old, s)? }),
    )
    .await?;
    assert_eq!(status, 401, "the replaced secret's code: {body}");
    assert_eq!(body["error"]["code"], "bad_mfa_code");
    let (status, confirmed) = post(
        &plant,
        confirm,
        Some(&access),
        json!({ "code": code(&secret, s)? }),
    )
    .await?;
    assert_eq!(status, 200, "{confirmed}");
    let codes = recovery_codes(&confirmed)?;
    assert!(confirmed.get("access_token").is_none(), "{confirmed}");
    let (status, body) = post(&plant, enroll, Some(&access), json!({})).await?;
    assert_eq!(status, 409, "MFA is on: {body}");

    // The password alone no longer logs in.
    let first_step = login(&plant, "plant-a", DEMO_EMAIL, PASSWORD).await?;
    assert_eq!(first_step["mfa_required"], true, "{first_step}");
    assert!(first_step.get("access_token").is_none(), "{first_step}");
    let mfa_token = field(&first_step, "mfa_token")?;
    assert!(
        !works(&plant, mfa_token).await?,
        "an MFA token is no access token"
    );

    // The confirmed step is spent; the next step is within the skew, once.
    let (status, body) = login_mfa(&plant, mfa_token, json!({ "code": code(&secret, s)? })).await?;
    assert_eq!(status, 401, "replayed confirmation code: {body}");
    let next = json!({ "code": code(&secret, s + 1)? });
    let (status, tokens) = login_mfa(&plant, mfa_token, next.clone()).await?;
    assert_eq!(status, 200, "{tokens}");
    let access = field(&tokens, "access_token")?.to_owned();
    assert!(works(&plant, &access).await?);
    let (status, body) = login_mfa(&plant, mfa_token, next).await?;
    assert_eq!(status, 401, "the same code twice: {body}");

    // A recovery code works once, typed in capitals too.
    let recovery = json!({ "recovery_code": codes[0].to_uppercase() });
    let (status, tokens) = login_mfa(&plant, mfa_token, recovery.clone()).await?;
    assert_eq!(status, 200, "{tokens}");
    let (status, body) = login_mfa(&plant, mfa_token, recovery).await?;
    assert_eq!(status, 401, "a used recovery code: {body}");
    let both = json!({ "code": "123456", "recovery_code": codes[1] });
    let (status, body) = login_mfa(&plant, mfa_token, both).await?;
    assert_eq!(status, 400, "{body}");

    // Turning MFA off takes the password and a second factor.
    let (status, body) = plant
        .send(
            Method::DELETE,
            "/api/v1/auth/mfa",
            Some(&access),
            Some(json!({ "password": PASSWORD, "recovery_code": codes[1] })),
        )
        .await?;
    assert_eq!(status, 204, "{body}");
    let plain = login(&plant, "plant-a", DEMO_EMAIL, PASSWORD).await?;
    assert!(plain.get("access_token").is_some(), "{plain}");

    let actions = audit_actions(&plant, plant.tenant_a.tenant).await?;
    for expected in [
        ("auth.mfa_enroll", "success"),
        ("auth.mfa_confirm", "success"),
        ("auth.mfa", "success"),
        ("auth.mfa", "failure"),
        ("auth.mfa_disable", "success"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, o)| (a.as_str(), o.as_str()) == expected),
            "{expected:?} missing from {actions:?}"
        );
    }
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_mfa_for_fifteen_minutes() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let access = plant.login("plant-a").await?;
    let (secret, s, confirmed) = enroll_and_confirm(&plant, &access).await?;
    let codes = recovery_codes(&confirmed)?;
    let first_step = login(&plant, "plant-a", DEMO_EMAIL, PASSWORD).await?;
    let mfa_token = field(&first_step, "mfa_token")?.to_owned();
    let near: Vec<String> = (s - 1..=s + 3)
        .map(|step| code(&secret, step))
        .collect::<anyhow::Result<_>>()?;
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .context("a wrong code")?;

    for attempt in 1..=4 {
        let (status, body) = login_mfa(&plant, &mfa_token, json!({ "code": wrong })).await?;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    // The fifth wrong code locks; then even the right code is refused until the lock ends.
    let attempt = |factor: Value| {
        let mut body = factor;
        body["mfa_token"] = mfa_token.clone().into();
        plant
            .http
            .post(format!("{}/api/v1/auth/login/mfa", plant.api))
            .json(&body)
            .send()
    };
    for factor in [
        json!({ "code": wrong }),
        json!({ "code": code(&secret, s + 1)? }),
        json!({ "recovery_code": codes[0] }),
    ] {
        let response = attempt(factor.clone()).await?;
        assert_eq!(response.status().as_u16(), 429, "{factor}");
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .context("Retry-After")?
            .to_str()?
            .parse()?;
        assert!((1..=900).contains(&retry_after), "{retry_after}");
    }
    // The lock covers every use of the second factor, not only logins.
    let (status, body) = post(
        &plant,
        "/api/v1/auth/password",
        Some(&access),
        json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD,
                "code": code(&secret, s + 1)? }),
    )
    .await?;
    assert_eq!(status, 429, "{body}");

    let actions = audit_actions(&plant, plant.tenant_a.tenant).await?;
    let failures = actions
        .iter()
        .filter(|(a, o)| a == "auth.mfa" && o == "failure")
        .count();
    assert_eq!(failures, 5, "{actions:?}");
    let locked = actions
        .iter()
        .filter(|(a, _)| a == "auth.mfa_locked")
        .count();
    assert_eq!(
        locked, 4,
        "the locking failure and three refusals: {actions:?}"
    );
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_forces_enrollment_and_forbids_turning_mfa_off() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let tech = "tech@demo.local";
    plant.add_user(tech, "technician").await?;
    let path = "/api/v1/organisation/mfa-policy";

    let (status, body) = plant.get(path, Some(&admin)).await?;
    assert_eq!(
        (status, body.clone()),
        (200, json!({ "required_roles": [] })),
        "{body}"
    );
    let (status, body) = plant
        .send(
            Method::PUT,
            path,
            Some(&admin),
            Some(json!({ "required_roles": ["technician", "boss"] })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(field(&body["error"], "message")?.contains("boss"), "{body}");
    let (status, body) = plant
        .send(
            Method::PUT,
            path,
            Some(&admin),
            Some(json!({ "required_roles": ["technician"], "x": 1 })),
        )
        .await?;
    assert_eq!(status, 400, "unknown field: {body}");
    let (status, body) = plant
        .send(
            Method::PUT,
            path,
            Some(&admin),
            Some(json!({ "required_roles": ["technician", "technician"] })),
        )
        .await?;
    assert_eq!(
        (status, body.clone()),
        (200, json!({ "required_roles": ["technician"] })),
        "{body}"
    );

    // The technician's password leads to enrollment only.
    let first_step = login(&plant, "plant-a", tech, PASSWORD).await?;
    assert_eq!(first_step["mfa_enrollment_required"], true, "{first_step}");
    assert!(first_step.get("access_token").is_none(), "{first_step}");
    let enroll_token = field(&first_step, "mfa_token")?.to_owned();
    assert!(!works(&plant, &enroll_token).await?);
    let (status, _) = plant
        .get("/api/v1/auth/sessions", Some(&enroll_token))
        .await?;
    assert_eq!(status, 401);
    let (status, _) = plant.get(path, Some(&enroll_token)).await?;
    assert_eq!(status, 401);
    let (status, _) = post(
        &plant,
        "/api/v1/auth/mfa/recovery-codes",
        Some(&enroll_token),
        json!({ "code": "123456" }),
    )
    .await?;
    assert_eq!(status, 401);
    let (status, _) = login_mfa(&plant, &enroll_token, json!({ "code": "123456" })).await?;
    assert_eq!(status, 401, "an enrollment token is no MFA token");

    // Enrolling with it ends in a session.
    let (secret, s, confirmed) = enroll_and_confirm(&plant, &enroll_token).await?;
    recovery_codes(&confirmed)?;
    let access = field(&confirmed, "access_token")?.to_owned();
    assert!(works(&plant, &access).await?);
    let (status, _) = plant
        .send(
            Method::PUT,
            path,
            Some(&access),
            Some(json!({ "required_roles": [] })),
        )
        .await?;
    assert_eq!(status, 403, "a technician changes no policy");

    let (status, body) = plant
        .send(
            Method::DELETE,
            "/api/v1/auth/mfa",
            Some(&access),
            Some(json!({ "password": PASSWORD, "code": code(&secret, s + 1)? })),
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        field(&body["error"], "message")?.contains("organisation requires MFA"),
        "{body}"
    );
    let again = login(&plant, "plant-a", tech, PASSWORD).await?;
    assert_eq!(again["mfa_required"], true, "{again}");
    plant.services.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_needs_the_mfa_code_and_mfa_resets_stay_in_their_tenant()
-> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = plant.tenant_a.tenant;
    let admin_id = user_id(&plant, tenant, DEMO_EMAIL).await?;
    let first = plant.login("plant-a").await?;
    let (secret, s, confirmed) = enroll_and_confirm(&plant, &first).await?;
    let codes = recovery_codes(&confirmed)?;
    let first_step = login(&plant, "plant-a", DEMO_EMAIL, PASSWORD).await?;
    let (status, tokens) = login_mfa(
        &plant,
        field(&first_step, "mfa_token")?,
        json!({ "code": code(&secret, s + 1)? }),
    )
    .await?;
    assert_eq!(status, 200, "{tokens}");
    let second = field(&tokens, "access_token")?.to_owned();

    let change = |body: Value| post(&plant, "/api/v1/auth/password", Some(&second), body);
    let (status, body) =
        change(json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD })).await?;
    assert_eq!(status, 400, "no code: {body}");
    assert!(field(&body["error"], "message")?.contains("MFA"), "{body}");
    let (status, body) = change(json!({ "current_password": PASSWORD,
        "new_password": NEW_PASSWORD, "recovery_code": "aaaa-bbbb-cccc-dddd" }))
    .await?;
    assert_eq!(status, 401, "wrong code: {body}");
    let (status, body) = change(json!({ "current_password": PASSWORD,
        "new_password": "admin", "recovery_code": codes[0] }))
    .await?;
    assert_eq!(status, 400, "{body}");
    let message = field(&body["error"], "message")?;
    assert!(message.contains("12 characters"), "{message}");
    let (status, body) = change(json!({ "current_password": "not the password",
        "new_password": NEW_PASSWORD, "recovery_code": codes[0] }))
    .await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "bad_credentials");
    let (status, body) = change(json!({ "current_password": PASSWORD,
        "new_password": NEW_PASSWORD, "recovery_code": codes[0] }))
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 1, "{body}");
    assert!(!works(&plant, &first).await?, "the other session ended");
    assert!(works(&plant, &second).await?, "the asking session stays");
    let after = login(&plant, "plant-a", DEMO_EMAIL, NEW_PASSWORD).await?;
    assert_eq!(after["mfa_required"], true, "{after}");

    // `maintainpro admin reset-password` sets a password and leaves MFA on.
    let pool = plant.db.app_pool().await;
    let account = api::users::Account {
        tenant,
        slug: "plant-a",
        user: admin_id,
    };
    let hasher = plant.password_hasher()?;
    api::users::set_password(&pool, &hasher, account, PASSWORD, None, &Default::default()).await?;
    let after_reset = login(&plant, "plant-a", DEMO_EMAIL, PASSWORD).await?;
    assert_eq!(after_reset["mfa_required"], true, "{after_reset}");

    // Resetting MFA: another tenant's admin finds no such user, a technician may not.
    let reset = format!("/api/v1/users/{admin_id}/reset-mfa");
    let foreign = plant.login("plant-b").await?;
    let (status, _) = post(&plant, &reset, Some(&foreign), json!({})).await?;
    assert_eq!(status, 404);
    plant.add_user("tech@demo.local", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@demo.local").await?;
    let (status, _) = post(&plant, &reset, Some(&tech), json!({})).await?;
    assert_eq!(status, 403);
    plant.add_user("second-admin@demo.local", "admin").await?;
    let other_admin = plant.login_as("plant-a", "second-admin@demo.local").await?;
    let (status, body) = post(&plant, &reset, Some(&other_admin), json!({})).await?;
    assert_eq!(status, 200, "{body}");
    let plain = login(&plant, "plant-a", DEMO_EMAIL, PASSWORD).await?;
    assert!(
        plain.get("access_token").is_some(),
        "MFA was reset: {plain}"
    );

    let actions = audit_actions(&plant, tenant).await?;
    for expected in [
        ("auth.password_change", "failure"),
        ("auth.password_change", "success"),
        ("user.password_set", "success"),
        ("user.mfa_reset", "denied"),
        ("user.mfa_reset", "success"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, o)| (a.as_str(), o.as_str()) == expected),
            "{expected:?} missing from {actions:?}"
        );
    }
    plant.services.stop().await;
    Ok(())
}
