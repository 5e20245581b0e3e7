//! `GET /api/v1/rules/status`: the rule files in force and the last failed reload.

use axum::Json;
use axum::extract::State;

use crate::api_keys::Scope;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::permissions::Permission;
use crate::rules_status::RulesSnapshot;

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RulesSnapshot>, ApiError> {
    caller.require_scope(Scope::RulesRead, Permission::RulesRead)?;
    Ok(Json(state.rules.snapshot()))
}
