//! Resident memory against the number of cached entries, as a table.
//!
//! Fills one L1 store with 1.5 kB JSON bodies under realistic response
//! headers and tags, answers one hit from each entry (a cached entry is
//! there to be hit, and whatever a hit leaves behind belongs in the
//! figure), and reads the process's VmRSS after each step. The bar:
//! at 100k entries, RSS ≤ 1.3 × cached bytes + 20 MiB.
//!
//! Run: `cargo run --release --example rss_figures`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use oddscache::cache::{Entry, Lookup, NewEntry, Store};
use oddscache::metrics::Metrics;
use oddscache::proxy::respond;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn headers(i: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("1500"));
    h.insert(
        "date",
        HeaderValue::from_static("Wed, 25 Nov 2026 20:31:07 GMT"),
    );
    h.insert(
        "etag",
        HeaderValue::from_str(&format!("\"{i:016x}\"")).unwrap(),
    );
    h.insert("via", HeaderValue::from_static("1.1 oddscache"));
    h
}

fn main() {
    let metrics = Metrics::new();
    let store = Store::new(4 << 30);
    let base = rss_bytes();
    let body_template = vec![b'x'; 1500];
    let ticket = store.begin_fetch();
    let mut filled = 0usize;
    let no_headers = HeaderMap::new();
    println!("| entries | cached body bytes | weighed bytes (moka) | RSS growth | growth / body bytes | growth / weighed | overhead / entry | bar (1.3 × body bytes + 20 MiB) | expiry walk |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for target in [10_000usize, 25_000, 50_000, 100_000] {
        while filled < target {
            let key = format!("/api/v1/games/g-{filled}/odds");
            let tags = vec![
                Arc::from(format!("game:g-{filled}")),
                Arc::from(format!("odds:live:g-{filled}")),
            ];
            let entry = Arc::new(Entry::new(
                NewEntry {
                    key: key.as_str().into(),
                    status: StatusCode::OK,
                    headers: headers(filled),
                    body: Bytes::from(body_template.clone()),
                    initial_age: Duration::ZERO,
                    fresh_for: Duration::from_secs(3600),
                    stale_if_error: Duration::from_secs(300),
                    stale_while_revalidate: Duration::ZERO,
                    must_revalidate: false,
                    tags,
                },
                Instant::now(),
            ));
            assert!(store.insert(&ticket, &key, &[], entry));
            let Lookup::Found(hit) = store.lookup(&key, &no_headers).0 else {
                panic!("{key} was just stored");
            };
            let answer = respond::hit(&metrics, &Method::GET, &no_headers, &hit, Instant::now());
            assert_eq!(answer.status(), StatusCode::OK);
            filled += 1;
        }
        store.sync();
        // The walk the expirer makes every few seconds, finding nothing due.
        let walk = Instant::now();
        assert_eq!(store.expire(walk), 0);
        let walk = walk.elapsed();
        let bytes = (filled * 1500) as u64;
        let growth = rss_bytes().saturating_sub(base);
        let bar = bytes as f64 * 1.3 + 20.0 * 1024.0 * 1024.0;
        let weighed = store.weighted_size();
        println!(
            "| {filled} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} | {:.2} | {} B | {:.1} MiB ({}) | {:.1} ms |",
            bytes as f64 / 1048576.0,
            weighed as f64 / 1048576.0,
            growth as f64 / 1048576.0,
            growth as f64 / bytes as f64,
            growth as f64 / weighed as f64,
            (growth.saturating_sub(bytes)) / filled as u64,
            bar / 1048576.0,
            if (growth as f64) <= bar {
                "within"
            } else {
                "over"
            },
            walk.as_secs_f64() * 1e3,
        );
    }
    assert_eq!(store.entry_count(), filled as u64);
}
