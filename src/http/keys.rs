//! API keys (admin): create (shown once), list, revoke; and `GET /v1/me`,
//! the calling key itself (any role), which clients such as the dashboard
//! use to learn what a key may do.
use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::{Admin, Clinical},
    error::ApiError,
    extract::{Json, Path},
    idempotency::{self, IdempotencyKey, Written},
};
use crate::{app::AppState, domain::Role, store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_key, list_keys)).routes(routes!(revoke_key)).routes(routes!(current_key))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ward-7 EHR interface", "role": "clinical"}))]
pub struct CreateKey {
    /// What the key is for (1 to 128 characters).
    pub name: String,
    pub role: Role,
}

/// A key's metadata; the secret is never shown again after creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<store::keys::ApiKey> for ApiKey {
    fn from(k: store::keys::ApiKey) -> Self {
        ApiKey {
            id: k.id,
            name: k.name,
            role: k.role,
            prefix: k.key_prefix,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A newly created key, with its secret (shown this once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret to send as `Authorization: Bearer <secret>`. Store it now:
    /// only its hash is kept.
    pub secret: String,
}

/// Create an API key.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateKey,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, description = "Created; the secret is in the body, once", body = CreatedKey)),
    security(("api_key" = ["admin"])))]
pub async fn create_key(
    State(state): State<AppState>,
    Admin(caller): Admin,
    key: IdempotencyKey,
    Json(body): Json<CreateKey>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::validation("/name", "must be 1 to 128 printable characters"));
    }
    let hash = idempotency::fingerprint("POST", "/v1/api-keys", &body);
    idempotency::run(&state, &caller, &key, ("POST", "/v1/api-keys"), hash, StatusCode::CREATED, async |tx| {
        let secret = store::keys::generate();
        let row = store::keys::insert(&mut *tx, &name, body.role, &secret).await?;
        tracing::info!(new_key_id = %row.id, role = row.role.as_str(), "api key created");
        Ok(Written { patient_id: None, body: CreatedKey { key: row.into(), secret } })
    })
    .await
}

/// The calling API key: its id, name and role.
///
/// Open to every key; clients use it to check a key and to learn its role
/// (the dashboard shows clinical keys the patients only).
#[utoipa::path(get, path = "/v1/me", tag = "api-keys",
    responses((status = 200, description = "The key this request was made with", body = ApiKey)),
    security(("api_key" = ["clinical"])))]
pub async fn current_key(
    State(state): State<AppState>,
    Clinical(caller): Clinical,
) -> Result<axum::Json<ApiKey>, ApiError> {
    // Revoked between authentication and here: answer as for any revoked key.
    let key = store::keys::get(&state.db, caller.key_id)
        .await?
        .filter(|k| k.revoked_at.is_none())
        .ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    Ok(axum::Json(key.into()))
}

/// List API keys (without secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "All keys, oldest first", body = Vec<ApiKey>)),
    security(("api_key" = ["admin"])))]
pub async fn list_keys(State(state): State<AppState>, _auth: Admin) -> Result<axum::Json<Vec<ApiKey>>, ApiError> {
    Ok(axum::Json(store::keys::list(&state.db).await?.into_iter().map(Into::into).collect()))
}

/// Revoke an API key. It stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", tag = "api-keys",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses((status = 200, description = "Revoked", body = ApiKey),
        (status = 404, description = "No such key", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ApiKey>, ApiError> {
    let key = store::keys::revoke(&state.db, id).await?.ok_or_else(|| ApiError::NotFound("api key".into()))?;
    tracing::info!(revoked_key_id = %id, "api key revoked");
    Ok(axum::Json(key.into()))
}
