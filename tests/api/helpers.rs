//! In-process calls to `app(state)` against the test's own database.
use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use medchange::{app::{AppState, app}, config::HttpArgs, domain::Role, store};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    pub admin: String,
    pub clinical: String,
}

pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Res {
    /// Asserts a problem+json answer with this status and type.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text);
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "content type; body: {}",
            self.text
        );
        assert_eq!(self.body["type"], kind, "problem type; body: {}", self.text);
        assert_eq!(self.body["status"], status);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "detail: {}", self.text);
    }

    /// The JSON pointers of a validation problem's errors.
    pub fn pointers(&self) -> Vec<String> {
        self.body["errors"].as_array().map(|a| a.iter().map(|e| e["pointer"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
    }
}

pub async fn key(pool: &PgPool, role: Role) -> String {
    let secret = store::keys::generate();
    store::keys::insert(pool, "test", role, &secret).await.unwrap();
    secret
}

impl TestApp {
    pub async fn new(pool: PgPool) -> Self {
        Self::with_http(pool, HttpArgs::default()).await
    }

    pub async fn with_http(pool: PgPool, http: HttpArgs) -> Self {
        let admin = key(&pool, Role::Admin).await;
        let clinical = key(&pool, Role::Clinical).await;
        let router = app(AppState::new(pool.clone(), http));
        TestApp { router, pool, admin, clinical }
    }

    pub async fn send(&self, req: Request<Body>) -> Res {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Res { status, headers, body, text }
    }

    /// A request with an optional bearer key and optional JSON body.
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Res {
        self.call_with(method, path, key, body, &[]).await
    }

    pub async fn call_with(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>, headers: &[(&str, &str)]) -> Res {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn raw(&self, method: Method, path: &str, key: Option<&str>, content_type: Option<&str>, body: impl Into<Body>) -> Res {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        self.send(req.body(body.into()).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Res {
        self.call(Method::GET, path, Some(&self.clinical.clone()), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.call(Method::POST, path, Some(&self.clinical.clone()), Some(body)).await
    }

    pub async fn patient(&self, external_id: &str) -> String {
        let r = self.post("/v1/patients", serde_json::json!({"external_id": external_id})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&self.pool).await.unwrap()
    }

    /// Row counts of every data table, to prove a request wrote nothing.
    pub async fn counts(&self) -> [i64; 4] {
        [self.count("patients").await, self.count("visits").await, self.count("api_keys").await, self.count("idempotency_keys").await]
    }
}
