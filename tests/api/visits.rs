use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn append_list_and_fetch(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let p = app.patient("V-1").await;
    let r = app
        .post(
            &format!("/v1/patients/{p}/visits"),
            json!({"occurred_at": "2026-01-01T10:00:00Z", "diagnoses": [" 4019", "4019", "25000"], "procedures": ["3893"], "medications": ["C07A"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["seq"], 1);
    assert_eq!(r.body["diagnoses"], json!(["4019", "25000"]), "trimmed and de-duplicated in order");
    let first = r.body["id"].as_str().unwrap().to_string();

    // Medications unknown: absent stays null, not an empty list.
    let r = app.post(&format!("/v1/patients/{p}/visits"), json!({"occurred_at": "2026-02-01T10:00:00Z", "diagnoses": ["I10"]})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["seq"], 2);
    assert!(r.body["medications"].is_null());
    assert_eq!(r.body["procedures"], json!([]));
    // Empty medication list is kept as empty (known: nothing prescribed).
    let r = app
        .post(&format!("/v1/patients/{p}/visits"), json!({"occurred_at": "2026-03-01T10:00:00Z", "diagnoses": [], "medications": []}))
        .await;
    assert_eq!(r.body["medications"], json!([]));

    let r = app.get(&format!("/v1/patients/{p}/visits/{first}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["medications"], json!(["C07A"]));

    let r = app.get(&format!("/v1/patients/{p}/visits?limit=2")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let cursor = r.body["next_cursor"].as_str().unwrap().to_string();
    let r = app.get(&format!("/v1/patients/{p}/visits?limit=2&cursor={cursor}")).await;
    assert_eq!(r.body["items"][0]["seq"], 3);
    assert!(r.body.get("next_cursor").is_none());
    assert_eq!(app.get(&format!("/v1/patients/{p}")).await.body["visit_count"], 3);
}

#[sqlx::test]
async fn visits_are_ordered_by_time_then_arrival(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let p = app.patient("V-2").await;
    let post = |t: &'static str, d: &'static str| {
        let app = &app;
        let p = p.clone();
        async move { app.post(&format!("/v1/patients/{p}/visits"), json!({"occurred_at": t, "diagnoses": [d]})).await }
    };
    assert_eq!(post("2026-03-01T00:00:00Z", "c").await.body["seq"], 1);
    assert_eq!(post("2026-01-01T00:00:00Z", "a").await.body["seq"], 1, "back-dated visit takes its place");
    assert_eq!(post("2026-03-01T00:00:00Z", "d").await.body["seq"], 3, "a tie goes after earlier arrivals");
    assert_eq!(post("2026-02-01T00:00:00Z", "b").await.body["seq"], 2);
    let r = app.get(&format!("/v1/patients/{p}/visits")).await;
    let order: Vec<_> = r.body["items"].as_array().unwrap().iter().map(|v| (v["seq"].as_i64().unwrap(), v["diagnoses"][0].as_str().unwrap().to_string())).collect();
    assert_eq!(order, vec![(1, "a".into()), (2, "b".into()), (3, "c".into()), (4, "d".into())]);
}

#[sqlx::test]
async fn unknown_patient_or_visit_is_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ghost = uuid::Uuid::now_v7();
    let before = app.counts().await;
    app.post(&format!("/v1/patients/{ghost}/visits"), json!({"diagnoses": ["I10"]})).await.assert_problem(404, "/problems/not-found");
    assert_eq!(app.counts().await, before);
    app.get(&format!("/v1/patients/{ghost}/visits")).await.assert_problem(404, "/problems/not-found");
    let p = app.patient("V-3").await;
    app.get(&format!("/v1/patients/{p}/visits/{ghost}")).await.assert_problem(404, "/problems/not-found");
}
