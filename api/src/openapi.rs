//! The OpenAPI 3.1 document of the API, and the page that renders it.
//!
//! The document is written by hand in `api/openapi/`: `base.json` holds what every endpoint
//! shares (info, tags, the bearer scheme, the error format and its responses), and one
//! fragment per area holds that area's `paths` and `components.schemas`. They are embedded
//! in the binary and merged once; a name defined twice is an error, never an override. The
//! tests keep the document true to the router: every route is documented with the methods it
//! answers, every body and every success response has an example.
//!
//! The docs page (`/api/v1/docs`) is three embedded files with no outside resource, so it
//! works without a network; it builds the page from the document with DOM calls only.

use serde_json::{Map, Value};

const BASE: &str = include_str!("../openapi/base.json");
/// The area fragments, by name.
const FRAGMENTS: [(&str, &str); 2] = [
    (
        "security-and-signals",
        include_str!("../openapi/security-and-signals.json"),
    ),
    ("cmms", include_str!("../openapi/cmms.json")),
];

pub const DOCS_HTML: &str = include_str!("../openapi/docs/index.html");
pub const DOCS_JS: &str = include_str!("../openapi/docs/docs.js");
pub const DOCS_CSS: &str = include_str!("../openapi/docs/docs.css");

/// The Content-Security-Policy of the docs page: its own script, style and document only.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Why the embedded document could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("{part}: not valid JSON: {source}")]
    Json {
        part: &'static str,
        source: serde_json::Error,
    },
    #[error("{part}: {problem}")]
    Shape { part: &'static str, problem: String },
}

/// The whole document: base.json with every fragment's paths and schemas added.
pub fn document() -> Result<Value, OpenApiError> {
    let parse = |part: &'static str, text: &str| {
        serde_json::from_str::<Value>(text).map_err(|source| OpenApiError::Json { part, source })
    };
    let mut base = parse("base", BASE)?;
    for (part, text) in FRAGMENTS {
        merge(&mut base, part, parse(part, text)?)?;
    }
    Ok(base)
}

/// Adds `fragment`'s paths and schemas to `base`; refuses anything else in the fragment and
/// any path or schema `base` already has.
fn merge(base: &mut Value, part: &'static str, fragment: Value) -> Result<(), OpenApiError> {
    let shape = |problem: String| OpenApiError::Shape { part, problem };
    let Value::Object(mut fragment) = fragment else {
        return Err(shape("must be a JSON object".into()));
    };
    let paths = take_object(&mut fragment, "paths").map_err(shape)?;
    let mut components = take_object(&mut fragment, "components").map_err(shape)?;
    let schemas = take_object(&mut components, "schemas").map_err(shape)?;
    if let Some(key) = fragment.keys().chain(components.keys()).next() {
        return Err(shape(format!(
            "`{key}`: a fragment holds `paths` and `components.schemas` only"
        )));
    }
    insert_new(&mut base["paths"], paths, "path").map_err(shape)?;
    insert_new(&mut base["components"]["schemas"], schemas, "schema").map_err(shape)?;
    Ok(())
}

fn insert_new(into: &mut Value, entries: Map<String, Value>, what: &str) -> Result<(), String> {
    let Value::Object(into) = into else {
        return Err(format!("base.json has no {what} map"));
    };
    for (name, value) in entries {
        if into.contains_key(&name) {
            return Err(format!("{what} `{name}` is defined twice"));
        }
        into.insert(name, value);
    }
    Ok(())
}

fn take_object(from: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>, String> {
    match from.remove(key) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(format!("`{key}` must be an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_embedded_document_assembles() {
        let doc = document().expect("the embedded document");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().is_some_and(|p| p.len() > 50));
    }

    #[test]
    fn a_name_defined_twice_is_refused_not_overridden() {
        let mut base = json!({ "paths": { "/a": {} }, "components": { "schemas": { "A": {} } } });
        let twice = merge(&mut base.clone(), "x", json!({ "paths": { "/a": {} } }));
        assert!(twice.unwrap_err().to_string().contains("path `/a`"));
        let schema = merge(
            &mut base.clone(),
            "x",
            json!({ "components": { "schemas": { "A": {} } } }),
        );
        assert!(schema.unwrap_err().to_string().contains("schema `A`"));
        let other = merge(&mut base.clone(), "x", json!({ "info": {} }));
        assert!(other.unwrap_err().to_string().contains("`info`"));
        merge(
            &mut base,
            "x",
            json!({ "paths": { "/b": {} }, "components": { "schemas": { "B": {} } } }),
        )
        .expect("new names merge");
        assert!(base["paths"]["/b"].is_object() && base["components"]["schemas"]["B"].is_object());
    }
}
