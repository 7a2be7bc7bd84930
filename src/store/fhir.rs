//! FHIR ingest bookkeeping (resource ids -> patients and visits), the
//! coding settings, the admins' code maps, and CDS Hooks token ids.
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::fhir::codes::{CodeSetKind, FhirSettings};

/// A resource imported earlier.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KnownResource {
    pub resource_type: String,
    pub resource_id: String,
    pub patient_id: Uuid,
    pub visit_id: Option<Uuid>,
}

/// The resources of `source` among `keys` (type, id).
pub async fn find(
    conn: &mut PgConnection,
    source: &str,
    keys: &[(String, String)],
) -> sqlx::Result<Vec<KnownResource>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let (types, ids): (Vec<&str>, Vec<&str>) = keys.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
    sqlx::query_as(
        "SELECT r.resource_type, r.resource_id, r.patient_id, r.visit_id FROM fhir_resources r
         JOIN unnest($2::text[], $3::text[]) AS k(t, i) ON r.resource_type = k.t AND r.resource_id = k.i
         WHERE r.source = $1",
    )
    .bind(source)
    .bind(types)
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// A resource an import used.
#[derive(Debug, Clone)]
pub struct NewResource {
    pub resource_type: String,
    pub resource_id: String,
    pub patient_id: Uuid,
    pub visit_id: Option<Uuid>,
    pub code_set: Option<CodeSetKind>,
    pub system: Option<String>,
    pub code: Option<String>,
    pub stored_code: Option<String>,
}

pub async fn insert_resources(conn: &mut PgConnection, source: &str, rows: &[NewResource]) -> sqlx::Result<()> {
    for chunk in rows.chunks(1000) {
        let col = |f: &dyn Fn(&NewResource) -> Option<String>| chunk.iter().map(f).collect::<Vec<Option<String>>>();
        sqlx::query(
            "INSERT INTO fhir_resources (source, resource_type, resource_id, patient_id, visit_id, code_set, system, code, stored_code)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[])",
        )
        .bind(source)
        .bind(chunk.iter().map(|r| r.resource_type.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.resource_id.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.patient_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.visit_id).collect::<Vec<_>>())
        .bind(col(&|r| r.code_set.map(|k| k.as_str().to_string())))
        .bind(col(&|r| r.system.clone()))
        .bind(col(&|r| r.code.clone()))
        .bind(col(&|r| r.stored_code.clone()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Rewrites a stored visit's codes (the caller holds the patient's lock)
/// and drops the patient's model states, which no longer match its history.
pub async fn amend_visit(
    conn: &mut PgConnection,
    patient_id: Uuid,
    visit_id: Uuid,
    diagnoses: &[String],
    procedures: &[String],
    medications: Option<&[String]>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE visits SET diagnoses = $3, procedures = $4, medications = $5 WHERE patient_id = $1 AND id = $2",
    )
    .bind(patient_id)
    .bind(visit_id)
    .bind(diagnoses)
    .bind(procedures)
    .bind(medications)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM patient_states WHERE patient_id = $1").bind(patient_id).execute(&mut *conn).await?;
    Ok(())
}

/// Which of these (patient, visit) pairs have stored predictions.
pub async fn predicted_visits(
    conn: &mut PgConnection,
    visits: &[(Uuid, Uuid)],
) -> sqlx::Result<std::collections::HashSet<Uuid>> {
    if visits.is_empty() {
        return Ok(Default::default());
    }
    let (patients, ids): (Vec<Uuid>, Vec<Uuid>) = visits.iter().copied().unzip();
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT k.v FROM unnest($1::uuid[], $2::uuid[]) AS k(p, v)
         WHERE EXISTS (SELECT 1 FROM predictions WHERE patient_id = k.p AND visit_id = k.v)",
    )
    .bind(patients)
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(found.into_iter().collect())
}

/// The patient a FHIR Patient id of `source` was imported as.
pub async fn patient_of(db: impl PgExecutor<'_>, source: &str, resource_id: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT patient_id FROM fhir_resources WHERE source = $1 AND resource_type = 'Patient' AND resource_id = $2",
    )
    .bind(source)
    .bind(resource_id)
    .fetch_optional(db)
    .await
}

/// The visit a FHIR Encounter id of `source` was imported as.
pub async fn visit_of(db: impl PgExecutor<'_>, source: &str, resource_id: &str) -> sqlx::Result<Option<(Uuid, Uuid)>> {
    sqlx::query_as(
        "SELECT patient_id, visit_id FROM fhir_resources
         WHERE source = $1 AND resource_type = 'Encounter' AND resource_id = $2 AND visit_id IS NOT NULL",
    )
    .bind(source)
    .bind(resource_id)
    .fetch_optional(db)
    .await
}

/// The coding settings (the defaults until an admin sets them).
pub async fn settings(db: impl PgExecutor<'_>) -> anyhow::Result<FhirSettings> {
    let v: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT settings FROM fhir_settings WHERE id = 1").fetch_optional(db).await?;
    Ok(match v {
        Some(v) => serde_json::from_value(v)?,
        None => FhirSettings::default(),
    })
}

pub async fn put_settings(db: impl PgExecutor<'_>, s: &FhirSettings) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO fhir_settings (id, settings) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()",
    )
    .bind(sqlx::types::Json(s))
    .execute(db)
    .await?;
    Ok(())
}

/// Mapped codes for (set, system, code) keys.
pub async fn lookup_maps(
    conn: &mut PgConnection,
    keys: &[(CodeSetKind, String, String)],
) -> sqlx::Result<Vec<(String, String, String, String)>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    sqlx::query_as(
        "SELECT m.code_set, m.from_system, m.from_code, m.to_code FROM fhir_code_maps m
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(s, y, c)
           ON m.code_set = k.s AND m.from_system = k.y AND m.from_code = k.c",
    )
    .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// One row of a code map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeMapRow {
    #[schema(example = "http://www.nlm.nih.gov/research/umls/rxnorm")]
    pub from_system: String,
    #[schema(example = "314076")]
    pub from_code: String,
    /// The model's code (e.g. ATC level 3).
    #[schema(example = "C09A")]
    pub to_code: String,
}

/// Replaces the code map of a set; returns the rows removed.
pub async fn replace_maps(conn: &mut PgConnection, set: CodeSetKind, rows: &[CodeMapRow]) -> sqlx::Result<u64> {
    let removed =
        sqlx::query("DELETE FROM fhir_code_maps WHERE code_set = $1").bind(set.as_str()).execute(&mut *conn).await?;
    for chunk in rows.chunks(5000) {
        sqlx::query(
            "INSERT INTO fhir_code_maps (code_set, from_system, from_code, to_code)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])",
        )
        .bind(set.as_str())
        .bind(chunk.iter().map(|r| r.from_system.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.from_code.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.to_code.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(removed.rows_affected())
}

/// Rows per (set, from_system).
pub async fn map_counts(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT code_set, from_system, count(*) FROM fhir_code_maps GROUP BY code_set, from_system ORDER BY code_set, from_system",
    )
    .fetch_all(db)
    .await
}

/// Records a CDS Hooks token id; false when it was seen before (a replay).
/// Expired ids are removed on the way.
pub async fn remember_jti(db: &sqlx::PgPool, issuer: &str, jti: &str, expires_at: DateTime<Utc>) -> sqlx::Result<bool> {
    sqlx::query("DELETE FROM cds_jwt_ids WHERE expires_at < now() - interval '5 minutes'").execute(db).await?;
    let done =
        sqlx::query("INSERT INTO cds_jwt_ids (issuer, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(issuer)
            .bind(jti)
            .bind(expires_at)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}
