//! In-process calls to `app(state)` against the test's own database.
use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use medchange::{
    app::{AppState, app},
    config::{HttpArgs, JobsArgs},
    domain::Role,
    jobs::JobKinds,
    store,
};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    pub admin: String,
    pub clinical: String,
    pub state: AppState,
    /// This test's own models directory (removed on drop).
    pub models_dir: std::path::PathBuf,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.models_dir);
    }
}

/// Job settings for tests: a private models directory, every step event
/// stored, no retry backoff, and heartbeats that never fire on their own
/// (tests move time by editing `heartbeat_at`).
pub fn test_jobs_args() -> JobsArgs {
    JobsArgs {
        models_dir: std::env::temp_dir().join(format!("medchange-test-models-{}", uuid::Uuid::new_v4())),
        heartbeat_secs: 3600.0,
        lease_timeout_secs: 60.0,
        retry_backoff_secs: 0.0,
        step_event_interval_secs: 0.0,
        ..JobsArgs::default()
    }
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
        Self::build(pool, http, test_jobs_args(), JobKinds::builtin()).await
    }

    /// With extra job kinds (added to the built-in ones) and job settings.
    pub async fn with_jobs(pool: PgPool, jobs: JobsArgs, kinds: JobKinds) -> Self {
        Self::build(pool, HttpArgs::default(), jobs, kinds).await
    }

    async fn build(pool: PgPool, http: HttpArgs, jobs: JobsArgs, kinds: JobKinds) -> Self {
        let admin = key(&pool, Role::Admin).await;
        let clinical = key(&pool, Role::Clinical).await;
        let models_dir = jobs.models_dir.clone();
        let state = AppState::with_jobs(pool.clone(), http, jobs, kinds);
        let router = app(state.clone());
        TestApp { router, pool, admin, clinical, state, models_dir }
    }

    /// A worker of this app (drive it with `claim_and_run_one`).
    pub fn worker(&self, name: &str) -> medchange::jobs::Worker {
        self.state.worker(name)
    }

    pub async fn admin_get(&self, path: &str) -> Res {
        self.call(Method::GET, path, Some(&self.admin.clone()), None).await
    }

    pub async fn admin_post(&self, path: &str, body: Option<Value>) -> Res {
        self.call(Method::POST, path, Some(&self.admin.clone()), body).await
    }

    /// Stores `patients` patients with `visits` visits each (medications
    /// known), straight through the store.
    pub async fn seed_visits(&self, patients: usize, visits: usize) {
        self.seed_visits_with(patients, visits, |p, v| {
            (
                vec![format!("D{}", (p + v) % 7), format!("D{}", v % 3)],
                vec![format!("X{}", p % 4)],
                vec![format!("M{}", (p + v) % 5), format!("M{}", p % 3 + 5)],
            )
        })
        .await
    }

    /// Stores `patients` patients (source `seed`) with `visits` visits a day
    /// apart, whose (diagnoses, procedures, medications) `codes(patient,
    /// visit)` gives, one transaction per patient.
    pub async fn seed_visits_with(
        &self,
        patients: usize,
        visits: usize,
        mut codes: impl FnMut(usize, usize) -> (Vec<String>, Vec<String>, Vec<String>),
    ) {
        for p in 0..patients {
            let mut tx = self.pool.begin().await.unwrap();
            let row = store::patients::insert(&mut *tx, "seed", &format!("P{p}-{}", uuid::Uuid::new_v4())).await.unwrap();
            for v in 0..visits {
                let (diag, proc, meds) = codes(p, v);
                let t = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + (v as i64) * 86_400, 0).unwrap();
                let new = store::visits::NewVisit {
                    occurred_at: Some(t),
                    diagnoses: &diag,
                    procedures: &proc,
                    medications: Some(&meds),
                    source: None,
                };
                store::visits::insert_locked(&mut tx, row.id, &new).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
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
