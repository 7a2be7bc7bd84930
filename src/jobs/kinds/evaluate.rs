//! `evaluate`: measures a registered model version on a part of its split
//! (or on every patient), over the visits stored when the job starts. The
//! metrics are the job's result.
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::copy_previous;
use crate::{
    http::error::{ApiError, FieldError},
    jobs::{JobContext, JobKind, Outcome, Progress, SplitFile},
    ml::data::Vocabularies,
    registry::ModelKind,
    store,
};

/// Which patients to evaluate on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EvalSplit {
    Train,
    Val,
    #[default]
    Test,
    /// Every stored patient.
    All,
}

/// Parameters of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model_id": "019ae4a0-6a3c-7b51-9a43-6f0d3c1c2b10", "split": "test"}))]
pub struct EvaluateParams {
    /// The model version to evaluate.
    pub model_id: Uuid,
    /// The part of the version's split (`split.json`); default `test`.
    #[serde(default)]
    pub split: EvalSplit,
}

pub struct Evaluate;

/// Model kinds whose evaluation is built in (add MICRON, GRU, density here).
fn evaluable(kind: &str) -> bool {
    kind == ModelKind::CopyPrevious.as_str()
}

impl JobKind for Evaluate {
    type Params = EvaluateParams;

    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn description(&self) -> &'static str {
        "Evaluate a registered model version on a split of the stored visits"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        None
    }

    async fn check(&self, p: &EvaluateParams, db: &sqlx::PgPool) -> Result<(), ApiError> {
        let Some(m) = store::models::get(db, p.model_id).await? else {
            return Err(ApiError::Validation(vec![FieldError::new("/params/model_id", "no such model version")]));
        };
        if !evaluable(&m.kind) {
            return Err(ApiError::Validation(vec![FieldError::new(
                "/params/model_id",
                format!("evaluating `{}` models is not available in this build", m.kind),
            )]));
        }
        if m.status == "failed" {
            return Err(ApiError::Validation(vec![FieldError::new("/params/model_id", "this version failed")]));
        }
        Ok(())
    }

    fn run(&self, p: EvaluateParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        let model = ctx.load_model(p.model_id)?;
        anyhow::ensure!(evaluable(&model.kind), "evaluating `{}` models is not available in this build", model.kind);
        let vocab: Vocabularies =
            model.vocab.clone().ok_or_else(|| anyhow::anyhow!("version {} has no vocab.json", model.version))?;
        let data = ctx.load_training_data()?;
        let patients = match p.split {
            EvalSplit::All => data.patients.iter().collect::<Vec<_>>(),
            part => {
                let split: SplitFile = serde_json::from_slice(&std::fs::read(model.path.join("split.json"))?)?;
                let ids = match part {
                    EvalSplit::Train => &split.train,
                    EvalSplit::Val => &split.val,
                    _ => &split.test,
                };
                data.select(ids)
            }
        };
        ctx.progress(Progress::log(format!(
            "evaluating {} version {} on {} patients",
            model.kind,
            model.version,
            patients.len()
        )));
        let predictions = copy_previous::predict(ctx, &vocab, &patients, 1)?;
        let metrics = copy_previous::score(&predictions, vocab.med.len());
        ctx.progress(Progress::epoch(1, Some(1), json!({ "metrics": metrics })));
        Ok(Outcome::Result(json!({
            "model_id": model.id,
            "kind": model.kind,
            "version": model.version,
            "split": p.split,
            "metrics": metrics,
        })))
    }
}
