//! Query strings as the admin and push endpoints read them: `name=value`
//! pairs, form-decoded, with a clear error for a broken escape.

/// The pairs of `query` in order, decoded; empty pairs (`a=1&&b=2`) are
/// skipped, and a pair without `=` has an empty value.
pub fn pairs(
    query: Option<&str>,
) -> impl Iterator<Item = Result<(String, String), &'static str>> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(name), percent_decode(value)) {
                (Some(name), Some(value)) => Ok((name, value)),
                _ => Err("the query is not valid percent-encoding"),
            }
        })
}

/// Decodes `%XX` escapes and `+` (form encoding); `None` on a broken
/// escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(
            percent_decode("sr%3Amatch%3A1").as_deref(),
            Some("sr:match:1")
        );
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn pairs_in_order_with_empty_ones_skipped() {
        let got: Vec<_> = pairs(Some("a=1&&b&c=%41")).collect();
        assert_eq!(
            got,
            [
                Ok(("a".into(), "1".into())),
                Ok(("b".into(), String::new())),
                Ok(("c".into(), "A".into()))
            ]
        );
        assert!(pairs(Some("a=%zz")).next().unwrap().is_err());
        assert_eq!(pairs(None).count(), 0);
    }
}
