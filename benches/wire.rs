//! The event log codec (`invalidate::wire::encode` / `decode`) on a typical
//! status-change event.
//!
//! `cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oddscache::invalidate::known::Known;
use oddscache::invalidate::wire::{self, Message};
use oddscache::invalidate::{Event, Origin};
use oddscache::watch::{GameState, Reason, Status};
use std::hint::black_box;

fn message() -> Message {
    let id = "g-1001";
    let mut tags = vec![format!("game:{id}")];
    for s in [
        "scheduled",
        "live",
        "finished",
        "cancelled",
        "postponed",
        "unknown",
    ] {
        tags.push(format!("odds:{s}:{id}"));
    }
    tags.push("sidebar:soccer:epl".into());
    Message {
        v: wire::VERSION,
        kind: wire::Kind::Invalidate,
        instance: "0123456789abcdef".into(),
        event: Event {
            id: "r1-1234".into(),
            at: "2026-11-25T20:31:07.123Z".into(),
            at_ms: 1_795_638_667_123,
            reason: Reason::StatusChange,
            game_id: Some(id.into()),
            sport_id: None,
            league_id: None,
            status: None,
            tags,
            keys_deleted: 5,
            origin: Origin::Local,
            replica: "oddscache-7f9c-r1".into(),
            detail: "status scheduled -> live".into(),
        },
        keys: vec![
            format!("/api/v1/games/{id}/odds"),
            "/api/v1/games?league_id=epl&sport_id=soccer".into(),
            "/api/v1/sidebar/soccer/epl".into(),
        ],
        state: Some(Known::after(
            None,
            GameState {
                status: Status::Live,
                baseline: [
                    ("/moneyline/home", 2.1),
                    ("/moneyline/draw", 3.3),
                    ("/moneyline/away", 3.6),
                    ("/spread/line", -0.5),
                    ("/spread/home", 1.95),
                    ("/spread/away", 1.9),
                    ("/total/line", 2.5),
                    ("/total/over", 1.85),
                    ("/total/under", 2.0),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                baseline_known: true,
            },
        )),
    }
}

fn codec(c: &mut Criterion) {
    let msg = message();
    let bytes = wire::encode(&msg);
    assert_eq!(wire::decode(&bytes).expect("round trip"), msg);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| b.iter(|| wire::encode(black_box(&msg))));
    g.bench_function("decode", |b| b.iter(|| wire::decode(black_box(&bytes))));
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
