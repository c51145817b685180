//! The Redis pub/sub decoder on arbitrary payloads.
//!
//! Invariant: a message that decodes survives a round trip unchanged, so
//! every replica reads the same event, keys and baseline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oddscache::invalidate::wire;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode(data) else {
        return;
    };
    assert!(msg.keys.len() <= wire::MAX_KEYS);
    assert_eq!(msg.v, wire::VERSION);
    let bytes = wire::encode(&msg);
    assert_eq!(
        wire::decode(&bytes).as_ref(),
        Ok(&msg),
        "round trip of {msg:?}"
    );
});
