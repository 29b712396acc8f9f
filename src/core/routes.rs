//! Route classes: named groups of endpoints (login, token, search, public)
//! that policies refer to. Classification runs on the path Envoy has already
//! normalized (`normalize_path`, `merge_slashes` in the HTTP connection
//! manager); palisade does not re-decode percent escapes, so those Envoy
//! options belong in every deployment (the shipped configs set them).

/// Index of a route class; the unmatched class `default` has the last index.
pub type RouteId = u16;

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Prefix(String),
    Exact(String),
    Regex(regex_lite::Regex),
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            // `/oauth/token/` is the same endpoint to most servers: an exact
            // path that missed it would leave the endpoint unprotected.
            PathMatcher::Exact(exact) => {
                fn trim(p: &str) -> &str {
                    p.strip_suffix('/').filter(|r| !r.is_empty()).unwrap_or(p)
                }
                trim(path) == trim(exact)
            }
            PathMatcher::Regex(regex) => regex.is_match(path),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteClass {
    pub name: String,
    pub matcher: PathMatcher,
    /// Upper-case methods; `None` matches every method.
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    classes: Vec<RouteClass>,
}

impl RouteTable {
    pub const DEFAULT_NAME: &'static str = "default";

    pub fn new(classes: Vec<RouteClass>) -> Self {
        RouteTable { classes }
    }

    /// The id requests get when no class matches.
    pub fn default_id(&self) -> RouteId {
        RouteId::try_from(self.classes.len()).unwrap_or(RouteId::MAX)
    }

    /// Number of ids, `default` included.
    pub fn len_with_default(&self) -> usize {
        self.classes.len() + 1
    }

    pub fn id_of(&self, name: &str) -> Option<RouteId> {
        if name == Self::DEFAULT_NAME {
            return Some(self.default_id());
        }
        self.classes
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| RouteId::try_from(i).ok())
    }

    pub fn name(&self, id: RouteId) -> &str {
        self.classes
            .get(usize::from(id))
            .map_or(Self::DEFAULT_NAME, |c| c.name.as_str())
    }

    /// First class whose path and method match; the query string is not part
    /// of the path for matching.
    pub fn classify(&self, method: &str, path: &str) -> RouteId {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.classes
            .iter()
            .position(|class| {
                class.matcher.matches(path)
                    && class
                        .methods
                        .as_ref()
                        .is_none_or(|methods| methods.iter().any(|m| m == method))
            })
            .and_then(|i| RouteId::try_from(i).ok())
            .unwrap_or_else(|| self.default_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(vec![
            RouteClass {
                name: "login".into(),
                matcher: PathMatcher::Prefix("/login".into()),
                methods: Some(vec!["POST".into()]),
            },
            RouteClass {
                name: "health".into(),
                matcher: PathMatcher::Exact("/health".into()),
                methods: None,
            },
            RouteClass {
                name: "search".into(),
                matcher: PathMatcher::Regex(
                    regex_lite::Regex::new("^/api/v[0-9]+/search$")
                        .unwrap_or_else(|e| unreachable!("{e}")),
                ),
                methods: None,
            },
            RouteClass {
                name: "api".into(),
                matcher: PathMatcher::Prefix("/api/".into()),
                methods: None,
            },
        ])
    }

    #[test]
    fn first_matching_class_wins() {
        let t = table();
        let name = |m: &str, p: &str| t.name(t.classify(m, p)).to_string();
        assert_eq!(name("POST", "/login"), "login");
        assert_eq!(name("POST", "/login/sso?next=/x"), "login");
        assert_eq!(name("GET", "/login"), "default", "method must match too");
        assert_eq!(name("GET", "/health"), "health");
        assert_eq!(
            name("GET", "/health?verbose=1"),
            "health",
            "query is not part of the path"
        );
        assert_eq!(name("GET", "/healthz"), "default", "exact means exact");
        assert_eq!(name("GET", "/health/"), "health", "one trailing slash");
        assert_eq!(name("GET", "/health/?x=1"), "health");
        assert_eq!(name("GET", "/health//"), "default", "one slash only");
        assert_eq!(name("GET", "/health/x"), "default");
        assert_eq!(name("GET", "/api/v2/search"), "search");
        assert_eq!(name("GET", "/api/v2/search?q=x"), "search");
        assert_eq!(name("GET", "/api/v2/items"), "api");
        assert_eq!(name("GET", ""), "default");
    }

    #[test]
    fn ids_and_names_round_trip() {
        let t = table();
        assert_eq!(t.default_id(), 4);
        assert_eq!(t.len_with_default(), 5);
        assert_eq!(t.id_of("api"), Some(3));
        assert_eq!(t.id_of("default"), Some(4));
        assert_eq!(t.id_of("nope"), None);
        assert_eq!(t.name(4), "default");
        assert_eq!(t.name(999), "default");
    }
}
