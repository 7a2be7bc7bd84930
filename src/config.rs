//! Command line and environment configuration (clap derive, `env` on every
//! field). Secrets are wrapped in [`Secret`] so `Debug` never prints them.
use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A string that never shows in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "medchange",
    version,
    about = "Medication-change prediction service"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// PostgreSQL URL. Without it, a project-local cluster is started under
    /// the data directory (initdb/pg_ctl from the installed server).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<Secret>,
    /// Folder for local state: the project-local PostgreSQL cluster.
    #[arg(
        long,
        env = "MEDCHANGE_HOME",
        default_value = ".medchange",
        global = true
    )]
    pub home: PathBuf,
    /// Log format: `auto` is pretty on a terminal and JSON otherwise.
    #[arg(long, env = "MEDCHANGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    /// Maximum database connections in the pool.
    #[arg(long, env = "MEDCHANGE_DB_POOL", default_value_t = 16, global = true)]
    pub db_pool: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Write the OpenAPI document (to openapi/openapi.json by default).
    Openapi {
        /// Output file; `-` for standard output.
        #[arg(long, default_value = "openapi/openapi.json")]
        out: PathBuf,
    },
    /// Load patients, visits or interaction pairs from files into the database.
    Import {
        #[command(subcommand)]
        what: ImportCommand,
    },
    /// Generate a synthetic cohort (native JSON lines, MICRON layout and DDI pairs).
    Synth(SynthArgs),
    /// Train a model (MICRON or the GRU baseline) from files or stored visits.
    Train(TrainArgs),
    /// Print the metric table of a model and the baselines on a split.
    Eval(EvalArgs),
    /// Turn the reference implementation's trained MICRON weights (a PyTorch
    /// state dict saved as safetensors, with its voc.json) into a medchange
    /// MICRON artifact, and optionally register it as a version.
    ImportWeights(ImportWeightsArgs),
    /// Run job workers only (no HTTP): training can run on other machines
    /// that share the database and the models directory.
    Worker(WorkerArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// The native JSON-lines format: one patient per line,
    /// `{"external_id", "source"?, "visits": [{"occurred_at"?, "diagnoses", "procedures", "medications"?}]}`.
    Native {
        file: PathBuf,
        /// Source system for patients whose line names none.
        #[arg(long, default_value = "import")]
        source: String,
    },
    /// The MICRON research layout: a folder with records.json and voc.json.
    Micron {
        dir: PathBuf,
        #[arg(long, default_value = "micron")]
        source: String,
    },
    /// FHIR R4: Bundle files (`.json`) and bulk NDJSON files (`.ndjson`), or a
    /// folder of them (e.g. Synthea's output); one transaction per file.
    Fhir {
        path: PathBuf,
        /// The EHR the resources come from (resource ids are unique per source).
        #[arg(long, default_value = "fhir")]
        source: String,
        /// Take the external patient id from the identifier of this system.
        #[arg(long)]
        identifier_system: Option<String>,
    },
    /// A CSV of interacting medication pairs (header `atc3_a,atc3_b`).
    Ddi {
        file: PathBuf,
        #[arg(long, default_value = "import")]
        source: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SynthArgs {
    /// Output folder (created): patients.jsonl, records.json, voc.json, ddi_pairs.csv.
    #[arg(long, default_value = "synth")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 6350)]
    pub patients: usize,
    #[arg(long, default_value_t = 1203)]
    pub seed: u64,
}

/// Where a cohort comes from.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// A MICRON layout folder or a native JSON-lines file; without it, the
    /// visits stored in the database (and its interaction pairs).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With the database: only patients of this source system.
    #[arg(long)]
    pub source: Option<String>,
    /// A split file (patient indices); default: the reference's seeded 60/20/20 split.
    #[arg(long)]
    pub split: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value = "micron")]
    pub model: crate::ml::pipeline::ModelKind,
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// `faithful` (the reference: one RMSprop step per patient) or `minibatch`.
    #[arg(long, default_value = "faithful")]
    pub recipe: String,
    /// flex, ndarray (CPU); tch-cpu, tch-cuda:N with the `tch` feature.
    #[arg(long, env = "MEDCHANGE_BACKEND", default_value = "flex")]
    pub backend: String,
    /// Artifact folder; default models/<model>/<UTC timestamp>.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// A MICRON artifact folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A GRU baseline artifact folder to compare with.
    #[arg(long)]
    pub gru: Option<PathBuf>,
    /// Which part of the split: test, val or train.
    #[arg(long, default_value = "test")]
    pub part: String,
    /// Thresholds calibrated on the validation split instead of 0.8 / 0.2.
    #[arg(long)]
    pub calibrate: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ImportWeightsArgs {
    /// The state dict as safetensors, with the reference's names
    /// (`embeddings.0.weight`, `embeddings.1.weight`, `health_net.0.*`,
    /// `prescription_net.0.*`, `prescription_net.2.*`; PyTorch `[out, in]`).
    #[arg(long)]
    pub state_dict: PathBuf,
    /// The reference's vocabularies: `{"diag": [...], "proc": [...], "med": [...]}`.
    #[arg(long)]
    pub voc: PathBuf,
    /// Artifact folder to write (weights.safetensors, config.json, vocab.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Also register the artifact as a MICRON version (status `ready`, source
    /// `import`) in the database; activate it with `POST /v1/models/{id}/activate`.
    #[arg(long)]
    pub register: bool,
    /// Models directory of the registry (with --register).
    #[arg(long, env = "MEDCHANGE_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once.
    Create {
        #[arg(long, value_enum)]
        role: crate::domain::Role,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MEDCHANGE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Admin key to install on first start instead of generating one.
    #[arg(long, env = "MEDCHANGE_ADMIN_KEY")]
    pub admin_key: Option<Secret>,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub jobs: JobsArgs,
    #[command(flatten)]
    pub cds: CdsArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".parse().unwrap(),
            admin_key: None,
            http: HttpArgs::default(),
            jobs: JobsArgs::default(),
            cds: CdsArgs::default(),
        }
    }
}

/// CDS Hooks: how EHRs authenticate (JWTs signed with keys of a JWKS).
#[derive(Debug, Clone, Args)]
pub struct CdsArgs {
    /// The EHRs' public keys: a JSON Web Key Set, inline (`{"keys": [...]}`)
    /// or the path of a file holding one. Unset: CDS Hooks calls need an API key.
    #[arg(long, env = "MEDCHANGE_CDS_JWKS")]
    pub jwks: Option<String>,
    /// Accepted `iss` values of CDS Hooks JWTs, comma-separated (required with a JWKS).
    #[arg(long, env = "MEDCHANGE_CDS_ISSUERS", value_delimiter = ',')]
    pub issuers: Vec<String>,
    /// This service's public base URL (e.g. `https://cds.example.org`): a
    /// JWT's `aud` must be `<base>/cds-services/<id>`, the endpoint called.
    #[arg(long, env = "MEDCHANGE_CDS_BASE_URL")]
    pub base_url: Option<String>,
    /// The source (EHR name) whose imported FHIR ids the hooks' `patientId`
    /// and `encounterId` refer to when no prefetch is sent.
    #[arg(long, env = "MEDCHANGE_CDS_SOURCE", default_value = "fhir")]
    pub source: String,
}

impl Default for CdsArgs {
    fn default() -> Self {
        Self {
            jwks: None,
            issuers: vec![],
            base_url: None,
            source: "fhir".into(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub jobs: JobsArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The job queue's overhead: claims per second with several workers,
    /// and the time from creation to start (in a scratch database).
    Queue(BenchArgs),
    /// End-to-end HTTP latency and throughput of "append a visit and
    /// predict" (incremental vs replay) at several history lengths, driven
    /// by wrk on loopback (in a scratch database).
    Serve(ServeBenchArgs),
    /// FHIR import and CDS Hooks costs through the HTTP stack (in a scratch
    /// database, with the shipped MICRON model).
    Fhir(FhirBenchArgs),
    /// Density models: scoring throughput, encode/invert latency, training
    /// time per epoch, the Gaussian-mixture and out-of-distribution results
    /// (no database needed).
    Density(DensityBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeBenchArgs {
    /// History lengths (stored visits per patient before the run).
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub lengths: Vec<usize>,
    /// Modes: `incremental` (one step from the stored state), `replay`
    /// (`?replay=true`: the history re-read and replayed per request).
    #[arg(long, value_delimiter = ',', default_value = "incremental,replay")]
    pub modes: Vec<String>,
    /// Fresh patients per run.
    #[arg(long, default_value_t = 2000)]
    pub patients: usize,
    /// Target arrival rate of the fixed-rate runs (requests/s over all connections).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// A folder of model folders by kind, as `models/shipped` (its `micron/` is served).
    #[arg(long, default_value = "models/shipped")]
    pub models: PathBuf,
    /// Interacting pairs to load (CSV `atc3_a,atc3_b`), e.g. ../shared/fixtures/ddi/atc3_pairs.csv.
    #[arg(long)]
    pub ddi: Option<PathBuf>,
    #[arg(long, default_value_t = 1203)]
    pub seed: u64,
    /// The wrk executable.
    #[arg(long, default_value = "wrk")]
    pub wrk: String,
}

#[derive(Debug, Clone, Args)]
pub struct FhirBenchArgs {
    /// A folder of FHIR Bundle files (`.json`).
    #[arg(long, default_value = "../shared/fixtures/fhir/synthea-r4")]
    pub dir: PathBuf,
    /// Times each bundle is imported (under a new source each round).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Calls per CDS Hooks case.
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// The shipped models (the MICRON model answers the hooks).
    #[arg(long, default_value = "models/shipped")]
    pub shipped: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DensityBenchArgs {
    /// Dimensions to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
    pub dims: Vec<usize>,
    /// Residual blocks of the timing models.
    #[arg(long, default_value_t = 4)]
    pub blocks: usize,
    /// Hidden width of the timing models.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Inputs scored per measurement.
    #[arg(long, default_value_t = 2000)]
    pub inputs: usize,
    /// Training inputs for the time per epoch.
    #[arg(long, default_value_t = 4096)]
    pub train_inputs: usize,
    /// Training (and test) inputs of the Gaussian mixture.
    #[arg(long, default_value_t = 20_000)]
    pub mixture_inputs: usize,
    #[arg(long, default_value_t = 40)]
    pub mixture_epochs: usize,
    /// Synthetic patients of the out-of-distribution measurement.
    #[arg(long, default_value_t = 6350)]
    pub ood_patients: usize,
    #[arg(long, default_value_t = 8)]
    pub ood_micron_epochs: usize,
    #[arg(long, default_value_t = 30)]
    pub ood_density_epochs: usize,
    #[arg(long, default_value_t = 4)]
    pub ood_blocks: usize,
    #[arg(long, default_value_t = 64)]
    pub ood_hidden: usize,
    /// Code universes of the out-of-distribution cohort: `small` (200
    /// diagnoses, 60 procedures, 40 medications) or `mimic` (the default
    /// synthetic cohort's 1958 / 1430 / 131).
    #[arg(long, default_value = "small", value_parser = ["small", "mimic"])]
    pub ood_codes: String,
    #[arg(long)]
    pub skip_speed: bool,
    #[arg(long)]
    pub skip_train: bool,
    #[arg(long)]
    pub skip_mixture: bool,
    #[arg(long)]
    pub skip_ood: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Jobs per throughput round.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub workers: Vec<usize>,
    /// Jobs created one by one for the creation-to-start latency.
    #[arg(long, default_value_t = 200)]
    pub latency_jobs: usize,
}

/// Background jobs and the model registry.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// Job workers in this process (`serve`: 0 disables them).
    #[arg(long, env = "MEDCHANGE_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Model artifacts (`<kind>/<version>/`); shared by every replica and worker.
    #[arg(long, env = "MEDCHANGE_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Model folders shipped with the service (`<kind>/`), registered and
    /// activated on start for kinds that have no version yet.
    #[arg(
        long,
        env = "MEDCHANGE_SHIPPED_MODELS",
        default_value = "models/shipped"
    )]
    pub shipped_models: PathBuf,
    /// Seconds between a running job's heartbeats.
    #[arg(long, env = "MEDCHANGE_JOB_HEARTBEAT_SECS", default_value_t = 5.0)]
    pub heartbeat_secs: f64,
    /// A running job whose heartbeat is older than this many seconds is
    /// taken back from its (presumably crashed) worker.
    #[arg(long, env = "MEDCHANGE_JOB_LEASE_TIMEOUT_SECS", default_value_t = 60.0)]
    pub lease_timeout_secs: f64,
    /// Attempts per job (crashed runs are retried until this many).
    #[arg(long, env = "MEDCHANGE_JOB_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
    /// Base of the exponential retry backoff, in seconds.
    #[arg(long, env = "MEDCHANGE_JOB_RETRY_BACKOFF_SECS", default_value_t = 10.0)]
    pub retry_backoff_secs: f64,
    /// Idle workers check the queue at least this often (they are also
    /// woken by a notification when a job is queued).
    #[arg(long, env = "MEDCHANGE_JOB_POLL_SECS", default_value_t = 2.0)]
    pub poll_secs: f64,
    /// Minimum seconds between stored per-step progress events.
    #[arg(long, env = "MEDCHANGE_JOB_STEP_EVENT_SECS", default_value_t = 0.5)]
    pub step_event_interval_secs: f64,
    /// Activate a new version automatically when its validation score beats
    /// the active version's by at least this margin (unset: never).
    #[arg(long, env = "MEDCHANGE_AUTO_PROMOTE_MARGIN")]
    pub auto_promote_margin: Option<f64>,
    /// Seconds between checks of the active versions in the database (so
    /// replicas follow activations made elsewhere).
    #[arg(long, env = "MEDCHANGE_MODEL_REFRESH_SECS", default_value_t = 5.0)]
    pub model_refresh_secs: f64,
}

impl Default for JobsArgs {
    fn default() -> Self {
        Self {
            workers: 1,
            models_dir: "models".into(),
            shipped_models: "models/shipped".into(),
            heartbeat_secs: 5.0,
            lease_timeout_secs: 60.0,
            max_attempts: 3,
            retry_backoff_secs: 10.0,
            poll_secs: 2.0,
            step_event_interval_secs: 0.5,
            auto_promote_margin: None,
            model_refresh_secs: 5.0,
        }
    }
}

impl JobsArgs {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_secs.max(0.01))
    }
    pub fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_secs.max(0.01))
    }
    pub fn model_refresh(&self) -> Duration {
        Duration::from_secs_f64(self.model_refresh_secs.max(0.1))
    }
}

/// Limits applied to every HTTP request.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MEDCHANGE_BODY_LIMIT", default_value_t = 2 * 1024 * 1024)]
    pub body_limit: usize,
    /// Time limit for one request, in seconds.
    #[arg(long, env = "MEDCHANGE_REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout_secs: f64,
    /// The built dashboard (`index.html` and `assets/`) served at `/`;
    /// relative to the working directory. Without it the API still runs.
    #[arg(long, env = "MEDCHANGE_DASHBOARD_DIR", default_value = "frontend/dist")]
    pub dashboard_dir: PathBuf,
    /// Largest FHIR import body (`POST /v1/fhir/import`), in bytes: bundles
    /// and bulk NDJSON are larger than other requests.
    #[arg(long, env = "MEDCHANGE_FHIR_BODY_LIMIT", default_value_t = 64 * 1024 * 1024)]
    pub fhir_body_limit: usize,
    /// Largest accepted dataset upload (`POST /v1/density/datasets`), in bytes.
    #[arg(long, env = "MEDCHANGE_DATASET_BODY_LIMIT", default_value_t = 64 * 1024 * 1024)]
    pub dataset_body_limit: usize,
}

impl Default for HttpArgs {
    fn default() -> Self {
        Self {
            body_limit: 2 * 1024 * 1024,
            request_timeout_secs: 30.0,
            dashboard_dir: "frontend/dist".into(),
            fhir_body_limit: 64 * 1024 * 1024,
            dataset_body_limit: 64 * 1024 * 1024,
        }
    }
}

impl HttpArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs.max(0.001))
    }
}
