//! Every validation rule: status, problem type and JSON pointer, and no
//! rows written by a refused request.
use axum::http::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

async fn refused(app: &TestApp, path: &str, body: Value, pointers: &[&str]) {
    let before = app.counts().await;
    let r = app.post(path, body.clone()).await;
    r.assert_problem(422, "/problems/validation");
    let got = r.pointers();
    for p in pointers {
        assert!(got.iter().any(|g| g == p), "expected pointer {p} in {got:?} for {body}");
    }
    assert_eq!(app.counts().await, before, "a refused request wrote rows: {body}");
}

#[sqlx::test]
async fn visit_code_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let p = app.patient("VAL-1").await;
    let path = format!("/v1/patients/{p}/visits");
    refused(&app, &path, json!({"diagnoses": ["ok", "   "]}), &["/diagnoses/1"]).await;
    refused(&app, &path, json!({"diagnoses": ["x".repeat(65)]}), &["/diagnoses/0"]).await;
    refused(&app, &path, json!({"diagnoses": [], "procedures": ["a\u{0007}b"]}), &["/procedures/0"]).await;
    refused(&app, &path, json!({"diagnoses": [], "medications": ["ok", "", "x".repeat(100)]}), &["/medications/1", "/medications/2"]).await;
    let many: Vec<String> = (0..1001).map(|i| format!("D{i}")).collect();
    refused(&app, &path, json!({"diagnoses": many}), &["/diagnoses"]).await;
    refused(&app, &path, json!({"diagnoses": [], "occurred_at": "2999-01-01T00:00:00Z"}), &["/occurred_at"]).await;
    refused(&app, &path, json!({"diagnoses": [], "source": ""}), &["/source"]).await;
    // Shape errors from the JSON itself carry pointers too.
    refused(&app, &path, json!({"procedures": []}), &[""]).await; // missing `diagnoses`
    refused(&app, &path, json!({"diagnoses": "I10"}), &["/diagnoses"]).await;
    refused(&app, &path, json!({"diagnoses": ["I10", 7]}), &["/diagnoses/1"]).await;
    refused(&app, &path, json!({"diagnoses": [], "occurred_at": "yesterday"}), &["/occurred_at"]).await;
    refused(&app, &path, json!({"diagnoses": [], "colour": "blue"}), &["/colour"]).await;
    // Limits are inclusive: 64 characters and 1,000 codes are fine.
    let max: Vec<String> = (0..1000).map(|i| format!("D{i}")).collect();
    let r = app.post(&path, json!({"diagnoses": max, "procedures": ["x".repeat(64)]})).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
}

#[sqlx::test]
async fn missing_field_names_the_field(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.post("/v1/patients", json!({"source": "x"})).await;
    r.assert_problem(422, "/problems/validation");
    assert!(r.body["errors"][0]["detail"].as_str().unwrap().contains("external_id"), "{}", r.text);
}

#[sqlx::test]
async fn patient_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    refused(&app, "/v1/patients", json!({"external_id": "  "}), &["/external_id"]).await;
    refused(&app, "/v1/patients", json!({"external_id": "x".repeat(129)}), &["/external_id"]).await;
    refused(&app, "/v1/patients", json!({"external_id": "ok", "source": ""}), &["/source"]).await;
    refused(&app, "/v1/patients", json!({"external_id": 12}), &["/external_id"]).await;
}

#[sqlx::test]
async fn query_and_path_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for q in ["limit=0", "limit=501", "limit=ten"] {
        let r = app.get(&format!("/v1/patients?{q}")).await;
        r.assert_problem(422, "/problems/validation");
        assert_eq!(r.pointers(), ["query:limit"]);
    }
    let r = app.get("/v1/patients?cursor=not-a-cursor").await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["query:cursor"]);
    let r = app.get("/v1/patients/not-a-uuid").await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["path:patient_id"]);
    let r = app.get("/v1/patients/lookup").await;
    r.assert_problem(422, "/problems/validation");
    let r = app.call_with(Method::POST, "/v1/patients", Some(&app.clinical), Some(json!({"external_id": "a"})), &[("idempotency-key", "")]).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["header:Idempotency-Key"]);
}
