use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn create_use_list_and_revoke(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.call(Method::POST, "/v1/api-keys", Some(&app.admin), Some(json!({"name": "ward 7", "role": "clinical"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("mck_") && secret.len() > 40);
    assert_eq!(r.body["role"], "clinical");
    assert!(secret.starts_with(r.body["prefix"].as_str().unwrap()));

    // Only the hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1::uuid").bind(&id).fetch_one(&app.pool).await.unwrap();
    assert_ne!(stored, secret.as_bytes());
    assert_eq!(stored, medchange::store::keys::hash(&secret));

    // The new key works for clinical operations, not admin ones.
    assert_eq!(app.call(Method::GET, "/v1/patients", Some(&secret), None).await.status, StatusCode::OK);
    app.call(Method::GET, "/v1/api-keys", Some(&secret), None).await.assert_problem(403, "/problems/forbidden");

    let r = app.call(Method::GET, "/v1/api-keys", Some(&app.admin), None).await;
    let listed = r.body.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(!r.text.contains(&secret), "secrets are never listed");
    assert!(listed.iter().all(|k| k.get("secret").is_none()));

    let r = app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["revoked_at"].is_string());
    app.call(Method::GET, "/v1/patients", Some(&secret), None).await.assert_problem(401, "/problems/unauthorized");
    let ghost = uuid::Uuid::now_v7();
    app.call(Method::DELETE, &format!("/v1/api-keys/{ghost}"), Some(&app.admin), None).await.assert_problem(404, "/problems/not-found");
}

#[sqlx::test]
async fn key_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let before = app.counts().await;
    let r = app.call(Method::POST, "/v1/api-keys", Some(&app.admin), Some(json!({"name": "x", "role": "superuser"}))).await;
    r.assert_problem(422, "/problems/validation");
    assert_eq!(r.pointers(), ["/role"]);
    let r = app.call(Method::POST, "/v1/api-keys", Some(&app.admin), Some(json!({"name": " ", "role": "admin"}))).await;
    assert_eq!(r.pointers(), ["/name"]);
    assert_eq!(app.counts().await, before);
}
