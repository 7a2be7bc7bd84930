//! Bearer API keys. Keys are random, shown once, and stored as SHA-256
//! hashes; a request's key is looked up by hash on every call, so a
//! revocation takes effect at once on every replica.
use axum::{extract::FromRequestParts, http::request::Parts};
use uuid::Uuid;

use super::error::ApiError;
use crate::{app::AppState, domain::Role, store};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: Uuid,
    pub role: Role,
}

pub(crate) async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    let value = header.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized("only Bearer API keys are accepted"));
    }
    let key = store::keys::find_active(&state.db, token.trim())
        .await?
        .ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    tracing::Span::current().record("key_id", tracing::field::display(key.id));
    Ok(Caller { key_id: key.id, role: key.role })
}

/// Extractor for operations open to `clinical` (and `admin`) keys.
#[derive(Debug, Clone)]
pub struct Clinical(pub Caller);

/// Extractor for admin-only operations.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Clinical {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        Ok(Clinical(caller))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        if !caller.role.allows(Role::Admin) {
            return Err(ApiError::Forbidden("this operation needs an admin key".into()));
        }
        Ok(Admin(caller))
    }
}
