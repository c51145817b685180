//! RFC 6901 JSON pointers, compiled once from `[watch]` and resolved
//! against a parsed body by reference.
//!
//! One extension: in `watch.games` a whole `*` segment fans out over the
//! elements of an array. Line names below `odds` are written in the same
//! escaped form, so a name can be read back as a pointer.

use serde_json::Value;

use super::doc::Node;

/// A parsed document a pointer can walk: the watcher's borrowed [`Node`],
/// or a `serde_json::Value`.
pub(crate) trait Tree: Sized {
    /// The value of `key` when this is an object.
    fn member(&self, key: &str) -> Option<&Self>;
    /// The elements when this is an array.
    fn elements(&self) -> Option<&[Self]>;
}

impl Tree for Node<'_> {
    fn member(&self, key: &str) -> Option<&Self> {
        Node::member(self, key)
    }

    fn elements(&self) -> Option<&[Self]> {
        match self {
            Node::Array(items) => Some(items),
            _ => None,
        }
    }
}

impl Tree for Value {
    fn member(&self, key: &str) -> Option<&Self> {
        self.as_object()?.get(key)
    }

    fn elements(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
}

/// A compiled pointer; empty is the whole document.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Pointer(Vec<Seg>);

/// One step of a compiled pointer.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    /// An unescaped object key, or an array index when it reads as one.
    Key(String),
    /// `*`: every element of an array.
    Each,
}

impl Pointer {
    /// Parses `s`. With `wildcards` (the `games` pointers) a whole `*`
    /// segment is `Each`; anywhere else `*` is refused rather than read
    /// literally, since `"/odds/*"` surely did not mean a key named `*`.
    pub(crate) fn parse(s: &str, wildcards: bool) -> Result<Pointer, &'static str> {
        if s.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err("it must be empty or start with '/'");
        };
        rest.split('/')
            .map(|raw| match (raw.contains('*'), wildcards, raw) {
                (false, _, _) => unescape(raw).map(Seg::Key),
                (true, true, "*") => Ok(Seg::Each),
                (true, true, _) => Err("'*' must be a whole segment"),
                (true, false, _) => Err("'*' is only allowed in watch.games"),
            })
            .collect::<Result<_, _>>()
            .map(Pointer)
    }

    /// Resolves a pointer; one with wildcards resolves to nothing here.
    pub(crate) fn get<'v, T: Tree>(&self, mut v: &'v T) -> Option<&'v T> {
        for seg in &self.0 {
            v = match seg {
                Seg::Key(key) => child(v, key)?,
                Seg::Each => return None,
            };
        }
        Some(v)
    }

    /// Calls `found` for every value the pointer reaches, in document order.
    pub(crate) fn each_match<'v, T: Tree>(&self, v: &'v T, found: &mut impl FnMut(&'v T)) {
        each_match(v, &self.0, found);
    }
}

/// Appends `/` and `key`, escaped (`~` as `~0`, `/` as `~1`).
pub(crate) fn push_segment(name: &mut String, key: &str) {
    name.push('/');
    if !key.bytes().any(|b| b == b'~' || b == b'/') {
        name.push_str(key);
        return;
    }
    for c in key.chars() {
        match c {
            '~' => name.push_str("~0"),
            '/' => name.push_str("~1"),
            c => name.push(c),
        }
    }
}

fn unescape(raw: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err("'~' must be followed by 0 or 1"),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

fn child<'v, T: Tree>(v: &'v T, key: &str) -> Option<&'v T> {
    let Some(items) = v.elements() else {
        return v.member(key);
    };
    // RFC 6901: an index is plain digits, with no leading zeros.
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
    if !plain || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    items.get(key.parse::<usize>().ok()?)
}

fn each_match<'v, T: Tree>(v: &'v T, pointer: &[Seg], found: &mut impl FnMut(&'v T)) {
    match pointer.split_first() {
        None => found(v),
        Some((Seg::Key(key), rest)) => {
            if let Some(next) = child(v, key) {
                each_match(next, rest, found);
            }
        }
        Some((Seg::Each, rest)) => {
            for item in v.elements().unwrap_or_default() {
                each_match(item, rest, found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get(pointer: &str, v: &Value) -> Option<Value> {
        Pointer::parse(pointer, false).unwrap().get(v).cloned()
    }

    fn all(pointer: &str, v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        let p = Pointer::parse(pointer, true).unwrap();
        p.each_match(v, &mut |found| out.push(found.clone()));
        out
    }

    #[test]
    fn rfc6901_examples() {
        // The document and answers of RFC 6901 §5.
        let doc = json!({"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3,
                         "g|h": 4, "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8});
        assert_eq!(get("", &doc), Some(doc.clone()));
        assert_eq!(get("/foo", &doc), Some(json!(["bar", "baz"])));
        assert_eq!(get("/foo/0", &doc), Some(json!("bar")));
        assert_eq!(get("/", &doc), Some(json!(0)));
        assert_eq!(get("/a~1b", &doc), Some(json!(1)));
        assert_eq!(get("/c%d", &doc), Some(json!(2)));
        assert_eq!(get("/ ", &doc), Some(json!(7)));
        assert_eq!(get("/m~0n", &doc), Some(json!(8)));
    }

    #[test]
    fn escapes_decode_in_order() {
        // "~01" is "~1" literally, not "/".
        let doc = json!({"~1": "tilde-one", "/": "slash"});
        assert_eq!(get("/~01", &doc), Some(json!("tilde-one")));
        assert_eq!(get("/~1", &doc), Some(json!("slash")));
    }

    #[test]
    fn array_indexes_are_strict() {
        let doc = json!({"a": [10, 11, 12]});
        assert_eq!(get("/a/2", &doc), Some(json!(12)));
        for bad in [
            "/a/3",
            "/a/01",
            "/a/-",
            "/a/+1",
            "/a/",
            "/a/x",
            "/a/99999999999999999999",
        ] {
            assert_eq!(get(bad, &doc), None, "{bad}");
        }
    }

    #[test]
    fn wildcards_fan_out_in_order_over_arrays_only() {
        let doc = json!({"l": [{"g": [1, 2]}, {"g": [3]}, {"x": 0}], "o": {"k": 1}});
        assert_eq!(all("/l/*/g/*", &doc), [json!(1), json!(2), json!(3)]);
        assert_eq!(all("/l/*/g", &doc), [json!([1, 2]), json!([3])]);
        assert!(all("/o/*", &doc).is_empty());
        assert!(all("/missing/*", &doc).is_empty());
        assert_eq!(Pointer::parse("/l/*", true).unwrap().get(&doc), None);
    }

    #[test]
    fn bad_pointers_are_refused() {
        let cases = [
            ("games", true, "it must be empty or start with '/'"),
            ("/a~2", true, "'~' must be followed by 0 or 1"),
            ("/a~", false, "'~' must be followed by 0 or 1"),
            ("/games/a*", true, "'*' must be a whole segment"),
            ("/**", true, "'*' must be a whole segment"),
            ("/odds/*", false, "'*' is only allowed in watch.games"),
        ];
        for (pointer, wildcards, problem) in cases {
            assert_eq!(
                Pointer::parse(pointer, wildcards),
                Err(problem),
                "{pointer}"
            );
        }
        assert!(Pointer::parse("/*/x/*", true).is_ok());
    }

    #[test]
    fn segments_escape_for_names() {
        let mut name = String::new();
        push_segment(&mut name, "a/b~c");
        push_segment(&mut name, "");
        assert_eq!(name, "/a~1b~0c/");
        assert_eq!(get(&name, &json!({"a/b~c": {"": true}})), Some(json!(true)));
    }
}
