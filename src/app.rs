//! Application state and the router, shared by `main` and every test.
use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, StatusCode, header},
    middleware::{self, Next},
    response::Response,
};
use sqlx::PgPool;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::CompressionLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    config::{HttpArgs, JobsArgs},
    jobs::JobKinds,
    registry::Registry,
    http::{
        self,
        error::{PROBLEM_JSON, Problem, problem_for_status, problem_response},
        metrics::HttpMetrics,
    },
};

/// Everything a handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub http: Arc<HttpArgs>,
    pub metrics: Arc<HttpMetrics>,
    pub jobs: Arc<JobsArgs>,
    /// The job kinds `POST /v1/jobs` accepts.
    pub kinds: Arc<JobKinds>,
    /// Model versions and the served (active) one of each kind.
    pub registry: Arc<Registry>,
    /// Turns true when the server shuts down; long-lived responses (event
    /// streams) end then, so that graceful shutdown does not wait on them.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    /// CDS Hooks: trusted EHR keys and the source of hook patient ids.
    pub cds: Arc<crate::cds::jwt::CdsAuth>,
}

impl AppState {
    /// Default job settings and the built-in job kinds.
    pub fn new(db: PgPool, http: HttpArgs) -> Self {
        Self::with_jobs(db, http, JobsArgs::default(), JobKinds::builtin())
    }

    pub fn with_jobs(db: PgPool, http: HttpArgs, jobs: JobsArgs, kinds: JobKinds) -> Self {
        let registry = Arc::new(Registry::new(db.clone(), jobs.models_dir.clone()));
        Self {
            db,
            http: Arc::new(http),
            metrics: Arc::default(),
            jobs: Arc::new(jobs),
            kinds: Arc::new(kinds),
            registry,
            shutdown: Arc::new(tokio::sync::watch::Sender::new(false)),
            cds: Arc::new(crate::cds::jwt::CdsAuth::keys_only("fhir")),
        }
    }

    /// With CDS Hooks JWT authentication (see `cds::jwt`).
    pub fn with_cds(mut self, cds: crate::cds::jwt::CdsAuth) -> Self {
        self.cds = Arc::new(cds);
        self
    }

    /// A worker sharing this state's database, kinds, registry and settings.
    pub fn worker(&self, owner: impl Into<String>) -> crate::jobs::Worker {
        crate::jobs::Worker::new(self.db.clone(), self.kinds.clone(), self.registry.clone(), self.jobs.clone(), owner)
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (router, doc) = http::split();
    let body_limit = state.http.body_limit;
    let timeout = state.http.request_timeout();
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        // Everything else: the dashboard (and problem+json 404s for unknown API paths).
        .fallback(http::dashboard::serve)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(middleware::from_fn(move |req, next| problems(body_limit, req, next)))
        .layer(middleware::from_fn_with_state(state.clone(), http::metrics::track))
        .layer(CatchPanicLayer::custom(|_| problem_response(&problem_for_status(StatusCode::INTERNAL_SERVER_ERROR))))
        .layer(CompressionLayer::new())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // Route template only: raw paths and queries can carry identifiers.
                    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
                    let request_id =
                        req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    tracing::info_span!("request", method = %req.method(), route = route.as_deref().unwrap_or("unmatched"),
                        request_id = %request_id, key_id = tracing::field::Empty)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(tower_http::LatencyUnit::Micros)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(state)
}

/// Makes every error response problem+json carrying the request id:
/// router 404/405, timeouts, body-limit rejections and our own problems.
async fn problems(body_limit: usize, req: Request, next: Next) -> Response {
    let request_id = req.extensions().get::<RequestId>().and_then(|r| r.header_value().to_str().ok()).map(String::from);
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    let (mut parts, body) = res.into_parts();
    let mut problem: Problem = if is_problem {
        match axum::body::to_bytes(body, 1 << 20).await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            Some(p) => p,
            None => problem_for_status(status),
        }
    } else {
        problem_for_status(status)
    };
    // Limits unknown where the body was read (extractors and the body-limit
    // layer say 0) are the default limit; a handler with its own limit states it.
    if status == StatusCode::PAYLOAD_TOO_LARGE && (!is_problem || problem.detail.contains("limit of 0 bytes")) {
        problem.detail = format!("the request body exceeds the limit of {body_limit} bytes");
    }
    problem.request_id = request_id;
    let fresh = problem_response(&problem);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, fresh.headers()[header::CONTENT_TYPE].clone());
    Response::from_parts(parts, fresh.into_body())
}

