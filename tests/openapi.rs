//! The OpenAPI document (`docs/openapi.json`) and the code agree: every route the code serves is
//! in the document and every documented path is served, and every (status, problem `code`) pair
//! the code can answer is documented and none that it cannot. The pairs are read from the
//! source, so a new refusal without its line in the document fails here. (Validity against the
//! OpenAPI 3.1 schema and conformance of live responses are checked by
//! `tests/python/test_openapi.py` with openapi-spec-validator and Schemathesis.)

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn rs_files(dir: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(p.to_str().unwrap(), out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            // Test modules answer nothing.
            out.push(text.split("#[cfg(test)]").next().unwrap().to_string());
        }
    }
}

fn status(name: &str) -> u16 {
    match name {
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "FORBIDDEN" => 403,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "REQUEST_TIMEOUT" => 408,
        "CONFLICT" => 409,
        "PAYLOAD_TOO_LARGE" => 413,
        "UNSUPPORTED_MEDIA_TYPE" => 415,
        "TOO_MANY_REQUESTS" => 429,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        "GATEWAY_TIMEOUT" => 504,
        other => panic!("add {other} to this table"),
    }
}

/// (status, code) pairs the native API can answer, from the source.
fn codes_in_source() -> BTreeSet<(u16, String)> {
    let mut pairs = BTreeSet::new();
    // Problems built in the API layer: `StatusCode::X, "code"` (constructor or tuple).
    let mut api = vec![];
    rs_files("src/api", &mut api);
    let explicit = Regex::new(r#"StatusCode::([A-Z_]+),\s*"([a-z_]+)""#).unwrap();
    for text in &api {
        for c in explicit.captures_iter(text) {
            pairs.insert((status(&c[1]), c[2].to_string()));
        }
    }
    // Bad input from the parser, the model and admission: always 400 (`api::problem::bad_input`).
    let mut below = vec![];
    rs_files("src/model", &mut below);
    rs_files("src/gateway", &mut below);
    let bad = Regex::new(r#"(?:code:\s*|ViolationKind::\w+\s*=>\s*)"([a-z_]+)""#).unwrap();
    for text in &below {
        for c in bad.captures_iter(text) {
            pairs.insert((400, c[1].to_string()));
        }
    }
    pairs
}

fn doc() -> Value {
    serde_json::from_str(&read("docs/openapi.json")).unwrap()
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .trim_start_matches("#/")
            .split('/')
            .fold(doc, |node, part| &node[part]),
        None => v,
    }
}

fn codes_in_document(doc: &Value) -> BTreeSet<(u16, String)> {
    let mut pairs = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            for (st, resp) in op["responses"].as_object().unwrap() {
                let resp = resolve(doc, resp);
                let Some(schema) = resp.pointer("/content/application~1problem+json/schema") else {
                    continue;
                };
                for part in schema["allOf"].as_array().unwrap() {
                    if let Some(codes) = part.pointer("/properties/code/enum") {
                        for c in codes.as_array().unwrap() {
                            pairs.insert((st.parse().unwrap(), c.as_str().unwrap().to_string()));
                        }
                    }
                }
            }
        }
    }
    pairs
}

#[test]
fn every_problem_code_the_code_answers_is_documented_with_its_status_and_no_other() {
    let source = codes_in_source();
    let documented = codes_in_document(&doc());
    assert!(
        source.len() > 20,
        "the source scan found the codes: {source:?}"
    );
    let missing: Vec<_> = source.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&source).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "in the code but not in docs/openapi.json: {missing:?}; documented but never answered: {stale:?}"
    );
}

#[test]
fn every_route_is_documented_and_every_documented_path_is_served() {
    let routes = read("src/api/mod.rs");
    // A route's path is a literal or a constant of the file.
    let constant = Regex::new(r#"const ([A-Z_]+): &str = "([^"]+)";"#).unwrap();
    let paths: std::collections::BTreeMap<&str, &str> = constant
        .captures_iter(&routes)
        .map(|c| (c.get(1).unwrap().as_str(), c.get(2).unwrap().as_str()))
        .collect();
    let route = Regex::new(r#"\.route\(\s*(?:"([^"]+)"|([A-Z_]+)),\s*web::([a-z]+)\(\)"#).unwrap();
    let served: BTreeSet<(String, String)> = route
        .captures_iter(&routes)
        .map(|c| {
            let path = match (c.get(1), c.get(2)) {
                (Some(literal), _) => literal.as_str(),
                (_, Some(name)) => paths
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("{} is a path constant", name.as_str())),
                _ => unreachable!("the pattern matches one of them"),
            };
            (path.to_string(), c[3].to_string())
        })
        .collect();
    assert!(served.len() >= 9, "{served:?}");
    let doc = doc();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    assert_eq!(
        served, documented,
        "src/api/mod.rs routes vs docs/openapi.json paths"
    );
}

#[test]
fn the_served_document_is_the_file() {
    let served: Value = serde_json::from_str(embedgate::api::OPENAPI).unwrap();
    assert_eq!(served, doc());
    assert_eq!(served["openapi"], "3.1.0");
}
