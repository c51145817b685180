//! The deployment files against the binary, so they cannot drift: the
//! ports, probe paths, env var names and shutdown timing in `k8s/`, the
//! metrics the dashboard and alert rules query, and the README's config
//! reference.
//!
//! The manifests are read with a tiny line-based extraction (no YAML
//! crate): they are ours, two-space indented, one key per line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::client::one_shot;
use common::sidecar::shipped_config;
use common::sim::SimUpstream;
use oddscache::admin::routes::{HEALTHZ, METRICS, READYZ};
use oddscache::config::{Config, Overrides, ADMIN_TOKEN_ENV, SHIPPED};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `key: value` on one line (after an optional `- `), unquoted.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let t = line.trim_start().trim_start_matches("- ");
    let rest = t.strip_prefix(key)?.strip_prefix(':')?;
    Some(rest.trim().trim_matches('"'))
}

/// The lines nested under `lines[at]` (more indented, up to the next line
/// at its indent or less). A `- key:` line's children are the lines
/// indented past its dash.
fn block<'a>(lines: &[&'a str], at: usize) -> Vec<&'a str> {
    let own = indent(lines[at]);
    lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > own)
        .copied()
        .collect()
}

/// The first line under `lines` with `key:`, and its block.
fn find<'a>(lines: &[&'a str], key: &str) -> Option<(usize, Vec<&'a str>)> {
    let at = lines.iter().position(|l| value_of(l, key).is_some())?;
    Some((at, block(lines, at)))
}

fn scalar(lines: &[&str], key: &str) -> String {
    lines
        .iter()
        .find_map(|l| value_of(l, key))
        .unwrap_or_else(|| panic!("no {key}: in\n{}", lines.join("\n")))
        .to_string()
}

/// One container of the Deployment: its lines.
fn container<'a>(lines: &[&'a str], name: &str) -> Vec<&'a str> {
    let (_, containers) = find(lines, "containers").expect("no containers:");
    let at = containers
        .iter()
        .position(|l| l.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no container {name}"));
    let mut own = vec![containers[at].trim_start_matches(' ')];
    // The container's keys sit at the dash's indent + 2.
    let inner = indent(containers[at]) + 2;
    own.extend(
        containers[at + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) >= inner)
            .copied(),
    );
    own
}

/// Named container ports.
fn ports(container: &[&str]) -> BTreeMap<String, u16> {
    let (_, lines) = find(container, "ports").expect("no ports:");
    let mut out = BTreeMap::new();
    let mut name = None;
    for l in lines {
        if let Some(n) = value_of(l, "name") {
            name = Some(n.to_string());
        }
        if let Some(p) = value_of(l, "containerPort") {
            out.insert(name.take().expect("unnamed port"), p.parse().unwrap());
        }
    }
    out
}

/// `env:` names with their literal `value:` (or `None` for `valueFrom`).
fn env(container: &[&str]) -> BTreeMap<String, Option<String>> {
    let (at, lines) = find(container, "env").expect("no env:");
    let dash = indent(container[at + 1]);
    let mut out = BTreeMap::new();
    let mut current = None;
    for l in lines {
        if indent(l) == dash {
            let name = value_of(l, "name").expect("env entry without a name");
            current = Some(name.to_string());
            out.insert(name.to_string(), None);
        } else if let Some(v) = value_of(l, "value") {
            out.insert(current.clone().unwrap(), Some(v.to_string()));
        }
    }
    out
}

struct Sidecar {
    env: BTreeMap<String, Option<String>>,
    ports: BTreeMap<String, u16>,
    lines: Vec<String>,
}

fn deployment() -> (String, Sidecar, BTreeMap<String, u16>) {
    let text = read("k8s/deployment.yaml");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().starts_with('#'))
        .collect();
    let sidecar = container(&lines, "oddscache");
    let api = container(&lines, "odds-api");
    let s = Sidecar {
        env: env(&sidecar),
        ports: ports(&sidecar),
        lines: sidecar.iter().map(|l| l.to_string()).collect(),
    };
    let api_ports = ports(&api);
    (text.clone(), s, api_ports)
}

fn env_value(s: &Sidecar, name: &str) -> String {
    s.env
        .get(name)
        .unwrap_or_else(|| panic!("{name} not set on the sidecar"))
        .clone()
        .unwrap_or_else(|| panic!("{name} has no literal value"))
}

/// The deployed config as the sidecar in the pod sees it: the ConfigMap's
/// file under the deployment's environment.
fn deployed_config(s: &Sidecar) -> Config {
    let overrides = Overrides {
        admin_listen: Some(env_value(s, "ODDSCACHE_ADMIN_LISTEN").parse().unwrap()),
        redis_url: Some(env_value(s, "ODDSCACHE_REDIS_URL")),
        replica_id: Some("odds-api-0".into()),
        admin_token: Some("t".into()),
        ..Overrides::default()
    };
    Config::from_toml(&read("k8s/oddscache.toml"), &overrides)
        .unwrap_or_else(|e| panic!("k8s/oddscache.toml is not valid:\n{e}"))
}

#[test]
fn sidecar_env_vars_are_the_ones_the_binary_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_oddscache"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("cannot run oddscache --help");
    let help = String::from_utf8(help.stdout).unwrap();
    let (_, s, _) = deployment();
    for name in s.env.keys() {
        let known = help.contains(&format!("[env: {name}="))
            || name == ADMIN_TOKEN_ENV
            || name == "RUST_LOG";
        assert!(
            known,
            "the sidecar sets {name}, which oddscache does not read:\n{help}"
        );
    }
    for name in [
        "ODDSCACHE_CONFIG",
        "ODDSCACHE_ADMIN_LISTEN",
        "ODDSCACHE_REPLICA_ID",
        "ODDSCACHE_REDIS_URL",
        ADMIN_TOKEN_ENV,
    ] {
        assert!(s.env.contains_key(name), "the sidecar does not set {name}");
    }
    let lines: Vec<&str> = s.lines.iter().map(String::as_str).collect();
    // The replica id is the pod name, the token a Secret, never a literal.
    let at = lines
        .iter()
        .position(|l| l.contains("name: ODDSCACHE_REPLICA_ID"))
        .unwrap();
    assert_eq!(scalar(&block(&lines, at), "fieldPath"), "metadata.name");
    let at = lines
        .iter()
        .position(|l| l.contains(&format!("name: {ADMIN_TOKEN_ENV}")))
        .unwrap();
    assert!(block(&lines, at).iter().any(|l| l.contains("secretKeyRef")));
    assert_eq!(s.env[ADMIN_TOKEN_ENV], None);
}

#[test]
fn ports_probes_and_scrape_target_match_the_binary() {
    let (text, s, api_ports) = deployment();
    let config = deployed_config(&s);
    let shipped = Config::from_toml(SHIPPED, &Overrides::default()).unwrap();

    // Proxy port: the config's listen, the binary's default, the Service's target.
    assert_eq!(s.ports["proxy"], config.proxy.listen.port());
    assert_eq!(s.ports["proxy"], shipped.proxy.listen.port());
    assert_eq!(s.ports["proxy"], 8080);
    // Admin port: on the pod IP (probes, scraping), the binary's default port.
    assert_eq!(s.ports["admin"], config.admin.listen.port());
    assert_eq!(s.ports["admin"], shipped.admin.listen.port());
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "the kubelet cannot probe an admin port on loopback"
    );
    // The upstream is the API container in the same pod.
    let upstream: http::Uri = config.proxy.upstream.parse().unwrap();
    assert_eq!(upstream.host(), Some("127.0.0.1"));
    assert_eq!(upstream.port_u16(), Some(api_ports["api"]));

    let lines: Vec<&str> = s.lines.iter().map(String::as_str).collect();
    for (probe, path) in [("livenessProbe", HEALTHZ), ("readinessProbe", READYZ)] {
        let (_, probe_lines) = find(&lines, probe).unwrap_or_else(|| panic!("no {probe}"));
        assert_eq!(scalar(&probe_lines, "path"), path, "{probe}");
        let port = scalar(&probe_lines, "port");
        assert_eq!(s.ports[&port], s.ports["admin"], "{probe} port {port}");
    }

    let all: Vec<&str> = text.lines().collect();
    assert_eq!(scalar(&all, "prometheus.io/path"), METRICS);
    assert_eq!(
        scalar(&all, "prometheus.io/port").parse::<u16>().unwrap(),
        s.ports["admin"]
    );
    assert_eq!(scalar(&all, "prometheus.io/scrape"), "true");

    let service = read("k8s/service.yaml");
    let service: Vec<&str> = service.lines().collect();
    let target = scalar(&service, "targetPort");
    assert_eq!(
        s.ports.get(&target),
        Some(&s.ports["proxy"]),
        "Service targetPort {target}"
    );

    let policy = read("k8s/networkpolicy.yaml");
    let policy: Vec<&str> = policy
        .lines()
        .filter(|l| !l.trim().starts_with('#'))
        .collect();
    let (at, _) = find(&policy, "namespaceSelector").expect("no namespaceSelector");
    let rule = &policy[at..];
    let port: u16 = scalar(rule, "port").parse().unwrap();
    assert_eq!(
        port, s.ports["admin"],
        "monitoring must reach the admin port"
    );
    let open: Vec<u16> = policy[..at]
        .iter()
        .filter_map(|l| value_of(l, "port"))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        open,
        vec![s.ports["proxy"]],
        "only the proxy port is open to all"
    );
}

#[test]
fn config_file_and_shutdown_timing_fit_the_pod() {
    let (text, s, _) = deployment();
    let config = deployed_config(&s);
    let all: Vec<&str> = text.lines().collect();
    let lines: Vec<&str> = s.lines.iter().map(String::as_str).collect();

    // ODDSCACHE_CONFIG names the ConfigMap's key under its mount.
    let (_, mounts) = find(&lines, "volumeMounts").unwrap();
    let mount = scalar(&mounts, "mountPath");
    let kustomization = read("k8s/kustomization.yaml");
    let key = kustomization
        .lines()
        .find_map(|l| l.trim().strip_prefix("- ")?.strip_suffix("=oddscache.toml"))
        .expect("configMapGenerator entry KEY=oddscache.toml");
    assert_eq!(env_value(&s, "ODDSCACHE_CONFIG"), format!("{mount}/{key}"));

    // preStop sleep, then SIGTERM and shutdown_grace, within the grace period.
    let (_, pre_stop) = find(&lines, "preStop").unwrap();
    let pre_stop: u64 = scalar(&pre_stop, "seconds").parse().unwrap();
    let grace: u64 = scalar(&all, "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let drain = config.proxy.shutdown_grace.get().as_secs();
    assert!(
        pre_stop >= 1 && pre_stop + drain < grace,
        "preStop {pre_stop}s + shutdown_grace {drain}s must fit terminationGracePeriodSeconds {grace}s"
    );
    // The API outlives the sidecar's drain.
    let api = container(&all, "odds-api");
    let (_, api_stop) = find(&api, "preStop").unwrap();
    let api_stop: u64 = scalar(&api_stop, "seconds").parse().unwrap();
    assert!(api_stop >= pre_stop + drain && api_stop < grace);

    // Hardening the issue asks for.
    for needle in [
        "automountServiceAccountToken: false",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
        "allowPrivilegeEscalation: false",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)) || all.iter().any(|l| l.contains(needle)),
            "{needle} missing"
        );
    }
    let (_, resources) = find(&lines, "resources").unwrap();
    for key in ["requests", "limits", "memory", "cpu"] {
        assert!(
            resources.iter().any(|l| value_of(l, key).is_some()),
            "resources.{key}"
        );
    }
}

#[test]
fn dockerfile_builds_and_runs_what_ci_checks() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/oddscache"]"#));
    assert!(dockerfile.contains("USER 65532"));
    let (_, s, _) = deployment();
    assert!(dockerfile.contains(&format!("EXPOSE {} {}", s.ports["proxy"], s.ports["admin"])));
    let check = read("scripts/check-deploy");
    assert!(check.contains("cargo build --release --locked"));
}

/// GETs `path` from `addr` on a fresh connection; the body of a 200.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let (status, body) = one_shot(addr, "GET", path, &[], "").await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    text
}

/// Series names from `# TYPE` lines of a Prometheus text exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                // The 0.0.4 text format names a counter with its `_total`,
                // OpenMetrics without.
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let sample = line.split(['{', ' ']).next().unwrap();
            assert!(names.contains(sample), "{sample} has no # TYPE line");
        }
    }
    names
}

/// Every series name a live `/metrics` carries after a proxied request and
/// a manual invalidation. A labelled family appears only once it has a
/// child, and a body the watcher cannot read needs an upstream that sends
/// one, so the names of families still empty come from the same registry
/// code with one child each.
async fn live_metric_names() -> BTreeSet<String> {
    let up = SimUpstream::start().await;
    let sidecar = common::sidecar::Sidecar::start(shipped_config(
        |text| text,
        Overrides {
            upstream: Some(up.url()),
            admin_token: Some("t".into()),
            ..Overrides::default()
        },
    ))
    .await;
    get(sidecar.addr, "/api/v1/games/g-1001/odds").await;
    let (status, invalidated) = one_shot(
        sidecar.admin,
        "POST",
        oddscache::admin::routes::INVALIDATE,
        &[("authorization", "Bearer t")],
        r#"{"game_id": "g-1001"}"#,
    )
    .await;
    let invalidated = String::from_utf8_lossy(&invalidated);
    assert_eq!(status, 200, "{invalidated}");
    let text = get(sidecar.admin, METRICS).await;
    drop(sidecar);
    let mut names = exposed_names(&text);
    assert!(names.contains("oddscache_invalidations_total"), "{text}");
    let registry = oddscache::metrics::Metrics::new();
    registry.watch_skipped("test");
    registry.upstream_status("200");
    registry
        .invalidations
        .get_or_create(&oddscache::metrics::ReasonLabel {
            reason: "MANUAL".into(),
        })
        .inc();
    let all = exposed_names(&registry.encode());
    assert!(names.is_subset(&all), "{names:?} vs {all:?}");
    names.extend(all);
    names
}

/// `oddscache_*` names in a query.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("oddscache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(&read("k8s/grafana-dashboard.json"))
        .expect("the dashboard is not JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    out.push(
        dash["templating"]["list"][1]["definition"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    out
}

/// The `expr:` of each rule, single-line or a `|` block.
fn alert_exprs() -> Vec<String> {
    let text = read("k8s/alerts.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match value_of(l, "expr") {
            Some("|") => out.push(block(&lines, i).join("\n")),
            Some(e) => out.push(e.to_string()),
            None => {}
        }
    }
    out
}

#[tokio::test]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    let live = live_metric_names().await;
    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    assert_eq!(alerts.len(), 4, "{alerts:?}");
    let mut used = BTreeSet::new();
    for expr in dashboard.iter().chain(&alerts) {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no oddscache metric in {expr}");
        for name in names {
            assert!(
                live.contains(&name),
                "{name} (in {expr}) is not exported; /metrics has {live:?}"
            );
            used.insert(name);
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "oddscache_requests_total",
        "oddscache_upstream_duration_seconds_bucket",
        "oddscache_invalidations_total",
        "oddscache_invalidations_per_minute",
        "oddscache_invalidation_alert_threshold_per_minute",
        "oddscache_invalidation_keys_deleted_total",
        "oddscache_redis_up",
        "oddscache_invalidation_propagation_seconds_bucket",
    ] {
        assert!(
            dashboard.iter().any(|e| e.contains(needed)),
            "the dashboard does not show {needed}"
        );
    }
}

/// Flattens a TOML table into `a.b` keys with their rendered values;
/// arrays of tables become `route[].key`, free-form maps one key.
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) if prefix == "watch.status_map" => {
            let _ = t;
            out.insert(prefix.to_string(), "(map)".into());
        }
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) if items.iter().all(|i| i.is_table()) && !items.is_empty() => {
            for item in items {
                let mut sub = BTreeMap::new();
                flatten("", item, &mut sub);
                for k in sub.keys() {
                    out.insert(format!("{prefix}[].{k}"), "(per route)".into());
                }
            }
        }
        v => {
            out.insert(prefix.to_string(), v.to_string());
        }
    }
}

#[test]
fn readme_config_reference_matches_the_config_struct() {
    let full = format!("{SHIPPED}\n[rate_limit]\nper_second = 200\nburst = 400\n");
    let config = Config::from_toml(
        &full,
        &Overrides {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..Overrides::default()
        },
    )
    .unwrap();
    let effective: toml::Value = toml::from_str(&config.to_toml()).unwrap();
    let mut keys = BTreeMap::new();
    flatten("", &effective, &mut keys);
    // Not a file key: --replica-id / ODDSCACHE_REPLICA_ID, default the hostname.
    keys.remove("replica_id");

    let readme = read("README.md");
    let section = readme
        .split_once("### Config reference")
        .expect("README has no ### Config reference")
        .1;
    let section = section.split("\n#").next().unwrap();
    let mut documented = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        let default = cells.get(1).copied().unwrap_or("").trim_matches('`');
        documented.insert(key.to_string(), default.to_string());
    }
    let missing: Vec<_> = keys
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let extra: Vec<_> = documented
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .collect();
    let rows: String = missing
        .iter()
        .map(|k| format!("| `{k}` | `{}` | |\n", keys[*k]))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README config reference: not in the config struct {extra:?}; missing rows:\n{rows}"
    );
    for (key, value) in &keys {
        if value.starts_with('(') || key == "redis.url" {
            continue;
        }
        assert_eq!(
            &documented[key], value,
            "README default of {key} differs from the shipped config"
        );
    }
}
