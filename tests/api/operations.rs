use axum::http::{Method, StatusCode};
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn health_readiness_metrics_and_docs(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "ready");

    app.get("/v1/patients").await;
    app.get("/v1/patients/not-a-uuid").await;
    let r = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains(r#"medchange_http_requests_total{method="GET",route="/v1/patients",status="200"} 1"#), "{}", r.text);
    assert!(r.text.contains(r#"route="/v1/patients/{patient_id}",status="422""#), "{}", r.text);
    assert!(r.text.contains("medchange_http_request_duration_seconds_bucket"));
    assert!(r.text.contains("medchange_db_pool_connections{state=\"idle\"}"));
    assert!(!r.text.contains("not-a-uuid"), "raw paths never become labels");

    let r = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["info"]["title"], "medchange");
    let r = app.call(Method::GET, "/docs/", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("swagger-ui"), "docs page");
    // Assets are vendored: nothing loads from the internet.
    assert!(!r.text.contains("https://"), "docs page refers to external hosts: {}", r.text);
    let r = app.call(Method::GET, "/docs/swagger-ui-bundle.js", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.len() > 100_000);
}

#[sqlx::test]
async fn readiness_fails_when_not_migrated(pool: PgPool) {
    let app = TestApp::new(pool).await;
    sqlx::query("UPDATE _sqlx_migrations SET success = false").execute(&app.pool).await.unwrap();
    app.call(Method::GET, "/readyz", None, None).await.assert_problem(503, "/problems/unavailable");
}
