//! Structured Field Dictionaries (RFC 9651 §4.2), parsed strictly: the
//! syntax of the RFC 9213 targeted fields (`CDN-Cache-Control`,
//! `Oddscache-Cache-Control`).
//!
//! Only as much is kept as the cache-control rules need: each member's key
//! and the type of its value, with integers, booleans and strings. Any
//! syntax error fails the whole field, as RFC 9651 §4.2 requires, and the
//! caller then ignores it. Parameters are checked and dropped.

/// A member's value, as far as the cache-control rules look at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Item<'a> {
    Integer(i64),
    Boolean(bool),
    /// Inside the quotes, escapes left in place.
    String(&'a [u8]),
    /// A decimal, token, byte sequence, date, display string or inner list.
    Other,
}

/// The field's syntax is not a Dictionary.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Invalid;

/// Parses a Dictionary from the field's lines (joined by `,`, RFC 9651
/// §4.2). Keys are unique, each with its last value, in the order each key
/// first appeared.
pub(super) fn dictionary(line: &[u8]) -> Result<Vec<(&[u8], Item<'_>)>, Invalid> {
    let mut p = Parser { s: line, i: 0 };
    p.skip_sp();
    let mut members: Vec<(&[u8], Item<'_>)> = Vec::new();
    if p.done_after_trailing_sp() {
        return Ok(members);
    }
    loop {
        let key = p.key()?;
        let item = if p.eat(b'=') {
            p.member_value()?
        } else {
            p.parameters()?;
            Item::Boolean(true)
        };
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = item,
            None => members.push((key, item)),
        }
        p.skip_ows();
        if p.done_after_trailing_sp() {
            return Ok(members);
        }
        if !p.eat(b',') {
            return Err(Invalid);
        }
        p.skip_ows();
        if p.at_end() {
            return Err(Invalid); // a trailing comma
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    /// At the end once trailing spaces are dropped (which the field's
    /// parsing discards).
    fn done_after_trailing_sp(&self) -> bool {
        self.s[self.i..].iter().all(|&b| b == b' ')
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(&mut self) -> Result<&'a [u8], Invalid> {
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        {
            return Err(Invalid);
        }
        Ok(self.take_while(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        }))
    }

    fn member_value(&mut self) -> Result<Item<'a>, Invalid> {
        if self.eat(b'(') {
            loop {
                self.skip_sp();
                if self.eat(b')') {
                    break;
                }
                self.bare_item()?;
                self.parameters()?;
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return Err(Invalid);
                }
            }
            self.parameters()?;
            return Ok(Item::Other);
        }
        let item = self.bare_item()?;
        self.parameters()?;
        Ok(item)
    }

    fn parameters(&mut self) -> Result<(), Invalid> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    fn bare_item(&mut self) -> Result<Item<'a>, Invalid> {
        match self.peek().ok_or(Invalid)? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => {
                self.i += 1;
                self.string().map(Item::String)
            }
            b'*' | b'A'..=b'Z' | b'a'..=b'z' => {
                self.i += 1;
                self.take_while(|b| is_tchar(b) || matches!(b, b':' | b'/'));
                Ok(Item::Other)
            }
            b':' => {
                self.i += 1;
                self.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                if !self.eat(b':') {
                    return Err(Invalid);
                }
                Ok(Item::Other)
            }
            b'?' => {
                self.i += 1;
                let v = match self.peek() {
                    Some(b'0') => false,
                    Some(b'1') => true,
                    _ => return Err(Invalid),
                };
                self.i += 1;
                Ok(Item::Boolean(v))
            }
            b'@' => {
                self.i += 1;
                match self.number()? {
                    Item::Integer(_) => Ok(Item::Other),
                    _ => Err(Invalid),
                }
            }
            b'%' => {
                self.i += 1;
                if !self.eat(b'"') {
                    return Err(Invalid);
                }
                self.display_string()
            }
            _ => Err(Invalid),
        }
    }

    /// `sf-integer` (at most 15 digits) or `sf-decimal` (at most 12 and 3).
    fn number(&mut self) -> Result<Item<'a>, Invalid> {
        let negative = self.eat(b'-');
        let int = self.take_while(|b| b.is_ascii_digit());
        if int.is_empty() {
            return Err(Invalid);
        }
        if self.eat(b'.') {
            let frac = self.take_while(|b| b.is_ascii_digit());
            if int.len() > 12 || frac.is_empty() || frac.len() > 3 {
                return Err(Invalid);
            }
            return Ok(Item::Other);
        }
        if int.len() > 15 {
            return Err(Invalid);
        }
        let n = int.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        Ok(Item::Integer(if negative { -n } else { n }))
    }

    /// After the opening quote: printable ASCII, `\` escaping only `"` and `\`.
    fn string(&mut self) -> Result<&'a [u8], Invalid> {
        let start = self.i;
        loop {
            match self.peek().ok_or(Invalid)? {
                b'"' => {
                    let inner = &self.s[start..self.i];
                    self.i += 1;
                    return Ok(inner);
                }
                b'\\' => {
                    self.i += 1;
                    if !matches!(self.peek(), Some(b'"' | b'\\')) {
                        return Err(Invalid);
                    }
                    self.i += 1;
                }
                0x20..=0x7e => self.i += 1,
                _ => return Err(Invalid),
            }
        }
    }

    /// After `%"`: printable ASCII but `"` and `%`, which come as `%xx` in
    /// lowercase hex.
    fn display_string(&mut self) -> Result<Item<'a>, Invalid> {
        loop {
            match self.peek().ok_or(Invalid)? {
                b'"' => {
                    self.i += 1;
                    return Ok(Item::Other);
                }
                b'%' => {
                    let hex = self.s.get(self.i + 1..self.i + 3).ok_or(Invalid)?;
                    if !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                        return Err(Invalid);
                    }
                    self.i += 3;
                }
                0x20..=0x7e => self.i += 1,
                _ => return Err(Invalid),
            }
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(s: &str) -> Result<Vec<(&[u8], Item<'_>)>, Invalid> {
        dictionary(s.as_bytes())
    }

    #[test]
    fn members_and_their_types() {
        let d = dict(r#"max-age=60, no-store, private="set-cookie", x=?0, y=1.5, z=tok"#).unwrap();
        assert_eq!(
            d,
            [
                (&b"max-age"[..], Item::Integer(60)),
                (b"no-store", Item::Boolean(true)),
                (b"private", Item::String(b"set-cookie")),
                (b"x", Item::Boolean(false)),
                (b"y", Item::Other),
                (b"z", Item::Other),
            ]
        );
    }

    #[test]
    fn parameters_are_checked_and_dropped() {
        assert_eq!(
            dict("public;max-age=60").unwrap(),
            [(&b"public"[..], Item::Boolean(true))]
        );
        assert_eq!(
            dict("a=(1 2 \"x\");p, b=:aGk=:, c=@1659578233, d=%\"caf%c3%a9\"")
                .unwrap()
                .len(),
            4
        );
        assert_eq!(dict("a;P=1"), Err(Invalid));
    }

    #[test]
    fn a_later_duplicate_wins_in_first_place() {
        assert_eq!(
            dict("max-age=1, public, max-age=2").unwrap(),
            [
                (&b"max-age"[..], Item::Integer(2)),
                (b"public", Item::Boolean(true))
            ]
        );
    }

    #[test]
    fn empty_and_spaces_are_an_empty_dictionary() {
        assert_eq!(dict("").unwrap(), []);
        assert_eq!(dict("   ").unwrap(), []);
        assert_eq!(dict(" max-age=1 ").unwrap().len(), 1);
    }

    #[test]
    fn syntax_errors_fail_the_whole_field() {
        for bad in [
            "max-age=10000, &&&&&",
            "MAX-AGE=60",
            "max-age=60,",
            " , ",
            "max-age=",
            "a=\"unterminated",
            "a=\"bad \\x escape\"",
            "a=1234567890123456",
            "a=1.2345",
            "a=?2",
            "a=(1 2",
            "a=(1,2)",
            "a b",
            "a=:abc",
            "\tmax-age=1",
        ] {
            assert_eq!(dict(bad), Err(Invalid), "{bad:?}");
        }
    }
}
