//! `[[route]]` rules: path templates with `{param}` segments, the tags they
//! expand to, and their TTL overrides.
//!
//! Routing only runs when an entry is filled, never on a hit, so it favours
//! clarity over speed. A captured value must look like an identifier
//! (`[A-Za-z0-9._-]`, at most 128 bytes): a tag such as
//! `sidebar:{sport_id}:{league_id}` must never be steerable into another
//! tag or Redis key by a request path.

use std::collections::HashSet;
use std::time::Duration;

use super::{Problem, RouteConfig};

/// A string with `{name}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Param(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
            let name = &rest[open + 1..close];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad placeholder {{{name}}} in {text:?}"));
            }
            parts.push(Part::Param(name.to_string()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Fills every placeholder through `value`; `None` if one has no value.
    pub fn expand<'a>(&self, mut value: impl FnMut(&str) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Param(n) => out.push_str(value(n)?),
            }
        }
        Some(out)
    }
}

/// Whether a captured path segment or id may appear inside a tag.
pub fn is_safe_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks an `[invalidation] game_key_patterns` entry.
pub fn check_key_pattern(pattern: &str) -> Result<Template, String> {
    let t = Template::parse(pattern)?;
    if let Some(bad) = t.params().find(|p| !matches!(*p, "status" | "game_id")) {
        return Err(format!(
            "unknown placeholder {{{bad}}}; use {{game_id}} and {{status}}"
        ));
    }
    if !t.params().any(|p| p == "game_id") {
        return Err("must contain {game_id}".into());
    }
    Ok(t)
}

#[derive(Clone, Debug)]
pub struct CompiledRoute {
    pub name: String,
    segments: Vec<Segment>,
    tags: Vec<Template>,
    pub ttl: Option<Duration>,
    pub stale_while_revalidate: Option<Duration>,
}

#[derive(Clone, Debug)]
enum Segment {
    Lit(String),
    Param(String),
}

/// The routes in file order; the first match wins.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<CompiledRoute>,
}

/// A matched route with its captured path parameters.
#[derive(Debug)]
pub struct RouteMatch<'r> {
    pub route: &'r CompiledRoute,
    params: Vec<(&'r str, String)>,
}

impl RouteMatch<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The route's tags with `{param}` filled from the path.
    pub fn tags(&self) -> Vec<String> {
        self.route
            .tags
            .iter()
            .filter_map(|t| t.expand(|n| self.param(n)))
            .collect()
    }
}

impl Routes {
    /// No `[[route]]` at all: a plain shared cache.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn compile(configs: &[RouteConfig]) -> Result<Routes, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(configs.len());
        for (i, rc) in configs.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if rc.name.is_empty() {
                problems.push(Problem::new(key("name"), "must not be empty"));
            } else if !names.insert(rc.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    format!("duplicate route name {:?}", rc.name),
                ));
            }
            let segments = match parse_path(&rc.path) {
                Ok(s) => s,
                Err(m) => {
                    problems.push(Problem::new(key("path"), m));
                    continue;
                }
            };
            let params: HashSet<&str> = segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(p) => Some(p.as_str()),
                    Segment::Lit(_) => None,
                })
                .collect();
            let mut tags = Vec::new();
            for (j, tag) in rc.tags.iter().enumerate() {
                match Template::parse(tag) {
                    Ok(t) => {
                        let unknown = t.params().find(|p| !params.contains(p)).map(str::to_owned);
                        if let Some(bad) = unknown {
                            problems.push(Problem::new(
                                format!("route[{i}].tags[{j}]"),
                                format!("{{{bad}}} is not a parameter of path {:?}", rc.path),
                            ));
                        } else if tag.is_empty()
                            || tag.chars().any(|c| c.is_whitespace() || c == '*')
                        {
                            problems.push(Problem::new(
                                format!("route[{i}].tags[{j}]"),
                                "must be non-empty, without whitespace or '*'",
                            ));
                        } else {
                            tags.push(t);
                        }
                    }
                    Err(m) => problems.push(Problem::new(format!("route[{i}].tags[{j}]"), m)),
                }
            }
            routes.push(CompiledRoute {
                name: rc.name.clone(),
                segments,
                tags,
                ttl: rc.ttl.map(|d| d.get()),
                stale_while_revalidate: rc.stale_while_revalidate.map(|d| d.get()),
            });
        }
        if problems.is_empty() {
            Ok(Routes { routes })
        } else {
            Err(problems)
        }
    }

    /// The first route whose template matches `path` (no query).
    pub fn find(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.routes.iter().find_map(|r| r.matches(path))
    }
}

impl CompiledRoute {
    fn matches(&self, path: &str) -> Option<RouteMatch<'_>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut params = Vec::new();
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Lit(l) if l == part => {}
                Segment::Lit(_) => return None,
                Segment::Param(name) if is_safe_ident(part) => {
                    params.push((name.as_str(), part.to_string()))
                }
                Segment::Param(_) => return None,
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(RouteMatch {
            route: self,
            params,
        })
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?} must start with '/'"))?;
    let mut seen = HashSet::new();
    rest.split('/')
        .map(|seg| {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("bad parameter {seg:?} in {path:?}"));
                }
                if !seen.insert(name.to_string()) {
                    return Err(format!("parameter {{{name}}} appears twice in {path:?}"));
                }
                Ok(Segment::Param(name.to_string()))
            } else if seg.contains(['{', '}']) {
                Err(format!("a parameter must be a whole segment in {path:?}"))
            } else {
                Ok(Segment::Lit(seg.to_string()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str, tags: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path: path.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ttl: None,
            stale_while_revalidate: None,
        }
    }

    #[test]
    fn matches_params_and_expands_tags() {
        let routes = Routes::compile(&[
            route("odds", "/api/v1/games/{game_id}/odds", &["game:{game_id}"]),
            route(
                "sidebar",
                "/api/v1/sidebar/{sport_id}/{league_id}",
                &[
                    "sidebar",
                    "sidebar:{sport_id}",
                    "sidebar:{sport_id}:{league_id}",
                ],
            ),
            route("list", "/api/v1/games", &[]),
        ])
        .unwrap();
        let m = routes.find("/api/v1/games/g-1/odds").unwrap();
        assert_eq!(m.route.name, "odds");
        assert_eq!(m.tags(), vec!["game:g-1"]);
        let m = routes.find("/api/v1/sidebar/soccer/epl").unwrap();
        assert_eq!(
            m.tags(),
            vec!["sidebar", "sidebar:soccer", "sidebar:soccer:epl"]
        );
        assert_eq!(routes.find("/api/v1/games").unwrap().route.name, "list");
        assert!(routes.find("/api/v1/games/g-1/odds/extra").is_none());
        assert!(routes.find("/api/v1/games/g-1").is_none());
        assert!(routes.find("api/v1/games").is_none());
    }

    #[test]
    fn hostile_segments_do_not_match() {
        let routes = Routes::compile(&[route(
            "s",
            "/s/{sport_id}/{league_id}",
            &["sidebar:{sport_id}:{league_id}"],
        )])
        .unwrap();
        for path in ["/s/a:b/c", "/s/*/c", "/s//c", "/s/a%20b/c", "/s/a{x}/c"] {
            assert!(routes.find(path).is_none(), "{path}");
        }
        let long = format!("/s/{}/c", "a".repeat(129));
        assert!(routes.find(&long).is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let errs = Routes::compile(&[
            route("a", "no-slash", &[]),
            route("b", "/x/{id}", &["game:{other}"]),
            route("b", "/y/{id}x", &[]),
        ])
        .unwrap_err();
        let keys: Vec<_> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "route[0].path",
                "route[1].tags[0]",
                "route[2].name",
                "route[2].path"
            ]
        );
    }

    #[test]
    fn key_patterns() {
        assert!(check_key_pattern("odds:{status}:{game_id}").is_ok());
        assert!(check_key_pattern("odds:{status}").is_err());
        assert!(check_key_pattern("odds:{sport}:{game_id}").is_err());
        assert!(check_key_pattern("odds:{game_id").is_err());
    }
}
