//! The request header sets of tests/fixtures/browsers.json (current
//! browsers, API clients, scripts), in the order each client sends them.
//! The file is compiled in, so the binary runs from anywhere.

use std::collections::HashMap;
use std::sync::OnceLock;

const BROWSERS_JSON: &str = include_str!("../../fixtures/browsers.json");

/// One header set: `(name, value)` in sending order.
pub type HeaderSet = Vec<(String, String)>;

static SETS: OnceLock<Result<HashMap<String, HeaderSet>, String>> = OnceLock::new();

fn parse(text: &str) -> Result<HashMap<String, HeaderSet>, String> {
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("tests/fixtures/browsers.json: {e}"))?;
    let mut sets = HashMap::new();
    for (name, value) in raw {
        if name.starts_with('_') {
            continue;
        }
        let set: HeaderSet = serde_json::from_value(value)
            .map_err(|e| format!("tests/fixtures/browsers.json: `{name}`: {e}"))?;
        if set.is_empty() {
            return Err(format!("tests/fixtures/browsers.json: `{name}` is empty"));
        }
        sets.insert(name, set);
    }
    Ok(sets)
}

fn sets() -> Result<&'static HashMap<String, HeaderSet>, String> {
    SETS.get_or_init(|| parse(BROWSERS_JSON))
        .as_ref()
        .map_err(Clone::clone)
}

/// Every header set a class uses: checked once at start, so that a class
/// never runs without its headers.
pub const USED: &[&str] = &[
    "chrome_windows_navigate",
    "chrome_windows_fetch",
    "chrome_android_navigate",
    "edge_windows_navigate",
    "firefox_linux_navigate",
    "firefox_windows_fetch",
    "safari_macos_navigate",
    "safari_ios_fetch",
    "api_client_sdk",
    "headless_chrome",
    "script_as_chrome",
];

/// Fails unless the fixture parses and has every set in [`USED`].
pub fn check() -> Result<(), String> {
    let sets = sets()?;
    match USED.iter().find(|n| !sets.contains_key(**n)) {
        Some(missing) => Err(format!(
            "tests/fixtures/browsers.json has no header set `{missing}`"
        )),
        None => Ok(()),
    }
}

/// The header set `name` (empty if missing: [`check`] runs first).
pub fn set(name: &str) -> HeaderSet {
    sets()
        .ok()
        .and_then(|s| s.get(name))
        .cloned()
        .unwrap_or_default()
}

/// A browser: what it sends for a page (navigation) and for the page's API
/// calls (fetch), with one user agent, one set of client hints and one
/// language, as one person's browser does.
#[derive(Clone, Debug)]
pub struct Browser {
    pub name: &'static str,
    pub navigate: HeaderSet,
    pub fetch: HeaderSet,
}

/// The navigation set and the fetch set of the same engine. The fixture has
/// fetch sets of other platforms (Firefox on Windows, Safari on iOS), so the
/// fetch set takes over the navigation set's identity: user agent, client
/// hints and language.
const BROWSERS: &[(&str, &str)] = &[
    ("chrome_windows_navigate", "chrome_windows_fetch"),
    ("chrome_android_navigate", "chrome_windows_fetch"),
    ("edge_windows_navigate", "chrome_windows_fetch"),
    ("firefox_linux_navigate", "firefox_windows_fetch"),
    ("safari_macos_navigate", "safari_ios_fetch"),
];

/// Headers that make a browser who it is: a fetch set gets the navigation
/// set's values of these.
const IDENTITY: &[&str] = &[
    "user-agent",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "accept-language",
];

pub fn browsers() -> Vec<Browser> {
    BROWSERS
        .iter()
        .map(|(nav, fetch)| {
            let navigate = set(nav);
            let mut fetch = set(fetch);
            for (name, value) in &mut fetch {
                if !IDENTITY.contains(&name.as_str()) {
                    continue;
                }
                if let Some((_, v)) = navigate.iter().find(|(n, _)| n == name) {
                    value.clone_from(v);
                }
            }
            Browser {
                name: nav,
                navigate,
                fetch,
            }
        })
        .collect()
}

/// `set` with the value of header `name` replaced (same place), or the
/// header appended if the set has none.
pub fn with(mut set: HeaderSet, name: &str, value: &str) -> HeaderSet {
    match set.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => *v = value.to_owned(),
        None => set.push((name.to_owned(), value.to_owned())),
    }
    set
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;

    #[test]
    fn fixture_has_every_set_the_classes_use() {
        check().unwrap();
        let ua = |s: &HeaderSet| s.iter().find(|(n, _)| n == "user-agent").cloned();
        assert!(ua(&set("headless_chrome"))
            .unwrap()
            .1
            .contains("HeadlessChrome"));
        assert_eq!(set("no_such_set"), HeaderSet::new());
        assert!(parse("{\"x\": []}").is_err());
        assert!(parse("{\"x\": [[\"a\"]]}").is_err());
    }

    #[test]
    fn a_browser_fetches_with_the_identity_it_navigates_with() {
        let all = browsers();
        assert_eq!(all.len(), BROWSERS.len());
        for b in &all {
            for name in IDENTITY {
                let nav = b.navigate.iter().find(|(n, _)| n == name);
                let fetch = b.fetch.iter().find(|(n, _)| n == name);
                if let (Some(nav), Some(fetch)) = (nav, fetch) {
                    assert_eq!(nav.1, fetch.1, "{} {name}", b.name);
                }
            }
            // The order of the fetch set is the fixture's.
            let fetch_name = BROWSERS.iter().find(|(n, _)| *n == b.name).unwrap().1;
            let fixture_fetch: Vec<String> = set(fetch_name).into_iter().map(|(n, _)| n).collect();
            let names: Vec<String> = b.fetch.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(names, fixture_fetch, "{}", b.name);
        }
        let android = all
            .iter()
            .find(|b| b.name == "chrome_android_navigate")
            .unwrap();
        assert!(android
            .fetch
            .contains(&("sec-ch-ua-platform".to_owned(), "\"Android\"".to_owned())));
    }

    #[test]
    fn with_replaces_in_place_or_appends() {
        let s = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ];
        let r = with(s.clone(), "a", "9");
        assert_eq!(r[0], ("a".to_owned(), "9".to_owned()));
        let r = with(s, "c", "3");
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], ("c".to_owned(), "3".to_owned()));
    }
}
