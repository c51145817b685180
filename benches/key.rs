//! Cache-key normalisation (`cache::key::primary`): the borrowed fast path
//! for a query already in order, and the sorting path.
//!
//! `cargo bench --bench key -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use http::Uri;
use oddscache::cache::key;
use std::hint::black_box;

fn primary(c: &mut Criterion) {
    let mut g = c.benchmark_group("key/primary");
    for (name, uri) in [
        ("no-query", "/api/v1/games/g-1001/odds"),
        (
            "sorted",
            "/api/v1/games?league_id=epl&sport_id=soccer&status=live",
        ),
        (
            "unsorted",
            "/api/v1/games?status=live&sport_id=soccer&league_id=epl",
        ),
    ] {
        let uri: Uri = uri.parse().expect("valid uri");
        g.bench_function(name, |b| b.iter(|| key::primary(black_box(&uri)).len()));
    }
    g.finish();
}

criterion_group!(benches, primary);
criterion_main!(benches);
