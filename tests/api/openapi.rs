//! The committed spec must match the code; regenerate it with
//! `cargo run -- openapi` after changing the API.
use serde_json::Value;

#[test]
fn committed_spec_is_current() {
    let generated = medchange::http::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date: run `cargo run -- openapi` and commit the result"
    );
}

#[test]
fn every_operation_documents_problem_responses_and_examples() {
    let doc: Value = serde_json::from_str(&medchange::http::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for code in ["422", "500"] {
                let r = &responses[code];
                assert_eq!(
                    r["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
                    "{method} {path} lacks a problem response for {code}"
                );
            }
            if let Some(body) = op.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"]["$ref"];
                let name = schema.as_str().unwrap().rsplit('/').next().unwrap();
                assert!(
                    doc["components"]["schemas"][name].get("example").is_some(),
                    "{method} {path}: request schema {name} has no example"
                );
            }
        }
    }
}
