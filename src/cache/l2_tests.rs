//! Tests of the L2 encoding: round trips, versions and corrupt values.

use super::*;
use proptest::prelude::*;

fn entry(
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
    tags: &[&str],
    times_ms: [u64; 4],
    must_revalidate: bool,
) -> Entry {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    let [age, fresh, sie, swr] = times_ms.map(Duration::from_millis);
    Entry::new(
        NewEntry {
            key: "/k".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: Bytes::copy_from_slice(body),
            initial_age: age,
            fresh_for: fresh,
            stale_if_error: sie,
            stale_while_revalidate: swr,
            must_revalidate,
            tags: tags.iter().map(|t| Arc::from(*t)).collect(),
        },
        Instant::now(),
    )
}

fn sample() -> Entry {
    entry(
        200,
        &[
            ("content-type", b"application/json"),
            ("set-cookie-not", b"a"),
            ("x-multi", b"1"),
            ("x-multi", b"2"),
            ("etag", b"\"v1\""),
        ],
        br#"{"game_id":"g-1","status":"live"}"#,
        &["game:g-1", "odds:live:g-1", "#uri /api/v1/games/g-1/odds"],
        [2000, 5000, 300_000, 0],
        false,
    )
}

fn same(e: &Entry, s: &Stored) {
    assert_eq!(s.status, e.status);
    assert_eq!(s.headers, e.origin_headers());
    assert_eq!(s.body, e.body());
    assert_eq!(s.initial_age, e.initial_age());
    assert_eq!(s.fresh_for, e.fresh_for());
    assert_eq!(s.stale_if_error, e.stale_if_error());
    assert_eq!(s.stale_while_revalidate, e.stale_while_revalidate());
    assert_eq!(s.must_revalidate, e.must_revalidate());
    assert!(s.tags.iter().map(|t| &**t).eq(e.tags()));
}

#[test]
fn round_trips() {
    let e = sample();
    let s = decode(
        encode(&e, 1_700_000_000_000, 1_700_000_000_000)
            .unwrap()
            .into(),
    )
    .unwrap();
    assert_eq!(s.stored_at_ms, 1_700_000_000_000);
    same(&e, &s);
}

#[test]
fn hop_by_hop_fields_are_dropped() {
    let e = entry(
        200,
        &[
            ("connection", b"x-secret"),
            ("x-secret", b"1"),
            ("keep-alive", b"5"),
            ("x-ok", b"1"),
        ],
        b"",
        &[],
        [0, 1000, 0, 0],
        true,
    );
    let s = decode(encode(&e, 0, 0).unwrap().into()).unwrap();
    assert_eq!(s.headers.len(), 1, "{:?}", s.headers);
    assert!(s.headers.contains_key("x-ok"));
    assert!(s.must_revalidate);
}

#[test]
fn rebuilt_entries_keep_their_clock() {
    let e = sample(); // 2s old on arrival, fresh for 5s
    let raw = encode(&e, 10_000, 10_000).unwrap();
    let now = Instant::now();
    let rebuilt = decode(raw.clone().into())
        .unwrap()
        .into_entry("/k".into(), 11_500, now)
        .unwrap();
    assert_eq!(rebuilt.age(now), Duration::from_millis(3500));
    // Stored 1.5 s ago, fresh for 5 s from then: 3.5 s left.
    assert_eq!(rebuilt.stored_at(), now - Duration::from_millis(1500));
    assert_eq!(rebuilt.fresh_for(), Duration::from_millis(5000));
    assert_eq!(
        rebuilt.freshness(now + Duration::from_millis(3499)),
        crate::cache::Standing::Fresh
    );
    assert_ne!(
        rebuilt.freshness(now + Duration::from_millis(3501)),
        crate::cache::Standing::Fresh
    );
    assert_eq!(rebuilt.stale_if_error(), Duration::from_secs(300));
    assert_eq!(rebuilt.key(), "/k");
    // A peer clock ahead of ours: as if just stored.
    let ahead = decode(raw.clone().into()).unwrap();
    assert_eq!(ahead.fresh_left(9_000), Duration::from_secs(5));
    // No freshness left: not used.
    for now_ms in [15_000, 20_000] {
        let s = decode(raw.clone().into()).unwrap();
        assert!(s.into_entry("/k".into(), now_ms, now).is_none());
    }
}

#[test]
fn refuses_junk_and_other_versions() {
    let raw = encode(&sample(), 1, 1).unwrap();
    assert_eq!(decode(Bytes::new()), Err(DecodeError::Magic));
    assert_eq!(
        decode(Bytes::from_static(b"{\"json\":1}")),
        Err(DecodeError::Magic)
    );
    // Version 1 has no fetch start: refused, not misread.
    let mut v1 = raw.clone();
    v1[3] = 1;
    assert_eq!(decode(v1.into()), Err(DecodeError::Version(1)));
    let mut v3 = raw.clone();
    v3[3] = 3;
    assert_eq!(decode(v3.into()), Err(DecodeError::Version(3)));
    let mut bad_status = raw.clone();
    bad_status[4..6].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(decode(bad_status.into()), Err(DecodeError::Status(7)));
    let mut trailing = raw.clone();
    trailing.push(0);
    assert_eq!(decode(trailing.into()), Err(DecodeError::Trailing(1)));
    let mut many = raw.clone();
    many[FIXED - 4..FIXED].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        decode(many.into()),
        Err(DecodeError::TooMany("header fields"))
    );
    let mut long = raw.clone();
    long[FIXED - 4..FIXED].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(decode(long.into()), Err(DecodeError::Truncated));
    let mut bad_name = raw;
    bad_name[FIXED + 4] = b' ';
    assert_eq!(decode(bad_name.into()), Err(DecodeError::Header));
}

#[test]
fn every_truncation_is_refused() {
    let raw = encode(&sample(), 1, 1).unwrap();
    for n in 0..raw.len() {
        assert!(
            decode(Bytes::copy_from_slice(&raw[..n])).is_err(),
            "prefix of {n}"
        );
    }
}

fn header_name() -> impl Strategy<Value = String> {
    // `x-` keeps clear of the hop-by-hop names, which decoding drops.
    "x-[a-z0-9-]{1,12}"
}

proptest! {
    #[test]
    fn any_entry_round_trips(
        status in 100u16..1000,
        headers in proptest::collection::vec((header_name(), proptest::collection::vec(32u8..127, 0..40)), 0..12),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        tags in proptest::collection::vec("\\PC{0,24}", 0..8),
        times in proptest::array::uniform4(0u64..1 << 40),
        must_revalidate in any::<bool>(),
        stored_at in any::<u64>(),
    ) {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let e = entry(status, &headers, &body, &tags, times, must_revalidate);
        let s = decode(encode(&e, stored_at, stored_at).unwrap().into()).unwrap();
        prop_assert_eq!(s.stored_at_ms, stored_at);
        same(&e, &s);
    }

    #[test]
    fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(bytes.into());
    }

    #[test]
    fn corrupted_values_never_panic(i in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut raw = encode(&sample(), 1, 1).unwrap();
        let i = i.index(raw.len());
        raw[i] = b;
        let _ = decode(raw.into());
    }
}
