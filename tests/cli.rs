//! The binary as a user runs it: `check` and config errors.

use std::process::Command;

fn oddscache() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oddscache"));
    // Keep the environment from steering the config under test.
    for var in [
        "ODDSCACHE_CONFIG",
        "ODDSCACHE_LISTEN",
        "ODDSCACHE_ADMIN_LISTEN",
        "ODDSCACHE_UPSTREAM",
        "ODDSCACHE_REDIS_URL",
        "ODDSCACHE_ADMIN_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oddscache-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const BAD: &str = r#"
[proxy]
upstream = "https://api"
upstream_timeout = "soon"
[cache]
max_bytes = "lots"
[[route]]
name = "x"
path = "/a/{id}"
tags = ["game:{nope}"]
"#;

#[test]
fn check_accepts_the_shipped_config_and_prints_it() {
    let out = oddscache()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("[cache.ttl_by_status]"), "{printed}");
    assert!(
        printed.contains("upstream = \"http://127.0.0.1:8000\""),
        "{printed}"
    );
}

#[test]
fn check_names_every_bad_key_and_exits_2() {
    let path = write_config("bad.toml", BAD);
    let out = oddscache()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for key in [
        "proxy.upstream:",
        "proxy.upstream_timeout:",
        "cache.max_bytes:",
        "route[0].tags[0]:",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn run_refuses_a_bad_config_with_64_before_binding() {
    let path = write_config("bad-run.toml", BAD);
    // A port in use would fail differently: the config must fail first.
    let out = oddscache()
        .args(["--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache.max_bytes"));
}

#[test]
fn flags_and_env_override_the_file() {
    let path = write_config("ok.toml", "[proxy]\nlisten = \"127.0.0.1:1000\"\n");
    let out = oddscache()
        .args(["check", "--config"])
        .arg(&path)
        .args(["--upstream", "http://127.0.0.1:9999"])
        .env("ODDSCACHE_LISTEN", "127.0.0.1:2000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("listen = \"127.0.0.1:2000\""), "{printed}");
    assert!(
        printed.contains("upstream = \"http://127.0.0.1:9999\""),
        "{printed}"
    );
}

#[test]
fn a_missing_explicit_config_is_an_error() {
    let out = oddscache()
        .args(["check", "--config", "/nonexistent/oddscache.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
