//! Tests of the entry layout: windows, hit headers, shared fields and sizes.

use super::*;
use crate::cache::outcome::{CACHE_STATUS, X_CACHE};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};

fn entry(fresh_for: u64, swr: u64, sie: u64) -> Entry {
    with_headers(HeaderMap::new(), fresh_for, swr, sie)
}

fn with_headers(headers: HeaderMap, fresh_for: u64, swr: u64, sie: u64) -> Entry {
    Entry::new(
        NewEntry {
            key: "/k".into(),
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{}"),
            initial_age: Duration::from_secs(2),
            fresh_for: Duration::from_secs(fresh_for),
            stale_if_error: Duration::from_secs(sie),
            stale_while_revalidate: Duration::from_secs(swr),
            must_revalidate: false,
            tags: vec![],
        },
        Instant::now(),
    )
}

#[cfg(target_pointer_width = "64")]
#[test]
fn an_entry_fits_a_128_byte_chunk() {
    // With `Arc`'s two counts and glibc's 8-byte chunk header.
    assert!(std::mem::size_of::<Entry>() + 16 + 8 <= 128);
}

#[test]
fn long_windows_are_cut_and_old_instants_kept() {
    let year = Duration::from_secs(365 * 86_400);
    let e = entry(365 * 86_400, 0, 0);
    assert_eq!(e.fresh_for(), Duration::from_millis(u32::MAX.into()));
    assert!(e.fresh_for() < year);
    // An instant before the first entry's is stored exactly too.
    let then = e.stored_at() - Duration::from_secs(30);
    assert_eq!(since_epoch(then), e.stored_at - 30_000_000_000);
    assert_eq!(
        e.age(e.stored_at() + Duration::from_millis(1500)),
        Duration::from_millis(3500)
    );
}

#[test]
fn freshness_windows() {
    let e = entry(10, 5, 60);
    let t0 = e.stored_at();
    assert_eq!(e.freshness(t0), Standing::Fresh);
    assert_eq!(e.age(t0 + Duration::from_secs(3)).as_secs(), 5);
    assert_eq!(e.ttl_secs(t0 + Duration::from_secs(3)), 7);
    assert_eq!(
        e.freshness(t0 + Duration::from_secs(11)),
        Standing::StaleRevalidate
    );
    assert_eq!(e.freshness(t0 + Duration::from_secs(15)), Standing::Stale);
    assert_eq!(e.ttl_secs(t0 + Duration::from_secs(15)), -5);
    assert!(e.usable_on_error(t0 + Duration::from_secs(69)));
    assert!(!e.usable_on_error(t0 + Duration::from_secs(70)));
    assert_eq!(e.retention(), Duration::from_secs(70));
}

#[test]
fn labelled_headers_and_age() {
    let e = entry(10, 0, 0);
    let h = e.labelled_headers(Outcome::Hit, Duration::from_secs(7));
    assert_eq!(h[&X_CACHE], "HIT");
    assert_eq!(h[&CACHE_STATUS], "oddscache; hit");
    assert_eq!(h[AGE], "7");
    assert!(e.origin_headers().is_empty());
    let hit = e.hit_headers(Duration::from_secs(9));
    assert_eq!(hit[&X_CACHE], "HIT");
    assert_eq!(hit[AGE], "9");
    assert_eq!(e.hit_headers(Duration::from_secs(10))[AGE], "10");
    assert_eq!(age_value(Duration::from_secs(42)), "42");
    assert_eq!(age_value(Duration::from_secs(100_000)), "100000");
}

fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn a_hit_map_is_the_labelled_map() {
    let hit = |e: &Entry, age| {
        let labelled = e.labelled_headers(Outcome::Hit, Duration::from_secs(age));
        let got = e.hit_headers(Duration::from_secs(age));
        assert_eq!(got, labelled);
        // In the same order too, values of one name included.
        assert!(got.iter().eq(labelled.iter()));
    };
    let plain = [
        ("content-type", "application/json"),
        ("cache-control", "public, max-age=60"),
        ("set-cookie", "a=1"),
        ("x-odds-feed", "live"),
        ("set-cookie", "b=2"),
        ("etag", "\"7\""),
    ];
    let a = with_headers(fields(&plain), 10, 0, 0);
    hit(&a, 3);
    hit(&a, 7_200);
    // Same names: one set of names and one template for both entries.
    let mut other = plain;
    other[5] = ("etag", "\"8\"");
    let b = with_headers(fields(&other), 10, 0, 0);
    assert!(Arc::ptr_eq(&a.fields, &b.fields));
    hit(&b, 1);
    assert_eq!(b.hit_headers(Duration::ZERO)[ETAG], "\"8\"");
    assert_eq!(a.hit_headers(Duration::ZERO)[ETAG], "\"7\"");
    // Their content type and policy are shared, not copied into each.
    let value = |e: &Entry, name| e.headers().find(|(n, _)| **n == name).unwrap().1.clone();
    let ct = |e: &Entry| value(e, CONTENT_TYPE);
    assert_eq!(ct(&a).as_bytes().as_ptr(), ct(&b).as_bytes().as_ptr());
    let cc = |e: &Entry| value(e, CACHE_CONTROL);
    assert_eq!(cc(&a).as_bytes().as_ptr(), cc(&b).as_bytes().as_ptr());
    assert_eq!(a.own_values().count(), 4);
    // Another content type: other fields, the same answers.
    let mut xml = plain;
    xml[0] = ("content-type", "application/xml");
    let d = with_headers(fields(&xml), 10, 0, 0);
    assert!(!Arc::ptr_eq(&a.fields, &d.fields));
    hit(&d, 4);
    assert_eq!(
        d.hit_headers(Duration::ZERO)[CONTENT_TYPE],
        "application/xml"
    );
    assert_eq!(
        a.hit_headers(Duration::ZERO)[CONTENT_TYPE],
        "application/json"
    );
    // An origin's own labels are replaced, as the labelled map does.
    let labelled = [("age", "100"), ("x-cache", "MISS"), ("via", "1.1 up")];
    let c = with_headers(fields(&labelled), 10, 0, 0);
    assert!(c.fields.hit.is_none());
    hit(&c, 5);
    hit(&entry(10, 0, 0), 2);
}

#[test]
fn body_values_and_tags_share_one_block() {
    let headers = fields(&[("etag", "\"g-1\""), ("via", "1.1 up")]);
    let e = Entry::new(
        NewEntry {
            key: "/k".into(),
            status: StatusCode::OK,
            headers: headers.clone(),
            body: Bytes::from_static(b"{\"odds\":1}"),
            initial_age: Duration::ZERO,
            fresh_for: Duration::from_secs(1),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            must_revalidate: false,
            tags: vec!["game:g-1".into(), "".into(), "odds:live:g-1".into()],
        },
        Instant::now(),
    );
    assert_eq!(e.body(), "{\"odds\":1}");
    assert_eq!(e.body_bytes(), b"{\"odds\":1}");
    assert_eq!(e.origin_headers(), headers);
    assert!(e.tags().eq(["game:g-1", "", "odds:live:g-1"]));
    assert_eq!(e.tag(2), Some("odds:live:g-1"));
    assert_eq!(e.tag(3), None);
    // `Via` names a kind of response: its value is shared, not copied.
    assert_eq!(e.block.len(), (4 + 2) + (4 + 5) + 3 * 4 + 8 + 13 + 10);
    assert_eq!(e.key(), "/k");
    assert_eq!(e.etag().unwrap(), "\"g-1\"");
    assert_eq!(e.validators(), (Some(&b"\"g-1\""[..]), None));
}
