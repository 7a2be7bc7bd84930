//! Errors produced outside handlers are problem+json too.
use axum::http::{Method, StatusCode};
use medchange::config::HttpArgs;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn syntax_errors_media_types_routes_and_methods(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let before = app.counts().await;
    let r = app.raw(Method::POST, "/v1/patients", Some(&app.clinical), Some("application/json"), "{\"external_id\": ").await;
    r.assert_problem(400, "/problems/malformed-json");
    let r = app.raw(Method::POST, "/v1/patients", Some(&app.clinical), Some("text/plain"), "{}").await;
    r.assert_problem(415, "/problems/unsupported-media-type");
    let r = app.raw(Method::POST, "/v1/patients", Some(&app.clinical), None, "{}").await;
    r.assert_problem(415, "/problems/unsupported-media-type");
    assert_eq!(app.counts().await, before);

    let r = app.get("/v2/nothing-here").await;
    r.assert_problem(404, "/problems/not-found");
    assert!(r.body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    let r = app.call(Method::PUT, "/v1/patients", Some(&app.clinical), Some(json!({}))).await;
    r.assert_problem(405, "/problems/method-not-allowed");
}

#[sqlx::test]
async fn oversized_bodies_are_refused(pool: PgPool) {
    let app = TestApp::with_http(pool, HttpArgs { body_limit: 1024, ..HttpArgs::default() }).await;
    let before = app.counts().await;
    let big = json!({"external_id": "x", "source": "y".repeat(4096)});
    let r = app.post("/v1/patients", big).await;
    r.assert_problem(413, "/problems/payload-too-large");
    assert!(r.body["detail"].as_str().unwrap().contains("1024"), "{}", r.text);
    assert_eq!(app.counts().await, before);
}

#[sqlx::test]
async fn timeouts_are_problems(pool: PgPool) {
    // The patients table is locked by another transaction, so listing
    // patients waits past the limit (a tiny limit alone is not enough:
    // timers tick in milliseconds, and a local round trip can be faster).
    let app = TestApp::with_http(pool.clone(), HttpArgs { request_timeout_secs: 0.2, ..HttpArgs::default() }).await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE patients IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let r = app.get("/v1/patients").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    r.assert_problem(503, "/problems/timeout");
    blocker.rollback().await.unwrap();
    // The same request within the limit once the lock is gone.
    assert_eq!(app.get("/v1/patients").await.status, StatusCode::OK);
}

#[sqlx::test]
async fn responses_carry_a_request_id(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.get("/v1/patients").await;
    assert!(r.headers.get("x-request-id").is_some());
    let r = app.call_with(Method::GET, "/v1/patients", Some(&app.clinical), None, &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "abc-123");
}
