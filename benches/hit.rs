//! The hit path's response build (`proxy::respond::hit`) on a 1.5 kB
//! entry: prebuilt headers, one `Age`, a `Bytes` clone, the hit counted;
//! and the 304 a matching `If-None-Match` gets.
//!
//! `cargo bench --bench hit -- --warm-up-time 1 --measurement-time 3`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use oddscache::cache::{Entry, NewEntry};
use oddscache::metrics::Metrics;
use oddscache::proxy::respond;
use std::hint::black_box;

fn entry() -> Entry {
    let mut body = String::from(
        r#"{"game_id":"g-1001","sport_id":"soccer","league_id":"epl","status":"live","start_time":"2026-11-25T20:00:00Z","home":"Arsenal","away":"Chelsea","odds":{"moneyline":{"home":2.1,"draw":3.3,"away":3.6},"spread":{"line":-0.5,"home":1.95,"away":1.9},"total":{"line":2.5,"over":1.85,"under":2.0}"#,
    );
    let mut i = 0;
    while body.len() < 1450 {
        body.push_str(&format!(
            r#","alt_total_{i}":{{"line":{}.5,"over":1.9,"under":1.95}}"#,
            i + 3
        ));
        i += 1;
    }
    body.push_str(r#"},"updated_at":"2026-11-25T20:31:07Z"}"#);
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "1500"),
        ("date", "Wed, 25 Nov 2026 20:31:07 GMT"),
        ("etag", "\"g-1001-42\""),
        ("cache-control", "public, max-age=5"),
        ("via", "1.1 oddscache"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    Entry::new(
        NewEntry {
            key: "/api/v1/games/g-1001/odds".into(),
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body),
            initial_age: Duration::ZERO,
            fresh_for: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(300),
            stale_while_revalidate: Duration::ZERO,
            must_revalidate: false,
            tags: vec!["game:g-1001".into(), "odds:live:g-1001".into()],
        },
        Instant::now(),
    )
}

fn hit(c: &mut Criterion) {
    let e = entry();
    assert!((1400..1600).contains(&e.body().len()), "{}", e.body().len());
    let now = e.stored_at() + Duration::from_secs(2);
    let plain = HeaderMap::new();
    let mut conditional = HeaderMap::new();
    conditional.insert("if-none-match", HeaderValue::from_static("\"g-1001-42\""));
    let metrics = Metrics::new();
    let mut g = c.benchmark_group("respond/hit");
    g.bench_function("200 1.5kB", |b| {
        b.iter(|| {
            respond::hit(
                &metrics,
                &Method::GET,
                black_box(&plain),
                black_box(&e),
                now,
            )
        })
    });
    g.bench_function("304 if-none-match", |b| {
        b.iter(|| {
            respond::hit(
                &metrics,
                &Method::GET,
                black_box(&conditional),
                black_box(&e),
                now,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
