"""Parses the admin port's /metrics with the reference Python parsers and
checks the SPEC section 7 families, their types and closed label sets.

Usage: check_metrics.py ADMIN_BASE_URL. Exits non-zero on any problem.
"""

import sys
import urllib.request

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

# SPEC section 7, by family name as the parsers report it (a counter's
# family drops its _total).
SPEC = {
    "oddscache_requests": "counter",
    "oddscache_upstream_requests": "counter",
    "oddscache_upstream_duration_seconds": "histogram",
    "oddscache_cache_entries": "gauge",
    "oddscache_cache_bytes": "gauge",
    "oddscache_invalidations": "counter",
    "oddscache_invalidation_keys_deleted": "counter",
    "oddscache_invalidations_per_minute": "gauge",
    "oddscache_redis_up": "gauge",
    "oddscache_redis_errors": "counter",
    "oddscache_watch_skipped": "counter",
    "oddscache_rate_limited": "counter",
}
LABELS = {
    "oddscache_requests": ("cache", {"hit", "miss", "stale", "bypass"}),
    "oddscache_invalidations": (
        "reason",
        {"STATUS_CHANGE", "ODDS_MOVEMENT", "CANCELLED", "POSTPONED", "MANUAL", "SIDEBAR_REFRESH"},
    ),
    "oddscache_watch_skipped": ("why", {"not_json", "no_games", "undecodable", "too_large"}),
}


def fetch(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode("utf-8")


def check(kind, families):
    problems = []
    by_name = {f.name: f for f in families}
    for name, want in SPEC.items():
        fam = by_name.get(name)
        if fam is None:
            problems.append(f"{kind}: {name} is missing")
        elif fam.type != want:
            problems.append(f"{kind}: {name} is a {fam.type}, not a {want}")
    for name, (label, values) in LABELS.items():
        fam = by_name.get(name)
        seen = {s.labels.get(label) for s in fam.samples} if fam else set()
        if not values <= seen:
            problems.append(f"{kind}: {name} lacks {label}={sorted(values - seen)}")
    return problems


def main():
    base = sys.argv[1].rstrip("/")
    problems = []
    ctype, text = fetch(base + "/metrics")
    if not ctype.startswith("text/plain; version=0.0.4"):
        problems.append(f"text: content type {ctype!r}")
    try:
        problems += check("text", list(parse_text(text)))
    except Exception as e:  # the parser's errors are plain ValueErrors
        problems.append(f"text: does not parse: {e}")
    ctype, om = fetch(base + "/metrics", "application/openmetrics-text; version=1.0.0")
    if not ctype.startswith("application/openmetrics-text"):
        problems.append(f"openmetrics: content type {ctype!r}")
    try:
        problems += check("openmetrics", list(parse_openmetrics(om)))
    except Exception as e:
        problems.append(f"openmetrics: does not parse: {e}")
    for p in problems:
        print(f"check_metrics: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check_metrics: /metrics parses in both formats; {len(SPEC)} families present")


if __name__ == "__main__":
    main()
