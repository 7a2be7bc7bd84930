//! The dashboard's static files (caching, client-side route fallback, CSP,
//! API paths staying problem+json) and the API parts it relies on: `GET
//! /v1/me` and self-contained job parameter schemas with defaults.
use axum::http::{Method, StatusCode};
use medchange::config::HttpArgs;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Res, TestApp};

const INDEX: &str = "<!doctype html><title>dash</title><script type=\"module\" src=\"/assets/app-3f9a1c.js\"></script>";
const SCRIPT: &str = "console.log('dashboard');";

/// A tiny built dashboard in a fresh temporary folder.
struct Dist(std::path::PathBuf);

impl Dist {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("medchange-test-dist-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), INDEX).unwrap();
        std::fs::write(dir.join("assets/app-3f9a1c.js"), SCRIPT).unwrap();
        std::fs::write(dir.join("favicon.svg"), "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
        Dist(dir)
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn app_with_dist(pool: PgPool, dir: std::path::PathBuf) -> TestApp {
    TestApp::with_http(pool, HttpArgs { dashboard_dir: dir, ..HttpArgs::default() }).await
}

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");

async fn browse(app: &TestApp, path: &str) -> Res {
    app.call_with(Method::GET, path, None, None, &[HTML]).await
}

fn header<'a>(r: &'a Res, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[track_caller]
fn assert_dashboard_headers(r: &Res, cache: &str) {
    assert_eq!(header(r, "cache-control"), cache, "{}", r.text);
    let csp = header(r, "content-security-policy");
    for directive in
        ["default-src 'self'", "script-src 'self'", "connect-src 'self'", "object-src 'none'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(!csp.contains("http:") && !csp.contains("https:") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(r, "x-content-type-options"), "nosniff");
}

#[sqlx::test]
async fn serves_the_built_dashboard_with_cache_headers_and_csp(pool: PgPool) {
    let dist = Dist::new();
    let app = app_with_dist(pool, dist.0.clone()).await;

    let r = browse(&app, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, INDEX);
    assert!(header(&r, "content-type").starts_with("text/html"));
    assert_dashboard_headers(&r, "no-cache");

    // Hashed assets are immutable for a year; anything else is revalidated.
    let r = app.call(Method::GET, "/assets/app-3f9a1c.js", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, SCRIPT);
    assert!(header(&r, "content-type").contains("javascript"), "{:?}", r.headers);
    assert_dashboard_headers(&r, "public, max-age=31536000, immutable");
    let modified = header(&r, "last-modified").to_string();
    assert!(!modified.is_empty());
    let r = app.call_with(Method::GET, "/assets/app-3f9a1c.js", None, None, &[("if-modified-since", &modified)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(header(&r, "cache-control"), "public, max-age=31536000, immutable");
    let r = app.call(Method::HEAD, "/assets/app-3f9a1c.js", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.is_empty());
    let r = app.call(Method::GET, "/favicon.svg", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_dashboard_headers(&r, "no-cache");
    let r = browse(&app, "/index.html").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_dashboard_headers(&r, "no-cache");

    // Client-side routes load the app when a browser navigates to them.
    for path in
        ["/models", "/models/compare?a=1&b=2", "/training/jobs/019ae4a0-6a3c-7b51-9a43-6f0d3c1c2b10", "/patients/x"]
    {
        let r = browse(&app, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.text, INDEX, "{path}");
        assert_dashboard_headers(&r, "no-cache");
    }
}

#[sqlx::test]
async fn api_paths_and_missing_files_stay_problem_404s(pool: PgPool) {
    let dist = Dist::new();
    let app = app_with_dist(pool, dist.0.clone()).await;
    // Unknown API and operational paths, even from a browser.
    for path in ["/v1", "/v1/nothing", "/v1/patients/x/nothing", "/openapi.json/x", "/healthz/x", "/metrics/x"] {
        browse(&app, path).await.assert_problem(404, "/problems/not-found");
    }
    // A missing file is not the app, and API clients (no HTML wanted) get a problem.
    browse(&app, "/assets/app-000000.js").await.assert_problem(404, "/problems/not-found");
    app.call(Method::GET, "/models", None, None).await.assert_problem(404, "/problems/not-found");
    app.call_with(Method::GET, "/models", None, None, &[("accept", "application/json")])
        .await
        .assert_problem(404, "/problems/not-found");
    // Only GET and HEAD reach the files.
    app.call_with(Method::POST, "/", None, Some(json!({})), &[HTML]).await.assert_problem(404, "/problems/not-found");
    // Nothing outside the folder.
    app.call(Method::GET, "/../Cargo.toml", None, None).await.assert_problem(404, "/problems/not-found");
    app.call(Method::GET, "/assets/..%2f..%2fCargo.toml", None, None).await.assert_problem(404, "/problems/not-found");
    // The API itself is untouched.
    let r = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("content-security-policy").is_none());
    assert_eq!(app.get("/v1/me").await.status, StatusCode::OK);
}

#[sqlx::test]
async fn without_a_build_the_api_runs_and_says_so(pool: PgPool) {
    let missing = std::env::temp_dir().join(format!("medchange-no-dist-{}", uuid::Uuid::new_v4()));
    let app = app_with_dist(pool, missing).await;
    let r = browse(&app, "/").await;
    r.assert_problem(404, "/problems/not-found");
    assert!(r.body["detail"].as_str().unwrap().contains("not built"), "{}", r.text);
    browse(&app, "/models").await.assert_problem(404, "/problems/not-found");
    assert_eq!(app.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/patients").await.status, StatusCode::OK);
}

#[sqlx::test]
async fn me_names_the_calling_key_and_its_role(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.get("/v1/me").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], "clinical");
    assert_eq!(r.body["name"], "test");
    assert!(r.body.get("secret").is_none() && !r.text.contains(&app.clinical));
    let r = app.admin_get("/v1/me").await;
    assert_eq!(r.body["role"], "admin");
    assert!(r.body["prefix"].as_str().is_some_and(|p| app.admin.starts_with(p)));
    // Revoked keys are refused like any revoked key.
    let id = r.body["id"].as_str().unwrap().to_string();
    let revoked = app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&app.admin.clone()), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    app.admin_get("/v1/me").await.assert_problem(401, "/problems/unauthorized");
}

fn refs(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(refs),
        Value::Array(a) => a.iter().any(refs),
        _ => false,
    }
}

/// The dashboard builds its training forms from these schemas.
#[sqlx::test]
async fn job_parameter_schemas_stand_alone_with_their_defaults(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.admin_get("/v1/job-kinds").await;
    assert_eq!(r.status, StatusCode::OK);
    let kinds = r.body.as_array().unwrap();
    let kind = |name: &str| kinds.iter().find(|k| k["name"] == name).unwrap_or_else(|| panic!("{name}: {}", r.text));
    for k in kinds.iter().filter(|k| k["available"] == true) {
        assert!(!refs(&k["params_schema"]), "{} has unresolved references: {}", k["name"], k["params_schema"]);
    }
    let micron = &kind("train_micron")["params_schema"]["properties"];
    assert_eq!(micron["epochs"]["default"], 40);
    assert_eq!((micron["epochs"]["minimum"].as_f64(), micron["epochs"]["maximum"].as_f64()), (Some(1.0), Some(500.0)));
    assert_eq!(micron["recipe"]["default"], "faithful");
    assert_eq!(micron["backend"]["default"], "flex");
    assert_eq!(micron["seed"]["default"], 1203);
    let split = &kind("evaluate")["params_schema"]["properties"]["split"];
    assert_eq!(split["default"], "test");
    assert_eq!(split["enum"], json!(["train", "val", "test", "all"]));
    assert!(kind("evaluate")["params_schema"]["properties"]["model_id"].get("default").is_none());

    // The defaults, sent back as they are, are accepted.
    for name in ["train_micron", "train_copy_previous"] {
        let props = kind(name)["params_schema"]["properties"].as_object().unwrap();
        let params: serde_json::Map<String, Value> =
            props.iter().map(|(k, p)| (k.clone(), p["default"].clone())).collect();
        let r = app.admin_post("/v1/jobs", Some(json!({"kind": name, "params": params}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.body["params"], Value::Object(params), "{name}");
    }
}
