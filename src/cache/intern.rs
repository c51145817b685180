//! What entries share instead of each holding a copy, interned once per
//! process: field names and their layouts ([`Fields`]), the values that
//! name a kind of response (`Content-Type`, ...), the prebuilt `Age`
//! values. The fields this cache writes itself are
//! [`outcome`](super::outcome)'s.
//!
//! Everything here lives in static memory or is shared by `Arc`, so a hit
//! that clones it touches no reference count other cores share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LOCATION, CONTENT_TYPE,
    DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY, VIA,
};
use http::HeaderMap;

use super::outcome::{Outcome, CACHE_STATUS, X_CACHE};

/// RFC 9110 §15.4.5: the fields a 200 would have that a 304 carries too,
/// as they help the client update its copy.
pub const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    ETAG,
    EXPIRES,
    LAST_MODIFIED,
    VARY,
];

/// The field names of stored responses, interned: the names an origin sends
/// repeat from response to response, so entries with the same names (in
/// the same order) and the same [`SHARED_VALUES`] share one `Fields`, and
/// with it the map their hits clone.
#[derive(Debug)]
pub(super) struct Fields {
    pub(super) names: Box<[HeaderName]>,
    /// Per name: the value all these entries share, or `Own`.
    pub(super) values: Box<[Value]>,
    /// How many are `Own`: the values each entry keeps in its block.
    pub(super) own: u16,
    /// `names` with their shared values and empty placeholders for the
    /// entries' own, then `X-Cache: HIT`, `Cache-Status` and `Age`; `None`
    /// when the origin sent one of those three itself, which then replaces
    /// it (such a hit builds its map field by field).
    pub(super) hit: Option<HeaderMap>,
    /// Where the first `ETag` and `Last-Modified` are.
    pub(super) etag: Option<u16>,
    pub(super) last_modified: Option<u16>,
    /// Where the fields a 304 carries are, in [`NOT_MODIFIED_FIELDS`] order.
    pub(super) not_modified: Box<[u16]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Value {
    /// In static memory (see [`shared_value`]).
    Shared(HeaderValue),
    Own,
}

/// Fields whose value names a kind of response, not one response: the same
/// for every response of a route, so entries share them instead of each
/// holding a copy (and a hit checking its bytes). `Cache-Control` too: a
/// route's policy (`public, max-age=60`) repeats from response to response;
/// an origin that counts its `max-age` down per response only spends the
/// budget sooner, after which its entries keep their own.
const SHARED_VALUES: [HeaderName; 5] = [CONTENT_TYPE, CONTENT_ENCODING, VARY, VIA, CACHE_CONTROL];

pub(super) static EMPTY: HeaderValue = HeaderValue::from_static("");

impl Fields {
    pub(super) fn intern(headers: &HeaderMap) -> Arc<Fields> {
        static TABLE: OnceLock<Mutex<Interned>> = OnceLock::new();
        let shape: Vec<(HeaderName, Value)> = headers
            .iter()
            .map(|(n, v)| {
                let value = SHARED_VALUES
                    .contains(n)
                    .then(|| shared_value(v))
                    .flatten()
                    .map_or(Value::Own, Value::Shared);
                (n.clone(), value)
            })
            .collect();
        let mut table = TABLE
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(fields) = table.map.get(shape.as_slice()).and_then(Weak::upgrade) {
            return fields;
        }
        let fields = Arc::new(Fields::build(&shape));
        // Names no entry uses any more are forgotten as the table grows.
        if table.map.len() >= table.prune_at {
            table.map.retain(|_, f| f.strong_count() > 0);
            table.prune_at = (2 * table.map.len()).max(64);
        }
        table
            .map
            .insert(shape.into_boxed_slice(), Arc::downgrade(&fields));
        fields
    }

    fn build(shape: &[(HeaderName, Value)]) -> Fields {
        let names: Box<[HeaderName]> = shape.iter().map(|(n, _)| n.clone()).collect();
        let values: Box<[Value]> = shape.iter().map(|(_, v)| v.clone()).collect();
        let labels = [&X_CACHE, &CACHE_STATUS, &AGE];
        let hit = (!names.iter().any(|n| labels.contains(&n))).then(|| {
            let mut h = HeaderMap::with_capacity(names.len() + labels.len());
            for (name, value) in names.iter().zip(values.iter()) {
                let value = match value {
                    Value::Shared(v) => v.clone(),
                    Value::Own => EMPTY.clone(),
                };
                h.append(static_name(name), value);
            }
            // In `labels` order, which the filter below checks.
            Outcome::Hit.write(&mut h);
            h.insert(AGE, HeaderValue::from_static("0"));
            h
        });
        // A hit writes values in the map's order: it must be the names'.
        let hit = hit.filter(|h| {
            h.iter()
                .map(|(n, _)| n)
                .eq(names.iter().chain(labels.iter().copied()))
        });
        let at = |name: &HeaderName| {
            names
                .iter()
                .position(|n| n == name)
                .and_then(|i| u16::try_from(i).ok())
        };
        let not_modified = NOT_MODIFIED_FIELDS
            .iter()
            .flat_map(|wanted| {
                names
                    .iter()
                    .enumerate()
                    .filter(move |(_, n)| *n == wanted)
                    .filter_map(|(i, _)| u16::try_from(i).ok())
            })
            .collect();
        let own = values.iter().filter(|v| matches!(v, Value::Own)).count();
        Fields {
            own: u16::try_from(own).unwrap_or(u16::MAX),
            etag: at(&ETAG),
            last_modified: at(&LAST_MODIFIED),
            not_modified,
            hit,
            names,
            values,
        }
    }
}

/// `name` with its text in static memory, so that cloning it on a hit
/// touches no reference count shared by the cores answering hits from every
/// entry with this name. Names are few; past a budget they are cloned.
pub(super) fn static_name(name: &HeaderName) -> HeaderName {
    static NAMES: Leaked<HeaderName> = OnceLock::new();
    leak(&NAMES, name, name.as_str().as_bytes(), |text| {
        std::str::from_utf8(text).ok().map(HeaderName::from_static)
    })
    .unwrap_or_else(|| name.clone())
}

/// `value` with its bytes in static memory, to be shared by every entry
/// that has it (see [`SHARED_VALUES`]): cloning it on a hit touches no
/// reference count. `None` past a budget, when such values turn out not to
/// repeat after all; entries then keep their own.
pub(super) fn shared_value(value: &HeaderValue) -> Option<HeaderValue> {
    static VALUES: Leaked<HeaderValue> = OnceLock::new();
    leak(&VALUES, value, value.as_bytes(), |bytes| {
        HeaderValue::from_maybe_shared(Bytes::from_static(bytes)).ok()
    })
}

/// Copies of names or values whose text was leaked, and how many bytes.
type Leaked<T> = OnceLock<Mutex<(HashMap<T, T>, usize)>>;

/// The copy of `item` in `table` whose text (`bytes`, made into an item by
/// `make`) lives in static memory: made on first sight, at most 64 KiB of
/// text per table, `None` past that.
fn leak<T: std::hash::Hash + Eq + Clone>(
    table: &'static Leaked<T>,
    item: &T,
    bytes: &[u8],
    make: impl FnOnce(&'static [u8]) -> Option<T>,
) -> Option<T> {
    const BUDGET: usize = 64 << 10;
    let mut table = table
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let (map, spent) = &mut *table;
    if let Some(copy) = map.get(item) {
        return Some(copy.clone());
    }
    if *spent + bytes.len() > BUDGET {
        return None;
    }
    *spent += bytes.len();
    let copy = make(Box::leak(bytes.into()))?;
    map.insert(item.clone(), copy.clone());
    Some(copy)
}

#[derive(Default)]
struct Interned {
    map: HashMap<Box<[(HeaderName, Value)]>, Weak<Fields>>,
    prune_at: usize,
}

/// `Age` values are prebuilt for the first hour so a hit formats nothing;
/// they are static, so cloning one touches no reference count that other
/// cores share.
pub fn age_value(age: Duration) -> HeaderValue {
    const PREBUILT: usize = 3600;
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let secs = age.as_secs();
    let table = TABLE.get_or_init(|| {
        let text: String = (0..PREBUILT).map(|s| s.to_string()).collect();
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut at = 0;
        (0..PREBUILT)
            .map(|s| {
                let len = s.to_string().len();
                let v = HeaderValue::from_static(&text[at..at + len]);
                at += len;
                v
            })
            .collect()
    });
    usize::try_from(secs)
        .ok()
        .and_then(|s| table.get(s))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}
