//! The admin dashboard's built files (`frontend/dist`, see frontend/README.md)
//! served at `/`.
//!
//! - Files under `/assets/` carry a content hash in their names (Vite), so
//!   they are cached for a year as immutable; everything else (`index.html`,
//!   unhashed files) is `no-cache`: revalidated on every use, so a new build
//!   shows at once.
//! - A browser navigating to a client-side route (`/models`, `/patients/…`:
//!   a GET for HTML of a path without a file extension that is no file)
//!   gets `index.html`. API paths never do: unknown routes under `/v1`,
//!   `/docs` and the operational endpoints stay problem+json 404s, and so
//!   does any request that does not ask for HTML (API clients).
//! - Dashboard responses carry a strict Content-Security-Policy: scripts,
//!   styles, images and connections from this origin only.
use std::path::{Path, PathBuf};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use super::error::{problem_for_status, problem_response};
use crate::app::AppState;

/// Path prefixes that belong to the API and operations, never to the
/// dashboard (an unknown path under them is a problem+json 404).
pub const RESERVED_PREFIXES: &[&str] =
    &["/v1", "/docs", "/openapi.json", "/healthz", "/readyz", "/metrics", "/fhir", "/cds-services"];

/// `Cache-Control` of content-hashed build outputs.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of everything else the dashboard serves.
pub const NO_CACHE: &str = "no-cache";

/// The dashboard's Content-Security-Policy: nothing from other origins, no
/// inline scripts, no plugins, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Whether `dir` holds a built dashboard.
pub fn is_built(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

/// The router's fallback: a dashboard file, `index.html` for client-side
/// routes, or a problem+json 404.
pub async fn serve(State(state): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if !matches!(*req.method(), Method::GET | Method::HEAD) || is_reserved(&path) {
        return not_found();
    }
    let dir: PathBuf = state.http.dashboard_dir.clone();
    if !is_built(&dir) {
        if path == "/" || wants_html(req.headers()) {
            let mut p = problem_for_status(StatusCode::NOT_FOUND);
            p.detail =
                "the dashboard is not built: run scripts/serve, or `npm ci && npm run build` in frontend/".into();
            return problem_response(&p);
        }
        return not_found();
    }
    let navigation = wants_html(req.headers()) && !has_extension(&path);
    let (parts, body) = req.into_parts();
    let head = Request::from_parts(parts.clone(), ());
    let res = match ServeDir::new(&dir).oneshot(Request::from_parts(parts, body)).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    };
    let res = if res.status() == StatusCode::NOT_FOUND && navigation {
        match ServeFile::new(dir.join("index.html")).oneshot(head).await {
            Ok(res) => res.map(Body::new),
            Err(never) => match never {},
        }
    } else {
        res
    };
    if res.status() == StatusCode::NOT_FOUND {
        return not_found();
    }
    decorate(&path, res)
}

fn not_found() -> Response {
    problem_response(&problem_for_status(StatusCode::NOT_FOUND))
}

fn is_reserved(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

fn has_extension(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|last| last.contains('.'))
}

/// A browser navigation (or anything else that asks for HTML).
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/html"))
}

static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
static X_FRAME_OPTIONS: HeaderName = HeaderName::from_static("x-frame-options");

fn decorate(path: &str, mut res: Response) -> Response {
    let hashed =
        path.starts_with("/assets/") && (res.status().is_success() || res.status() == StatusCode::NOT_MODIFIED);
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(if hashed { IMMUTABLE } else { NO_CACHE }));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS.clone(), HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS.clone(), HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_paths() {
        for p in ["/v1", "/v1/", "/v1/nothing", "/docs", "/docs/index.html", "/openapi.json", "/healthz", "/metrics"] {
            assert!(is_reserved(p), "{p}");
        }
        for p in ["/", "/v10", "/models", "/patients/abc", "/healthzz", "/docsx"] {
            assert!(!is_reserved(p), "{p}");
        }
    }

    #[test]
    fn extensions() {
        assert!(has_extension("/assets/index-abc.js"));
        assert!(has_extension("/favicon.svg"));
        assert!(!has_extension("/models/compare"));
        assert!(!has_extension("/"));
        assert!(!has_extension("/v.1/models"));
    }
}
