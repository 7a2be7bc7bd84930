//! Table-driven over every operation in the OpenAPI document: no key or a
//! bad key is 401, a clinical key on an admin operation is 403, and every
//! refusal is problem+json.
use axum::http::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

/// (method, path, required role) of every secured operation; the public
/// ones are returned separately.
fn operations() -> (Vec<(Method, String, String)>, Vec<String>) {
    let doc: Value = serde_json::from_str(&medchange::http::openapi_json()).unwrap();
    let mut secured = vec![];
    let mut public = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else { continue };
            let role = op["security"]
                .as_array()
                .and_then(|reqs| reqs.iter().find_map(|r| r["api_key"].as_array()))
                .and_then(|roles| roles.first())
                .and_then(|r| r.as_str());
            let concrete = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { uuid::Uuid::now_v7().to_string() } else { seg.to_string() })
                .collect::<Vec<_>>()
                .join("/");
            match role {
                Some(role) => secured.push((m, concrete, role.to_string())),
                None => public.push(format!("{method} {path}")),
            }
        }
    }
    (secured, public)
}

#[sqlx::test]
async fn every_operation_needs_the_right_key(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let revoked = crate::helpers::key(&app.pool, medchange::domain::Role::Admin).await;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1")
        .bind(medchange::store::keys::hash(&revoked))
        .execute(&app.pool)
        .await
        .unwrap();
    let (secured, public) = operations();
    assert!(secured.len() >= 10, "too few operations found: {secured:?}");
    let mut public_sorted = public.clone();
    public_sorted.sort();
    // CDS Hooks discovery is public: it only describes the services (no
    // patient data), and EHR administrators read it to register them; the
    // services themselves need a JWT or a key (covered below).
    assert_eq!(
        public_sorted,
        ["get /cds-services", "get /healthz", "get /metrics", "get /readyz"],
        "only operational endpoints and CDS Hooks discovery are public"
    );
    let mut admin_ops = 0;
    for (method, path, role) in &secured {
        let body = matches!(*method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
        for key in [None, Some("mck_not-a-real-key"), Some(revoked.as_str())] {
            let r = app.call(method.clone(), path, key, body.clone()).await;
            r.assert_problem(401, "/problems/unauthorized");
            assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer", "{method} {path}");
        }
        let r = app.call_with(method.clone(), path, None, body.clone(), &[("authorization", "Basic dXNlcjpwYXNz")]).await;
        r.assert_problem(401, "/problems/unauthorized");
        match role.as_str() {
            "admin" => {
                admin_ops += 1;
                let r = app.call(method.clone(), path, Some(&app.clinical), body.clone()).await;
                r.assert_problem(403, "/problems/forbidden");
            }
            "clinical" => {
                for key in [&app.clinical, &app.admin] {
                    let r = app.call(method.clone(), path, Some(key), body.clone()).await;
                    assert!(
                        !matches!(r.status.as_u16(), 401 | 403),
                        "{method} {path} refused a {role}-capable key: {}",
                        r.text
                    );
                }
            }
            other => panic!("unknown role {other} on {method} {path}"),
        }
    }
    assert!(admin_ops >= 4, "admin operations found: {admin_ops}");
}
