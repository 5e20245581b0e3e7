//! Working work orders through the API: the state machine per role, assignment to users and
//! teams, requests, comments, time logs, checklists, due dates, the filtered list with its
//! cursor, and tenants. Needs `scripts/test.sh`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use maintainpro_tests::{Plant, error_fields};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Adds an asset below `parent` in tenant `plant-a`.
async fn child_asset(plant: &Plant, parent: Uuid, name: &str) -> anyhow::Result<Uuid> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant_a.tenant).await?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO assets (id, tenant_id, site_id, parent_id, name)
         SELECT $1, tenant_id, site_id, id, $3 FROM assets WHERE id = $2",
    )
    .bind(id)
    .bind(parent)
    .bind(name)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

struct Api<'a> {
    plant: &'a Plant,
}

impl Api<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.plant.send(method, path, Some(token), body).await
    }

    /// A status change that must succeed; answers the work order.
    async fn to(&self, id: Uuid, token: &str, body: Value) -> anyhow::Result<Value> {
        let path = format!("/api/v1/work-orders/{id}/status");
        let (status, body) = self.call(Method::POST, &path, token, Some(body)).await?;
        anyhow::ensure!(status == 200, "status change: {status} {body}");
        Ok(body)
    }

    async fn status_change(
        &self,
        id: Uuid,
        token: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let path = format!("/api/v1/work-orders/{id}/status");
        self.call(Method::POST, &path, token, Some(body)).await
    }

    async fn list(&self, token: &str, query: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/v1/work-orders?{query}"),
                token,
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "list ?{query}: {status} {body}");
        Ok(body)
    }

    async fn create(&self, token: &str, body: Value) -> anyhow::Result<Value> {
        let (status, body) = self
            .call(Method::POST, "/api/v1/work-orders", token, Some(body))
            .await?;
        anyhow::ensure!(status == 201, "create: {status} {body}");
        Ok(body)
    }
}

fn id_of(v: &Value) -> anyhow::Result<Uuid> {
    Ok(v["id"].as_str().context("id")?.parse()?)
}

fn kinds(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_work_order_is_assigned_worked_completed_and_verified() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let api = Api { plant: &plant };
    let manager_id = plant.add_user("manager@plant-a.example", "manager").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    plant
        .add_user("other-tech@plant-a.example", "technician")
        .await?;
    plant.add_user("viewer@plant-a.example", "viewer").await?;
    let manager = plant.login_as("plant-a", "manager@plant-a.example").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let other_tech = plant
        .login_as("plant-a", "other-tech@plant-a.example")
        .await?;
    let viewer = plant.login_as("plant-a", "viewer@plant-a.example").await?;
    let wo = plant.rule_work_order().await?;
    // Readings of its tag: two within the evidence window, one before it.
    let tag = plant
        .tag_id(plant.tenant_a.tenant, "press-1.bearing_temp")
        .await?;
    let pool = plant.db.app_pool().await;
    for (minutes_ago, value) in [(20, 70.0), (10, 85.0), (5, 92.0)] {
        sqlx::query("INSERT INTO readings (tag_id, ts, value, quality) VALUES ($1, $2, $3, 0)")
            .bind(tag)
            .bind(Utc::now() - chrono::Duration::minutes(minutes_ago))
            .bind(value)
            .execute(&pool)
            .await?;
    }

    // Due from the service level of its priority.
    let (status, body) = plant
        .get(&format!("/api/v1/work-orders/{wo}"), Some(&manager))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "open");
    assert_eq!(body["source"], "rule");
    let created: DateTime<Utc> = body["created_at"].as_str().context("created_at")?.parse()?;
    let due: DateTime<Utc> = body["due_at"].as_str().context("due_at")?.parse()?;
    let level = match body["priority"].as_str() {
        Some("critical") => chrono::Duration::hours(4),
        Some("high") => chrono::Duration::days(1),
        Some("medium") => chrono::Duration::days(3),
        _ => chrono::Duration::days(7),
    };
    assert_eq!(due - created, level, "{body}");
    assert_eq!(body["overdue"], false);
    // The alarm it came from, with the evidence around the raise.
    assert_eq!(body["alarm"]["rule_id"], "press-bearing-overheat");
    assert_eq!(body["alarm"]["tag"], "press-1.bearing_temp");
    let evidence: Vec<f64> = body["alarm"]["readings"]
        .as_array()
        .context("readings")?
        .iter()
        .filter_map(|r| r["value"].as_f64())
        .collect();
    assert_eq!(evidence, [85.0, 92.0]);

    // Nobody is assigned: a technician cannot start it, and may not assign someone else.
    let (status, body) = api
        .status_change(wo, &tech, json!({ "to": "in_progress" }))
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("admin, manager"),
        "{body}"
    );
    let assign = format!("/api/v1/work-orders/{wo}/assign");
    let (status, _) = api
        .call(
            Method::POST,
            &assign,
            &other_tech,
            Some(json!({ "user_id": tech_id })),
        )
        .await?;
    assert_eq!(status, 403);

    // The manager assigns the technician: assigned.
    let (status, body) = api
        .call(
            Method::POST,
            &assign,
            &manager,
            Some(json!({ "user_id": tech_id })),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "assigned");
    assert_eq!(body["assignee_user"], tech_id.to_string());

    // Another technician is not its assignee; the assigned one starts it.
    let (status, _) = api
        .status_change(wo, &other_tech, json!({ "to": "in_progress" }))
        .await?;
    assert_eq!(status, 403);
    let body = api.to(wo, &tech, json!({ "to": "in_progress" })).await?;
    assert_eq!(body["status"], "in_progress");
    assert!(body["started_at"].is_string(), "{body}");

    // Hold needs a reason, reported on its field.
    let (status, body) = api
        .status_change(wo, &tech, json!({ "to": "on_hold" }))
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid");
    assert_eq!(body["error"]["details"][0]["field"], "comment");
    api.to(
        wo,
        &tech,
        json!({ "to": "on_hold", "comment": "waiting for a bearing" }),
    )
    .await?;
    api.to(wo, &tech, json!({ "to": "in_progress" })).await?;

    // Labour and a checklist.
    let path = format!("/api/v1/work-orders/{wo}/checklist");
    let (status, body) = api
        .call(
            Method::POST,
            &path,
            &tech,
            Some(json!({ "text": "Measure play" })),
        )
        .await?;
    assert_eq!(
        status, 403,
        "technicians do not plan checklist items: {body}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            &path,
            &manager,
            Some(json!({ "text": "Measure play" })),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let item = body["checklist"][0]["id"]
        .as_str()
        .context("item id")?
        .to_owned();
    let (status, body) = api
        .call(
            Method::PUT,
            &format!("{path}/{item}"),
            &tech,
            Some(json!({ "done": true })),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checklist"][0]["done_by"], tech_id.to_string());
    let logs = format!("/api/v1/work-orders/{wo}/time-logs");
    let (status, body) = api
        .call(
            Method::POST,
            &logs,
            &tech,
            Some(json!({ "minutes": 45, "note": "swapped it" })),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .call(Method::POST, &logs, &tech, Some(json!({ "minutes": 0 })))
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "minutes");
    api.call(
        Method::POST,
        &logs,
        &manager,
        Some(json!({ "minutes": 15 })),
    )
    .await?;

    // Comments: not by viewers.
    let comments = format!("/api/v1/work-orders/{wo}/comments");
    let (status, _) = api
        .call(
            Method::POST,
            &comments,
            &viewer,
            Some(json!({ "text": "hello" })),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, _) = api
        .call(
            Method::POST,
            &comments,
            &tech,
            Some(json!({ "text": "Old bearing was dry" })),
        )
        .await?;
    assert_eq!(status, 201);

    // Completing needs a resolution; verifying is a supervisor's.
    let (status, body) = api
        .status_change(wo, &tech, json!({ "to": "completed" }))
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "resolution");
    let body = api
        .to(
            wo,
            &tech,
            json!({ "to": "completed", "resolution": "fixed" }),
        )
        .await?;
    assert_eq!(body["status"], "completed");
    assert_eq!(body["resolution"], "fixed");
    assert!(body["closed_at"].is_string());
    let (status, _) = api
        .status_change(wo, &tech, json!({ "to": "verified" }))
        .await?;
    assert_eq!(status, 403);
    let body = api.to(wo, &manager, json!({ "to": "verified" })).await?;
    assert_eq!(body["status"], "verified");

    // Final: nothing goes from verified, and the answer says so.
    let (status, body) = api
        .status_change(
            wo,
            &manager,
            json!({ "to": "in_progress", "comment": "again" }),
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nothing (it is final)"),
        "{body}"
    );

    // The history, with who did what.
    let (_, body) = plant
        .get(&format!("/api/v1/work-orders/{wo}"), Some(&viewer))
        .await?;
    assert_eq!(
        kinds(&body),
        [
            "opened_by_alarm",
            "assigned",
            "status_changed",
            "status_changed",
            "status_changed",
            "checklist_item_added",
            "checklist_item_ticked",
            "time_logged",
            "time_logged",
            "comment",
            "status_changed",
            "status_changed",
        ]
    );
    assert!(body["events"][0]["actor"].is_null(), "the rules engine's");
    assert_eq!(body["events"][1]["actor"], manager_id.to_string());
    assert_eq!(
        body["events"][3]["detail"]["comment"],
        "waiting for a bearing"
    );
    assert_eq!(body["labour_minutes"], 60);

    // And the audit log has each change.
    let admin = plant.login("plant-a").await?;
    let (status, audit) = plant
        .get(
            &format!("/api/v1/audit?target_id={wo}&limit=100"),
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 200, "{audit}");
    let mut actions: Vec<&str> = audit["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        [
            "work_order.assign",
            "work_order.start",
            "work_order.hold",
            "work_order.resume",
            "work_order.checklist_add",
            "work_order.checklist_tick",
            "work_order.log_time",
            "work_order.log_time",
            "work_order.comment",
            "work_order.complete",
            "work_order.verify",
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesters_see_and_cancel_only_their_own_requests() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let api = Api { plant: &plant };
    let tenant = plant.tenant_a.tenant;
    let asset = plant.asset_id(tenant, "Press 1").await?;
    plant.add_user("req@plant-a.example", "requester").await?;
    plant.add_user("req2@plant-a.example", "requester").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    let requester = plant.login_as("plant-a", "req@plant-a.example").await?;
    let other = plant.login_as("plant-a", "req2@plant-a.example").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let admin = plant.login("plant-a").await?;
    let automatic = plant.rule_work_order().await?;

    // Every bad field at once.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/work-orders",
            &requester,
            Some(
                json!({ "asset_id": Uuid::new_v4(), "title": " ", "priority": "urgent",
                         "due_at": "2030-01-01T00:00:00Z" }),
            ),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let fields = error_fields(&body);
    assert_eq!(fields, ["title", "priority", "due_at", "asset_id"]);

    let mine = api
        .create(
            &requester,
            json!({ "asset_id": asset, "title": "Guard rattles on Press 1",
                    "checklist": ["Tighten the bolts"] }),
        )
        .await?;
    let mine_id = id_of(&mine)?;
    assert_eq!(mine["priority"], "medium");
    assert_eq!(mine["source"], "manual");
    assert_eq!(mine["checklist"][0]["text"], "Tighten the bolts");
    let theirs = id_of(
        &api.create(&other, json!({ "asset_id": asset, "title": "Noise" }))
            .await?,
    )?;

    // A requester sees their own request only; the others answer 404.
    let list = api.list(&requester, "").await?;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, [mine_id.to_string()]);
    for id in [theirs, automatic] {
        let (status, _) = plant
            .get(&format!("/api/v1/work-orders/{id}"), Some(&requester))
            .await?;
        assert_eq!(status, 404);
        let (status, _) = api
            .status_change(
                id,
                &requester,
                json!({ "to": "cancelled", "comment": "mine?" }),
            )
            .await?;
        assert_eq!(status, 404);
    }

    // They may edit title and description while it is open, not plan it.
    let path = format!("/api/v1/work-orders/{mine_id}");
    let (status, body) = api
        .call(
            Method::PATCH,
            &path,
            &requester,
            Some(json!({ "description": "Left side" })),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api
        .call(
            Method::PATCH,
            &path,
            &requester,
            Some(json!({ "priority": "critical" })),
        )
        .await?;
    assert_eq!(status, 403);

    // The technician takes it; the requester can no longer cancel it.
    let (status, body) = api
        .call(
            Method::POST,
            &format!("{path}/assign"),
            &tech,
            Some(json!({ "user_id": tech_id })),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "assigned");
    let (status, _) = api
        .status_change(
            mine_id,
            &requester,
            json!({ "to": "cancelled", "comment": "fixed itself" }),
        )
        .await?;
    assert_eq!(status, 403);

    // Their other open request they may cancel.
    let (status, _) = plant
        .get(&format!("/api/v1/work-orders/{theirs}"), Some(&other))
        .await?;
    assert_eq!(status, 200);
    let body = api
        .to(
            theirs,
            &other,
            json!({ "to": "cancelled", "comment": "it stopped" }),
        )
        .await?;
    assert_eq!(body["status"], "cancelled");

    // An admin changes the priority: the service-level due date follows; then sets one by hand,
    // then hands it back.
    let (_, body) = api
        .call(
            Method::PATCH,
            &path,
            &admin,
            Some(json!({ "priority": "critical" })),
        )
        .await?;
    let created: DateTime<Utc> = body["created_at"].as_str().context("created_at")?.parse()?;
    let due: DateTime<Utc> = body["due_at"].as_str().context("due_at")?.parse()?;
    assert_eq!(due - created, chrono::Duration::hours(4));
    let by_hand = (Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    let (_, body) = api
        .call(
            Method::PATCH,
            &path,
            &admin,
            Some(json!({ "due_at": by_hand })),
        )
        .await?;
    assert_eq!(body["due_from_sla"], false);
    let (_, body) = api
        .call(
            Method::PATCH,
            &path,
            &admin,
            Some(json!({ "due_at": "sla" })),
        )
        .await?;
    assert_eq!(body["due_from_sla"], true);
    assert_eq!(
        body["due_at"]
            .as_str()
            .context("due_at")?
            .parse::<DateTime<Utc>>()?,
        due
    );
    let updated = body["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter(|e| e["kind"] == "updated")
        .count();
    assert_eq!(updated, 4, "{body}");

    // Idempotent creates, and one open work order per asset and failure mode.
    let request = || {
        plant
            .http
            .post(format!("{}/api/v1/work-orders", plant.api))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "gw-7-report-1")
            .json(&json!({ "asset_id": asset, "title": "Pump cavitation", "failure_mode": "cavitation" }))
            .send()
    };
    let first = request().await?;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await?;
    let again = request().await?;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await?;
    assert_eq!(first["id"], again["id"]);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/work-orders",
            &admin,
            Some(json!({ "asset_id": asset, "title": "Cavitation again", "failure_mode": "cavitation" })),
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_search_and_page_and_tenants_stay_apart() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let api = Api { plant: &plant };
    let tenant = plant.tenant_a.tenant;
    let press_1 = plant.asset_id(tenant, "Press 1").await?;
    let pump = child_asset(&plant, press_1, "Press 1 hydraulic pump").await?;
    let motor = child_asset(&plant, pump, "Press 1 pump motor").await?;
    let tech_id = plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let admin = plant.login("plant-a").await?;

    // A team with the technician: its work orders are the technician's too.
    let (status, team) = api
        .call(
            Method::POST,
            "/api/v1/teams",
            &admin,
            Some(json!({ "name": "Hydraulics", "members": [tech_id] })),
        )
        .await?;
    assert_eq!(status, 201, "{team}");
    let team_id = id_of(&team)?;

    let titles = [
        ("Oil leak at the pump", pump, "high"),
        ("Motor bearing noise", motor, "critical"),
        ("Press guard loose", press_1, "low"),
        ("Replace hydraulic oil filter", pump, "medium"),
        ("Calibrate pressure sensor", press_1, "medium"),
    ];
    let mut ids = Vec::new();
    for (title, asset, priority) in titles {
        let wo = api
            .create(
                &admin,
                json!({ "asset_id": asset, "title": title, "priority": priority }),
            )
            .await?;
        ids.push(id_of(&wo)?);
    }
    let assign = |id: Uuid| format!("/api/v1/work-orders/{id}/assign");
    api.call(
        Method::POST,
        &assign(ids[0]),
        &admin,
        Some(json!({ "team_id": team_id })),
    )
    .await?;
    api.call(
        Method::POST,
        &assign(ids[2]),
        &admin,
        Some(json!({ "user_id": tech_id })),
    )
    .await?;

    let titles_of = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|w| w["title"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Asset subtree, and the asset alone.
    let list = api
        .list(&admin, &format!("asset_id={pump}&sort=oldest"))
        .await?;
    assert_eq!(
        titles_of(&list),
        [
            "Oil leak at the pump",
            "Motor bearing noise",
            "Replace hydraulic oil filter"
        ]
    );
    let list = api
        .list(
            &admin,
            &format!("asset_id={pump}&subtree=false&sort=oldest"),
        )
        .await?;
    assert_eq!(
        titles_of(&list),
        ["Oil leak at the pump", "Replace hydraulic oil filter"]
    );
    // Mine (directly or through a team), unassigned, statuses, priorities.
    let list = api.list(&tech, "assignee=me&sort=oldest").await?;
    assert_eq!(
        titles_of(&list),
        ["Oil leak at the pump", "Press guard loose"]
    );
    let list = api
        .list(&admin, "assignee=none&priority=medium,critical&sort=oldest")
        .await?;
    assert_eq!(
        titles_of(&list),
        [
            "Motor bearing noise",
            "Replace hydraulic oil filter",
            "Calibrate pressure sensor"
        ]
    );
    let list = api.list(&admin, "status=assigned&sort=oldest").await?;
    assert_eq!(
        titles_of(&list),
        ["Oil leak at the pump", "Press guard loose"]
    );
    let list = api.list(&admin, &format!("team={team_id}")).await?;
    assert_eq!(titles_of(&list), ["Oil leak at the pump"]);
    // Full-text search, stemmed: "leaking" finds "leak"; "hydraulic -filter" excludes.
    let list = api.list(&admin, "q=leaking").await?;
    assert_eq!(titles_of(&list), ["Oil leak at the pump"]);
    let list = api.list(&admin, "q=oil%20-filter").await?;
    assert_eq!(titles_of(&list), ["Oil leak at the pump"]);
    // Most urgent first.
    let list = api.list(&admin, "sort=priority&limit=2").await?;
    assert_eq!(
        titles_of(&list),
        ["Motor bearing noise", "Oil leak at the pump"]
    );

    // Paging by two through every sort visits each work order once, in the sort's order; so
    // does paging through an asset's subtree (every work order here is below Press 1), whose
    // newest and oldest sorts read the subtree's own index.
    for filter in [String::new(), format!("asset_id={press_1}&")] {
        for sort in ["newest", "oldest", "due", "priority"] {
            let mut seen = Vec::new();
            let mut query = format!("{filter}sort={sort}&limit=2");
            for _ in 0..10 {
                let page = api.list(&admin, &query).await?;
                seen.extend(titles_of(&page));
                match page["next_cursor"].as_str() {
                    Some(cursor) => query = format!("{filter}sort={sort}&limit=2&cursor={cursor}"),
                    None => break,
                }
            }
            let all = titles_of(&api.list(&admin, &format!("sort={sort}&limit=200")).await?);
            assert_eq!(seen, all, "{filter}{sort}");
            assert_eq!(all.len(), 5, "{sort}");
        }
    }
    let list = api
        .list(&admin, &format!("asset_id={pump}&priority=critical"))
        .await?;
    assert_eq!(titles_of(&list), ["Motor bearing noise"]);
    let list = api
        .list(
            &admin,
            &format!("asset_id={press_1}&status=assigned&sort=oldest"),
        )
        .await?;
    assert_eq!(
        titles_of(&list),
        ["Oil leak at the pump", "Press guard loose"]
    );
    let list = api
        .list(
            &tech,
            &format!("asset_id={press_1}&assignee=me&sort=oldest"),
        )
        .await?;
    assert_eq!(
        titles_of(&list),
        ["Oil leak at the pump", "Press guard loose"]
    );

    // Bad parameters, all at once; unknown ones refused.
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/work-orders?status=done&limit=0",
            &admin,
            None,
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"].as_array().map(Vec::len), Some(2));
    let (status, _) = api
        .call(Method::GET, "/api/v1/work-orders?colour=red", &admin, None)
        .await?;
    assert_eq!(status, 400);

    // Tenant B sees none of it and reaches none of it: 404 on every endpoint with an id.
    let other = plant.login("plant-b").await?;
    assert_eq!(
        titles_of(&api.list(&other, "").await?),
        Vec::<String>::new()
    );
    let wo = ids[0];
    let probes = [
        (Method::GET, format!("/api/v1/work-orders/{wo}"), None),
        (
            Method::PATCH,
            format!("/api/v1/work-orders/{wo}"),
            Some(json!({ "title": "x" })),
        ),
        (
            Method::POST,
            format!("/api/v1/work-orders/{wo}/status"),
            Some(json!({ "to": "in_progress" })),
        ),
        (
            Method::POST,
            format!("/api/v1/work-orders/{wo}/assign"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/work-orders/{wo}/comments"),
            Some(json!({ "text": "x" })),
        ),
        (
            Method::POST,
            format!("/api/v1/work-orders/{wo}/time-logs"),
            Some(json!({ "minutes": 5 })),
        ),
        (
            Method::POST,
            format!("/api/v1/work-orders/{wo}/checklist"),
            Some(json!({ "text": "x" })),
        ),
        (
            Method::PUT,
            format!("/api/v1/teams/{team_id}/members"),
            Some(json!({ "members": [] })),
        ),
    ];
    for (method, path, body) in probes {
        let (status, answer) = api.call(method.clone(), &path, &other, body).await?;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    // Nor can tenant A name tenant B's asset, or assign tenant B's users.
    let b_asset = plant.asset_id(plant.tenant_b.tenant, "Press 1").await?;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/work-orders",
            &admin,
            Some(json!({ "asset_id": b_asset, "title": "Not ours" })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "asset_id");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_counts_confirmed_failures_of_an_asset_subtree() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let api = Api { plant: &plant };
    let tenant = plant.tenant_a.tenant;
    let press_1 = plant.asset_id(tenant, "Press 1").await?;
    let pump = child_asset(&plant, press_1, "Press 1 pump").await?;
    let admin = plant.login("plant-a").await?;
    let t0: DateTime<Utc> = "2026-10-01T00:00:00Z".parse()?;
    let hours = |h: i64| t0 + chrono::Duration::hours(h);
    // (asset, work type, failure mode, reported, completed, resolution)
    let history = [
        (
            pump,
            "corrective",
            "bearing",
            hours(1),
            Some(hours(5)),
            Some("fixed"),
        ),
        (
            press_1,
            "emergency",
            "seal",
            hours(49),
            Some(hours(51)),
            None,
        ),
        (
            pump,
            "corrective",
            "bearing",
            hours(60),
            Some(hours(61)),
            Some("no_fault_found"),
        ),
        (
            pump,
            "preventive",
            "bearing",
            hours(70),
            Some(hours(72)),
            Some("fixed"),
        ),
        (
            pump,
            "corrective",
            "bearing",
            hours(200),
            Some(hours(201)),
            Some("fixed"),
        ),
    ];
    let pool = plant.db.app_pool().await;
    for (asset, work_type, mode, reported, completed, resolution) in history {
        let wo = api
            .create(
                &admin,
                json!({ "asset_id": asset, "title": format!("{mode} failure"), "work_type": work_type }),
            )
            .await?;
        let mut tx = migrations::begin_tenant(&pool, tenant).await?;
        sqlx::query(
            "UPDATE work_orders SET failure_mode = $2, created_at = $3, status = 'completed',
                    closed_at = $4, resolution = $5 WHERE id = $1",
        )
        .bind(id_of(&wo)?)
        .bind(mode)
        .bind(reported)
        .bind(completed)
        .bind(resolution)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let query = format!(
        "/api/v1/reliability?asset_id={press_1}&from={}&to={}",
        t0.to_rfc3339().replace('+', "%2B"),
        hours(100).to_rfc3339().replace('+', "%2B"),
    );
    let (status, body) = plant.get(&query, Some(&admin)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["assets"], 2);
    assert_eq!(body["group_by"], "failure_mode");
    assert_eq!(body["total"]["failures"], 2, "{body}");
    assert_eq!(body["total"]["downtime_hours"], 6.0);
    assert_eq!(body["total"]["mttr_hours"], 3.0);
    assert_eq!(body["total"]["mtbf_hours"], (200.0 - 6.0) / 2.0);
    assert_eq!(body["groups"][0]["key"], "bearing");
    assert_eq!(body["groups"][1]["key"], "seal");

    // The pump alone, by asset; and a requester may not ask.
    let (_, body) = plant
        .get(
            &format!("{query}&subtree=false&group_by=asset")
                .replace(&press_1.to_string(), &pump.to_string()),
            Some(&admin),
        )
        .await?;
    assert_eq!(body["total"]["failures"], 1, "{body}");
    assert_eq!(body["groups"][0]["key"], pump.to_string());
    plant.add_user("req@plant-a.example", "requester").await?;
    let requester = plant.login_as("plant-a", "req@plant-a.example").await?;
    let (status, _) = plant.get(&query, Some(&requester)).await?;
    assert_eq!(status, 403);
    let (status, body) = plant
        .get(
            "/api/v1/reliability?from=2026-10-02T00:00:00Z&to=2026-10-01T00:00:00Z",
            Some(&admin),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    // Another tenant's asset is not found.
    let other = plant.login("plant-b").await?;
    let (status, _) = plant.get(&query, Some(&other)).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_levels_set_the_due_dates_of_new_work_orders() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let asset = plant.asset_id(plant.tenant_a.tenant, "Press 1").await?;
    let (status, levels) = plant.get("/api/v1/sla-policies", Some(&admin)).await?;
    assert_eq!(status, 200, "{levels}");
    assert_eq!(
        levels["items"],
        json!([
            { "priority": "critical", "resolve_within": "4h", "default": true },
            { "priority": "high", "resolve_within": "1day", "default": true },
            { "priority": "medium", "resolve_within": "3days", "default": true },
            { "priority": "low", "resolve_within": "7days", "default": true }
        ])
    );
    plant.add_user("tech@plant-a.example", "technician").await?;
    let tech = plant.login_as("plant-a", "tech@plant-a.example").await?;
    let body = json!({ "policies": [{ "priority": "high", "resolve_within": "12h" }] });
    let (status, _) = plant
        .send(
            Method::PUT,
            "/api/v1/sla-policies",
            Some(&tech),
            Some(body.clone()),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, bad) = plant
        .send(
            Method::PUT,
            "/api/v1/sla-policies",
            Some(&admin),
            Some(json!({ "policies": [
                { "priority": "urgent", "resolve_within": "1h" },
                { "priority": "low", "resolve_within": "30s" }
            ] })),
        )
        .await?;
    assert_eq!(status, 400, "{bad}");
    let fields = error_fields(&bad);
    assert_eq!(
        fields,
        ["policies[0].priority", "policies[1].resolve_within"]
    );
    let (status, set) = plant
        .send(
            Method::PUT,
            "/api/v1/sla-policies",
            Some(&admin),
            Some(body),
        )
        .await?;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        set["items"][1],
        json!({ "priority": "high", "resolve_within": "12h", "default": false })
    );

    // A new high-priority work order is due 12 hours after it was created.
    let (status, wo) = plant
        .send(
            Method::POST,
            "/api/v1/work-orders",
            Some(&admin),
            Some(json!({ "asset_id": asset, "title": "Guard loose", "priority": "high" })),
        )
        .await?;
    assert_eq!(status, 201, "{wo}");
    let at = |key: &str| -> anyhow::Result<DateTime<Utc>> {
        Ok(wo[key].as_str().context("a time")?.parse()?)
    };
    assert_eq!(
        at("due_at")? - at("created_at")?,
        chrono::Duration::hours(12)
    );

    // Back to the default; another tenant never saw the change.
    let (status, reset) = plant
        .send(
            Method::PUT,
            "/api/v1/sla-policies",
            Some(&admin),
            Some(json!({ "policies": [{ "priority": "high", "resolve_within": null }] })),
        )
        .await?;
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset["items"][1]["default"], true);
    let other = plant.login("plant-b").await?;
    let (_, theirs) = plant.get("/api/v1/sla-policies", Some(&other)).await?;
    assert_eq!(theirs["items"][1]["default"], true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_and_duplicate_names_never_answer_500() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let asset = plant.asset_id(plant.tenant_a.tenant, "Press 1").await?;
    // Eight copies of one request with one Idempotency-Key, at once: one work order, and each
    // answer is it (201 for the first, 200 for the rest).
    let sends = (0..8).map(|_| {
        plant
            .http
            .post(format!("{}/api/v1/work-orders", plant.api))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "retry-storm-1")
            .json(&json!({ "asset_id": asset, "title": "Coupling worn" }))
            .send()
    });
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for res in futures_util::future::join_all(sends).await {
        let res = res?;
        let status = res.status().as_u16();
        let body: Value = res.json().await?;
        assert!(status == 201 || status == 200, "{status} {body}");
        created += usize::from(status == 201);
        ids.insert(body["id"].as_str().context("id")?.to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1), "{ids:?}");

    // Eight teams of one name at once: one is created, the others are told why.
    let sends = (0..8).map(|_| {
        plant.send(
            Method::POST,
            "/api/v1/teams",
            Some(&admin),
            Some(json!({ "name": "Night shift", "members": [] })),
        )
    });
    let mut statuses = Vec::new();
    for answer in futures_util::future::join_all(sends).await {
        let (status, body) = answer?;
        if status == 400 {
            assert_eq!(body["error"]["details"][0]["field"], "name", "{body}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 400, 400, 400, 400, 400, 400, 400]);
    Ok(())
}

/// Text PostgreSQL cannot store (the NUL character, `\u0000` in JSON) is the request's fault,
/// in a body or in a query string: 400, not 500. Found by fuzzing the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_in_text_is_a_bad_request() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let (status, body) = plant
        .send(
            Method::POST,
            "/api/v1/teams",
            Some(&admin),
            Some(json!({ "name": "Night\u{0}shift" })),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NUL")),
        "{body}"
    );
    let (status, body) = plant
        .get("/api/v1/work-orders?q=pump%00seal", Some(&admin))
        .await?;
    assert_eq!(status, 400, "{body}");
    Ok(())
}

/// A body that does not fit the endpoint names the field in `details`, with the dotted path
/// the API's own checks use; JSON that does not parse, or is not JSON at all, says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_the_wrong_shape_names_its_field() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let post = |path: &'static str, body: Value| {
        let admin = admin.clone();
        let plant = &plant;
        async move {
            plant
                .send(Method::POST, path, Some(&admin), Some(body))
                .await
        }
    };
    let (status, body) = post("/api/v1/teams", json!({ "name": 5 })).await?;
    assert_eq!((status, error_fields(&body)), (400, vec!["name"]), "{body}");
    assert_eq!(body["error"]["code"], "invalid");
    let (status, body) = post("/api/v1/teams", json!({ "name": "Night", "colour": "red" })).await?;
    assert_eq!(
        (status, error_fields(&body)),
        (400, vec!["colour"]),
        "{body}"
    );
    let asset = plant.asset_id(plant.tenant_a.tenant, "Press 1").await?;
    let (status, body) = post(
        "/api/v1/work-orders",
        json!({ "title": "Leak", "asset_id": asset, "checklist": ["ok", 7] }),
    )
    .await?;
    assert_eq!(
        (status, error_fields(&body)),
        (400, vec!["checklist.1"]),
        "{body}"
    );
    let res = plant
        .http
        .post(format!("{}/api/v1/teams", plant.api))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await?;
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let status = plant
        .http
        .post(format!("{}/api/v1/teams", plant.api))
        .bearer_auth(&admin)
        .body("name=Night")
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 415);
    Ok(())
}

/// A request waiting for a database that does not answer (here: its table locked) holds the
/// server's stop for at most the API's grace, and what it was writing is cancelled rather
/// than applied once the table is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_database_does_not_answer_does_not_hold_the_stop() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let admin = plant.login("plant-a").await?;
    let tenant = plant.tenant_a.tenant;
    let asset = plant.asset_id(tenant, "Press 1").await?;
    let mut lock =
        maintainpro_tests::lock_table(&plant.db.urls.owner_url, "work_orders", "ACCESS EXCLUSIVE")
            .await?;
    // A client of its own: the plant's gives up after 10 s, which would end the request.
    let request = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/v1/work-orders", plant.api))
            .bearer_auth(&admin)
            .json(&json!({ "asset_id": asset, "title": "Written during the stop" }))
            .send(),
    );
    // The request is in the database, waiting for the lock.
    plant
        .until_one_waits_for_a_lock("the request waiting")
        .await?;

    let started = std::time::Instant::now();
    let Plant { services, db, .. } = plant;
    tokio::time::timeout(
        api::app::STOP_GRACE + std::time::Duration::from_secs(15),
        services.stop(),
    )
    .await
    .context("the stop waited for the request")?;
    assert!(
        started.elapsed() >= api::app::STOP_GRACE,
        "the request was given its grace"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await?;
    drop(lock);
    // The request was left to end with the process, its write cancelled: not created.
    if let Ok(Ok(Ok(response))) =
        tokio::time::timeout(std::time::Duration::from_secs(10), request).await
    {
        assert_ne!(response.status().as_u16(), 201, "created after the stop");
    }
    let pool = db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM work_orders WHERE title = 'Written during the stop'",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(created, 0);
    Ok(())
}
