//! Cross-tenant probes: every endpoint that takes an id, called by every role of tenant A
//! (admin, manager, technician, requester, viewer, and an API key with every scope) with the
//! ids of tenant B's objects, answers exactly as it answers for ids that do not exist: 404,
//! or the same refusal (status and error) where the role is turned away before any lookup.
//! Never a success, and never a body with any of tenant B's ids, names or secrets in it.
//! Afterwards tenant B's objects are as they were, and its key, webhook and sessions work.
//!
//! Every probe runs twice: as the application is, and with the application's own tenant
//! filter pointed at tenant B on purpose (the `rls-probe` test switch: handlers filter by
//! B's tenant while row-level security stays set to A's, the caller's), so that only the
//! database's policies stand between the caller and B's rows. Both must hold alone.
//!
//! The endpoints are read from the served OpenAPI document, not listed here, and each body
//! sent is one of the document's examples. A path parameter is filled by the kind of object
//! it names: the collection segment before it and its own name (`work-orders`/`id`,
//! `checklist`/`item`, `stock`/`location`, ...). So an endpoint added under a kind of object
//! seeded here is probed without touching this file, and one that names a kind of object not
//! seeded here fails the test, named.
//!
//! Operations with a parent and a child id are probed with tenant A's own parent and tenant
//! B's child too, and must answer as for a child that does not exist. A user is always told
//! 404 for B's objects, never 403; only an API key on an endpoint that serves users alone is
//! refused (403) for the endpoint as a whole, whatever the id.
//!
//! Another test puts B's ids into request bodies (`asset_id`, `members`, ...) next to A's own
//! ids: each is refused as an id that does not exist, naming the field.
//!
//! A further test holds the permission matrix endpoint by endpoint: inside one organisation,
//! a role with every permission but the one an operation names (`x-permission`) is refused.
//!
//! The API's rate limits are raised for this plant: the probes measure lookups, and a 429
//! halfway through would make two answers differ for reasons that reveal nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::{AlarmOutcome, WorkOrderService};
use maintainpro_tests::{PASSWORD, Plant};
use model::alarm::{AlarmEvent, AlarmSubject, WorkOrderDraft, WorkType};
use model::{AssetId, Priority, Severity, TagName, TenantId, Timestamp};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use uuid::Uuid;

/// Every text given to tenant B's objects starts with this; tenant A never uses it.
const MARK: &str = "Bravo-secret";

/// An object's id as a path parameter: a UUID, or a tag's integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    Uuid(Uuid),
    Int(i64),
}

impl Id {
    fn text(self) -> String {
        match self {
            Id::Uuid(u) => u.to_string(),
            Id::Int(n) => n.to_string(),
        }
    }

    /// An id of the same shape that names nothing in any tenant.
    fn nonexistent(self) -> Id {
        let fresh = Uuid::new_v4();
        match self {
            Id::Uuid(_) => Id::Uuid(fresh),
            // Tags are numbered from 1 by a sequence; this is far beyond any of them.
            Id::Int(_) => Id::Int(
                1_000_000_000_000 + i64::try_from(fresh.as_u128() % 1_000_000_000).unwrap_or(7),
            ),
        }
    }
}

/// A request body: what the document shows, as the bytes and type it is sent with.
#[derive(Debug)]
struct Payload {
    label: String,
    content_type: String,
    bytes: Vec<u8>,
}

/// One operation of the document.
#[derive(Debug)]
struct Operation {
    method: Method,
    template: String,
    /// What it needs (`x-permission`): a permission's name, `any` or `standing`; `None` for a
    /// public operation.
    permission: Option<String>,
    /// The required query parameters, with the document's example values.
    query: Vec<(String, String)>,
    /// One per example of the request body; `[None]` for an operation without one.
    bodies: Vec<Option<Payload>>,
    /// Documents a `to` query parameter: a window that ends now unless given.
    window: bool,
}

/// An answer: status and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The request id the API gave the request (`x-request-id`).
    request_id: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn code(&self) -> String {
        self.json()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into())
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error object without its request id, each substituted id written as its
    /// parameter's name: what must be equal for tenant B's ids and for nonexistent ones.
    fn error(&self, ids: &[(String, Id)]) -> String {
        let mut error = self
            .json()
            .map(|v| v["error"].clone())
            .unwrap_or(Value::Null);
        if let Some(map) = error.as_object_mut() {
            map.remove("request_id");
        }
        let mut text = error.to_string();
        for (name, id) in ids {
            text = replace_token(&text, &id.text(), &format!("{{{name}}}"));
        }
        text
    }
}

/// Whether the characters around a match leave it a token of its own (not part of a longer
/// number, UUID or timestamp).
fn bounded(text: &str, at: usize, len: usize) -> bool {
    let apart =
        |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || "-.:".contains(c)));
    apart(text[..at].chars().next_back()) && apart(text[at + len..].chars().next())
}

fn replace_token(text: &str, needle: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in text.match_indices(needle) {
        if bounded(text, at, needle.len()) {
            out.push_str(&text[last..at]);
            out.push_str(with);
            last = at + needle.len();
        }
    }
    out.push_str(&text[last..]);
    out
}

/// `$ref` to what it names (local references only), else the value itself.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> anyhow::Result<&'a Value> {
    match value["$ref"].as_str() {
        None => Ok(value),
        Some(r) => {
            let pointer = r.strip_prefix('#').context("a local reference")?;
            doc.pointer(pointer)
                .with_context(|| format!("{r} does not resolve"))
        }
    }
}

/// The path parameters of `template`, in order, as (collection segment before it, name).
fn parameters(template: &str) -> Vec<(String, String)> {
    let segments: Vec<&str> = template.split('/').collect();
    segments
        .iter()
        .enumerate()
        .filter_map(|(i, segment)| {
            let name = segment.strip_prefix('{')?.strip_suffix('}')?;
            let collection = i.checked_sub(1).and_then(|j| segments.get(j))?;
            Some(((*collection).to_owned(), name.to_owned()))
        })
        .collect()
}

fn fill(template: &str, ids: &[(String, Id)]) -> String {
    ids.iter().fold(template.to_owned(), |path, (name, id)| {
        path.replace(&format!("{{{name}}}"), &id.text())
    })
}

/// The bodies of `op` the document shows, one per example.
fn payloads(doc: &Value, at: &str, op: &Value) -> anyhow::Result<Vec<Option<Payload>>> {
    let Some(body) = op.get("requestBody") else {
        return Ok(vec![None]);
    };
    let mut out = Vec::new();
    for (media_type, media) in resolve(doc, body)?["content"]
        .as_object()
        .with_context(|| format!("{at}: request content"))?
    {
        let mut examples = Vec::new();
        if let Some(example) = media.get("example") {
            examples.push(("example".to_owned(), example.clone()));
        }
        for (name, example) in media["examples"].as_object().into_iter().flatten() {
            examples.push((name.clone(), resolve(doc, example)?["value"].clone()));
        }
        let json = media_type == "application/json" || media_type.ends_with("+json");
        if examples.is_empty() {
            // A binary body may go without an example: a few bytes of that type stand in.
            anyhow::ensure!(!json, "{at}: {media_type} body without an example");
            examples.push(("bytes".to_owned(), Value::from("cross-tenant probe\n")));
        }
        let content_type = if media_type.contains('*') {
            "application/octet-stream".to_owned()
        } else {
            media_type.clone()
        };
        for (name, value) in examples {
            let bytes = match (&value, json) {
                (_, true) => serde_json::to_vec(&value)?,
                (Value::String(text), false) => text.clone().into_bytes(),
                (other, false) => other.to_string().into_bytes(),
            };
            out.push(Some(Payload {
                label: format!("{media_type} {name}"),
                content_type: content_type.clone(),
                bytes,
            }));
        }
    }
    Ok(out)
}

/// Every operation of the document whose path has a parameter.
fn operations(doc: &Value) -> anyhow::Result<Vec<Operation>> {
    Ok(all_operations(doc)?
        .into_iter()
        .filter(|op| op.template.contains('{'))
        .collect())
}

/// Every operation of the document.
fn all_operations(doc: &Value) -> anyhow::Result<Vec<Operation>> {
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().context("paths")? {
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for (method, op) in item.as_object().context("path item")? {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let at = format!("{} {template}", method.to_uppercase());
            let mut query = Vec::new();
            let mut window = false;
            for p in shared
                .iter()
                .chain(op["parameters"].as_array().into_iter().flatten())
            {
                let p = resolve(doc, p)?;
                if p["in"] != "query" {
                    continue;
                }
                let name = p["name"].as_str().context("parameter name")?;
                window |= name == "to";
                if p["required"] != true {
                    continue;
                }
                let schema = resolve(doc, &p["schema"])?;
                let value = [&p["example"], &schema["example"], &schema["default"]]
                    .into_iter()
                    .find(|v| !v.is_null())
                    .with_context(|| {
                        format!("{at}: no example for the required query parameter {name}")
                    })?;
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                query.push((name.to_owned(), value));
            }
            ops.push(Operation {
                method: Method::from_bytes(method.to_uppercase().as_bytes())?,
                template: template.clone(),
                permission: op["x-permission"].as_str().map(str::to_owned),
                query,
                bodies: payloads(doc, &at, op)?,
                window,
            });
        }
    }
    Ok(ops)
}

async fn call(
    plant: &Plant,
    method: Method,
    path: &str,
    query: &[(String, String)],
    token: &str,
    payload: Option<&Payload>,
    app_tenant: Option<Uuid>,
) -> anyhow::Result<Answer> {
    let mut url = reqwest::Url::parse(&format!("{}{path}", plant.api))?;
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (k, v)));
    }
    let mut req = plant.http.request(method, url).bearer_auth(token);
    if let Some(tenant) = app_tenant {
        req = req.header(api::auth::rls_probe::HEADER, tenant.to_string());
    }
    if let Some(p) = payload {
        req = req
            .header(CONTENT_TYPE, p.content_type.as_str())
            .body(p.bytes.clone());
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Answer {
        status,
        request_id,
        body: res.bytes().await?.to_vec(),
    })
}

/// `op` called twice with the same token and body: its path filled with `ids[0]` (tenant B's),
/// then with `ids[1]` (ids that name nothing). Both answers, in that order.
async fn both(
    plant: &Plant,
    op: &Operation,
    ids: [&[(String, Id)]; 2],
    token: &str,
    payload: Option<&Payload>,
    app_tenant: Option<Uuid>,
) -> anyhow::Result<(Answer, Answer)> {
    let mut answers = Vec::with_capacity(2);
    for ids in ids {
        let path = fill(&op.template, ids);
        answers.push(
            call(
                plant,
                op.method.clone(),
                &path,
                &op.query,
                token,
                payload,
                app_tenant,
            )
            .await?,
        );
    }
    let nothing = answers.pop().context("two answers")?;
    let ours = answers.pop().context("two answers")?;
    Ok((ours, nothing))
}

/// POSTs `body` to `path` as `token` and answers the id at `pointer` of what it made.
async fn created(
    plant: &Plant,
    token: &str,
    path: &str,
    body: Value,
    pointer: &str,
) -> anyhow::Result<Uuid> {
    let answer = plant.send_ok(Method::POST, path, token, body).await?;
    uuid_of(&answer, pointer)
}

async fn read(plant: &Plant, path: &str, token: &str) -> anyhow::Result<Value> {
    let (status, answer) = plant.get(path, Some(token)).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {answer}");
    Ok(answer)
}

fn uuid_of(v: &Value, pointer: &str) -> anyhow::Result<Uuid> {
    Ok(v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("{pointer} in {v}"))?
        .parse()?)
}

/// Tenant B, seeded: its objects' ids by (collection segment, parameter name), and what only
/// tenant B's objects hold.
#[derive(Debug)]
struct TenantB {
    ids: BTreeMap<(String, String), Id>,
    /// Every UUID of tenant B seen while seeding, and every text given to its objects.
    secrets: Vec<String>,
    tag: i64,
    /// B's admin, whose session is the one probed.
    admin: String,
    /// B's admin again, in a session of its own: reads B's objects before and after.
    observer: String,
    technician: String,
    key: String,
}

impl TenantB {
    /// The id of B's object for parameter `{name}` after `/collection/`.
    fn lookup(&self, collection: &str, name: &str) -> Option<Id> {
        self.ids
            .get(&(collection.to_owned(), name.to_owned()))
            .copied()
    }

    fn id(&self, collection: &str, name: &str) -> anyhow::Result<Uuid> {
        match self.lookup(collection, name) {
            Some(Id::Uuid(u)) => Ok(u),
            other => bail!("{collection}/{{{name}}} is {other:?}"),
        }
    }

    /// What of tenant B's shows in `answer`. The tag's id is a small number, which error
    /// messages may hold for other reasons ("at most 30 days"): it counts as B's where it is
    /// a JSON value of its own.
    fn found_in(&self, answer: &Answer) -> Vec<String> {
        fn holds(v: &Value, n: i64) -> bool {
            match v {
                Value::Number(x) => x.as_i64() == Some(n),
                Value::String(s) => s == &n.to_string(),
                Value::Array(items) => items.iter().any(|v| holds(v, n)),
                Value::Object(map) => map.values().any(|v| holds(v, n)),
                _ => false,
            }
        }
        let text = answer.text();
        let mut found: Vec<String> = self
            .secrets
            .iter()
            .filter(|s| text.contains(s.as_str()))
            .cloned()
            .collect();
        if answer.json().is_some_and(|v| holds(&v, self.tag)) {
            found.push(format!("tag id {}", self.tag));
        }
        found
    }
}

/// Records `id` as tenant B's object for path parameter `key`, and as a secret of B's.
fn keep(
    ids: &mut BTreeMap<(String, String), Id>,
    secrets: &mut Vec<String>,
    (collection, name): (&str, &str),
    id: Uuid,
) {
    ids.insert((collection.to_owned(), name.to_owned()), Id::Uuid(id));
    secrets.push(id.to_string());
}

/// Creates one object of tenant B for every kind of path parameter, through B's API as B's
/// admin; SQL only for a second user (no endpoint creates users), the alarm, raised the
/// way the rules engine raises one, and a dead letter, stored the way ingest stores one.
async fn seed_tenant_b(plant: &Plant) -> anyhow::Result<TenantB> {
    let tenant = plant.tenant_b.tenant;
    let admin = plant.login("plant-b").await?;
    let mut ids = BTreeMap::new();
    let mut secrets = vec![
        MARK.to_owned(),
        tenant.to_string(),
        tenant.simple().to_string(),
    ];

    // A user (for /users/{id}/...), signed in so that they have a session to lose.
    let email = "bravo-secret-tech@plant-b.example";
    let user = Uuid::new_v4();
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, display_name, password_hash, role)
         VALUES ($1, $2, $3, $4, $5, 'technician')",
    )
    .bind(user)
    .bind(tenant)
    .bind(email)
    .bind(format!("{MARK} technician"))
    .bind(plant.hash(PASSWORD)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    keep(&mut ids, &mut secrets, ("users", "id"), user);
    secrets.push(email.to_owned());
    let technician = plant.login_as("plant-b", email).await?;

    // A custom role (the user above does not hold it, so it may be deleted).
    let role = plant
        .send_ok(
            Method::POST,
            "/api/v1/roles",
            &admin,
            json!({ "name": "bravo-secret-role", "description": format!("{MARK} role"),
                    "permissions": ["assets:read", "parts:read"] }),
        )
        .await?;
    keep(
        &mut ids,
        &mut secrets,
        ("roles", "id"),
        uuid_of(&role, "/id")?,
    );
    secrets.push("bravo-secret-role".to_owned());

    // A site with an area, and an asset in it.
    let site = plant
        .send_ok(
            Method::POST,
            "/api/v1/sites",
            &admin,
            json!({ "name": format!("{MARK} site") }),
        )
        .await?;
    let site_id = uuid_of(&site, "/id")?;
    keep(&mut ids, &mut secrets, ("sites", "id"), site_id);
    let site = plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/sites/{site_id}/areas"),
            &admin,
            json!({ "name": format!("{MARK} area") }),
        )
        .await?;
    let area = uuid_of(&site, "/areas/0/id")?;
    keep(&mut ids, &mut secrets, ("areas", "id"), area);
    let asset = plant
        .send_ok(
            Method::POST,
            "/api/v1/assets",
            &admin,
            json!({ "name": format!("{MARK} asset"), "site_id": site_id, "area_id": area,
                "serial_number": format!("{MARK} serial") }),
        )
        .await?;
    let asset = uuid_of(&asset, "/id")?;
    keep(&mut ids, &mut secrets, ("assets", "id"), asset);

    // A tag (integer id), moved onto that asset and described.
    let tag = plant.tag_id(tenant, "press-1.bearing_temp").await?;
    plant
        .send_ok(
            Method::PATCH,
            &format!("/api/v1/tags/{tag}"),
            &admin,
            json!({ "asset_id": asset, "description": format!("{MARK} tag") }),
        )
        .await?;
    ids.insert(("tags".to_owned(), "id".to_owned()), Id::Int(tag));

    // A dead letter (integer id), stored as ingest stores one; its id is large, so that it
    // cannot be mistaken for a count or a size in another tenant's answer.
    let letter: i64 = 900_000_000_001;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    sqlx::query(
        "INSERT INTO dead_letters (id, tenant_id, topic, reason, detail, payload)
         OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, 'bad_magic', $4, $5)",
    )
    .bind(letter)
    .bind(tenant)
    .bind(format!("maintainpro/v1/{tenant}/line-1-gw/readings"))
    .bind(format!("{MARK} dead letter"))
    .bind(MARK.as_bytes())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    ids.insert(
        ("dead-letters".to_owned(), "id".to_owned()),
        Id::Int(letter),
    );

    // The gateway, and a device on it that the tag names.
    let (_, gateways) = plant.get("/api/v1/gateways", Some(&admin)).await?;
    let gateway = uuid_of(&gateways, "/items/0/id")?;
    keep(&mut ids, &mut secrets, ("gateways", "id"), gateway);
    let device = plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/gateways/{gateway}/devices"),
            &admin,
            json!({ "name": "bravo-secret-plc", "protocol": "modbus_tcp",
                    "address": "10.9.9.9:502", "description": format!("{MARK} device") }),
        )
        .await?;
    let device = uuid_of(&device, "/id")?;
    keep(&mut ids, &mut secrets, ("devices", "id"), device);
    plant
        .send_ok(
            Method::PATCH,
            &format!("/api/v1/tags/{tag}"),
            &admin,
            json!({ "device_id": device }),
        )
        .await?;

    // A team with the user in it.
    let team = plant
        .send_ok(
            Method::POST,
            "/api/v1/teams",
            &admin,
            json!({ "name": format!("{MARK} team"), "members": [user] }),
        )
        .await?;
    keep(
        &mut ids,
        &mut secrets,
        ("teams", "id"),
        uuid_of(&team, "/id")?,
    );

    // A stock location and a part in stock there.
    let location = plant
        .send_ok(
            Method::POST,
            "/api/v1/stock-locations",
            &admin,
            json!({ "name": format!("{MARK} store") }),
        )
        .await?;
    let location = uuid_of(&location, "/id")?;
    keep(&mut ids, &mut secrets, ("stock", "location"), location);
    let part = plant
        .send_ok(
            Method::POST,
            "/api/v1/parts",
            &admin,
            json!({ "sku": "BRAVO-SECRET-SKU", "name": format!("{MARK} part") }),
        )
        .await?;
    let part = uuid_of(&part, "/id")?;
    keep(&mut ids, &mut secrets, ("parts", "id"), part);
    secrets.push("BRAVO-SECRET-SKU".to_owned());
    plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/parts/{part}/movements"),
            &admin,
            json!({ "location_id": location, "kind": "receipt", "quantity": 10,
                "note": format!("{MARK} receipt") }),
        )
        .await?;
    plant
        .send_ok(
            Method::PUT,
            &format!("/api/v1/parts/{part}/stock/{location}"),
            &admin,
            json!({ "min_qty": 1, "max_qty": 20, "reorder_point": 2 }),
        )
        .await?;

    // A work order with a checklist item, a comment, a planned part and an attachment.
    let wo = plant
        .send_ok(
            Method::POST,
            "/api/v1/work-orders",
            &admin,
            json!({ "asset_id": asset, "title": format!("{MARK} work order"),
                "description": format!("{MARK} description"),
                "checklist": [format!("{MARK} checklist item")] }),
        )
        .await?;
    let wo_id = uuid_of(&wo, "/id")?;
    keep(&mut ids, &mut secrets, ("work-orders", "id"), wo_id);
    keep(
        &mut ids,
        &mut secrets,
        ("checklist", "item"),
        uuid_of(&wo, "/checklist/0/id")?,
    );
    plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/work-orders/{wo_id}/comments"),
            &admin,
            json!({ "text": format!("{MARK} comment") }),
        )
        .await?;
    let planned = plant
        .send_ok(
            Method::POST,
            &format!("/api/v1/work-orders/{wo_id}/parts"),
            &admin,
            json!({ "part_id": part, "location_id": location, "quantity": 2 }),
        )
        .await?;
    keep(
        &mut ids,
        &mut secrets,
        ("parts", "line"),
        uuid_of(&planned, "/parts/0/id")?,
    );
    let upload = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/work-orders/{wo_id}/attachments", plant.api),
        &[("filename", "bravo-secret.txt")],
    )?;
    let res = plant
        .http
        .post(upload)
        .bearer_auth(&admin)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(format!("{MARK} attachment contents\n"))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 201, "upload: {}", res.status());
    let attachment: Value = res.json().await?;
    keep(
        &mut ids,
        &mut secrets,
        ("attachments", "attachment"),
        uuid_of(&attachment, "/id")?,
    );
    secrets.push("bravo-secret.txt".to_owned());

    // A PM schedule whose first occurrence is over a year away: the scheduler leaves it be.
    let start = (chrono::Utc::now() + chrono::Duration::days(400)).format("%Y-%m-%dT08:00:00");
    let schedule = plant
        .send_ok(
            Method::POST,
            "/api/v1/pm-schedules",
            &admin,
            json!({ "name": format!("{MARK} schedule"), "asset_id": asset,
                "title": format!("{MARK} PM work order"),
                "calendar": { "start": start.to_string(), "zone": "Europe/Berlin",
                              "every": "1 month", "lead": "3d" } }),
        )
        .await?;
    keep(
        &mut ids,
        &mut secrets,
        ("pm-schedules", "id"),
        uuid_of(&schedule, "/id")?,
    );

    // A webhook for event kinds that never happen, so that nothing is delivered meanwhile.
    let hook_url = "http://127.0.0.1:9/bravo-secret-hook";
    let webhook = plant
        .send_ok(
            Method::POST,
            "/api/v1/webhooks",
            &admin,
            json!({ "url": hook_url, "event_kinds": ["bravo_secret."], "allow_private": true }),
        )
        .await?;
    keep(
        &mut ids,
        &mut secrets,
        ("webhooks", "id"),
        uuid_of(&webhook, "/id")?,
    );
    secrets.push(hook_url.to_owned());
    secrets.push(webhook["secret"].as_str().context("secret")?.to_owned());

    // An API key.
    let created = plant
        .send_ok(
            Method::POST,
            "/api/v1/api-keys",
            &admin,
            json!({ "name": format!("{MARK} key"), "scopes": ["work_orders:read"] }),
        )
        .await?;
    keep(
        &mut ids,
        &mut secrets,
        ("api-keys", "id"),
        uuid_of(&created, "/id")?,
    );
    let key = created["key"].as_str().context("key")?.to_owned();
    secrets.push(key.clone());

    // An alarm, raised on the tag as the rules engine raises one (it opens a work order).
    let subject = AlarmSubject {
        tenant: TenantId::from_uuid(tenant),
        asset: AssetId::from_uuid(asset),
        tag_id: tag,
        tag: TagName::parse("press-1.bearing_temp")?,
        rule_id: "press-bearing-overheat".into(),
        failure_mode: "bearing-overheat".into(),
        severity: Severity::High,
    };
    let raised = AlarmEvent::Raised {
        subject,
        at: Timestamp::now(),
        value: 91.0,
        work_order: WorkOrderDraft {
            title: format!("{MARK} alarm work order"),
            description: String::new(),
            work_type: WorkType::Corrective,
            priority: Priority::High,
            checklist: Vec::new(),
            repeat_window: Duration::from_secs(86_400),
        },
    };
    match WorkOrderService::new(pool).on_alarm(&raised).await? {
        AlarmOutcome::Created { work_order } => secrets.push(work_order.to_string()),
        other => bail!("expected a new work order for tenant B's alarm, got {other:?}"),
    }
    let alarms = read(plant, "/api/v1/alarms", &admin).await?;
    keep(
        &mut ids,
        &mut secrets,
        ("alarms", "id"),
        uuid_of(&alarms, "/items/0/id")?,
    );

    // The admin's own session.
    let sessions = read(plant, "/api/v1/auth/sessions", &admin).await?;
    let session = sessions["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["current"] == true)
        .with_context(|| format!("the current session in {sessions}"))?;
    keep(
        &mut ids,
        &mut secrets,
        ("sessions", "id"),
        uuid_of(session, "/id")?,
    );

    Ok(TenantB {
        ids,
        secrets,
        tag,
        admin,
        observer: plant.login("plant-b").await?,
        technician,
        key,
    })
}

/// Drops what changes by itself or by being read, not by the probes: the window of the
/// readings endpoints (`from`, `to`, `next_from`), which ends now unless given; the time a
/// user's data export was made (`exported_at`); and the audit entries that the snapshots'
/// own requests left (a user's export lists the audit entries about them, its own included),
/// known by their request ids.
fn steady(mut v: Value, window: bool, own: &BTreeSet<String>) -> Value {
    fn walk(v: &mut Value, keys: &[&str], own: &BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for k in keys {
                    map.remove(*k);
                }
                map.values_mut().for_each(|v| walk(v, keys, own));
            }
            Value::Array(items) => {
                items.retain(|i| i["request_id"].as_str().is_none_or(|r| !own.contains(r)));
                items.iter_mut().for_each(|v| walk(v, keys, own));
            }
            _ => {}
        }
    }
    let keys: &[&str] = if window {
        &["exported_at", "from", "to", "next_from"]
    } else {
        &["exported_at"]
    };
    walk(&mut v, keys, own);
    v
}

/// What tenant B's admin reads of B's objects: every GET with path parameters, and B's
/// entries in the lists of objects that have no GET of their own (status 0: not listed).
async fn snapshot(
    plant: &Plant,
    ops: &[Operation],
    b: &TenantB,
    own: &mut BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, (u16, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|op| op.method == Method::GET && op.template.contains('{'))
    {
        let Some(ids) = parameters(&op.template)
            .into_iter()
            .map(|(collection, name)| {
                let id = b.lookup(&collection, &name)?;
                Some((name, id))
            })
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let path = fill(&op.template, &ids);
        let answer = call(
            plant,
            Method::GET,
            &path,
            &op.query,
            &b.observer,
            None,
            None,
        )
        .await?;
        own.extend(answer.request_id.clone());
        let body = match answer.json() {
            Some(v) => steady(v, op.window, own).to_string().into_bytes(),
            None => answer.body,
        };
        out.insert(format!("GET {}", op.template), (answer.status, body));
    }
    // `last_used_at` of keys and sessions moves when they are used; a webhook's `after_seq`
    // (its place in the event log) moves as the dispatcher reads past events it does not send.
    for (list, collection, name) in [
        ("/api/v1/teams", "teams", "id"),
        ("/api/v1/sites", "sites", "id"),
        ("/api/v1/alarms", "alarms", "id"),
        ("/api/v1/webhooks", "webhooks", "id"),
        ("/api/v1/api-keys", "api-keys", "id"),
        ("/api/v1/stock-locations", "stock", "location"),
        ("/api/v1/auth/sessions", "sessions", "id"),
    ] {
        let id = b.id(collection, name)?.to_string();
        let answer = call(plant, Method::GET, list, &[], &b.observer, None, None).await?;
        own.extend(answer.request_id.clone());
        let (status, items) = (answer.status, answer.json().unwrap_or(Value::Null));
        let found = items["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["id"] == id.as_str())
            .cloned();
        let (status, item) = match found {
            Some(mut item) => {
                if let Some(map) = item.as_object_mut() {
                    map.remove("last_used_at");
                    map.remove("after_seq");
                }
                (status, item)
            }
            None => (0, items),
        };
        out.insert(
            format!("GET {list} item {id}"),
            (status, item.to_string().into_bytes()),
        );
    }
    Ok(out)
}

/// A plant whose rate limits do not get in the way of the probes.
async fn probe_plant() -> anyhow::Result<Plant> {
    Plant::start_with_api(|api| {
        api.tenant_rate = "100000/s".parse().expect("a rate");
        api.tenant_burst = NonZeroU32::new(100_000).expect("not zero");
        api.auth_rate_per_ip = "100000/min".parse().expect("a rate");
        api.auth_burst_per_ip = NonZeroU32::new(100_000).expect("not zero");
        api.api_key_rate = "100000/s".parse().expect("a rate");
        api.api_key_burst = NonZeroU32::new(100_000).expect("not zero");
        // The scheduler runs once at start; nothing of it moves during the probes.
        api.pm_interval = Duration::from_secs(3600);
    })
    .await
}

/// The permission matrix holds endpoint by endpoint: for every operation whose
/// `x-permission` names a permission, a user of the same organisation whose custom role has
/// every permission but that one is refused with 403, on the organisation's own objects (so
/// no 404 stands in for the refusal). Afterwards the objects are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_a_role_without_its_permission() -> anyhow::Result<()> {
    let plant = probe_plant().await?;
    let b = seed_tenant_b(&plant).await?;
    let (status, doc) = plant.get("/api/v1/openapi.json", None).await?;
    anyhow::ensure!(status == 200, "the document: {status}");
    let ops: Vec<Operation> = all_operations(&doc)?
        .into_iter()
        .filter(|op| {
            op.permission
                .as_deref()
                .and_then(api::permissions::Permission::parse)
                .is_some()
        })
        .collect();
    anyhow::ensure!(
        ops.len() >= 60,
        "only {} operations name a permission",
        ops.len()
    );

    // One prober of tenant B whose role is moved from one "all but P" role to the next.
    let email = "prober@plant-b.example";
    let prober = {
        let pool = plant.db.app_pool().await;
        let mut tx = migrations::begin_tenant(&pool, plant.tenant_b.tenant).await?;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (id, tenant_id, email, display_name, password_hash, role)
             VALUES ($1, $2, $3, 'Prober', $4, 'viewer')",
        )
        .bind(id)
        .bind(plant.tenant_b.tenant)
        .bind(email)
        .bind(plant.hash(PASSWORD)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        id
    };
    let token = plant.login_as("plant-b", email).await?;

    let mut own = BTreeSet::new();
    let before = snapshot(&plant, &ops, &b, &mut own).await?;
    let mut failures = Vec::new();
    let mut probes = 0;
    for (n, permission) in api::permissions::Permission::ALL.into_iter().enumerate() {
        let guarded: Vec<&Operation> = ops
            .iter()
            .filter(|op| op.permission.as_deref() == Some(permission.as_str()))
            .collect();
        if guarded.is_empty() {
            continue;
        }
        let others: Vec<&str> = api::permissions::Permission::ALL
            .into_iter()
            .filter(|p| *p != permission)
            .map(|p| p.as_str())
            .collect();
        let role = format!("all-but-{n}");
        plant
            .send_ok(
                Method::POST,
                "/api/v1/roles",
                &b.admin,
                json!({ "name": role, "permissions": others }),
            )
            .await?;
        plant
            .send_ok(
                Method::PUT,
                &format!("/api/v1/users/{prober}/role"),
                &b.admin,
                json!({ "role": role }),
            )
            .await?;
        for op in guarded {
            let ids = parameters(&op.template)
                .into_iter()
                .map(|(collection, name)| {
                    let id = b
                        .lookup(&collection, &name)
                        .with_context(|| format!("no {collection}/{{{name}}} of tenant B"))?;
                    Ok((name, id))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let path = fill(&op.template, &ids);
            let payload = op.bodies.first().and_then(Option::as_ref);
            let answer = call(
                &plant,
                op.method.clone(),
                &path,
                &op.query,
                &token,
                payload,
                None,
            )
            .await?;
            own.extend(answer.request_id.clone());
            probes += 1;
            if answer.status != 403 || answer.code() != "forbidden" {
                failures.push(format!(
                    "{} {} without {permission}: {} {}",
                    op.method,
                    op.template,
                    answer.status,
                    clip(&answer.text())
                ));
            }
        }
    }
    let after = snapshot(&plant, &ops, &b, &mut own).await?;
    for (what, (status, body)) in &before {
        if after.get(what) != Some(&(*status, body.clone())) {
            failures.push(format!("{what} changed during the probes"));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {probes} probes were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The object kind a body field refers to, as the key of tenant B's ids: `asset_id` names an
/// asset, `members` lists users, and so on.
fn referent(field: &str) -> Option<(&'static str, &'static str)> {
    Some(match field {
        "asset_id" | "parent_id" => ("assets", "id"),
        "site_id" => ("sites", "id"),
        "area_id" => ("areas", "id"),
        "user_id" | "assignee_user" | "members" => ("users", "id"),
        "team_id" | "assignee_team" => ("teams", "id"),
        "part_id" => ("parts", "id"),
        "location_id" => ("stock", "location"),
        "tag_id" => ("tags", "id"),
        "device_id" => ("devices", "id"),
        "gateway_id" => ("gateways", "id"),
        _ => return None,
    })
}

/// The places in `body` that refer to another object: a JSON pointer and the kind, for every
/// known field holding an id (a UUID string or, for tags, a number), and for every element
/// of a list of them.
fn references(body: &Value, at: &str, out: &mut Vec<(String, (&'static str, &'static str))>) {
    match body {
        Value::Object(map) => {
            for (key, value) in map {
                let here = format!("{at}/{key}");
                match (referent(key), value) {
                    (Some(kind), Value::String(_) | Value::Number(_)) => out.push((here, kind)),
                    (Some(kind), Value::Array(items)) => {
                        for i in 0..items.len() {
                            out.push((format!("{here}/{i}"), kind));
                        }
                    }
                    _ => references(value, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                references(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn id_value(id: Id) -> Value {
    match id {
        Id::Uuid(u) => Value::from(u.to_string()),
        Id::Int(n) => Value::from(n),
    }
}

/// A body may name objects by id (`asset_id`, `members`, `location_id`, ...). Tenant A's admin
/// sends every example body of the document with every such id of A's own objects, but one
/// replaced by tenant B's object of the same kind: the answer is the one for an id that does
/// not exist, an error naming that field, with none of B's data; B's objects stay as they
/// were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_reaches_another_tenants_object_by_reference() -> anyhow::Result<()> {
    let plant = probe_plant().await?;
    let b = seed_tenant_b(&plant).await?;
    let admin = plant.login("plant-a").await?;
    let tenant_a = plant.tenant_a.tenant;

    // Tenant A's own object of every kind a body or a path names.
    let mut a: BTreeMap<(String, String), Id> = BTreeMap::new();
    let mut put = |kind: (&str, &str), id: Id| {
        a.insert((kind.0.to_owned(), kind.1.to_owned()), id);
    };
    let tech = plant
        .add_user("alpha-tech@plant-a.example", "technician")
        .await?;
    put(("users", "id"), Id::Uuid(tech));
    let site = created(
        &plant,
        &admin,
        "/api/v1/sites",
        json!({ "name": "Alpha site" }),
        "/id",
    )
    .await?;
    put(("sites", "id"), Id::Uuid(site));
    let area = created(
        &plant,
        &admin,
        &format!("/api/v1/sites/{site}/areas"),
        json!({ "name": "Alpha area" }),
        "/areas/0/id",
    )
    .await?;
    put(("areas", "id"), Id::Uuid(area));
    let asset = created(
        &plant,
        &admin,
        "/api/v1/assets",
        json!({ "name": "Alpha asset", "site_id": site, "area_id": area }),
        "/id",
    )
    .await?;
    put(("assets", "id"), Id::Uuid(asset));
    let team = created(
        &plant,
        &admin,
        "/api/v1/teams",
        json!({ "name": "Alpha team", "members": [tech] }),
        "/id",
    )
    .await?;
    put(("teams", "id"), Id::Uuid(team));
    let location = created(
        &plant,
        &admin,
        "/api/v1/stock-locations",
        json!({ "name": "Alpha store" }),
        "/id",
    )
    .await?;
    put(("stock", "location"), Id::Uuid(location));
    let part = created(
        &plant,
        &admin,
        "/api/v1/parts",
        json!({ "sku": "ALPHA-REF", "name": "Alpha part", "unit": "pcs" }),
        "/id",
    )
    .await?;
    put(("parts", "id"), Id::Uuid(part));
    put(
        ("tags", "id"),
        Id::Int(plant.tag_id(tenant_a, "press-1.bearing_temp").await?),
    );
    let (_, gateways) = plant.get("/api/v1/gateways", Some(&admin)).await?;
    let gateway = uuid_of(&gateways, "/items/0/id")?;
    put(("gateways", "id"), Id::Uuid(gateway));
    let device = created(
        &plant,
        &admin,
        &format!("/api/v1/gateways/{gateway}/devices"),
        json!({ "name": "alpha-plc", "protocol": "modbus_tcp" }),
        "/id",
    )
    .await?;
    put(("devices", "id"), Id::Uuid(device));
    put(
        ("work-orders", "id"),
        Id::Uuid(plant.rule_work_order().await?),
    );

    let (status, doc) = plant.get("/api/v1/openapi.json", None).await?;
    anyhow::ensure!(status == 200, "the document: {status}");
    let ops = all_operations(&doc)?;
    let mut own = BTreeSet::new();
    let before = snapshot(&plant, &operations(&doc)?, &b, &mut own).await?;
    let mut failures = Vec::new();
    let (mut probes, mut skipped, mut seen) = (0, Vec::new(), Vec::new());
    for op in &ops {
        for payload in op.bodies.iter().flatten() {
            let Ok(example) = serde_json::from_slice::<Value>(&payload.bytes) else {
                continue;
            };
            let mut places = Vec::new();
            references(&example, "", &mut places);
            if places.is_empty() {
                continue;
            }
            let Some(path_ids) = parameters(&op.template)
                .into_iter()
                .map(|(collection, name)| Some((name.clone(), *a.get(&(collection, name))?)))
                .collect::<Option<Vec<_>>>()
            else {
                skipped.push(format!("{} {}", op.method, op.template));
                continue;
            };
            let path = fill(&op.template, &path_ids);
            // Every reference to one of A's own objects...
            let mut base = example.clone();
            for (pointer, (collection, name)) in &places {
                let own_id = a
                    .get(&(collection.to_string(), name.to_string()))
                    .with_context(|| format!("no object of tenant A for {collection}/{name}"))?;
                if let Some(slot) = base.pointer_mut(pointer) {
                    *slot = id_value(*own_id);
                }
            }
            // ... then one of them B's, or one that names nothing.
            for (pointer, (collection, name)) in &places {
                let theirs = b
                    .lookup(collection, name)
                    .with_context(|| format!("no object of tenant B for {collection}/{name}"))?;
                let none = theirs.nonexistent();
                let mut answers = Vec::new();
                for id in [theirs, none] {
                    let mut body = base.clone();
                    if let Some(slot) = body.pointer_mut(pointer) {
                        *slot = id_value(id);
                    }
                    let payload = Payload {
                        label: payload.label.clone(),
                        content_type: payload.content_type.clone(),
                        bytes: serde_json::to_vec(&body)?,
                    };
                    let answer = call(
                        &plant,
                        op.method.clone(),
                        &path,
                        &op.query,
                        &admin,
                        Some(&payload),
                        None,
                    )
                    .await?;
                    own.extend(answer.request_id.clone());
                    answers.push(answer);
                }
                probes += 1;
                let (ours, nothing) = (&answers[0], &answers[1]);
                seen.push(format!(
                    "  {} {} {pointer}: {} {} {:?}",
                    op.method,
                    op.template,
                    ours.status,
                    ours.code(),
                    ours.json()
                        .map(|v| maintainpro_tests::error_fields(&v).join(","))
                        .unwrap_or_default()
                ));
                let tag = vec![("ref".to_owned(), theirs)];
                let untag = vec![("ref".to_owned(), none)];
                let same =
                    ours.status == nothing.status && ours.error(&tag) == nothing.error(&untag);
                // Refused for the reference itself, not for something else in the body.
                let field = pointer.trim_start_matches('/').replace('/', ".");
                let named = nothing
                    .json()
                    .is_some_and(|v| maintainpro_tests::error_fields(&v).contains(&field.as_str()));
                if ours.ok() || !same || !named || !b.found_in(ours).is_empty() {
                    failures.push(format!(
                        "{} {} with B's {collection} at {pointer}: {} {} | nothing: {} {}\n    {}",
                        op.method,
                        op.template,
                        ours.status,
                        ours.code(),
                        nothing.status,
                        nothing.code(),
                        clip(&ours.text())
                    ));
                }
            }
        }
    }
    let after = snapshot(&plant, &operations(&doc)?, &b, &mut own).await?;
    for (what, (status, body)) in &before {
        if after.get(what) != Some(&(*status, body.clone())) {
            failures.push(format!("{what} changed during the probes"));
        }
    }
    println!(
        "{probes} references probed; skipped (no object of A for the path): {skipped:?}\n{}",
        seen.join("\n")
    );
    anyhow::ensure!(
        probes >= 15,
        "only {probes} references in the document's bodies"
    );
    anyhow::ensure!(
        failures.is_empty(),
        "{} problem(s) across {probes} references:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_of_one_tenant_reaches_any_object_of_another_by_id() -> anyhow::Result<()> {
    let started = Instant::now();
    let plant = probe_plant().await?;
    let b = seed_tenant_b(&plant).await?;

    // Tenant A: a user of every role, and an API key with every scope.
    let mut principals = vec![("admin".to_owned(), plant.login("plant-a").await?)];
    for role in ["manager", "technician", "requester", "viewer"] {
        let email = format!("{role}@plant-a.example");
        plant.add_user(&email, role).await?;
        principals.push((role.to_owned(), plant.login_as("plant-a", &email).await?));
    }
    // Every scope an HTTP endpoint takes (readings:publish is a broker login only, and this
    // server keeps no broker accounts).
    let scopes: Vec<&str> = api::api_keys::Scope::ALL
        .iter()
        .filter(|s| **s != api::api_keys::Scope::ReadingsPublish)
        .map(|s| s.as_str())
        .collect();
    let key = plant
        .send_ok(
            Method::POST,
            "/api/v1/api-keys",
            &principals[0].1,
            json!({ "name": "probe", "scopes": scopes }),
        )
        .await?;
    principals.push((
        "API key".to_owned(),
        key["key"].as_str().context("key")?.to_owned(),
    ));

    let (status, doc) = plant.get("/api/v1/openapi.json", None).await?;
    anyhow::ensure!(status == 200, "the document: {status}");
    let ops = operations(&doc)?;
    anyhow::ensure!(
        ops.len() >= 30,
        "only {} operations with path parameters in the document",
        ops.len()
    );

    let mut own = BTreeSet::new();
    let before = snapshot(&plant, &ops, &b, &mut own).await?;
    let mut failures = Vec::new();
    for (what, (status, body)) in &before {
        if *status != 200 {
            failures.push(format!(
                "{what} as tenant B's admin: {status} {} (tenant B's ids are not what the probes need)",
                String::from_utf8_lossy(body)
            ));
        }
    }
    let wo = b.id("work-orders", "id")?;
    let wo_before = read(&plant, &format!("/api/v1/work-orders/{wo}"), &b.observer).await?;

    let mut probes = 0;
    let mut requests = 0;
    let mut outcomes: BTreeMap<(String, u16, String), usize> = BTreeMap::new();
    // Answers other than 404 (the same for nonexistent ids): refusals before any lookup.
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // The switch works: with it, tenant A's admin lists by tenant B's id under tenant A's
    // policies, which leaves nothing of either; without it, A's own work orders.
    let wo_a = plant.rule_work_order().await?;
    let admin_a = &principals[0].1;
    for (app_tenant, expect_any) in [(None, true), (Some(plant.tenant_b.tenant), false)] {
        let answer = call(
            &plant,
            Method::GET,
            "/api/v1/work-orders",
            &[],
            admin_a,
            None,
            app_tenant,
        )
        .await?;
        let list: Value = serde_json::from_slice(&answer.body)?;
        let any = list["items"].as_array().is_some_and(|i| !i.is_empty());
        anyhow::ensure!(
            answer.status == 200 && any == expect_any,
            "the rls-probe switch ({app_tenant:?}): {} {list}",
            answer.status
        );
    }

    // Twice: as the application is, and with its tenant filter pointed at tenant B on purpose
    // (the `rls-probe` switch) while row-level security stays on tenant A, the caller's: then
    // only the policies stand between the caller and B's rows.
    let passes = [
        ("", None),
        (
            " (application filtering by tenant B, row-level security on A)",
            Some(plant.tenant_b.tenant),
        ),
    ];
    for (pass, app_tenant) in passes {
        for op in &ops {
            let mut theirs = Vec::new();
            for (collection, name) in parameters(&op.template) {
                match b.lookup(&collection, &name) {
                Some(id) => theirs.push((name, id)),
                None => failures.push(format!(
                    "{} {}: no object of tenant B for {{{name}}} (after /{collection}/): seed one",
                    op.method, op.template
                )),
            }
            }
            if theirs.len() != parameters(&op.template).len() {
                continue;
            }
            for (role, token) in &principals {
                probes += 1;
                for payload in &op.bodies {
                    let none: Vec<(String, Id)> = theirs
                        .iter()
                        .map(|(name, id)| (name.clone(), id.nonexistent()))
                        .collect();
                    let at = format!(
                        "{} {} as {role}{}{pass}",
                        op.method,
                        op.template,
                        payload
                            .as_ref()
                            .map(|p| format!(" ({})", p.label))
                            .unwrap_or_default()
                    );
                    let (ours, nothing) = both(
                        &plant,
                        op,
                        [&theirs, &none],
                        token,
                        payload.as_ref(),
                        app_tenant,
                    )
                    .await?;
                    requests += 2;
                    *outcomes
                        .entry((role.clone(), ours.status, ours.code()))
                        .or_default() += 1;
                    // A user is told 404 for B's objects, never 403; an API key on an
                    // endpoint that serves only users is refused for the endpoint as a whole.
                    if ours.status != 404 && role != "API key" {
                        failures.push(format!(
                            "{at}: B's ids → {} {}, not 404",
                            ours.status,
                            ours.code()
                        ));
                    }
                    if ours.status != 404 {
                        refused
                            .entry(format!("{} {}", op.method, op.template))
                            .or_default()
                            .push(format!("{role} {} {}", ours.status, ours.code()));
                    }
                    let same = ours.status == nothing.status
                        && ours.error(&theirs) == nothing.error(&none);
                    if ours.ok() || !same {
                        failures.push(format!(
                        "{at}: B's ids → {} {} | nonexistent ids → {} {}\n    B's answer: {}\n    nonexistent's: {}",
                        ours.status,
                        ours.code(),
                        nothing.status,
                        nothing.code(),
                        clip(&ours.text()),
                        clip(&nothing.text()),
                    ));
                    }
                    for (which, answer) in [("B's ids", &ours), ("nonexistent ids", &nothing)] {
                        let found = b.found_in(answer);
                        if !found.is_empty() {
                            failures.push(format!(
                                "{at}: the answer to {which} holds tenant B's {found:?}: {}",
                                clip(&answer.text())
                            ));
                        }
                    }
                }
            }
        }
    }

    // Mixed ids: tenant A's own parent with tenant B's child (`/work-orders/{A}/checklist/{B}`)
    // answers as A's parent with a child that does not exist.
    let part_a = plant
        .send_ok(
            Method::POST,
            "/api/v1/parts",
            admin_a,
            json!({ "sku": "ALPHA-1", "name": "Alpha part", "unit": "pcs" }),
        )
        .await?;
    let parents_a: BTreeMap<(String, String), Id> = [
        (("work-orders".to_owned(), "id".to_owned()), Id::Uuid(wo_a)),
        (
            ("parts".to_owned(), "id".to_owned()),
            Id::Uuid(uuid_of(&part_a, "/id")?),
        ),
    ]
    .into();
    let mut mixed = 0;
    for op in ops.iter().filter(|op| parameters(&op.template).len() > 1) {
        let params = parameters(&op.template);
        let (parent_collection, parent_name) = &params[0];
        let Some(parent) = parents_a
            .get(&(parent_collection.clone(), parent_name.clone()))
            .copied()
        else {
            failures.push(format!(
                "{} {}: no object of tenant A for {{{parent_name}}} (after /{parent_collection}/): seed one",
                op.method, op.template
            ));
            continue;
        };
        let Some(children) = params[1..]
            .iter()
            .map(|(collection, name)| Some((name.clone(), b.lookup(collection, name)?)))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let mut theirs = vec![(parent_name.clone(), parent)];
        theirs.extend(children.iter().cloned());
        let mut none = vec![(parent_name.clone(), parent)];
        none.extend(children.iter().map(|(n, id)| (n.clone(), id.nonexistent())));
        for (role, token) in &principals {
            for payload in &op.bodies {
                let (ours, nothing) =
                    both(&plant, op, [&theirs, &none], token, payload.as_ref(), None).await?;
                mixed += 1;
                requests += 2;
                let same =
                    ours.status == nothing.status && ours.error(&theirs) == nothing.error(&none);
                if ours.ok() || !same || !b.found_in(&ours).is_empty() {
                    failures.push(format!(
                        "{} {} as {role}, A's parent and B's child: {} {} | nonexistent child: {} {}\n    {}",
                        op.method,
                        op.template,
                        ours.status,
                        ours.code(),
                        nothing.status,
                        nothing.code(),
                        clip(&ours.text()),
                    ));
                }
            }
        }
    }
    anyhow::ensure!(mixed > 0, "no operation takes a parent and a child id");

    // Tenant B's objects are as they were, and what B holds still works.
    let after = snapshot(&plant, &ops, &b, &mut own).await?;
    for (what, (status, body)) in &before {
        match after.get(what) {
            Some((s, a)) if s == status && a == body => {}
            Some((s, a)) => failures.push(format!(
                "{what} changed during the probes: {status} → {s}, {}",
                changes(body, a)
            )),
            None => failures.push(format!("{what} no longer answers")),
        }
    }
    let (_, wo_after) = plant
        .get(&format!("/api/v1/work-orders/{wo}"), Some(&b.observer))
        .await?;
    for field in [
        "status",
        "title",
        "priority",
        "assignee_user",
        "assignee_team",
    ] {
        if wo_after[field] != wo_before[field] {
            failures.push(format!(
                "tenant B's work order: {field} {} → {}",
                wo_before[field], wo_after[field]
            ));
        }
    }
    if wo_after["title"] != format!("{MARK} work order").as_str() {
        failures.push(format!(
            "tenant B's work order: title {}",
            wo_after["title"]
        ));
    }
    let webhook = b.id("webhooks", "id")?.to_string();
    let (_, hooks) = plant.get("/api/v1/webhooks", Some(&b.observer)).await?;
    if !hooks["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["id"] == webhook.as_str() && h["enabled"] == true)
    {
        failures.push(format!("tenant B's webhook is gone or disabled: {hooks}"));
    }
    for (who, token) in [
        ("tenant B's API key", b.key.as_str()),
        ("tenant B's admin session", b.admin.as_str()),
        ("tenant B's technician session", b.technician.as_str()),
    ] {
        let (status, body) = plant.get("/api/v1/work-orders", Some(token)).await?;
        let listed = body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["id"] == wo.to_string().as_str());
        if status != 200 || !listed {
            failures.push(format!(
                "{who} no longer reads B's work orders: {status} {}",
                clip(&body.to_string())
            ));
        }
    }
    let session = b.id("sessions", "id")?.to_string();
    let (status, body) = plant.get("/api/v1/auth/sessions", Some(&b.admin)).await?;
    if status != 200
        || !body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == session.as_str() && s["current"] == true)
    {
        failures.push(format!("tenant B's admin session: {status} {body}"));
    }

    let tally: Vec<String> = outcomes
        .iter()
        .map(|((role, status, code), n)| format!("{role}: {status} {code} ×{n}"))
        .collect();
    let refused: Vec<String> = refused
        .iter()
        .map(|(op, answers)| {
            let mut answers = answers.clone();
            answers.dedup();
            format!("  {op}: {}", answers.join(", "))
        })
        .collect();
    println!(
        "{} operations with path parameters, {} roles: {probes} probes and {mixed} mixed-id \
         probes, {requests} requests, {} snapshots compared, in {:.1?}\nanswers to tenant B's \
         ids: {}\nother than 404:\n{}",
        ops.len(),
        principals.len(),
        before.len(),
        started.elapsed(),
        tally.join(", "),
        refused.join("\n")
    );
    plant.services.stop().await;
    assert!(
        failures.is_empty(),
        "{} problem(s) across {probes} probes:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Where two snapshots differ: the JSON pointers and values that changed, or the bodies.
fn changes(before: &[u8], after: &[u8]) -> String {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let (a, b) = (&x.get(key), &y.get(key));
                    match (a, b) {
                        (Some(a), Some(b)) => walk(&format!("{path}/{key}"), a, b, out),
                        _ => out.push(format!("{path}/{key}: {a:?} → {b:?}")),
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (a, b)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}/{i}"), a, b, out);
                }
            }
            _ if a != b => out.push(format!(
                "{path}: {} → {}",
                clip(&a.to_string()),
                clip(&b.to_string())
            )),
            _ => {}
        }
    }
    match (
        serde_json::from_slice::<Value>(before),
        serde_json::from_slice::<Value>(after),
    ) {
        (Ok(a), Ok(b)) => {
            let mut out = Vec::new();
            walk("", &a, &b, &mut out);
            out.join("; ")
        }
        _ => format!(
            "{} → {}",
            clip(&String::from_utf8_lossy(before)),
            clip(&String::from_utf8_lossy(after))
        ),
    }
}

/// At most 400 characters of `text`, for failure messages.
fn clip(text: &str) -> String {
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
