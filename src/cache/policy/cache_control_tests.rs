//! Tests for `cache_control`: the directive parser, targeted-field
//! selection, and properties of both.

use super::*;
use crate::cache::policy::test_util::{header_bytes, headers, store, MATCHED};
use crate::cache::policy::{FreshnessSource, DELTA_SECONDS_MAX};
use proptest::prelude::*;

fn cc(value: &str) -> CacheControl {
    CacheControl::parse(
        &headers(&[("cache-control", value)]),
        &header::CACHE_CONTROL,
    )
    .unwrap()
}

fn cc_bytes(value: &[u8]) -> CacheControl {
    let mut map = HeaderMap::new();
    map.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_bytes(value).unwrap(),
    );
    CacheControl::parse(&map, &header::CACHE_CONTROL).unwrap()
}

// ---- Cache-Control parsing ----

#[test]
fn parse_absent_is_none() {
    assert_eq!(
        CacheControl::parse(&HeaderMap::new(), &header::CACHE_CONTROL),
        None
    );
}

#[test]
fn parse_empty_is_default() {
    assert_eq!(cc(""), CacheControl::default());
    assert_eq!(cc(" , ;, "), CacheControl::default());
}

#[test]
fn parse_simple() {
    let c = cc("public, max-age=60");
    assert!(c.public);
    assert_eq!(c.max_age, Some(60));
    assert_eq!(c.s_maxage, None);
}

#[test]
fn parse_every_flag() {
    let c = cc("no-store, no-cache, private, public, must-revalidate, proxy-revalidate, immutable");
    assert!(c.no_store && c.no_cache && c.private && c.public);
    assert!(c.must_revalidate && c.proxy_revalidate && c.immutable);
}

#[test]
fn parse_every_number() {
    let c = cc("max-age=1, s-maxage=2, stale-if-error=3, stale-while-revalidate=4");
    assert_eq!(c.max_age, Some(1));
    assert_eq!(c.s_maxage, Some(2));
    assert_eq!(c.stale_if_error, Some(3));
    assert_eq!(c.stale_while_revalidate, Some(4));
}

#[test]
fn parse_is_case_insensitive() {
    let c = cc("Public, MAX-AGE=60, S-MaxAge=5, No-Store");
    assert!(c.public && c.no_store);
    assert_eq!(c.max_age, Some(60));
    assert_eq!(c.s_maxage, Some(5));
}

#[test]
fn parse_tolerates_whitespace() {
    let c = cc("  max-age = 60 ,\tno-cache\t,   s-maxage=\t7  ");
    assert_eq!(c.max_age, Some(60));
    assert_eq!(c.s_maxage, Some(7));
    assert!(c.no_cache);
}

#[test]
fn parse_tolerates_stray_commas() {
    let c = cc(",,public,, max-age=5,");
    assert!(c.public);
    assert_eq!(c.max_age, Some(5));
}

#[test]
fn parse_accepts_semicolons_as_delimiters() {
    let c = cc("public; max-age=0");
    assert!(c.public);
    assert_eq!(c.max_age, Some(0));
}

#[test]
fn parse_drops_structured_field_parameters() {
    assert_eq!(cc("max-age=60;foo=bar, public").max_age, Some(60));
    assert!(cc("max-age=60;foo=bar, public").public);
}

#[test]
fn parse_quoted_numbers() {
    assert_eq!(cc(r#"max-age="60""#).max_age, Some(60));
    assert_eq!(cc(r#"s-maxage = "5" , public"#).s_maxage, Some(5));
}

#[test]
fn parse_quoted_value_may_hold_delimiters() {
    let c = cc(r#"no-cache="set-cookie, x-foo; y", max-age=5"#);
    assert!(c.no_cache);
    assert_eq!(c.max_age, Some(5));
    assert!(!c.public);
}

#[test]
fn parse_quoted_value_with_escaped_quote() {
    let c = cc(r#"foo="a\"b,public", max-age=7"#);
    assert_eq!(c.max_age, Some(7));
    assert!(!c.public, "public sat inside the quoted string");
}

#[test]
fn parse_unterminated_quote_swallows_the_rest() {
    let c = cc(r#"max-age="60, public"#);
    assert_eq!(c.max_age, Some(0), "malformed max-age means stale");
    assert!(!c.public);
}

#[test]
fn parse_junk_after_quote_is_malformed() {
    let c = cc(r#"max-age="60"x, public"#);
    assert_eq!(c.max_age, Some(0));
    assert!(c.public);
    assert_eq!(cc(r#"s-maxage="60" 1, public"#).s_maxage, None);
}

#[test]
fn parse_qualified_private_and_no_cache_count_as_unqualified() {
    assert!(cc(r#"private="set-cookie""#).private);
    assert!(cc("no-cache=x-foo").no_cache);
}

#[test]
fn parse_unknown_directives_are_ignored() {
    let c = cc(r#"foo=bar, baz, qux="a,b", max-age=3, community="UCI""#);
    assert_eq!(
        c,
        CacheControl {
            max_age: Some(3),
            ..CacheControl::default()
        }
    );
}

#[test]
fn parse_near_miss_names_are_unknown() {
    let c = cc("max-ages=5, no cache, nostore, public-ish, stale-while-revalidate-extended=9");
    assert_eq!(c, CacheControl::default());
}

#[test]
fn parse_duplicate_first_wins() {
    assert_eq!(cc("max-age=10, max-age=20").max_age, Some(10));
    assert_eq!(cc("s-maxage=10, s-maxage=20").s_maxage, Some(10));
    assert_eq!(
        cc("stale-if-error=1, stale-if-error=2").stale_if_error,
        Some(1)
    );
    assert_eq!(
        cc("stale-while-revalidate=1, stale-while-revalidate=2").stale_while_revalidate,
        Some(1)
    );
}

#[test]
fn parse_duplicate_invalid_first_still_wins() {
    assert_eq!(cc("max-age=abc, max-age=20").max_age, Some(0));
    assert_eq!(cc("s-maxage=abc, s-maxage=20").s_maxage, None);
}

#[test]
fn parse_invalid_max_age_is_zero() {
    for v in [
        "max-age=abc",
        "max-age=-1",
        "max-age=+5",
        "max-age=1.5",
        "max-age=",
        "max-age",
        "max-age=60 seconds",
        "max-age=0x10",
        r#"max-age="""#,
    ] {
        assert_eq!(cc(v).max_age, Some(0), "{v}");
    }
}

#[test]
fn parse_invalid_other_numbers_are_absent() {
    for v in [
        "s-maxage=abc, stale-if-error=-1, stale-while-revalidate",
        "s-maxage=, stale-if-error=1.5, stale-while-revalidate=x",
    ] {
        let c = cc(v);
        assert_eq!(c.s_maxage, None, "{v}");
        assert_eq!(c.stale_if_error, None, "{v}");
        assert_eq!(c.stale_while_revalidate, None, "{v}");
    }
}

#[test]
fn parse_huge_numbers_saturate() {
    let c = cc("max-age=99999999999999999999999999, s-maxage=4294967296");
    assert_eq!(c.max_age, Some(DELTA_SECONDS_MAX));
    assert_eq!(c.s_maxage, Some(DELTA_SECONDS_MAX));
    assert_eq!(cc("max-age=2147483647").max_age, Some(2_147_483_647));
}

#[test]
fn parse_joins_header_lines() {
    let map = headers(&[
        ("cache-control", "public,"),
        ("Cache-Control", "max-age=10"),
        ("cache-control", "max-age=20, no-cache"),
    ]);
    let c = CacheControl::parse(&map, &header::CACHE_CONTROL).unwrap();
    assert!(c.public && c.no_cache);
    assert_eq!(c.max_age, Some(10));
}

#[test]
fn parse_quotes_do_not_span_lines() {
    let map = headers(&[
        ("cache-control", r#"foo="open"#),
        ("cache-control", "max-age=5"),
    ]);
    let c = CacheControl::parse(&map, &header::CACHE_CONTROL).unwrap();
    assert_eq!(c.max_age, Some(5));
}

#[test]
fn parse_non_utf8_bytes() {
    let c = cc_bytes(b"max-age=5, \xffpublic, s-maxage=\xff1, private=\"\xfe\"");
    assert_eq!(c.max_age, Some(5));
    assert!(!c.public);
    assert_eq!(c.s_maxage, None);
    assert!(c.private);
}

#[test]
fn parse_other_header_name() {
    let map = headers(&[("cdn-cache-control", "max-age=9")]);
    let name = HeaderName::from_static(CDN_CACHE_CONTROL);
    assert_eq!(CacheControl::parse(&map, &name).unwrap().max_age, Some(9));
    assert_eq!(CacheControl::parse(&map, &header::CACHE_CONTROL), None);
}

// ---- targeted fields (RFC 9213) ----

#[test]
fn targeted_none_present() {
    assert_eq!(cache_control_with_source(&HeaderMap::new()), None);
    assert_eq!(
        effective_cache_control(&HeaderMap::new()),
        CacheControl::default()
    );
}

#[test]
fn targeted_plain_cache_control() {
    let (c, source) =
        cache_control_with_source(&headers(&[("cache-control", "max-age=5")])).unwrap();
    assert_eq!(c.max_age, Some(5));
    assert_eq!(source, ControlSource::CacheControl);
    assert!(!source.is_targeted());
}

#[test]
fn targeted_cdn_replaces_cache_control() {
    let map = headers(&[
        ("cache-control", "no-store, private"),
        ("cdn-cache-control", "max-age=600"),
    ]);
    let (c, source) = cache_control_with_source(&map).unwrap();
    assert_eq!(source, ControlSource::Cdn);
    assert_eq!(c.max_age, Some(600));
    assert!(!c.no_store && !c.private, "Cache-Control is not merged in");
}

#[test]
fn targeted_oddscache_beats_cdn() {
    let map = headers(&[
        ("cache-control", "max-age=1"),
        ("cdn-cache-control", "max-age=2"),
        ("oddscache-cache-control", "max-age=3"),
    ]);
    let (c, source) = cache_control_with_source(&map).unwrap();
    assert_eq!(source, ControlSource::Oddscache);
    assert_eq!(source.header_name(), ODDSCACHE_CACHE_CONTROL);
    assert_eq!(c.max_age, Some(3));
    assert_eq!(effective_cache_control(&map).max_age, Some(3));
}

#[test]
fn targeted_oddscache_beats_cache_control_without_cdn() {
    let map = headers(&[
        ("cache-control", "no-cache"),
        ("oddscache-cache-control", "max-age=3"),
    ]);
    assert_eq!(effective_cache_control(&map).max_age, Some(3));
    assert!(!effective_cache_control(&map).no_cache);
}

#[test]
fn targeted_empty_field_is_skipped() {
    let map = headers(&[
        ("cache-control", "max-age=1"),
        ("cdn-cache-control", "max-age=2"),
        ("oddscache-cache-control", " , "),
    ]);
    let (c, source) = cache_control_with_source(&map).unwrap();
    assert_eq!(source, ControlSource::Cdn);
    assert_eq!(c.max_age, Some(2));

    let map = headers(&[("cache-control", "max-age=1"), ("cdn-cache-control", "")]);
    assert_eq!(
        cache_control_with_source(&map).unwrap().1,
        ControlSource::CacheControl
    );
}

#[test]
fn targeted_unknown_directive_still_replaces() {
    // RFC 9213 §3.1's own example: "none" lets the CDN store despite no-store.
    let map = headers(&[("cache-control", "no-store"), ("cdn-cache-control", "none")]);
    let (c, source) = cache_control_with_source(&map).unwrap();
    assert_eq!(source, ControlSource::Cdn);
    assert_eq!(c, CacheControl::default());
    assert_eq!(
        store(
            &[("cache-control", "no-store"), ("cdn-cache-control", "none")],
            &MATCHED
        )
        .unwrap()
        .source,
        FreshnessSource::Default
    );
}

#[test]
fn an_invalid_targeted_field_is_ignored_and_cache_control_decides() {
    // RFC 9213 §2.1: a Dictionary that does not parse, or a known
    // directive of the wrong type, is ignored whole.
    for bad in [
        "max-age=10000, &&&&&",
        "max-age=\"10000\"",
        "max-age=-1",
        "max-age=1.5",
        "MAX-AGE=10000",
        "no-store=1",
        "max-age=10000,",
    ] {
        let map = headers(&[("cache-control", "no-store"), ("cdn-cache-control", bad)]);
        let (c, source) = cache_control_with_source(&map).unwrap();
        assert_eq!(source, ControlSource::CacheControl, "{bad:?}");
        assert!(c.no_store, "{bad:?}");
        let map = headers(&[
            ("cdn-cache-control", "max-age=5"),
            ("oddscache-cache-control", bad),
        ]);
        assert_eq!(
            cache_control_with_source(&map).unwrap(),
            (
                CacheControl {
                    max_age: Some(5),
                    ..CacheControl::default()
                },
                ControlSource::Cdn
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn targeted_fields_read_as_structured_fields() {
    let c = |v: &str| {
        cache_control_with_source(&headers(&[("cdn-cache-control", v)]))
            .unwrap()
            .0
    };
    // A parameter belongs to its member: this is `public` alone.
    let p = c("public;max-age=60");
    assert!(p.public);
    assert_eq!(p.max_age, None);
    // `?0` is false; a later duplicate wins.
    assert!(!c("no-store=?0, max-age=9").no_store);
    assert_eq!(c("max-age=1, max-age=2").max_age, Some(2));
    assert!(c("private=\"set-cookie\"").private);
    assert_eq!(c("max-age=99999999999999").max_age, Some(DELTA_SECONDS_MAX));
    // Lines join with commas.
    let map = headers(&[
        ("cdn-cache-control", "max-age=7"),
        ("cdn-cache-control", "must-revalidate"),
    ]);
    let (two, _) = cache_control_with_source(&map).unwrap();
    assert_eq!((two.max_age, two.must_revalidate), (Some(7), true));
    // An invalid targeted field lets a stored response be refused by
    // Cache-Control, end to end.
    assert!(store(
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=10000, &&&&&")
        ],
        &MATCHED
    )
    .is_err());
}

// ---- properties ----

/// Directive-shaped text, which reaches deeper than random bytes.
fn directive_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("max-age".to_owned()),
        Just("s-maxage".to_owned()),
        Just("no-cache".to_owned()),
        Just("private".to_owned()),
        Just("stale-if-error".to_owned()),
        Just("=".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just(",".to_owned()),
        Just(";".to_owned()),
        Just(" ".to_owned()),
        "[0-9]{1,25}",
        "[a-zA-Z-]{1,8}",
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn parse_never_panics_on_bytes(lines in proptest::collection::vec(header_bytes(), 1..4)) {
        let mut map = HeaderMap::new();
        for line in &lines {
            map.append(header::CACHE_CONTROL, HeaderValue::from_bytes(line).unwrap());
        }
        let c = CacheControl::parse(&map, &header::CACHE_CONTROL);
        prop_assert!(c.is_some());
        let c = c.unwrap();
        for n in [c.max_age, c.s_maxage, c.stale_if_error, c.stale_while_revalidate].into_iter().flatten() {
            prop_assert!(n <= DELTA_SECONDS_MAX);
        }
    }

    #[test]
    fn parse_never_panics_on_directives(text in directive_text()) {
        let _ = cc(&text);
    }

    #[test]
    fn lines_parse_like_one_joined_line(
        a in "[a-z0-9=, -]{0,30}",
        b in "[a-z0-9=, -]{0,30}",
    ) {
        // Without quotes nothing can span the line break.
        let split = CacheControl::parse(
            &headers(&[("cache-control", &a), ("cache-control", &b)]),
            &header::CACHE_CONTROL,
        );
        prop_assert_eq!(split, Some(cc(&format!("{a},{b}"))));
    }
}
