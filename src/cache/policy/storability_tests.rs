//! Tests for `storability`: what is not stored, freshness precedence,
//! stale windows and the initial age.

use super::*;
use crate::cache::policy::storability::HEURISTIC_MAX;
use crate::cache::policy::test_util::{date, headers, now, secs, store, store_full, MATCHED};
use http::HeaderValue;

const UNMATCHED: FreshnessRules = FreshnessRules {
    honor_origin: true,
    route_ttl: None,
    status_ttl: None,
    default_ttl: None,
    plain: false,
};

/// A plain shared cache: no `[[route]]` at all.
const PLAIN: FreshnessRules = FreshnessRules {
    plain: true,
    ..UNMATCHED
};

fn lifetime(resp: &[(&str, &str)], rules: &FreshnessRules) -> (Duration, FreshnessSource) {
    let f = store(resp, rules).unwrap();
    (f.lifetime, f.source)
}

// ---- targeted fields (RFC 9213) ----

#[test]
fn targeted_field_ignores_expires() {
    let resp = [
        ("cdn-cache-control", "public"),
        ("date", &date(0)),
        ("expires", &date(600)),
    ];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(30), FreshnessSource::Default)
    );
    let resp = [
        ("cache-control", "public"),
        ("date", &date(0)),
        ("expires", &date(600)),
    ];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(600), FreshnessSource::Origin)
    );
}

#[test]
fn targeted_storability_uses_targeted_private() {
    let resp = [
        ("cache-control", "max-age=60"),
        ("oddscache-cache-control", "private"),
    ];
    assert_eq!(store(&resp, &MATCHED), Err(NotStorable::Private));
    let resp = [
        ("cache-control", "private"),
        ("oddscache-cache-control", "max-age=60"),
    ];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(60), FreshnessSource::Origin)
    );
}

// ---- heuristic statuses ----

#[test]
fn heuristic_statuses() {
    for s in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
        assert!(
            heuristically_cacheable(StatusCode::from_u16(s).unwrap()),
            "{s}"
        );
    }
    for s in [
        201, 202, 206, 302, 303, 304, 307, 400, 401, 403, 429, 500, 502, 503, 504,
    ] {
        assert!(
            !heuristically_cacheable(StatusCode::from_u16(s).unwrap()),
            "{s}"
        );
    }
}

// ---- storability: not stored ----

#[test]
fn not_stored_other_methods() {
    for m in [
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        assert_eq!(
            store_full(&m, &[], 200, &[("cache-control", "max-age=60")], &MATCHED),
            Err(NotStorable::Method),
            "{m}"
        );
    }
}

#[test]
fn not_stored_no_store() {
    assert_eq!(
        store(&[("cache-control", "no-store")], &MATCHED),
        Err(NotStorable::NoStore)
    );
    assert_eq!(
        store(
            &[("cache-control", "max-age=60, no-store, public")],
            &MATCHED
        ),
        Err(NotStorable::NoStore)
    );
}

#[test]
fn not_stored_request_no_store() {
    assert_eq!(
        store_full(
            &Method::GET,
            &[("cache-control", "no-store")],
            200,
            &[],
            &MATCHED
        ),
        Err(NotStorable::NoStore)
    );
    // A request's no-cache asks for a fresh answer, which may be stored.
    assert!(store_full(
        &Method::GET,
        &[("cache-control", "no-cache")],
        200,
        &[],
        &MATCHED
    )
    .is_ok());
}

#[test]
fn not_stored_private() {
    assert_eq!(
        store(&[("cache-control", "private, max-age=60")], &MATCHED),
        Err(NotStorable::Private)
    );
}

#[test]
fn not_stored_set_cookie() {
    assert_eq!(
        store(
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "a=b")
            ],
            &MATCHED
        ),
        Err(NotStorable::SetCookie)
    );
}

#[test]
fn not_stored_vary_star() {
    assert_eq!(
        store(&[("vary", "*")], &MATCHED),
        Err(NotStorable::VaryStar)
    );
    assert_eq!(
        store(
            &[("vary", "accept"), ("vary", "accept-encoding, *")],
            &MATCHED
        ),
        Err(NotStorable::VaryStar)
    );
    assert!(store(&[("vary", "accept-encoding")], &MATCHED).is_ok());
}

#[test]
fn authorization_needs_public_or_s_maxage() {
    let auth = [("authorization", "Bearer x")];
    let get = |resp: &[(&str, &str)]| store_full(&Method::GET, &auth, 200, resp, &MATCHED);
    assert_eq!(get(&[]), Err(NotStorable::Authorization));
    assert_eq!(
        get(&[("cache-control", "max-age=60")]),
        Err(NotStorable::Authorization)
    );
    assert_eq!(
        get(&[("cache-control", "must-revalidate")]),
        Err(NotStorable::Authorization)
    );
    assert_eq!(
        get(&[("cache-control", "public")]).unwrap().source,
        FreshnessSource::Default
    );
    let f = get(&[("cache-control", "s-maxage=10")]).unwrap();
    assert_eq!((f.lifetime, f.source), (secs(10), FreshnessSource::Origin));
    // An invalid s-maxage is absent, so it licenses nothing.
    assert_eq!(
        get(&[("cache-control", "s-maxage=x")]),
        Err(NotStorable::Authorization)
    );
}

#[test]
fn authorization_public_from_targeted_field_only() {
    let auth = [("authorization", "Basic eA==")];
    let resp = [
        ("cache-control", "public"),
        ("cdn-cache-control", "max-age=60"),
    ];
    assert_eq!(
        store_full(&Method::GET, &auth, 200, &resp, &MATCHED),
        Err(NotStorable::Authorization)
    );
}

#[test]
fn partial_content_never_stored() {
    assert_eq!(
        store_full(
            &Method::GET,
            &[],
            206,
            &[("cache-control", "public, max-age=60")],
            &MATCHED
        ),
        Err(NotStorable::Status)
    );
}

#[test]
fn non_heuristic_status_needs_explicit_freshness() {
    for status in [500, 502, 503, 302, 307, 403] {
        assert_eq!(
            store_full(&Method::GET, &[], status, &[], &MATCHED),
            Err(NotStorable::Status),
            "{status}"
        );
        let f = store_full(
            &Method::GET,
            &[],
            status,
            &[("cache-control", "max-age=5")],
            &MATCHED,
        )
        .unwrap();
        assert_eq!(
            (f.lifetime, f.source),
            (secs(5), FreshnessSource::Origin),
            "{status}"
        );
    }
    let resp = [("date", &*date(0)), ("expires", &*date(20))];
    let f = store_full(&Method::GET, &[], 503, &resp, &MATCHED).unwrap();
    assert_eq!(f.lifetime, secs(20));
}

#[test]
fn non_heuristic_status_with_route_ttl_only_is_not_stored() {
    let rules = FreshnessRules {
        route_ttl: Some(secs(15)),
        ..MATCHED
    };
    assert_eq!(
        store_full(&Method::GET, &[], 500, &[], &rules),
        Err(NotStorable::Status)
    );
}

#[test]
fn non_heuristic_status_ignores_origin_when_not_honoured() {
    let rules = FreshnessRules {
        honor_origin: false,
        ..MATCHED
    };
    assert_eq!(
        store_full(
            &Method::GET,
            &[],
            500,
            &[("cache-control", "max-age=5")],
            &rules
        ),
        Err(NotStorable::Status)
    );
}

#[test]
fn heuristic_error_statuses_use_route_rules() {
    for status in [404, 410, 501] {
        let f = store_full(&Method::GET, &[], status, &[], &MATCHED).unwrap();
        assert_eq!(
            (f.lifetime, f.source),
            (secs(30), FreshnessSource::Default),
            "{status}"
        );
    }
}

#[test]
fn unmatched_needs_explicit_freshness() {
    assert_eq!(store(&[], &UNMATCHED), Err(NotStorable::NoFreshness));
    assert_eq!(
        store(&[("cache-control", "public")], &UNMATCHED),
        Err(NotStorable::NoFreshness)
    );
    assert_eq!(
        store(&[("cache-control", "no-cache")], &UNMATCHED),
        Err(NotStorable::NoFreshness)
    );
    let with_games = FreshnessRules {
        status_ttl: Some(secs(5)),
        ..UNMATCHED
    };
    assert_eq!(store(&[], &with_games), Err(NotStorable::NoFreshness));
    assert_eq!(
        lifetime(&[("cache-control", "max-age=7")], &UNMATCHED),
        (secs(7), FreshnessSource::Origin)
    );
}

#[test]
fn unmatched_ignores_origin_when_not_honoured() {
    let rules = FreshnessRules {
        honor_origin: false,
        ..UNMATCHED
    };
    assert_eq!(
        store(&[("cache-control", "max-age=7")], &rules),
        Err(NotStorable::NoFreshness)
    );
}

#[test]
fn not_storable_labels() {
    let all = [
        (NotStorable::Method, "method"),
        (NotStorable::Status, "status"),
        (NotStorable::NoStore, "no-store"),
        (NotStorable::Private, "private"),
        (NotStorable::SetCookie, "set-cookie"),
        (NotStorable::VaryStar, "vary-star"),
        (NotStorable::Authorization, "authorization"),
        (NotStorable::NoFreshness, "no-freshness"),
    ];
    for (reason, label) in all {
        assert_eq!(reason.as_str(), label);
        assert_eq!(reason.to_string(), label);
    }
}

// ---- storability: freshness precedence ----

#[test]
fn freshness_s_maxage_beats_max_age_beats_expires() {
    let expires = date(900);
    let d = date(0);
    let all = [
        ("cache-control", "max-age=60, s-maxage=10"),
        ("date", d.as_str()),
        ("expires", expires.as_str()),
    ];
    assert_eq!(
        lifetime(&all, &MATCHED),
        (secs(10), FreshnessSource::Origin)
    );
    let no_s = [
        ("cache-control", "max-age=60"),
        ("date", &d),
        ("expires", &expires),
    ];
    assert_eq!(
        lifetime(&no_s, &MATCHED),
        (secs(60), FreshnessSource::Origin)
    );
    let only_expires = [("date", &*d), ("expires", &*expires)];
    assert_eq!(
        lifetime(&only_expires, &MATCHED),
        (secs(900), FreshnessSource::Origin)
    );
}

#[test]
fn freshness_origin_beats_route_status_default() {
    let rules = FreshnessRules {
        honor_origin: true,
        route_ttl: Some(secs(15)),
        status_ttl: Some(secs(5)),
        default_ttl: Some(secs(30)),
        plain: false,
    };
    assert_eq!(
        lifetime(&[("cache-control", "max-age=100")], &rules),
        (secs(100), FreshnessSource::Origin)
    );
    assert_eq!(
        lifetime(&[("cache-control", "max-age=0")], &rules),
        (secs(0), FreshnessSource::Origin)
    );
}

#[test]
fn freshness_route_then_status_then_default() {
    let all = FreshnessRules {
        honor_origin: true,
        route_ttl: Some(secs(15)),
        status_ttl: Some(secs(5)),
        default_ttl: Some(secs(30)),
        plain: false,
    };
    assert_eq!(lifetime(&[], &all), (secs(15), FreshnessSource::Route));
    let no_route = FreshnessRules {
        route_ttl: None,
        ..all
    };
    assert_eq!(lifetime(&[], &no_route), (secs(5), FreshnessSource::Status));
    let no_status = FreshnessRules {
        status_ttl: None,
        ..no_route
    };
    assert_eq!(
        lifetime(&[], &no_status),
        (secs(30), FreshnessSource::Default)
    );
    // A route ttl without default_ttl still counts as a matched route.
    let route_only = FreshnessRules {
        default_ttl: None,
        ..all
    };
    assert_eq!(
        lifetime(&[], &route_only),
        (secs(15), FreshnessSource::Route)
    );
}

#[test]
fn freshness_not_honouring_origin_ignores_max_age_and_expires() {
    let rules = FreshnessRules {
        honor_origin: false,
        route_ttl: Some(secs(15)),
        status_ttl: None,
        default_ttl: Some(secs(30)),
        plain: false,
    };
    let d = date(0);
    let e = date(900);
    let resp = [
        ("cache-control", "max-age=100, s-maxage=200"),
        ("date", &*d),
        ("expires", &*e),
    ];
    assert_eq!(lifetime(&resp, &rules), (secs(15), FreshnessSource::Route));
    assert_eq!(
        lifetime(
            &[("expires", "0")],
            &FreshnessRules {
                route_ttl: None,
                ..rules
            }
        ),
        (secs(30), FreshnessSource::Default)
    );
}

#[test]
fn freshness_not_honouring_origin_keeps_restrictions() {
    let rules = FreshnessRules {
        honor_origin: false,
        ..MATCHED
    };
    assert_eq!(
        store(&[("cache-control", "no-store")], &rules),
        Err(NotStorable::NoStore)
    );
    assert_eq!(
        store(&[("cache-control", "private")], &rules),
        Err(NotStorable::Private)
    );
    assert_eq!(
        store(&[("set-cookie", "a=b")], &rules),
        Err(NotStorable::SetCookie)
    );
    let f = store(&[("cache-control", "no-cache")], &rules).unwrap();
    assert_eq!((f.lifetime, f.must_revalidate), (Duration::ZERO, true));
    let f = store(
        &[("cache-control", "must-revalidate, stale-if-error=60")],
        &rules,
    )
    .unwrap();
    assert_eq!(f.lifetime, secs(30));
    assert!(f.must_revalidate && f.stale_if_error_forbidden);
}

#[test]
fn expires_minus_date() {
    let resp = [("date", &*date(-100)), ("expires", &*date(20))];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(120), FreshnessSource::Origin)
    );
}

#[test]
fn expires_without_date_counts_from_now() {
    assert_eq!(
        lifetime(&[("expires", &date(45))], &MATCHED),
        (secs(45), FreshnessSource::Origin)
    );
    let resp = [("date", "garbage"), ("expires", &*date(45))];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(45), FreshnessSource::Origin)
    );
}

#[test]
fn expires_in_the_past_is_zero() {
    let resp = [("date", &*date(0)), ("expires", &*date(-60))];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (Duration::ZERO, FreshnessSource::Origin)
    );
}

#[test]
fn expires_other_date_formats() {
    // RFC 850 and asctime forms are obsolete but must be accepted.
    let resp = [
        ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
        ("expires", "Sun Nov  6 08:50:37 1994"),
    ];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(60), FreshnessSource::Origin)
    );
}

#[test]
fn invalid_expires_is_already_expired() {
    for bad in ["0", "-1", "never", "Thu, 32 Jan 2099 00:00:00 GMT", ""] {
        let f = store(&[("date", &*date(0)), ("expires", bad)], &MATCHED).unwrap();
        assert_eq!(
            (f.lifetime, f.source),
            (Duration::ZERO, FreshnessSource::Origin),
            "{bad:?}"
        );
    }
    // Already expired is still explicit, but only stored if otherwise allowed.
    assert_eq!(
        store(&[("expires", "0"), ("set-cookie", "a=b")], &MATCHED),
        Err(NotStorable::SetCookie)
    );
    assert_eq!(
        store_full(&Method::GET, &[], 500, &[("expires", "0")], &MATCHED)
            .unwrap()
            .lifetime,
        Duration::ZERO
    );
}

#[test]
fn first_expires_wins() {
    let mut map = headers(&[("date", &date(0)), ("expires", &date(10))]);
    map.append(header::EXPIRES, HeaderValue::from_str(&date(99)).unwrap());
    let f = storability(
        &Method::GET,
        &HeaderMap::new(),
        StatusCode::OK,
        &map,
        &MATCHED,
        now(),
    )
    .unwrap();
    assert_eq!(f.lifetime, secs(10));
}

#[test]
fn max_age_beats_invalid_expires() {
    let resp = [("cache-control", "max-age=30"), ("expires", "0")];
    assert_eq!(
        lifetime(&resp, &MATCHED),
        (secs(30), FreshnessSource::Origin)
    );
}

#[test]
fn invalid_max_age_is_stale() {
    let rules = FreshnessRules {
        route_ttl: Some(secs(15)),
        ..MATCHED
    };
    assert_eq!(
        lifetime(&[("cache-control", "max-age=soon")], &rules),
        (Duration::ZERO, FreshnessSource::Origin)
    );
}

#[test]
fn lifetime_is_capped() {
    let resp = [
        ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ];
    assert_eq!(lifetime(&resp, &MATCHED).0, MAX_LIFETIME);
    let rules = FreshnessRules {
        route_ttl: Some(Duration::MAX),
        ..MATCHED
    };
    assert_eq!(
        lifetime(&[], &rules),
        (MAX_LIFETIME, FreshnessSource::Route)
    );
}

#[test]
fn no_cache_is_stored_with_zero_lifetime() {
    let rules = FreshnessRules {
        route_ttl: Some(secs(15)),
        ..MATCHED
    };
    for v in [
        "no-cache",
        "no-cache, max-age=60",
        r#"no-cache="set-cookie""#,
    ] {
        let f = store(&[("cache-control", v)], &rules).unwrap();
        assert_eq!(
            (f.lifetime, f.source),
            (Duration::ZERO, FreshnessSource::Origin),
            "{v}"
        );
        assert!(f.must_revalidate, "{v}");
        assert!(
            f.stale_if_error_forbidden,
            "{v}: no-cache is never used without a successful validation"
        );
        assert_eq!(f.stale_if_error_window(secs(3600)), Duration::ZERO, "{v}");
    }
}

#[test]
fn must_revalidate_with_zero_freshness() {
    let f = store(&[("cache-control", "max-age=0, must-revalidate")], &MATCHED).unwrap();
    assert_eq!(f.lifetime, Duration::ZERO);
    assert!(f.must_revalidate && f.stale_if_error_forbidden);
}

#[test]
fn default_has_no_revalidation_constraints() {
    let f = store(&[], &MATCHED).unwrap();
    assert_eq!(
        f,
        Freshness {
            lifetime: secs(30),
            source: FreshnessSource::Default,
            stale_if_error: None,
            stale_while_revalidate: None,
            must_revalidate: false,
            stale_if_error_forbidden: false,
        }
    );
}

#[test]
fn stale_directives_are_carried_when_honoured() {
    let f = store(
        &[(
            "cache-control",
            "max-age=5, stale-if-error=60, stale-while-revalidate=10",
        )],
        &MATCHED,
    )
    .unwrap();
    assert_eq!(f.stale_if_error, Some(secs(60)));
    assert_eq!(f.stale_while_revalidate, Some(secs(10)));
    assert_eq!(f.stale_if_error_window(secs(300)), secs(60));
    assert_eq!(f.stale_while_revalidate_window(Duration::ZERO), secs(10));

    let rules = FreshnessRules {
        honor_origin: false,
        ..MATCHED
    };
    let f = store(
        &[(
            "cache-control",
            "stale-if-error=60, stale-while-revalidate=10",
        )],
        &rules,
    )
    .unwrap();
    assert_eq!((f.stale_if_error, f.stale_while_revalidate), (None, None));
    assert_eq!(f.stale_if_error_window(secs(300)), secs(300));
    assert_eq!(f.stale_while_revalidate_window(secs(7)), secs(7));
}

#[test]
fn revalidation_directives_forbid_stale() {
    for v in ["must-revalidate", "proxy-revalidate", "s-maxage=60"] {
        let f = store(
            &[(
                "cache-control",
                &format!("{v}, stale-if-error=60, stale-while-revalidate=9"),
            )],
            &MATCHED,
        )
        .unwrap();
        assert!(f.must_revalidate && f.stale_if_error_forbidden, "{v}");
        assert_eq!(f.stale_if_error_window(secs(300)), Duration::ZERO, "{v}");
        assert_eq!(
            f.stale_while_revalidate_window(secs(60)),
            Duration::ZERO,
            "{v}"
        );
    }
    let f = store(
        &[("cache-control", "no-cache, stale-while-revalidate=9")],
        &MATCHED,
    )
    .unwrap();
    assert_eq!(f.stale_while_revalidate_window(secs(60)), Duration::ZERO);
    // RFC 9111 §5.2.2.4: not used without a successful validation, so not
    // on an upstream error either.
    assert_eq!(f.stale_if_error_window(secs(300)), Duration::ZERO);
}

#[test]
fn fresh_for_counts_upstream_age_only_for_origin() {
    let f = store(&[("cache-control", "max-age=60")], &MATCHED).unwrap();
    assert_eq!(f.fresh_for(secs(50)), secs(10));
    assert_eq!(f.fresh_for(secs(90)), Duration::ZERO);
    let f = store(&[], &MATCHED).unwrap();
    assert_eq!(f.fresh_for(secs(50)), secs(30));
}

// ---- a plain shared cache ----

#[test]
fn a_plain_cache_uses_heuristic_freshness_from_last_modified() {
    let modified = date(-100 * 3600);
    let f = store(&[("last-modified", &modified), ("date", &date(0))], &PLAIN).unwrap();
    assert_eq!(
        (f.lifetime, f.source),
        (secs(10 * 3600), FreshnessSource::Heuristic)
    );
    // Its age counts, like an origin lifetime's.
    assert_eq!(f.fresh_for(secs(3600)), secs(9 * 3600));
    // Capped at a day.
    let old = store(&[("last-modified", &date(-1000 * 24 * 3600))], &PLAIN).unwrap();
    assert_eq!(old.lifetime, HEURISTIC_MAX);
    // Explicit freshness still wins, and only heuristic statuses qualify.
    let explicit = store(
        &[("last-modified", &modified), ("cache-control", "max-age=5")],
        &PLAIN,
    );
    assert_eq!(explicit.unwrap().lifetime, secs(5));
    assert_eq!(
        store_full(
            &Method::GET,
            &[],
            500,
            &[("last-modified", &modified)],
            &PLAIN
        ),
        Err(NotStorable::Status)
    );
    // Routes keep their rules: an unmatched path of a routed config, or a
    // config that ignores the origin, stores nothing without freshness.
    assert_eq!(
        store(&[("last-modified", &modified)], &UNMATCHED),
        Err(NotStorable::NoFreshness)
    );
    let ignoring = FreshnessRules {
        honor_origin: false,
        ..PLAIN
    };
    assert_eq!(
        store(&[("last-modified", &modified)], &ignoring),
        Err(NotStorable::NoFreshness)
    );
    assert_eq!(store(&[], &PLAIN), Err(NotStorable::NoFreshness));
}

#[test]
fn a_plain_cache_stores_no_cache_with_a_validator_to_revalidate_each_use() {
    let f = store(&[("cache-control", "no-cache"), ("etag", "\"a\"")], &PLAIN).unwrap();
    assert_eq!(f.lifetime, Duration::ZERO);
    assert!(f.must_revalidate && f.stale_if_error_forbidden);
    assert_eq!(
        store(&[("cache-control", "no-cache")], &PLAIN),
        Err(NotStorable::NoFreshness),
        "nothing to revalidate with"
    );
    assert_eq!(
        store(
            &[("cache-control", "no-cache"), ("etag", "\"a\"")],
            &UNMATCHED
        ),
        Err(NotStorable::NoFreshness)
    );
}

// ---- initial age ----

#[test]
fn initial_age_cases() {
    assert_eq!(initial_age(&HeaderMap::new(), now()), Duration::ZERO);
    assert_eq!(initial_age(&headers(&[("age", "12")]), now()), secs(12));
    assert_eq!(
        initial_age(&headers(&[("date", &date(-7))]), now()),
        secs(7)
    );
    assert_eq!(
        initial_age(&headers(&[("age", "3"), ("date", &date(-7))]), now()),
        secs(7)
    );
    assert_eq!(
        initial_age(&headers(&[("age", "30"), ("date", &date(-7))]), now()),
        secs(30)
    );
    // A Date from the future (clock skew) is not a negative age.
    assert_eq!(
        initial_age(&headers(&[("date", &date(60))]), now()),
        Duration::ZERO
    );
    assert_eq!(
        initial_age(&headers(&[("age", "-5"), ("date", "nope")]), now()),
        Duration::ZERO
    );
    assert_eq!(initial_age(&headers(&[("age", " 4 ")]), now()), secs(4));
    assert_eq!(
        initial_age(&headers(&[("age", "99999999999999999999")]), now()),
        MAX_LIFETIME
    );
}

#[test]
fn a_list_valued_age_uses_its_first_member() {
    // RFC 9111 §5.1: a list, or several lines, count by the first member.
    assert_eq!(
        initial_age(&headers(&[("age", "7200, 0")]), now()),
        secs(7200)
    );
    assert_eq!(
        initial_age(&headers(&[("age", "7200"), ("age", "0")]), now()),
        secs(7200)
    );
    // An invalid first member makes the field ignored.
    assert_eq!(
        initial_age(&headers(&[("age", "x, 9")]), now()),
        Duration::ZERO
    );
    // And a response that came 7200 s old with max-age=3600 is stale.
    let f = store(
        &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
        &MATCHED,
    )
    .unwrap();
    let age = initial_age(&headers(&[("age", "7200, 0")]), now());
    assert_eq!(f.fresh_for(age), Duration::ZERO);
}
