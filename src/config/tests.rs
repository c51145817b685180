use super::*;

fn load(text: &str) -> Result<Config, Vec<Problem>> {
    Config::from_toml(text, &Overrides::default()).map_err(|e| match e {
        ConfigError::Invalid(p) => p,
        other => panic!("unexpected {other}"),
    })
}

fn keys(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn shipped_config_is_valid_and_matches_defaults() {
    let cfg = load(SHIPPED).unwrap();
    let defaults = load("").unwrap();
    assert_eq!(cfg.proxy.listen, defaults.proxy.listen);
    assert_eq!(cfg.cache.ttl_by_status, defaults.cache.ttl_by_status);
    assert_eq!(cfg.watch, defaults.watch);
    assert_eq!(cfg.invalidation, defaults.invalidation);
    assert_eq!(cfg.cache.max_bytes, Size::mib(256));
    assert_eq!(cfg.routes.len(), 4);
    assert_eq!(cfg.routes[3].stale_while_revalidate, Some(Dur::secs(60)));
    assert!(
        cfg.redis_enabled().is_none(),
        "shipped config is local-only"
    );
}

#[test]
fn every_problem_names_its_key() {
    let problems = load(
        r#"
        [proxy]
        upstream_timeout = "soon"
        [cache]
        max_bytes = "lots"
        [admin]
        events_capacity = 0
        [[route]]
        name = "x"
        path = "/a/{id}"
        tags = ["game:{nope}"]
        "#,
    )
    .unwrap_err();
    assert_eq!(
        keys(&problems),
        [
            "proxy.upstream_timeout",
            "cache.max_bytes",
            "admin.events_capacity",
            "route[0].tags[0]"
        ]
    );
    assert!(
        problems[0].message.contains("invalid duration"),
        "{}",
        problems[0]
    );
}

#[test]
fn every_bad_key_of_one_section_is_named() {
    let problems = load(
        "[proxy]\nupstream = \"https://x\"\nupstream_timeout = \"soon\"\nshutdown_grace = 5\nbogus = 1\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&problems),
        [
            "proxy.bogus",
            "proxy.shutdown_grace",
            "proxy.upstream_timeout",
            "proxy.upstream"
        ],
        "{problems:?}"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let problems = load("[cache]\nmax_byte = \"1MiB\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["cache.max_byte"]);
    assert!(problems[0].message.contains("max_byte"), "{}", problems[0]);

    let problems = load("[cache.ttl_by_status]\nlive = \"5s\"\nlivee = \"5s\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["cache.ttl_by_status.livee"]);

    let problems = load("[prxy]\nlisten = \"0.0.0.0:1\"\n").unwrap_err();
    assert!(problems[0].message.contains("prxy"), "{}", problems[0]);
}

#[test]
fn syntax_errors_point_at_a_line() {
    let problems = load("[proxy]\nlisten = \n").unwrap_err();
    assert_eq!(keys(&problems), ["line 2"]);
}

#[test]
fn upstream_must_be_plain_http() {
    for (url, ok) in [
        ("http://127.0.0.1:8000", true),
        ("http://api:8000/", true),
        ("https://api", false),
        ("http://api/base", false),
        ("api:8000", false),
        ("", false),
    ] {
        let result = load(&format!("[proxy]\nupstream = \"{url}\"\n"));
        assert_eq!(result.is_ok(), ok, "{url}: {result:?}");
        if let Err(p) = result {
            assert_eq!(keys(&p), ["proxy.upstream"]);
        }
    }
}

#[test]
fn overrides_beat_the_file() {
    let overrides = Overrides {
        listen: Some("127.0.0.1:1234".parse().unwrap()),
        upstream: Some("http://127.0.0.1:9".into()),
        redis_url: Some("redis://127.0.0.1:6390".into()),
        replica_id: Some("pod-a".into()),
        admin_token: Some("s3cret".into()),
        ..Overrides::default()
    };
    let cfg = Config::from_toml(SHIPPED, &overrides).unwrap();
    assert_eq!(cfg.proxy.listen.port(), 1234);
    assert_eq!(cfg.proxy.upstream, "http://127.0.0.1:9");
    assert_eq!(
        cfg.redis_enabled().unwrap().url.as_deref(),
        Some("redis://127.0.0.1:6390")
    );
    assert_eq!(cfg.replica_id, "pod-a");
    assert_eq!(cfg.admin.token.as_deref(), Some("s3cret"));
    assert!(
        !cfg.to_toml().contains("s3cret"),
        "the token is never printed"
    );
}

#[test]
fn effective_config_round_trips_and_hides_passwords() {
    let overrides = Overrides {
        redis_url: Some("redis://user:hunter2@127.0.0.1:6379".into()),
        ..Overrides::default()
    };
    let cfg = Config::from_toml(SHIPPED, &overrides).unwrap();
    let text = cfg.to_toml();
    assert!(!text.contains("hunter2"), "{text}");
    // The printed config is itself a valid config (replica_id aside).
    let reparsed = text
        .lines()
        .filter(|l| !l.starts_with("replica_id"))
        .collect::<Vec<_>>()
        .join("\n");
    let again = load(&reparsed).unwrap();
    assert_eq!(again.cache.ttl_by_status, cfg.cache.ttl_by_status);
    assert_eq!(again.routes, cfg.routes);
}

#[test]
fn redis_and_rate_limit_sections_are_validated() {
    let problems = load(
        "[redis]\nurl = \"nope://x\"\nchannel = \"x\"\nregistry_ttl = \"0s\"\n[rate_limit]\nper_second = 0\nburst = 1\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&problems),
        [
            "redis.url",
            "redis.channel",
            "redis.registry_ttl",
            "rate_limit.per_second"
        ]
    );
    let problems = load("[rate_limit]\nper_second = 5\n").unwrap_err();
    assert_eq!(keys(&problems), ["rate_limit"]);
}

#[test]
fn max_object_bytes_cannot_exceed_max_bytes() {
    let problems =
        load("[cache]\nmax_bytes = \"1MiB\"\nmax_object_bytes = \"2MiB\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["cache.max_object_bytes"]);
}

#[test]
fn watch_section_is_validated_with_keys() {
    let problems = load("[watch]\ngames = [\"games/*\"]\nodds_movement_threshold = -1.0\n[watch.status_map]\nfoo = \"bar\"\n").unwrap_err();
    let keys = keys(&problems);
    assert!(keys.contains(&"watch.games[0]"), "{problems:?}");
    assert!(
        keys.contains(&"watch.odds_movement_threshold"),
        "{problems:?}"
    );
    assert!(keys.contains(&"watch.status_map.foo"), "{problems:?}");
}

#[test]
fn max_header_bytes_below_what_hyper_can_enforce_is_an_error() {
    let problems = load("[proxy]\nmax_header_bytes = \"4KiB\"").unwrap_err();
    assert_eq!(keys(&problems), ["proxy.max_header_bytes"]);
    assert!(load("[proxy]\nmax_header_bytes = \"8KiB\"").is_ok());
}

#[test]
fn max_connections_must_allow_one() {
    let problems = load("[proxy]\nmax_connections = 0").unwrap_err();
    assert_eq!(keys(&problems), ["proxy.max_connections"]);
    assert_eq!(load("").unwrap().proxy.max_connections, 10_000);
}

#[test]
fn readiness_window_must_be_positive() {
    let problems = load("[admin]\nreadiness_window = \"0s\"").unwrap_err();
    assert_eq!(keys(&problems), ["admin.readiness_window"]);
    assert_eq!(
        load("").unwrap().admin.readiness_window.get(),
        std::time::Duration::from_secs(30)
    );
    let short = load("[admin]\nreadiness_window = \"1s\"").unwrap();
    assert_eq!(
        short.admin.readiness_window.get(),
        std::time::Duration::from_secs(1)
    );
}

#[test]
fn redis_modes_are_validated_with_their_keys() {
    let cfg = load(
        "[redis]\nmode = \"cluster\"\nurls = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
    )
    .unwrap();
    let rc = cfg.redis_enabled().expect("cluster seeds turn Redis on");
    assert_eq!(rc.mode, crate::config::RedisMode::Cluster);
    assert_eq!(rc.urls.len(), 2);

    let cfg = load(
        "[redis]\nmode = \"sentinel\"\nurls = [\"redis://127.0.0.1:26379\"]\nmaster_name = \"odds\"\n",
    )
    .unwrap();
    assert_eq!(cfg.redis_enabled().unwrap().master_name, "odds");

    let problems = load("[redis]\nmode = \"sentinel\"\nurl = \"redis://x\"\n").unwrap_err();
    assert_eq!(
        keys(&problems),
        ["redis.urls", "redis.url", "redis.master_name"]
    );
    let problems = load("[redis]\nmode = \"cluster\"\nurls = [\"nope://x\"]\n").unwrap_err();
    assert_eq!(keys(&problems), ["redis.urls[0]"]);
    let problems = load("[redis]\nmode = \"cluster\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["redis.urls"]);
    let problems = load("[redis]\nurls = [\"redis://x\"]\nmaster_name = \"odds\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["redis.urls", "redis.master_name"]);
    let problems = load("[redis]\nmode = \"ring\"\n").unwrap_err();
    assert_eq!(keys(&problems), ["redis.mode"]);
}

#[test]
fn the_retired_pubsub_keys_say_what_replaced_them() {
    let problems = load(
        "[redis]\nurl = \"redis://x\"\nchannel = \"oddscache:invalidations\"\npubsub = \"sharded\"\n",
    )
    .unwrap_err();
    assert_eq!(keys(&problems), ["redis.channel", "redis.pubsub"]);
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(text[0].contains("events"), "{text:?}");
    assert!(text[1].contains("retired"), "{text:?}");
}

#[test]
fn the_event_log_keys_have_defaults_and_bounds() {
    let cfg = load("[redis]\nurl = \"redis://x\"\n").unwrap();
    let r = cfg.redis_enabled().unwrap();
    assert_eq!(r.events_max_len, 100_000);
    assert_eq!(r.outbox_capacity, 10_000);
    assert_eq!(r.liveness_timeout.get(), std::time::Duration::from_secs(3));
    assert_eq!(
        r.outage_max_staleness.get(),
        std::time::Duration::from_secs(5)
    );
    let problems = load(
        "[redis]\nurl = \"redis://x\"\nevents_max_len = 10\noutbox_capacity = 0\nliveness_timeout = \"1ms\"\noutage_max_staleness = \"0s\"\n",
    )
    .unwrap_err();
    assert_eq!(
        keys(&problems),
        [
            "redis.events_max_len",
            "redis.outbox_capacity",
            "redis.liveness_timeout",
            "redis.outage_max_staleness"
        ]
    );
}
