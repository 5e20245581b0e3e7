//! `GET /api/v1/rules/status`: the rule files in force and the last failed reload.

use axum::Json;
use axum::extract::State;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::rules_status::RulesSnapshot;

pub async fn status(State(state): State<AppState>, _auth: AuthUser) -> Json<RulesSnapshot> {
    Json(state.rules.snapshot())
}
