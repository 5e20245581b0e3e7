//! Password reset by email, delivered to a local SMTP sink: the same answer whether the
//! account exists or not, a token that works once and sets a password under the policy, every
//! session ended, and no way past a second factor. Needs `scripts/test.sh`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use maintainpro_tests::Plant;
use maintainpro_tests::smtp::{Mail, settings, smtp_sink};
use reqwest::Method;
use serde_json::{Value, json};

const REQUEST: &str = "/api/v1/auth/password-reset";
const CONFIRM: &str = "/api/v1/auth/password-reset/confirm";
const NEW_PASSWORD: &str = "a brand new password for the press line";

async fn post(
    plant: &Plant,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    plant.send(Method::POST, path, token, Some(body)).await
}

/// The reset token of the latest mail to `email`, waiting for it.
async fn token_mailed_to(
    mails: &Arc<Mutex<Vec<Mail>>>,
    email: &str,
    count: usize,
) -> anyhow::Result<String> {
    Plant::eventually(Duration::from_secs(15), "the reset mail", || {
        let mails = Arc::clone(mails);
        let email = email.to_owned();
        async move {
            let mails = mails.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            let theirs: Vec<&Mail> = mails.iter().filter(|m| m.to.contains(&email)).collect();
            if theirs.len() < count {
                return Ok(None);
            }
            // Quoted-printable breaks long lines with `=` at their end; the token's characters
            // need no other escaping.
            let data = theirs[count - 1].data.replace("=\n", "");
            let token = data
                .split_whitespace()
                .find(|w| w.starts_with("mprs."))
                .with_context(|| format!("a token in {data}"))?;
            Ok(Some(token.to_owned()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailed_token_sets_a_new_password_once_and_ends_every_session() -> anyhow::Result<()> {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let port = smtp_sink(Arc::clone(&mails)).await?;
    let plant = Plant::start_with_api(|api| api.smtp = Some(settings(port))).await?;
    let email = "erin.tech@plant-a.example";
    plant.add_user(email, "technician").await?;
    let session = plant.login_as("plant-a", email).await?;

    // One answer for an account, an unknown email and an unknown organisation.
    let (status, answer) = post(
        &plant,
        REQUEST,
        None,
        json!({ "tenant": "plant-a", "email": email }),
    )
    .await?;
    assert_eq!(status, 202, "{answer}");
    for other in [
        json!({ "tenant": "plant-a", "email": "nobody@plant-a.example" }),
        json!({ "tenant": "no-such-plant", "email": email }),
    ] {
        assert_eq!(
            post(&plant, REQUEST, None, other).await?,
            (202, answer.clone())
        );
    }
    let token = token_mailed_to(&mails, email, 1).await?;
    assert_eq!(
        mails.lock().map_err(|_| anyhow::anyhow!("lock"))?.len(),
        1,
        "one mail only"
    );

    // A wrong token, and a password the policy refuses: nothing is used up.
    // The last character changed (to one it is not, whatever the token drew).
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    let (status, body) = post(
        &plant,
        CONFIRM,
        None,
        json!({ "token": forged, "password": NEW_PASSWORD }),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "token");
    let (status, body) = post(
        &plant,
        CONFIRM,
        None,
        json!({ "token": token, "password": "short" }),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "password");

    let (status, done) = post(
        &plant,
        CONFIRM,
        None,
        json!({ "token": token, "password": NEW_PASSWORD }),
    )
    .await?;
    assert_eq!(status, 200, "{done}");
    assert!(done["sessions_ended"].as_u64() >= Some(1), "{done}");
    let (status, _) = plant.get("/api/v1/work-orders", Some(&session)).await?;
    assert_eq!(status, 401, "the old session ended");
    let (status, _) = post(
        &plant,
        "/api/v1/auth/login",
        None,
        json!({ "tenant": "plant-a", "email": email, "password": NEW_PASSWORD }),
    )
    .await?;
    assert_eq!(status, 200);
    // Once only.
    let (status, _) = post(
        &plant,
        CONFIRM,
        None,
        json!({ "token": token, "password": "another new password, also long" }),
    )
    .await?;
    assert_eq!(status, 400);

    // A newer request retires the older token.
    post(
        &plant,
        REQUEST,
        None,
        json!({ "tenant": "plant-a", "email": email }),
    )
    .await?;
    let older = token_mailed_to(&mails, email, 2).await?;
    post(
        &plant,
        REQUEST,
        None,
        json!({ "tenant": "plant-a", "email": email }),
    )
    .await?;
    let newer = token_mailed_to(&mails, email, 3).await?;
    let (status, _) = post(
        &plant,
        CONFIRM,
        None,
        json!({ "token": older, "password": "yet another password for the line" }),
    )
    .await?;
    assert_eq!(status, 400, "the older token was retired");
    // At most three mails an hour to one account: the fourth request mails nothing.
    let before = mails.lock().map_err(|_| anyhow::anyhow!("lock"))?.len();
    let (status, _) = post(
        &plant,
        REQUEST,
        None,
        json!({ "tenant": "plant-a", "email": email }),
    )
    .await?;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mails.lock().map_err(|_| anyhow::anyhow!("lock"))?.len(),
        before
    );
    assert!(newer.starts_with("mprs."));

    // Every step is in the audit log.
    let admin = plant.login("plant-a").await?;
    let (_, audit) = plant.get("/api/v1/audit?limit=500", Some(&admin)).await?;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"auth.password_reset_request"),
        "{actions:?}"
    );
    assert!(actions.contains(&"auth.password_reset"), "{actions:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_mfa_needs_its_second_factor_to_reset() -> anyhow::Result<()> {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let port = smtp_sink(Arc::clone(&mails)).await?;
    let plant = Plant::start_with_api(|api| api.smtp = Some(settings(port))).await?;
    let email = "mia.manager@plant-a.example";
    plant.add_user(email, "manager").await?;
    let session = plant.login_as("plant-a", email).await?;
    let (status, enrolled) =
        post(&plant, "/api/v1/auth/mfa/enroll", Some(&session), json!({})).await?;
    assert_eq!(status, 200, "{enrolled}");
    let secret = api::mfa::secret_from_base32(enrolled["secret"].as_str().context("secret")?)
        .context("base32")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (status, confirmed) = post(
        &plant,
        "/api/v1/auth/mfa/confirm",
        Some(&session),
        json!({ "code": api::mfa::code_at(&secret, now) }),
    )
    .await?;
    assert_eq!(status, 200, "{confirmed}");
    let recovery = confirmed["recovery_codes"][0]
        .as_str()
        .context("a recovery code")?;

    post(
        &plant,
        REQUEST,
        None,
        json!({ "tenant": "plant-a", "email": email }),
    )
    .await?;
    let token = token_mailed_to(&mails, email, 1).await?;
    let body = |extra: Value| {
        let mut b = json!({ "token": token, "password": NEW_PASSWORD });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    // The mailbox alone is not enough; a wrong factor neither.
    let (status, answer) = post(&plant, CONFIRM, None, body(json!({}))).await?;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("MFA")),
        "{answer}"
    );
    let (status, answer) = post(
        &plant,
        CONFIRM,
        None,
        body(json!({ "recovery_code": "AAAA-BBBB-CCCC" })),
    )
    .await?;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_mfa_code");
    // With it, the token still works.
    let (status, answer) = post(
        &plant,
        CONFIRM,
        None,
        body(json!({ "recovery_code": recovery })),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_the_reset_says_so() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let (status, answer) = post(
        &plant,
        REQUEST,
        None,
        json!({ "tenant": "plant-a", "email": "anyone@plant-a.example" }),
    )
    .await?;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable");
    Ok(())
}
