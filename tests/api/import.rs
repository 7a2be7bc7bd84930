//! `medchange import`: round trips, fixtures, and all-or-nothing failures.
use std::collections::BTreeMap;

use medchange::{
    import,
    ml::{formats, synth},
};
use sqlx::PgPool;

fn tmp(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("medchange-import-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

async fn rows(pool: &PgPool) -> (i64, i64, i64) {
    let p = sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(pool).await.unwrap();
    let v = sqlx::query_scalar("SELECT count(*) FROM visits").fetch_one(pool).await.unwrap();
    let d = sqlx::query_scalar("SELECT count(*) FROM ddi_pairs").fetch_one(pool).await.unwrap();
    (p, v, d)
}

#[sqlx::test]
async fn native_round_trip_of_a_generated_cohort(pool: PgPool) {
    let cohort = synth::generate(&synth::SynthConfig { patients: 120, ..Default::default() }).unwrap();
    let path = tmp("patients.jsonl", &formats::write_native_jsonl(&cohort.to_native()));
    let s = import::native(&pool, &path, "synth", false).await.unwrap();
    let visits: usize = cohort.patients.iter().map(|p| p.visits.len()).sum();
    assert_eq!((s.patients, s.visits), (120, visits));
    let back: BTreeMap<String, _> =
        import::load_patients(&pool, Some("synth")).await.unwrap().into_iter().map(|p| (p.id.clone(), p)).collect();
    let orig: BTreeMap<String, _> = cohort.patients.iter().map(|p| (p.id.clone(), p.clone())).collect();
    assert_eq!(back, orig, "every patient, visit and code comes back in order");
    // Visit times keep their order and the sequence numbers are dense.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT seq, row_number() OVER (PARTITION BY patient_id ORDER BY occurred_at, seq) AS rn FROM visits) t WHERE seq <> rn",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(bad, 0);
    // Importing again writes nothing and says why.
    let s = import::native(&pool, &path, "synth", false).await.unwrap();
    assert_eq!((s.patients, s.visits), (0, 0));
    assert_eq!(s.skipped.values().sum::<usize>(), 120);
}

#[sqlx::test]
async fn micron_layout_fixture(pool: PgPool) {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/micron-layout/mimic3-demo"));
    let records: Vec<Vec<serde_json::Value>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("records.json")).unwrap()).unwrap();
    let visits: usize = records.iter().map(Vec::len).sum();
    let s = import::micron(&pool, dir, "mimic-demo", false).await.unwrap();
    assert_eq!((s.patients, s.visits), (records.len(), visits));
    // Codes are decoded through voc.json: the first visit's first medication.
    let voc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("voc.json")).unwrap()).unwrap();
    let med0 = records[0][0][2][0].as_u64().unwrap() as usize;
    let code = match &voc["med"] {
        serde_json::Value::Array(a) => a[med0].as_str().unwrap().to_string(),
        serde_json::Value::Object(o) => o[&med0.to_string()].as_str().unwrap().to_string(),
        other => panic!("unexpected voc shape {other}"),
    };
    let back = import::load_patients(&pool, Some("mimic-demo")).await.unwrap();
    let first = back.iter().find(|p| p.id == "0").unwrap();
    assert!(first.visits[0].medications.as_ref().unwrap().contains(&code));
}

#[sqlx::test]
async fn micron_layout_with_large_vocabularies(pool: PgPool) {
    // More distinct codes than one visit may hold (1,000): vocabularies are not visits.
    let cohort = synth::generate(&synth::SynthConfig { patients: 400, ..Default::default() }).unwrap();
    let dir = std::env::temp_dir().join(format!("medchange-layout-{}", uuid::Uuid::now_v7()));
    synth::write_cohort(&cohort, &dir).unwrap();
    let voc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("voc.json")).unwrap()).unwrap();
    assert!(voc["diag"].as_array().unwrap().len() > 1000);
    let s = import::micron(&pool, &dir, "layout", false).await.unwrap();
    assert_eq!(s.patients, 400);
    let _ = std::fs::remove_dir_all(&dir);
}

#[sqlx::test]
async fn ddi_pairs_fixture_and_repeats(pool: PgPool) {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/ddi/atc3_pairs.csv"));
    let pairs = formats::read_ddi_csv(path).unwrap();
    let s = import::ddi(&pool, path, "fixture", false).await.unwrap();
    assert!(s.ddi_pairs > 0 && s.ddi_pairs <= pairs.len());
    assert_eq!(rows(&pool).await.2 as usize, s.ddi_pairs);
    let again = import::ddi(&pool, path, "fixture", false).await.unwrap();
    assert_eq!(again.ddi_pairs, 0);
    assert_eq!(again.skipped["pair already stored"], s.ddi_pairs);
}

#[sqlx::test]
async fn malformed_files_name_the_line_and_write_nothing(pool: PgPool) {
    let good = r#"{"external_id": "A", "visits": [{"diagnoses": ["I10"], "procedures": [], "medications": ["C09A"]}]}"#;
    let cases = [
        (format!("{good}\n{{\"external_id\": \"B\", \"visits\": [}}\n"), 2),
        (format!("{good}\n\n{}\n", good.replace("\"A\"", "\"C\"").replace("I10", "")), 3),
        (format!("{good}\n{}\n", good), 2),
        (format!("{good}\n{}\n", r#"{"external_id": "D", "visits": [{"diagnoses": [], "procedures": [], "occurred_at": "soon"}]}"#), 2),
    ];
    for (text, line) in cases {
        let path = tmp("bad.jsonl", &text);
        let err = import::native(&pool, &path, "x", false).await.unwrap_err();
        let fe = err.downcast_ref::<formats::FormatError>().unwrap_or_else(|| panic!("not a format error: {err:#}"));
        assert_eq!(fe.line(), Some(line), "{fe}");
        assert!(fe.to_string().contains("bad.jsonl"), "{fe}");
        assert_eq!(rows(&pool).await, (0, 0, 0), "nothing written for {text:?}");
    }
    let path = tmp("pairs.csv", "atc3_a,atc3_b\nN02B,C07A\nN02B\n");
    let err = import::ddi(&pool, &path, "x", false).await.unwrap_err();
    assert_eq!(err.downcast_ref::<formats::FormatError>().unwrap().line(), Some(3));
    assert_eq!(rows(&pool).await, (0, 0, 0));
}
