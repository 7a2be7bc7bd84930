use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn retried_posts_write_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let h = [("idempotency-key", "3f1c-patient")];
    let body = json!({"external_id": "IDEM-1", "source": "ehr"});
    let first = app.call_with(Method::POST, "/v1/patients", Some(&app.clinical), Some(body.clone()), &h).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Same content, different key order and whitespace: still the same request.
    let again = app
        .raw(Method::POST, "/v1/patients", Some(&app.clinical), Some("application/json"), "{ \"source\":\"ehr\",  \"external_id\":\"IDEM-1\" }")
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "without the key it is a new request");
    let retry = app.call_with(Method::POST, "/v1/patients", Some(&app.clinical), Some(body.clone()), &h).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body, "the original response");
    assert_eq!(retry.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.count("patients").await, 1);

    let p = first.body["id"].as_str().unwrap();
    let vh = [("idempotency-key", "visit-1")];
    let visit = json!({"occurred_at": "2026-05-01T00:00:00Z", "diagnoses": ["I10"]});
    for _ in 0..3 {
        let r = app.call_with(Method::POST, &format!("/v1/patients/{p}/visits"), Some(&app.clinical), Some(visit.clone()), &vh).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.body["seq"], 1);
    }
    assert_eq!(app.count("visits").await, 1);
}

#[sqlx::test]
async fn conflicting_reuse_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let h = [("idempotency-key", "k-1")];
    let r = app.call_with(Method::POST, "/v1/patients", Some(&app.clinical), Some(json!({"external_id": "A"})), &h).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let before = app.counts().await;
    let r = app.call_with(Method::POST, "/v1/patients", Some(&app.clinical), Some(json!({"external_id": "B"})), &h).await;
    r.assert_problem(422, "/problems/idempotency-key-reused");
    // The same key on another endpoint is another request too.
    let p = app.patient("C").await;
    let before2 = app.counts().await;
    let r = app.call_with(Method::POST, &format!("/v1/patients/{p}/visits"), Some(&app.clinical), Some(json!({"diagnoses": []})), &h).await;
    r.assert_problem(422, "/problems/idempotency-key-reused");
    assert_eq!(app.counts().await, before2);
    assert_eq!(before[0] + 1, before2[0]);
    // Keys are per API key: another caller may use the same string.
    let r = app.call_with(Method::POST, "/v1/patients", Some(&app.admin), Some(json!({"external_id": "D"})), &h).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[sqlx::test]
async fn concurrent_retries_write_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let p = app.patient("RACE").await;
    let path = format!("/v1/patients/{p}/visits");
    let calls = (0..10).map(|_| {
        app.call_with(Method::POST, &path, Some(&app.clinical), Some(json!({"diagnoses": ["I10"]})), &[("idempotency-key", "same")])
    });
    let results = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<_> = results.iter().map(|r| {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }).collect();
    assert_eq!(ids.len(), 1, "every retry sees the same visit");
    assert_eq!(app.count("visits").await, 1);
}
