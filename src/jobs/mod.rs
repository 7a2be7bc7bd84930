//! Background jobs: a PostgreSQL queue ([`crate::store::jobs`]), the worker
//! loop ([`worker`]), job kinds ([`kinds`]) and what a running job sees
//! ([`JobContext`]).
//!
//! # Plugging in a job kind (e.g. a trainer)
//!
//! Implement [`JobKind`] and add it in [`kinds::builtin`]:
//!
//! ```ignore
//! pub struct TrainMicron;
//! impl JobKind for TrainMicron {
//!     type Params = MicronParams; // serde + utoipa::ToSchema
//!     fn name(&self) -> &'static str { "train_micron" }
//!     fn description(&self) -> &'static str { "Train MICRON on the stored visits" }
//!     fn model_kind(&self) -> Option<ModelKind> { Some(ModelKind::Micron) }
//!     fn validate(&self, p: &MicronParams) -> Vec<FieldError> { /* pointers relative to params */ }
//!     fn run(&self, p: MicronParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
//!         let data = ctx.load_training_data()?;          // visits as of job start
//!         let split = data.split(p.seed);                  // by patient, seed recorded
//!         for epoch in 0..p.epochs {
//!             for batch in batches {
//!                 ctx.checkpoint()?;                       // stops here when cancelled
//!                 ctx.progress(Progress::step(epoch, step).loss(l).throughput(x).eta(s));
//!             }
//!             ctx.progress(Progress::epoch(epoch, Some(p.epochs), json!({"val": val_metrics})));
//!         }
//!         // weights (burn's save_file into ctx.artifact_dir()), then:
//!         ctx.write_json("config.json", &config)?;
//!         ctx.write_json("vocab.json", &vocab)?;   // Vocabularies::from_training(..)
//!         ctx.write_json("metrics.json", &metrics)?;
//!         ctx.write_json("split.json", &data.split_file(&split))?;
//!         Ok(Outcome::Version(NewVersion { kind: ModelKind::Micron, config, metrics,
//!             val_score: Some(val.jaccard), vocab: registry::vocab_summary(&vocab), parent: None }))
//!         // the worker computes the checksums, moves the folder to models/micron/<version>/
//!         // and records the version with its lineage
//!     }
//! }
//! ```
//!
//! `run` is called on a blocking thread (`spawn_blocking`), never on the
//! async runtime. An error fails the job at once (trainer errors are taken
//! as deterministic); only crashed workers (stale heartbeats) are retried.
//! Return `Err(Cancelled.into())` (what `ctx.checkpoint()?` does) to stop:
//! the worker ends the job as cancelled, or requeues it on shutdown, and
//! removes the artifact folder either way.
pub mod bench;
pub mod context;
pub mod data;
pub mod kinds;
pub mod worker;

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sqlx::PgPool;

pub use context::{Cancelled, JobContext, NewVersion, Outcome, Progress};
pub use data::{DataSnapshot, SplitFile, TrainingData};
pub use worker::Worker;

use crate::{
    http::{
        error::{ApiError, FieldError},
        extract::pointer_of,
    },
    registry::ModelKind,
};

/// One kind of job: its name, its parameters (validated when the job is
/// created) and the blocking work.
pub trait JobKind: Send + Sync + 'static {
    /// The parameters; unknown fields should be refused
    /// (`#[serde(deny_unknown_fields)]`) and defaults filled by serde, so
    /// the stored parameters are complete.
    type Params: DeserializeOwned + Serialize + utoipa::ToSchema + Send + 'static;

    /// Stable name, used in `POST /v1/jobs` (`kind`).
    fn name(&self) -> &'static str;
    /// One line for the job-kinds listing.
    fn description(&self) -> &'static str;
    /// The model kind a successful run registers a version of, if any.
    fn model_kind(&self) -> Option<ModelKind>;
    /// Checks the parameters; pointers are relative to `params`
    /// (e.g. `/learning_rate`). Any error makes the request a 422.
    fn validate(&self, _params: &Self::Params) -> Vec<FieldError> {
        vec![]
    }
    /// Checks that need the database (e.g. that a referenced model exists).
    fn check(&self, _params: &Self::Params, _db: &PgPool) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }
    /// Fills parameters that depend on the database when the job is created
    /// (e.g. "the active version" becomes its id), after [`JobKind::check`],
    /// so that the stored parameters say exactly what every attempt uses.
    fn resolve(
        &self,
        params: Self::Params,
        _db: &PgPool,
    ) -> impl Future<Output = Result<Self::Params, ApiError>> + Send {
        async move { Ok(params) }
    }
    /// Does the work on a blocking thread. Call [`JobContext::checkpoint`]
    /// (or [`JobContext::is_cancelled`]) every batch and return
    /// [`Cancelled`] when asked to stop; write artifacts only under
    /// [`JobContext::artifact_dir`].
    fn run(&self, params: Self::Params, ctx: &JobContext) -> anyhow::Result<Outcome>;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`JobKind`] with the parameter type erased (what the registry holds).
pub trait DynJobKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn model_kind(&self) -> Option<ModelKind>;
    /// The JSON schema of the parameters.
    fn params_schema(&self) -> Value;
    /// Parses and validates raw parameters; returns them complete
    /// (defaults filled), as stored with the job.
    fn validate<'a>(&'a self, params: Value, db: &'a PgPool) -> BoxFuture<'a, Result<Value, ApiError>>;
    fn run(&self, params: Value, ctx: &JobContext) -> anyhow::Result<Outcome>;
}

fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(params).map_err(|err| {
        let pointer = format!("/params{}", pointer_of(err.path()));
        ApiError::Validation(vec![FieldError::new(pointer, err.into_inner().to_string())])
    })
}

impl<K: JobKind> DynJobKind for K {
    fn name(&self) -> &'static str {
        JobKind::name(self)
    }
    fn description(&self) -> &'static str {
        JobKind::description(self)
    }
    fn model_kind(&self) -> Option<ModelKind> {
        JobKind::model_kind(self)
    }
    fn params_schema(&self) -> Value {
        self_contained_schema::<K::Params>()
    }
    fn validate<'a>(&'a self, params: Value, db: &'a PgPool) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            let parsed: K::Params = parse_params(params)?;
            let errors = JobKind::validate(self, &parsed);
            if !errors.is_empty() {
                return Err(ApiError::Validation(
                    errors.into_iter().map(|e| FieldError::new(format!("/params{}", e.pointer), e.detail)).collect(),
                ));
            }
            self.check(&parsed, db).await?;
            let parsed = self.resolve(parsed, db).await?;
            Ok(serde_json::to_value(&parsed).map_err(anyhow::Error::from)?)
        })
    }
    fn run(&self, params: Value, ctx: &JobContext) -> anyhow::Result<Outcome> {
        let parsed: K::Params = serde_json::from_value(params)?;
        JobKind::run(self, parsed, ctx)
    }
}

/// The JSON schema of `T` as clients use it to build forms: references to
/// other schemas inlined (so it stands alone), and the default of every
/// optional property (what serde fills in) as `default`. The defaults are
/// found by deserializing the schema's example cut down to its required
/// properties.
fn self_contained_schema<T: DeserializeOwned + Serialize + utoipa::ToSchema>() -> Value {
    let mut schema = serde_json::to_value(<T as utoipa::PartialSchema>::schema()).unwrap_or(Value::Null);
    let mut parts = vec![];
    <T as utoipa::ToSchema>::schemas(&mut parts);
    let parts: BTreeMap<String, Value> =
        parts.into_iter().filter_map(|(name, s)| Some((name, serde_json::to_value(s).ok()?))).collect();
    inline_refs(&mut schema, &parts, 0);
    let required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let mut minimal = serde_json::Map::new();
    for name in &required {
        if let Some(v) = schema["example"].get(name) {
            minimal.insert(name.clone(), v.clone());
        }
    }
    let defaults = serde_json::from_value::<T>(Value::Object(minimal)).ok().and_then(|p| serde_json::to_value(p).ok());
    if let (Some(Value::Object(defaults)), Some(Value::Object(props))) = (defaults, schema.get_mut("properties")) {
        for (name, prop) in props.iter_mut() {
            if let (false, Some(v), Value::Object(prop)) = (required.contains(name), defaults.get(name), prop)
                && !v.is_null()
            {
                prop.entry("default").or_insert_with(|| v.clone());
            }
        }
    }
    schema
}

/// Replaces `{"$ref": "#/components/schemas/X", ...}` by X's schema (the
/// object's own keys, e.g. its description, win).
fn inline_refs(v: &mut Value, parts: &BTreeMap<String, Value>, depth: usize) {
    if depth > 16 {
        return;
    }
    match v {
        Value::Object(map) => {
            let target = map.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/components/schemas/"));
            if let Some(Value::Object(part)) = target.and_then(|name| parts.get(name)) {
                map.remove("$ref");
                for (k, pv) in part {
                    map.entry(k.clone()).or_insert_with(|| pv.clone());
                }
            }
            for child in map.values_mut() {
                inline_refs(child, parts, depth + 1);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| inline_refs(c, parts, depth + 1)),
        _ => {}
    }
}

/// The job kinds a process can create and run.
#[derive(Clone, Default)]
pub struct JobKinds {
    kinds: BTreeMap<&'static str, Arc<dyn DynJobKind>>,
}

impl JobKinds {
    /// The kinds built into this binary (see [`kinds::builtin`]).
    pub fn builtin() -> Self {
        kinds::builtin()
    }

    /// Adds a kind (replacing one of the same name).
    pub fn with(mut self, kind: impl JobKind) -> Self {
        self.kinds.insert(JobKind::name(&kind), Arc::new(kind));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn DynJobKind>> {
        self.kinds.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().map(|s| s.to_string()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn DynJobKind>> {
        self.kinds.values()
    }
}
