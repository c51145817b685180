//! `GET /openapi.json`: the OpenAPI 3 document of the admin port.
//!
//! The document is kept by hand in `openapi.json` beside this file; a test
//! holds it to [`super::routes::ROUTES`], so a route cannot be added to the
//! router without being documented. The one configured value in it, the
//! events endpoint's largest `limit`, is filled in once at start-up.

use bytes::Bytes;
use serde_json::Value;

/// The document as committed.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Where the `limit` parameter's list lives (a JSON pointer: `/` in the
/// path is `~1`).
const EVENTS_PARAMETERS: &str =
    "/paths/~1api~1v1~1shared~1cache~1invalidation~1events/get/parameters";

/// The document with this sidecar's `admin.events_capacity` as the
/// largest and default `limit`, serialized once.
pub fn render(events_capacity: usize) -> Bytes {
    let Ok(mut doc) = serde_json::from_str::<Value>(DOCUMENT) else {
        // Unreachable while the tests pass; serve it as committed anyway.
        return Bytes::from_static(DOCUMENT.as_bytes());
    };
    let params = doc
        .pointer_mut(EVENTS_PARAMETERS)
        .and_then(Value::as_array_mut);
    for p in params.into_iter().flatten() {
        if p["name"] == "limit" {
            p["schema"]["maximum"] = events_capacity.into();
            p["schema"]["default"] = super::routes::DEFAULT_LIMIT.min(events_capacity).into();
        }
    }
    Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_else(|_| DOCUMENT.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::routes::ROUTES;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    #[test]
    fn it_is_openapi_3() {
        let doc = doc();
        let version = doc["openapi"].as_str().expect("an openapi field");
        assert!(
            version.starts_with("3.0.") || version.starts_with("3.1."),
            "{version}"
        );
        assert!(doc["info"]["title"].is_string());
    }

    #[test]
    fn every_route_and_only_the_routes_are_documented() {
        let doc = doc();
        let paths = doc["paths"].as_object().expect("paths");
        for route in ROUTES {
            let op = &paths
                .get(route.path)
                .unwrap_or_else(|| panic!("{} is not documented", route.path))
                [route.method.to_ascii_lowercase()];
            assert!(
                op["responses"]["200"].is_object(),
                "{} {} has no documented 200",
                route.method,
                route.path
            );
        }
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                assert!(
                    ROUTES
                        .iter()
                        .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').expect("local reference");
                        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        let doc = doc();
        walk(&doc, &doc);
    }

    #[test]
    fn the_limit_follows_the_configured_capacity() {
        let served: Value = serde_json::from_slice(&render(50)).unwrap();
        let limit = &served.pointer(EVENTS_PARAMETERS).unwrap()[0];
        assert_eq!(limit["name"], "limit");
        assert_eq!(limit["schema"]["maximum"], 50);
        assert_eq!(limit["schema"]["default"], 50);
        let served: Value = serde_json::from_slice(&render(1000)).unwrap();
        assert_eq!(
            served.pointer(EVENTS_PARAMETERS).unwrap()[0]["schema"]["default"],
            100
        );
    }
}
