//! The model registry: artifact folders under the models directory
//! (`<kind>/<version>/`), a sha256 of every file recorded in PostgreSQL,
//! verification on every load, and the in-process cache of the served
//! (active) version of each kind, swapped atomically on activation.
//!
//! Consistency: activation verifies and loads the new version first, then
//! commits the status change, then swaps the in-process entry (activations
//! in one process are serialized; across processes an advisory lock orders
//! the commits and [`Registry::refresh`], run every few seconds by `serve`,
//! brings other replicas to the committed state).
use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    ml::data::Vocabularies,
    store::models::{self as store, ModelRow},
};

/// The kinds of model the service knows. A version of each kind can be
/// active at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The MICRON medication-change model.
    Micron,
    /// The GRU baseline.
    Gru,
    /// The copy-previous baseline (no weights).
    CopyPrevious,
    /// An invertible residual density model.
    Density,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Micron,
        ModelKind::Gru,
        ModelKind::CopyPrevious,
        ModelKind::Density,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Micron => "micron",
            ModelKind::Gru => "gru",
            ModelKind::CopyPrevious => "copy_previous",
            ModelKind::Density => "density",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model version not found")]
    NotFound,
    #[error("artifact integrity check failed for {kind} version {version}: {problem}")]
    Integrity {
        kind: String,
        version: String,
        problem: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A loaded, checksum-verified model version: what the service serves: the
/// registry entry, its config and vocabularies, and the weights of the
/// model kinds that are served.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub id: Uuid,
    pub kind: String,
    /// Serving scope (see [`ModelRow::scope`]).
    pub scope: String,
    pub version: String,
    pub path: PathBuf,
    pub files: BTreeMap<String, String>,
    pub config: Value,
    pub vocab: Option<Vocabularies>,
    /// The weights of a MICRON version (kind `micron`), ready to serve.
    pub micron: Option<Arc<crate::ml::micron::LoadedMicron>>,
    /// A density version (kind `density`), ready to serve.
    pub density: Option<Arc<crate::ml::iresnet::LoadedDensity>>,
}

/// sha256 (hex) of one file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of every regular file under `dir`, by relative path ('/'-separated).
pub fn hash_dir(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            let path = entry.path();
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_file() {
                let rel = path.strip_prefix(root).expect("under root");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(rel, sha256_file(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Checks every recorded file of an artifact folder against its sha256.
/// The error names the first file that is missing or differs.
pub fn verify_dir(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), String> {
    if files.is_empty() {
        return Err("no files are recorded for this version".into());
    }
    for (name, expected) in files {
        let path = dir.join(name);
        match sha256_file(&path) {
            Ok(actual) if &actual == expected => {}
            Ok(actual) => {
                return Err(format!(
                    "{} has sha256 {actual}, expected {expected}",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("{} cannot be read: {e}", path.display())),
        }
    }
    Ok(())
}

/// Reads and verifies a version's folder (blocking).
pub fn load_blocking(models_dir: &Path, row: &ModelRow) -> Result<LoadedModel, RegistryError> {
    let path = models_dir.join(&row.artifact_path);
    let integrity = |problem: String| RegistryError::Integrity {
        kind: row.kind.clone(),
        version: row.version.clone(),
        problem,
    };
    verify_dir(&path, &row.files).map_err(integrity)?;
    let config = match std::fs::read(path.join("config.json")) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| integrity(format!("config.json is not JSON: {e}")))?,
        Err(_) => row.config.clone(),
    };
    let vocab = match std::fs::read(path.join("vocab.json")) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .map_err(|e| integrity(format!("vocab.json is invalid: {e}")))?,
        ),
        Err(_) => None,
    };
    let micron = if row.kind == ModelKind::Micron.as_str() {
        let art =
            crate::ml::micron::MicronArtifact::load(&path, &crate::ml::backend::Device::flex())
                .map_err(|e| integrity(format!("the MICRON weights do not load: {e}")))?;
        Some(Arc::new(crate::ml::micron::LoadedMicron::from(art)))
    } else {
        None
    };
    let density = if row.kind == ModelKind::Density.as_str() {
        let d = crate::ml::iresnet::LoadedDensity::load(&path)
            .map_err(|e| integrity(format!("the density model does not load: {e}")))?;
        Some(Arc::new(d))
    } else {
        None
    };
    Ok(LoadedModel {
        micron,
        density,
        id: row.id,
        kind: row.kind.clone(),
        scope: row.scope.clone(),
        version: row.version.clone(),
        path,
        files: row.files.0.clone(),
        config,
        vocab,
    })
}

/// A summary of vocabularies for the registry row.
pub fn vocab_summary(v: &Vocabularies) -> Value {
    serde_json::json!({"diagnoses": v.diag.len(), "procedures": v.proc.len(), "medications": v.med.len()})
}

/// A new version's name: UTC time and a random suffix (sortable, unique).
pub fn new_version(id: Uuid) -> String {
    let s = id.simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &s[s.len() - 8..]
    )
}

/// The key of a served slot: the kind, or `kind/scope` for scoped versions.
fn slot(kind: &str, scope: &str) -> String {
    if scope.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}/{scope}")
    }
}

/// Versions loaded on demand (not active) that stay in memory.
const LOADED_CACHE: usize = 8;

/// The registry: metadata in PostgreSQL, artifacts under `dir`, and the
/// served version of each kind (of each kind and scope, for scoped kinds
/// such as density models).
pub struct Registry {
    db: PgPool,
    dir: PathBuf,
    active: RwLock<HashMap<String, Arc<LoadedModel>>>,
    /// Versions loaded by id (e.g. a `ready` density model scored by id).
    cache: RwLock<Vec<Arc<LoadedModel>>>,
    swap: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(db: PgPool, dir: impl Into<PathBuf>) -> Self {
        Self {
            db,
            dir: dir.into(),
            active: RwLock::default(),
            cache: RwLock::default(),
            swap: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where jobs stage artifacts before registration (same file system as
    /// the final folders, so moving them in is a rename).
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join(".staging")
    }

    /// The served version of `kind` (kinds served without a scope), if any.
    pub fn active(&self, kind: &str) -> Option<Arc<LoadedModel>> {
        self.active_in(kind, "")
    }

    /// The served version of `kind` in `scope`, if any.
    pub fn active_in(&self, kind: &str, scope: &str) -> Option<Arc<LoadedModel>> {
        self.active
            .read()
            .expect("registry lock")
            .get(&slot(kind, scope))
            .cloned()
    }

    /// Every served version, by kind and scope.
    pub fn active_all(&self) -> Vec<Arc<LoadedModel>> {
        let mut v: Vec<_> = self
            .active
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.kind, &a.scope).cmp(&(&b.kind, &b.scope)));
        v
    }

    fn swap_in(&self, model: LoadedModel) {
        self.active
            .write()
            .expect("registry lock")
            .insert(slot(&model.kind, &model.scope), Arc::new(model));
    }

    /// A version loaded in memory, verified: the served one when `row` is
    /// served, else loaded (checksums verified) and kept in a small cache.
    /// Artifacts never change after registration, so a cached load stays
    /// valid; the caller checks the row's status.
    pub async fn loaded(&self, row: &ModelRow) -> Result<Arc<LoadedModel>, RegistryError> {
        if let Some(m) = self
            .active_in(&row.kind, &row.scope)
            .filter(|m| m.id == row.id)
        {
            return Ok(m);
        }
        if let Some(m) = self
            .cache
            .read()
            .expect("registry lock")
            .iter()
            .find(|m| m.id == row.id)
        {
            return Ok(m.clone());
        }
        let loaded = Arc::new(self.load(row).await?);
        let mut cache = self.cache.write().expect("registry lock");
        if !cache.iter().any(|m| m.id == row.id) {
            if cache.len() >= LOADED_CACHE {
                cache.remove(0);
            }
            cache.push(loaded.clone());
        }
        Ok(loaded)
    }

    /// Loads and verifies a version's artifacts off the async runtime.
    pub async fn load(&self, row: &ModelRow) -> Result<LoadedModel, RegistryError> {
        let (dir, row) = (self.dir.clone(), row.clone());
        tokio::task::spawn_blocking(move || load_blocking(&dir, &row))
            .await
            .map_err(anyhow::Error::from)?
    }

    /// Moves a staged artifact folder to `<kind>/<version>/` and returns its
    /// relative path and file checksums (computed here, never by the job).
    pub fn install_blocking(
        &self,
        staged: &Path,
        kind: &str,
        version: &str,
    ) -> anyhow::Result<(String, BTreeMap<String, String>)> {
        let files = hash_dir(staged)?;
        anyhow::ensure!(!files.is_empty(), "the job produced no artifact files");
        anyhow::ensure!(
            files.contains_key("config.json"),
            "the artifact folder has no config.json"
        );
        let rel = format!("{kind}/{version}");
        let dest = self.dir.join(&rel);
        std::fs::create_dir_all(dest.parent().expect("has parent"))?;
        std::fs::rename(staged, &dest)?;
        Ok((rel, files))
    }

    /// Removes an installed folder whose registration did not commit.
    pub fn discard(&self, rel: &str) {
        let _ = std::fs::remove_dir_all(self.dir.join(rel));
    }

    /// Activates a version: verify and load, commit, swap. A version whose
    /// artifacts fail verification is refused and the served one stays.
    pub async fn activate(&self, id: Uuid) -> Result<ModelRow, RegistryError> {
        let _guard = self.swap.lock().await;
        let row = store::get(&self.db, id)
            .await?
            .ok_or(RegistryError::NotFound)?;
        if !matches!(row.status.as_str(), "ready" | "active" | "retired") {
            return Err(RegistryError::Conflict(format!(
                "a version with status `{}` cannot be activated",
                row.status
            )));
        }
        let loaded = match self.load(&row).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(model_id = %id, kind = %row.kind, version = %row.version, error = %e,
                    "refusing to activate a model version whose artifacts fail verification");
                return Err(e);
            }
        };
        let mut tx = self.db.begin().await?;
        let previous = store::activate(&mut tx, &row.kind, &row.scope, id).await?;
        tx.commit().await?;
        self.swap_in(loaded);
        tracing::info!(model_id = %id, kind = %row.kind, scope = %row.scope, version = %row.version, previous = ?previous,
            "model version activated");
        store::get(&self.db, id)
            .await?
            .ok_or(RegistryError::NotFound)
    }

    /// Retires a version that is not served.
    pub async fn retire(&self, id: Uuid) -> Result<ModelRow, RegistryError> {
        let _guard = self.swap.lock().await;
        let row = store::get(&self.db, id)
            .await?
            .ok_or(RegistryError::NotFound)?;
        match row.status.as_str() {
            "active" => {
                return Err(RegistryError::Conflict(
                    "this version is being served; activate another version of this kind first"
                        .into(),
                ));
            }
            "retired" => {}
            _ => store::set_status(&self.db, id, "retired").await?,
        }
        store::get(&self.db, id)
            .await?
            .ok_or(RegistryError::NotFound)
    }

    /// Brings the served versions in line with the database (start-up, and
    /// periodically so that replicas follow activations made elsewhere). A
    /// version that fails verification is not loaded: the previous one
    /// keeps serving and the failure is logged as an error.
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        let _guard = self.swap.lock().await;
        for row in store::all_active(&self.db).await? {
            if self
                .active_in(&row.kind, &row.scope)
                .is_some_and(|m| m.id == row.id)
            {
                continue;
            }
            match self.load(&row).await {
                Ok(loaded) => {
                    tracing::info!(kind = %row.kind, version = %row.version, "serving model version");
                    self.swap_in(loaded);
                }
                Err(e) => tracing::error!(kind = %row.kind, version = %row.version, error = %e,
                    "the active model version fails verification; keeping the previously served version"),
            }
        }
        Ok(())
    }

    /// Activates `row` if no version of its kind (and scope) is active, or
    /// if its validation score beats the active one's by at least `margin`.
    /// Returns whether it was promoted.
    pub async fn maybe_promote(&self, row: &ModelRow, margin: f64) -> Result<bool, RegistryError> {
        let current = store::active_in(&self.db, &row.kind, &row.scope).await?;
        let better = match (&current, row.val_score) {
            (None, _) => true,
            (Some(c), Some(new)) => c.val_score.is_none_or(|old| new >= old + margin),
            (Some(_), None) => false,
        };
        if better {
            self.activate(row.id).await?;
        }
        Ok(better)
    }

    /// Registers the model folders shipped with the service (the default
    /// models), so a fresh install serves at once: for each
    /// `<shipped>/<kind>/` folder whose kind has no version in the
    /// registry yet, copies it to `<kind>/<version>/`, records checksums
    /// and activates it. A `SHA256SUMS` file in the shipped folder
    /// (`sha256sum` format) is checked first and a mismatch refuses the
    /// folder. Returns the versions registered.
    pub async fn register_shipped(&self, shipped: &Path) -> Result<Vec<ModelRow>, RegistryError> {
        let mut out = vec![];
        let Ok(entries) = std::fs::read_dir(shipped) else {
            return Ok(out);
        };
        let mut kinds: Vec<(ModelKind, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                ModelKind::parse(&e.file_name().to_string_lossy()).map(|k| (k, e.path()))
            })
            .collect();
        kinds.sort_by_key(|(k, _)| k.as_str());
        for (kind, src) in kinds {
            if store::count_kind(&self.db, kind.as_str()).await? > 0 {
                continue;
            }
            let row = self.register_folder(&src, kind, "shipped").await?;
            tracing::info!(kind = kind.as_str(), version = %row.version, "registered the shipped model");
            out.push(self.activate(row.id).await?);
        }
        Ok(out)
    }

    /// Copies an artifact folder (checked against its `SHA256SUMS` when it
    /// has one) to `<models>/<kind>/<source>-<time>-<id>/`, records its
    /// checksums and registers it as a `ready` version with the given
    /// source (`shipped` or `import`). It is not activated.
    pub async fn register_folder(
        &self,
        src: &Path,
        kind: ModelKind,
        source: &str,
    ) -> Result<ModelRow, RegistryError> {
        let id = Uuid::now_v7();
        let version = format!("{source}-{}", new_version(id));
        let dir = self.dir.clone();
        let (rel, files, config, metrics, vocab) = {
            let (version, src) = (version.clone(), src.to_path_buf());
            tokio::task::spawn_blocking(move || {
                register_shipped_blocking(&dir, &src, kind, &version)
            })
            .await
            .map_err(anyhow::Error::from)??
        };
        let new = store::NewModel {
            id,
            kind: kind.as_str(),
            version: &version,
            config: &config,
            metrics: &metrics,
            val_score: None,
            vocab: &vocab,
            artifact_path: &rel,
            files: &files,
            source,
            job_id: None,
            data_snapshot: None,
            parent_id: None,
        };
        match store::insert(&self.db, &new).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.discard(&rel);
                Err(e.into())
            }
        }
    }
}

type Shipped = (String, BTreeMap<String, String>, Value, Value, Value);

fn register_shipped_blocking(
    dir: &Path,
    src: &Path,
    kind: ModelKind,
    version: &str,
) -> Result<Shipped, RegistryError> {
    let integrity = |problem: String| RegistryError::Integrity {
        kind: kind.as_str().into(),
        version: version.into(),
        problem,
    };
    if let Ok(sums) = std::fs::read_to_string(src.join("SHA256SUMS")) {
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (sum, name) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| integrity(format!("bad SHA256SUMS line `{line}`")))?;
            let name = name.trim_start().trim_start_matches('*');
            let actual =
                sha256_file(&src.join(name)).map_err(|e| integrity(format!("{name}: {e}")))?;
            if actual != sum {
                return Err(integrity(format!(
                    "shipped file {name} has sha256 {actual}, SHA256SUMS says {sum}"
                )));
            }
        }
    }
    let read_json = |name: &str| -> Value {
        std::fs::read(src.join(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let config = read_json("config.json");
    if config.is_null() {
        return Err(integrity(
            "the shipped folder has no valid config.json".into(),
        ));
    }
    let metrics = match read_json("metrics.json") {
        Value::Null => serde_json::json!({}),
        m => m,
    };
    let vocab = match std::fs::read(src.join("vocab.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vocabularies>(&b).ok())
    {
        Some(v) => vocab_summary(&v),
        None => serde_json::json!({}),
    };
    let rel = format!("{}/{version}", kind.as_str());
    let dest = dir.join(&rel);
    copy_dir(src, &dest).map_err(anyhow::Error::from)?;
    let _ = std::fs::remove_file(dest.join("SHA256SUMS"));
    let files = hash_dir(&dest).map_err(anyhow::Error::from)?;
    Ok((rel, files, config, metrics, vocab))
}

fn copy_dir(src: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dest.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), to)?;
        }
    }
    Ok(())
}
