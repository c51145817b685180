//! A parsed body that borrows from it.
//!
//! `serde_json::Value` owns every key and string and keeps objects in
//! B-trees: for an odds body that is most of the watcher's time. [`Node`]
//! borrows keys and strings from the body (only those with escapes are
//! copied) and keeps object members in a vector, in document order.
//!
//! It reads exactly what `Value` reads, through the same serde_json entry
//! points: the same syntax and UTF-8 checks, the same nesting cap, the same
//! `float_roundtrip` numbers (kept as `serde_json::Number`). Where a key
//! repeats, `Value` keeps the last; [`Node::member`] and [`members`] do too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One JSON value of a body.
#[derive(Debug, PartialEq)]
pub(crate) enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Members in document order, a repeated key included.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Parses a whole body; it fails exactly where
    /// `serde_json::from_slice::<Value>` does.
    pub(crate) fn parse(body: &'a [u8]) -> Result<Node<'a>, NotJson> {
        // Bytes that are not UTF-8 fail `from_slice` wherever they are:
        // outside a string no JSON token starts with one, and inside one
        // `from_slice` checks. Checking the whole body at once is faster
        // than string by string, and lets `from_str` skip its own checks.
        let text = std::str::from_utf8(body).map_err(|_| NotJson)?;
        serde_json::from_str(text).map_err(|_| NotJson)
    }

    /// The value of `key` when this is an object; the last one if the key
    /// repeats, as in `Value`.
    pub(crate) fn member(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Why a body is no [`Node`]: the caller needs no more than that.
#[derive(Debug, PartialEq)]
pub(crate) struct NotJson;

/// Calls `f` for each member of an object that no later member with the
/// same key overrides, in document order: the members a `Value` would hold.
pub(crate) fn members<'n, 'a>(
    members: &'n [(Cow<'a, str>, Node<'a>)],
    mut f: impl FnMut(&'n str, &'n Node<'a>),
) {
    if !has_repeated_key(members) {
        for (key, value) in members {
            f(key, value);
        }
        return;
    }
    // Only sloppy or hostile bodies get here.
    let last: HashMap<&str, usize> = (members.iter().enumerate())
        .map(|(i, (key, _))| (key.as_ref(), i))
        .collect();
    for (i, (key, value)) in members.iter().enumerate() {
        if last[key.as_ref()] == i {
            f(key, value);
        }
    }
}

/// Small objects are compared pairwise; larger ones sort their keys, so a
/// hostile object with many members costs n log n, not n².
fn has_repeated_key(members: &[(Cow<'_, str>, Node<'_>)]) -> bool {
    const PAIRWISE: usize = 16;
    if members.len() <= PAIRWISE {
        return (1..members.len()).any(|i| members[..i].iter().any(|(k, _)| *k == members[i].0));
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Mirrors serde_json's own `Value` visitor, borrowing where it can.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        Ok(Number::from_f64(v).map_or(Node::Null, Node::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v)))
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        Node::deserialize(d)
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        Ok(Node::Object(members))
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// JSON text, valid or not, that leans on what a `Value` does quietly:
    /// repeated keys, escaped keys and strings, numbers at and past the
    /// edges of `u64`, `i64` and `f64`, and deep nesting.
    pub(crate) fn arb_json_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just(r#""game_id""#.to_owned()),
            Just(r#""g\u0061me_id""#.to_owned()),
            Just(r#""games""#.to_owned()),
            Just(r#""status""#.to_owned()),
            Just(r#""odds""#.to_owned()),
            Just(r#""sport_id""#.to_owned()),
            Just(r#""a\/b""#.to_owned()),
            Just(r#""~""#.to_owned()),
            Just(r#""0""#.to_owned()),
            Just(r#""""#.to_owned()),
            "[a-c]{1,2}".prop_map(|k| format!("\"{k}\"")),
        ];
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            (-1000.0f64..1000.0).prop_map(|f| f.to_string()),
            prop::sample::select(vec![
                "-0",
                "-0.0",
                "0.1e-400",
                "1e400",
                "-1e400",
                "18446744073709551616",
                "-9223372036854775809",
                "2.10",
                "1E+2",
                "01",
                "1.",
                "-",
            ])
            .prop_map(str::to_owned),
        ];
        let string = prop_oneof![
            Just(r#""g-1""#.to_owned()),
            Just(r#""live""#.to_owned()),
            Just(r#""final""#.to_owned()),
            Just(r#""\u0067-1""#.to_owned()),
            Just(r#""\ud800""#.to_owned()),
            Just("\"a\u{7}b\"".to_owned()),
            "[ -!#-\\[\\]-~]{0,6}".prop_map(|s| format!("\"{s}\"")),
        ];
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            number,
            string,
        ];
        leaf.prop_recursive(8, 96, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key.clone(), inner), 0..8).prop_map(|members| {
                    let members: Vec<String> =
                        members.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    format!("{{{}}}", members.join(", "))
                }),
            ]
        })
    }

    /// The `Value` a node stands for, through [`members`].
    fn to_value(node: &Node<'_>) -> Value {
        match node {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.to_string()),
            Node::Array(items) => Value::Array(items.iter().map(to_value).collect()),
            Node::Object(all) => {
                let mut map = Map::new();
                members(all, |key, value| {
                    assert!(map.insert(key.to_owned(), to_value(value)).is_none());
                });
                Value::Object(map)
            }
        }
    }

    fn same_as_value(body: &[u8]) {
        let value = serde_json::from_slice::<Value>(body);
        let node = Node::parse(body);
        assert_eq!(node.is_ok(), value.is_ok(), "{node:?} vs {value:?}");
        if let (Ok(node), Ok(value)) = (node, value) {
            assert_eq!(to_value(&node), value);
        }
    }

    #[test]
    fn borrows_keys_and_strings_without_escapes() {
        let node = Node::parse(br#"{"a": "x", "b\u0062": "y\n"}"#).unwrap();
        let Node::Object(m) = &node else {
            panic!("{node:?}")
        };
        assert!(matches!(
            &m[0],
            (Cow::Borrowed("a"), Node::String(Cow::Borrowed("x")))
        ));
        assert!(matches!(&m[1].0, Cow::Owned(k) if k == "bb"));
        assert!(matches!(&m[1].1, Node::String(Cow::Owned(s)) if s == "y\n"));
    }

    #[test]
    fn repeated_keys_keep_the_last_like_value() {
        let body = br#"{"a": {"x": 1}, "b": 2, "a": {"y": 3}}"#;
        let node = Node::parse(body).unwrap();
        assert_eq!(
            node.member("a"),
            Some(&Node::parse(br#"{"y": 3}"#).unwrap())
        );
        same_as_value(body);
        // Past the pairwise size too.
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\": {i}", i % 30)).collect();
        same_as_value(format!("{{{}}}", many.join(",")).as_bytes());
        let distinct: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        same_as_value(format!("{{{}}}", distinct.join(",")).as_bytes());
    }

    #[test]
    fn refuses_what_value_refuses() {
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for body in [
            &b"1e400"[..],
            b"-1e400",
            b"\"\\ud800\"",
            b"\"\xff\"",
            b"\xff",
            b"[1]\xc3",
            b"{\"a\": 1, \xe2\x82: 2}",
            "\"\u{e9}\u{20ac}\"".as_bytes(),
            b"{\"a\" 1}",
            b"[1,]",
            b"1 2",
            b"",
            deep(127).as_bytes(),
            deep(128).as_bytes(),
        ] {
            same_as_value(body);
        }
        assert!(Node::parse(deep(127).as_bytes()).is_ok());
        assert!(Node::parse(deep(128).as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn parses_like_value(text in arb_json_text()) {
            same_as_value(text.as_bytes());
        }

        #[test]
        fn parses_damaged_text_like_value(
            text in arb_json_text(), at: prop::sample::Index, byte: u8,
        ) {
            let mut body = text.into_bytes();
            body.insert(at.index(body.len() + 1), byte);
            same_as_value(&body);
        }

        #[test]
        fn parses_bytes_like_value(body in prop::collection::vec(any::<u8>(), 0..64)) {
            same_as_value(&body);
        }
    }
}
