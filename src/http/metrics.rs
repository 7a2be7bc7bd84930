//! Prometheus metrics: request counts and latency histograms by route and
//! status, plus database pool gauges, in the text exposition format.
use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};

use crate::app::AppState;

const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Request metrics, keyed by (method, route template, status).
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

impl HttpMetrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.entry((method.to_string(), route.to_string(), status)).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP medchange_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE medchange_http_requests_total counter\n");
        for ((m, r, st), s) in map.iter() {
            let _ = writeln!(out, "medchange_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{st}\"}} {}", s.count);
        }
        out.push_str("# HELP medchange_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE medchange_http_request_duration_seconds histogram\n");
        for ((m, r, st), s) in map.iter() {
            let labels = format!("method=\"{m}\",route=\"{r}\",status=\"{st}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "medchange_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}", s.buckets[i]);
            }
            let _ = writeln!(out, "medchange_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "medchange_http_request_duration_seconds_sum{{{labels}}} {}", s.sum);
            let _ = writeln!(out, "medchange_http_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
    }
}

/// Middleware recording every request under its route template (never the
/// raw path, which may carry identifiers).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    state.metrics.observe(&method, &route, res.status().as_u16(), start.elapsed());
    res
}

/// Renders all metrics, including pool gauges.
pub fn render(state: &AppState) -> String {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let size = state.db.size();
    let idle = state.db.num_idle();
    out.push_str("# HELP medchange_db_pool_connections Database pool connections by state.\n");
    out.push_str("# TYPE medchange_db_pool_connections gauge\n");
    let _ = writeln!(out, "medchange_db_pool_connections{{state=\"idle\"}} {idle}");
    let _ = writeln!(out, "medchange_db_pool_connections{{state=\"in_use\"}} {}", (size as usize).saturating_sub(idle));
    let _ = writeln!(out, "medchange_db_pool_max_connections {}", state.db.options().get_max_connections());
    out
}
