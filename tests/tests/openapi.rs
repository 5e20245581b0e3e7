//! The OpenAPI document against the running server: valid OpenAPI 3.1 (checked by an
//! independent validator), every route of the router documented with exactly the methods it
//! answers, every request body and success response with an example, and the offline docs
//! page served with a policy that lets it load only its own files.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use maintainpro_tests::Plant;
use serde_json::Value;

/// The router's source: the routes it registers are read from it, so that a route added
/// without documentation fails here.
const ROUTER: &str = include_str!("../../api/src/app.rs");

/// Every path literal of a `.route(` call in the router.
fn routed_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut rest = ROUTER;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(open) = rest.find('"') else { break };
        let tail = &rest[open + 1..];
        let Some(close) = tail.find('"') else { break };
        paths.insert(tail[..close].to_owned());
        rest = &tail[close..];
    }
    paths
}

/// Operations of the document by path: method (upper case) to operation.
fn operations(doc: &Value) -> anyhow::Result<BTreeMap<String, BTreeMap<String, Value>>> {
    let mut all = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        let mut methods = BTreeMap::new();
        for (method, op) in item.as_object().context("path item")? {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                methods.insert(method.to_uppercase(), op.clone());
            }
        }
        all.insert(path.clone(), methods);
    }
    Ok(all)
}

/// `$ref` to the component it names, once (the document's references are one level deep
/// where they point at responses or parameters).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> anyhow::Result<&'a Value> {
    match value["$ref"].as_str() {
        None => Ok(value),
        Some(r) => {
            let pointer = r.strip_prefix('#').context("local reference")?;
            doc.pointer(pointer)
                .with_context(|| format!("{r} does not resolve"))
        }
    }
}

fn has_example(media: &Value) -> bool {
    media.get("example").is_some() || media["examples"].as_object().is_some_and(|e| !e.is_empty())
}

fn is_binary(doc: &Value, media: &Value) -> bool {
    resolve(doc, &media["schema"]).is_ok_and(|s| s["format"] == "binary")
}

/// Every `$ref` anywhere in `value`.
fn refs<'a>(value: &'a Value, into: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => into.push(r),
                    _ => refs(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, into)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_with_examples() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let (status, doc) = plant.get("/api/v1/openapi.json", None).await?;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");

    // The same paths as the router.
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .context("paths")?
        .keys()
        .cloned()
        .collect();
    let routed = routed_paths();
    assert!(routed.len() > 60, "router source not parsed: {routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes without documentation: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented paths the router lacks: {unrouted:?}"
    );

    // The same methods as the router: a method no route has (TRACE) answers 405 with the
    // methods the path does have.
    let ops = operations(&doc)?;
    for (path, methods) in &ops {
        let concrete = path
            .replace("/tags/{id}", "/tags/1")
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "00000000-0000-0000-0000-000000000001"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let res = plant
            .http
            .request(reqwest::Method::TRACE, format!("{}{concrete}", plant.api))
            .send()
            .await?;
        assert_eq!(res.status(), 405, "TRACE {concrete}");
        let allow = res
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("Allow of {concrete}"))?;
        let allowed: BTreeSet<String> = allow
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        let documented: BTreeSet<String> = methods.keys().cloned().collect();
        assert_eq!(allowed, documented, "methods of {path}");
    }

    // Each operation: a unique id, a tag the document lists, examples of what goes in and
    // what comes out.
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .context("tags")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, methods) in &ops {
        for (method, op) in methods {
            let at = format!("{method} {path}");
            match op["operationId"].as_str() {
                Some(id) if ids.insert(id.to_owned()) => {}
                other => problems.push(format!("{at}: operationId {other:?} missing or repeated")),
            }
            if !op["tags"].as_array().is_some_and(|t| {
                t.iter()
                    .all(|t| t.as_str().is_some_and(|t| tags.contains(t)))
            }) {
                problems.push(format!("{at}: a tag the document does not list"));
            }
            if op["summary"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no summary"));
            }
            if let Some(body) = op.get("requestBody") {
                for (media_type, media) in resolve(&doc, body)?["content"]
                    .as_object()
                    .context("request content")?
                {
                    if !has_example(media) && !is_binary(&doc, media) {
                        problems.push(format!("{at}: request {media_type} has no example"));
                    }
                }
            }
            let responses = op["responses"].as_object().context("responses")?;
            if !responses.keys().any(|code| code.starts_with('2')) {
                problems.push(format!("{at}: no success response"));
            }
            for (code, response) in responses {
                let response = resolve(&doc, response)?;
                if !code.starts_with('2') {
                    continue;
                }
                for (media_type, media) in response["content"].as_object().into_iter().flatten() {
                    if !has_example(media) && !is_binary(&doc, media) {
                        problems.push(format!("{at}: response {code} {media_type} has no example"));
                    }
                }
            }
        }
    }
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in all_refs {
        if r.strip_prefix('#').and_then(|p| doc.pointer(p)).is_none() {
            problems.push(format!("{r} does not resolve"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// An implementation independent of ours (openapi-spec-validator, from the test
/// environment's Python) checks the served document against the OpenAPI 3.1 specification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1() -> anyhow::Result<()> {
    let python = std::env::var("MPTEST_PYTHON").context(
        "MPTEST_PYTHON is not set: it names a Python with openapi-spec-validator installed. \
         Run the tests through scripts/test.sh, which creates that environment.",
    )?;
    let plant = Plant::start().await?;
    let text = plant
        .http
        .get(format!("{}/api/v1/openapi.json", plant.api))
        .send()
        .await?
        .text()
        .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, text)?;
    let out = tokio::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.validation.exceptions import OpenAPIValidationError\n\
             try:\n    validate(json.load(open(sys.argv[1])))\n\
             except OpenAPIValidationError as e:\n    sys.exit(f'invalid: {e}')",
        ])
        .arg(&file)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_works_offline() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let fetch = |path: &'static str| {
        let req = plant.http.get(format!("{}{path}", plant.api));
        async move { anyhow::Ok(req.send().await?) }
    };
    let page = fetch("/api/v1/docs").await?;
    assert_eq!(page.status(), 200);
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = page.text().await?;
    // Nothing from elsewhere: no absolute URL to another host, its own script and style.
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "{html}"
    );
    assert!(html.contains("/api/v1/docs/docs.js") && html.contains("/api/v1/docs/docs.css"));
    for (path, kind) in [
        ("/api/v1/docs/docs.js", "text/javascript"),
        ("/api/v1/docs/docs.css", "text/css"),
    ] {
        let res = fetch(path).await?;
        assert_eq!(res.status(), 200, "{path}");
        assert!(header(&res, "content-type").starts_with(kind), "{path}");
        let text = res.text().await?;
        assert!(
            !text.contains("https://") && !text.contains("http://"),
            "{path} loads from elsewhere"
        );
    }
    // The API's other answers keep the policy that loads nothing.
    let (status, _) = plant.get("/health/live", None).await?;
    assert_eq!(status, 200);
    let live = fetch("/health/live").await?;
    assert_eq!(
        header(&live, "content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
    Ok(())
}

/// schemathesis (pinned in the test environment by `scripts/test.sh`) reads the served
/// document, generates requests for every operation from its schemas and examples, and sends
/// them to a running API as a tenant admin: no request may get a server error, and every
/// answer must have a status code, content type and body the document gives for it. Bounded: five
/// generated cases per operation, a fixed seed (the same requests every run), one worker.
/// Left out: what would end the test's own session or change its credentials (sign-in, sign
/// out, sessions, passwords, MFA, API keys, erasure) and deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_documented_answers_and_no_server_error() -> anyhow::Result<()> {
    let schemathesis = std::env::var("MPTEST_SCHEMATHESIS").context(
        "MPTEST_SCHEMATHESIS is not set: it names the schemathesis program. Run the tests \
         through scripts/test.sh, which installs it.",
    )?;
    let plant = Plant::start().await?;
    let token = plant.login("plant-a").await?;
    let run = tokio::process::Command::new(schemathesis)
        .args(["run", &format!("{}/api/v1/openapi.json", plant.api)])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        .args(["--phases", "examples,fuzzing"])
        .args(["--max-examples", "5", "--seed", "42", "--workers", "1"])
        .args(["--exclude-method", "DELETE"])
        .args([
            "--exclude-path-regex",
            "auth|logout|sessions|password|mfa|api-keys|erase",
        ])
        .args(["--request-timeout", "10", "--no-color"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .context("schemathesis did not finish within 5 minutes")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        stdout.contains("Tested:"),
        "schemathesis tested nothing:\n{stdout}"
    );
    Ok(())
}
