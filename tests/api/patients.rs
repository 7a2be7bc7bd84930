use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn create_fetch_lookup_and_list(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.post("/v1/patients", json!({"external_id": " MRN-1 ", "source": "ehr-a"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["external_id"], "MRN-1");
    assert_eq!(r.body["source"], "ehr-a");
    assert_eq!(r.body["visit_count"], 0);
    let id = r.body["id"].as_str().unwrap().to_string();

    let r = app.get(&format!("/v1/patients/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], id);

    let r = app.get("/v1/patients/lookup?external_id=MRN-1&source=ehr-a").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], id);
    // The same external id in another source is another patient.
    app.get("/v1/patients/lookup?external_id=MRN-1").await.assert_problem(404, "/problems/not-found");
    let r = app.post("/v1/patients", json!({"external_id": "MRN-1"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["source"], "default");
    let r = app.get("/v1/patients/lookup?external_id=MRN-1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.body["id"], id);

    let r = app.get("/v1/patients").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    assert!(r.body.get("next_cursor").is_none());
}

#[sqlx::test]
async fn duplicate_external_id_is_a_conflict(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.patient("MRN-7").await;
    let before = app.counts().await;
    app.post("/v1/patients", json!({"external_id": "MRN-7"})).await.assert_problem(409, "/problems/conflict");
    assert_eq!(app.counts().await, before);
}

#[sqlx::test]
async fn pagination_walks_every_patient_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut ids = vec![];
    for i in 0..7 {
        ids.push(app.patient(&format!("P{i}")).await);
    }
    let mut seen = vec![];
    let mut url = "/v1/patients?limit=3".to_string();
    loop {
        let r = app.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_string()));
        match r.body["next_cursor"].as_str() {
            Some(c) => url = format!("/v1/patients?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[sqlx::test]
async fn erasure_removes_everything_about_the_patient(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = app.patient("ERASE-ME").await;
    let keep = app.patient("KEEP-ME").await;
    for p in [&id, &keep] {
        let r = app
            .call_with(
                Method::POST,
                &format!("/v1/patients/{p}/visits"),
                Some(&app.clinical),
                Some(json!({"diagnoses": ["I10"], "medications": ["C09A"]})),
                &[("idempotency-key", &format!("visit-{p}"))],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    // Clinical keys may not erase.
    app.call(Method::DELETE, &format!("/v1/patients/{id}"), Some(&app.clinical), None).await.assert_problem(403, "/problems/forbidden");
    let r = app.call(Method::DELETE, &format!("/v1/patients/{id}"), Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get(&format!("/v1/patients/{id}")).await.assert_problem(404, "/problems/not-found");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM visits WHERE patient_id = $1::uuid").bind(&id).fetch_one(&app.pool).await.unwrap();
    assert_eq!(left, 0);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE response::text LIKE '%' || $1 || '%'")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "stored responses about the patient must go too");
    assert_eq!(app.count("visits").await, 1, "the other patient's visit stays");
    app.call(Method::DELETE, &format!("/v1/patients/{id}"), Some(&app.admin), None).await.assert_problem(404, "/problems/not-found");
}
