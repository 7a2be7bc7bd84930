use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn fifty_concurrent_appends_get_dense_sequence_numbers(pool: PgPool) {
    let app = std::sync::Arc::new(TestApp::new(pool).await);
    let p = app.patient("CONC").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let app = app.clone();
        let path = format!("/v1/patients/{p}/visits");
        tasks.spawn(async move {
            let r = app.call(Method::POST, &path, Some(&app.clinical), Some(json!({"diagnoses": [format!("D{i}")]}))).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            r.body["seq"].as_i64().unwrap()
        });
    }
    let mut seqs = tasks.join_all().await;
    seqs.sort();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "each append got its own number");
    let stored: Vec<i32> = sqlx::query_scalar("SELECT seq FROM visits WHERE patient_id = $1::uuid ORDER BY seq")
        .bind(&p)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, (1..=50).collect::<Vec<_>>(), "no gaps or duplicates");
    assert_eq!(app.get(&format!("/v1/patients/{p}")).await.body["visit_count"], 50);
}
