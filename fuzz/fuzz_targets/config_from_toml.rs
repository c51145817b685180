//! The config loader on arbitrary text.
//!
//! Invariants: a problem always names a key; and a config that loads prints
//! (`oddscache check`) as TOML that loads back to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oddscache::config::{Config, ConfigError, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match Config::from_toml(text, &Overrides::default()) {
        Ok(cfg) => cfg,
        Err(ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            assert!(problems.iter().all(|p| !p.key.is_empty()), "{problems:?}");
            return;
        }
        Err(e) => panic!("from_toml read a file: {e}"),
    };
    // The printed form redacts the Redis password, so it is compared only
    // without one.
    if cfg.redis.as_ref().is_some_and(|r| r.url.is_some()) {
        return;
    }
    let shown = cfg.to_toml();
    // `replica_id` is printed for people; it comes from flags, not the file.
    let file: String = shown
        .lines()
        .filter(|l| !l.starts_with("replica_id ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let again = Config::from_toml(&file, &Overrides::default())
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{file}"));
    assert_eq!(again.to_toml(), shown, "printed config loads differently");
});
