//! tests/fixtures/browsers.json for the native tests: ordered header sets
//! of current browsers, API clients and scripts.

use crate::core::request::HeaderMap;

const FIXTURES: &str = include_str!("../../../tests/fixtures/browsers.json");

/// One named header set, owned.
pub struct HeaderSet(Vec<(String, String)>);

impl HeaderSet {
    pub fn pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.0
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    pub fn map(&self) -> HeaderMap<'_> {
        HeaderMap::from_pairs(self.pairs())
    }
}

fn all() -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(FIXTURES) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => unreachable!("tests/fixtures/browsers.json is not a JSON object"),
    }
}

pub fn names() -> Vec<&'static str> {
    let names: Vec<String> = all()
        .keys()
        .filter(|k| !k.starts_with('_'))
        .cloned()
        .collect();
    names
        .into_iter()
        .map(|n| &*Box::leak(n.into_boxed_str()))
        .collect()
}

pub fn headers(name: &str) -> HeaderSet {
    let Some(serde_json::Value::Array(list)) = all().remove(name) else {
        unreachable!("no header set `{name}` in tests/fixtures/browsers.json")
    };
    HeaderSet(
        list.iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([serde_json::Value::String(n), serde_json::Value::String(v)]) => {
                    (n.clone(), v.clone())
                }
                _ => unreachable!("`{name}`: every entry is [name, value]"),
            })
            .collect(),
    )
}
