//! CDS Hooks client authentication: the EHR sends `Authorization: Bearer
//! <JWT>` signed with one of its keys (ES384 or RS384, the algorithms the
//! specification names), the key named by the `kid` header and published
//! in a JWK Set configured here (the `jku` header is not followed: keys are
//! exchanged out of band). The token's `iss` must be an accepted issuer,
//! its `aud` the URL of the endpoint called, `exp`, `iat` and `jti` are
//! required, and a `jti` is accepted once (replays are refused; see
//! `store::fhir::remember_jti`).
use std::collections::HashSet;

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};
use serde::Deserialize;

use crate::config::CdsArgs;

/// Algorithms accepted on CDS Hooks JWTs.
pub const ALGORITHMS: [Algorithm; 2] = [Algorithm::ES384, Algorithm::RS384];

/// Longest accepted token lifetime left, in seconds (the specification
/// expects short-lived tokens; this also bounds the replay table).
pub const MAX_LIFETIME_SECS: i64 = 3600;

/// The claims a CDS Hooks JWT must carry.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The configured trust: keys, issuers and this service's base URL.
#[derive(Clone, Default)]
pub struct CdsAuth {
    keys: Option<JwkSet>,
    issuers: Vec<String>,
    base_url: Option<String>,
    /// The import source whose FHIR ids the hooks' context refers to.
    pub source: String,
}

impl std::fmt::Debug for CdsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdsAuth")
            .field("keys", &self.keys.as_ref().map(|k| k.keys.len()))
            .field("issuers", &self.issuers)
            .field("base_url", &self.base_url)
            .field("source", &self.source)
            .finish()
    }
}

impl CdsAuth {
    /// API keys only (no JWKS).
    pub fn keys_only(source: impl Into<String>) -> Self {
        Self { keys: None, issuers: vec![], base_url: None, source: source.into() }
    }

    /// From a JWK Set (JSON), the accepted issuers and the public base URL.
    pub fn with_jwks(
        jwks_json: &str,
        issuers: Vec<String>,
        base_url: &str,
        source: impl Into<String>,
    ) -> anyhow::Result<Self> {
        let keys: JwkSet = serde_json::from_str(jwks_json).context("the CDS Hooks JWKS is not a JSON Web Key Set")?;
        anyhow::ensure!(!keys.keys.is_empty(), "the CDS Hooks JWKS has no keys");
        for k in &keys.keys {
            anyhow::ensure!(k.common.key_id.is_some(), "every key of the CDS Hooks JWKS needs a `kid`");
            DecodingKey::from_jwk(k).context("a key of the CDS Hooks JWKS cannot be used")?;
        }
        let issuers: Vec<String> =
            issuers.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        anyhow::ensure!(!issuers.is_empty(), "a CDS Hooks JWKS needs the accepted issuers (MEDCHANGE_CDS_ISSUERS)");
        let base = base_url.trim().trim_end_matches('/').to_string();
        anyhow::ensure!(
            base.starts_with("https://") || base.starts_with("http://"),
            "MEDCHANGE_CDS_BASE_URL must be this service's public http(s) base URL"
        );
        Ok(Self { keys: Some(keys), issuers, base_url: Some(base), source: source.into() })
    }

    /// From the command line / environment: the JWKS inline or in a file.
    pub fn from_args(a: &CdsArgs) -> anyhow::Result<Self> {
        let Some(jwks) = a.jwks.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Self::keys_only(a.source.clone()));
        };
        let json = if jwks.starts_with('{') {
            jwks.to_string()
        } else {
            std::fs::read_to_string(jwks).with_context(|| format!("reading the CDS Hooks JWKS file {jwks}"))?
        };
        let base = a.base_url.as_deref().context("a CDS Hooks JWKS needs MEDCHANGE_CDS_BASE_URL (the JWT audience)")?;
        Self::with_jwks(&json, a.issuers.clone(), base, a.source.clone())
    }

    /// Whether JWTs are accepted.
    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The audience a token for service `id` must carry.
    pub fn audience(&self, service_id: &str) -> Option<String> {
        self.base_url.as_ref().map(|b| format!("{b}/cds-services/{service_id}"))
    }

    fn key(&self, kid: &str) -> Option<&Jwk> {
        self.keys.as_ref()?.find(kid)
    }

    /// Verifies a token for a call of service `service_id` (the replay
    /// check is the caller's). The reason is safe to send back.
    pub fn verify(&self, token: &str, service_id: &str) -> Result<Claims, &'static str> {
        let header = decode_header(token).map_err(|_| "malformed JWT")?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err("JWT algorithm not accepted (use ES384 or RS384)");
        }
        let kid = header.kid.as_deref().ok_or("the JWT header has no `kid`")?;
        let jwk = self.key(kid).ok_or("unknown JWT key id (`kid`)")?;
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err("the JWT algorithm does not match its key");
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| "the JWT key cannot be used")?;
        let aud = self.audience(service_id).ok_or("JWTs are not accepted")?;
        let mut v = Validation::new(header.alg);
        v.set_audience(&[aud]);
        v.set_issuer(&self.issuers);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = 60;
        let data = decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => "the JWT signature does not verify",
            ErrorKind::ExpiredSignature => "the JWT has expired",
            ErrorKind::InvalidAudience => "the JWT audience is not this CDS service's URL",
            ErrorKind::InvalidIssuer => "the JWT issuer is not accepted",
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                "the JWT lacks a required claim (iss, aud, exp, iat, jti)"
            }
            _ => "invalid JWT",
        })?;
        let c = data.claims;
        let now = chrono::Utc::now().timestamp();
        if c.iat > now + 60 {
            return Err("the JWT was issued in the future (`iat`)");
        }
        if c.exp > now + MAX_LIFETIME_SECS {
            return Err("the JWT expires too far in the future (at most one hour)");
        }
        if c.jti.trim().is_empty() || c.jti.len() > 256 {
            return Err("the JWT `jti` must be 1 to 256 characters");
        }
        Ok(c)
    }

    /// The accepted issuers (for diagnostics).
    pub fn issuers(&self) -> HashSet<&str> {
        self.issuers.iter().map(String::as_str).collect()
    }
}
