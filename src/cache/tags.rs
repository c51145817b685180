//! The local tag index: every tag with the entries filed under it, and
//! the URI tags that let an unsafe method find a URI's `Vary` variants.
//! [`Store`](super::Store) owns the index behind its lock; this file owns
//! its layout.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::entry::Entry;

/// Prefix of the tag that files a `Vary` variant under its URI, so an
/// unsafe method can drop all of that URI's variants (RFC 9111 §4.4). An
/// entry stored under the URI itself is found by its key, and only counts
/// as carrying the tag (see [`Store::insert`](super::Store::insert)), which spares every entry an
/// index slot and the tag's bytes. Local only: never mirrored to Redis.
pub const URI_TAG_PREFIX: &str = "#uri ";

pub fn uri_tag(primary: &str) -> Arc<str> {
    format!("{URI_TAG_PREFIX}{primary}").into()
}

pub fn is_local_tag(tag: &str) -> bool {
    tag.starts_with(URI_TAG_PREFIX)
}

/// Every tag with the entries filed under it, looked up by the tag's text.
pub(super) type TagIndex = HashSet<Filed>;

/// One tag of the index and its entries. Most tags (`game:{id}`,
/// `odds:{status}:{id}`, a URI) file one entry, so that case is 16 bytes:
/// the entry and which of its tags it is, whose text the entry holds. At
/// 100k entries a string and a map per tag would be megabytes.
#[derive(Debug)]
pub(super) enum Filed {
    One(Arc<Entry>, u32),
    Many(Box<Many>),
}

#[derive(Debug)]
pub(super) struct Many {
    tag: Arc<str>,
    entries: HashSet<ByKey>,
}

/// An entry in a set that finds it by its key.
#[derive(Debug)]
struct ByKey(Arc<Entry>);

impl Borrow<[u8]> for ByKey {
    fn borrow(&self) -> &[u8] {
        self.0.key_bytes()
    }
}

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key_bytes().hash(state);
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key_bytes() == other.0.key_bytes()
    }
}

impl Eq for ByKey {}

impl Filed {
    pub(super) fn tag(&self) -> &str {
        match self {
            Filed::One(e, i) => e.tag(*i as usize).unwrap_or_default(),
            Filed::Many(m) => &m.tag,
        }
    }

    /// Files `entry`'s tag number `i` under `filed`, the tag's slot if any;
    /// also returns the entry of the same key it displaced, if any.
    // `ByKey` hashes the entry's key, which never changes; only its `dead`
    // flag does.
    #[allow(clippy::mutable_key_type)]
    pub(super) fn insert(
        filed: Option<Filed>,
        entry: &Arc<Entry>,
        i: usize,
    ) -> (Filed, Option<Arc<Entry>>) {
        match filed {
            Some(Filed::One(e, _)) if e.key_bytes() != entry.key_bytes() => {
                let mut entries = HashSet::with_capacity(2);
                let tag = Arc::from(entry.tag(i).unwrap_or_default());
                entries.insert(ByKey(e));
                entries.insert(ByKey(Arc::clone(entry)));
                (Filed::Many(Box::new(Many { tag, entries })), None)
            }
            Some(Filed::Many(mut m)) => {
                let displaced = m.entries.replace(ByKey(Arc::clone(entry))).map(|b| b.0);
                (Filed::Many(m), displaced)
            }
            Some(Filed::One(e, _)) => (Filed::One(Arc::clone(entry), i as u32), Some(e)),
            None => (Filed::One(Arc::clone(entry), i as u32), None),
        }
    }

    /// Removes `entry` if it is still the one filed under its key; `None`
    /// when now empty.
    pub(super) fn remove(self, entry: &Entry) -> Option<Filed> {
        match self {
            Filed::One(e, _) if std::ptr::eq(&*e, entry) => None,
            Filed::One(..) => Some(self),
            Filed::Many(mut m) => {
                let key = entry.key_bytes();
                if m.entries
                    .get(key)
                    .is_some_and(|e| std::ptr::eq(&*e.0, entry))
                {
                    m.entries.remove(key);
                }
                if m.entries.len() > 1 {
                    return Some(Filed::Many(m));
                }
                let ByKey(e) = m.entries.into_iter().next()?;
                let i = e.tags().position(|t| *t == *m.tag)?;
                Some(Filed::One(e, i as u32))
            }
        }
    }

    pub(super) fn keys(&self) -> Vec<Arc<str>> {
        match self {
            Filed::One(e, _) => vec![Arc::from(e.key())],
            Filed::Many(m) => m.entries.iter().map(|e| Arc::from(e.0.key())).collect(),
        }
    }

    pub(super) fn into_entries(self) -> Vec<Arc<Entry>> {
        match self {
            Filed::One(e, _) => vec![e],
            Filed::Many(m) => m.entries.into_iter().map(|e| e.0).collect(),
        }
    }
}

impl Borrow<str> for Filed {
    fn borrow(&self) -> &str {
        self.tag()
    }
}

impl Hash for Filed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tag().hash(state);
    }
}

impl PartialEq for Filed {
    fn eq(&self, other: &Filed) -> bool {
        self.tag() == other.tag()
    }
}

impl Eq for Filed {}
