//! `[push]` (SPEC §3, §8): change hints to browsers on the proxy port, and
//! the checks its values must pass.

use serde::{Deserialize, Serialize};

use super::{Dur, Problem};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// The stream's path on the proxy port; never forwarded upstream.
    pub path: String,
    /// Open streams (SSE and WebSocket together); more answer 503.
    pub max_clients: usize,
    /// Origins allowed to connect from a browser (`https://odds.example`),
    /// or `"*"` for any. Empty: same origin only.
    pub allow_origins: Vec<String>,
    /// How often an idle stream sends a comment (a ping on a WebSocket).
    pub heartbeat: Dur,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            path: "/_oddscache/changes".into(),
            max_clients: 10_000,
            allow_origins: Vec::new(),
            heartbeat: Dur::secs(15),
        }
    }
}

impl PushConfig {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        let p = &self.path;
        if !p.starts_with('/') || p.len() < 2 || p.contains(['?', '#', '{', '}', '*', ' ']) {
            problems.push(Problem::new(
                "push.path",
                "must be a plain absolute path such as \"/_oddscache/changes\"",
            ));
        }
        if self.max_clients == 0 {
            problems.push(Problem::new("push.max_clients", "must be greater than 0"));
        }
        for (i, origin) in self.allow_origins.iter().enumerate() {
            if origin != "*" && !is_origin(origin) {
                problems.push(Problem::new(
                    format!("push.allow_origins[{i}]"),
                    format!(
                        "{origin:?} is not an origin: expected \"*\" or scheme://host[:port], such as \"https://odds.example\", without a path"
                    ),
                ));
            }
        }
        if self.heartbeat.get() < std::time::Duration::from_millis(100) {
            problems.push(Problem::new("push.heartbeat", "must be at least 100ms"));
        }
    }
}

/// `http://host[:port]` or `https://host[:port]`, as a browser's `Origin`
/// header serializes it: lowercase scheme, no path, no trailing slash.
pub fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for ok in [
            "https://odds.example",
            "http://127.0.0.1:8081",
            "http://[::1]:80",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "odds.example",
            "https://",
            "https://odds.example/",
            "https://odds.example/path",
            "ftp://odds.example",
            "https://odds example",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn every_bad_value_is_named() {
        let cfg = PushConfig {
            path: "changes".into(),
            max_clients: 0,
            allow_origins: vec!["*".into(), "odds.example".into()],
            heartbeat: Dur::millis(10),
        };
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "push.path",
                "push.max_clients",
                "push.allow_origins[1]",
                "push.heartbeat"
            ]
        );
        PushConfig::default().validate(&mut problems);
        assert_eq!(problems.len(), 4, "the defaults are valid");
    }
}
