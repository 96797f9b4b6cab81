//! `->` / `->>` over JSON text without building a tree.
//!
//! The value arrives as PostgreSQL's json/jsonb text output, which is valid JSON (text cast
//! to json is validated first), so a scanner that finds one member and returns the slice of
//! its value is enough — no allocation, and numbers keep their exact digits (a
//! `serde_json::Value` would round them through f64). Bracket depth is counted, not
//! recursed, so nesting depth costs no stack. Malformed input gives [`Malformed`], never a
//! panic. Duplicate keys: the last one wins, as in jsonb.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `i` is at an opening quote; returns (end after the closing quote, has escapes).
fn skip_string(b: &[u8], mut i: usize) -> Result<(usize, bool), Malformed> {
    i += 1;
    let mut escaped = false;
    loop {
        match b.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                i += 2;
            }
            Some(_) => i += 1,
            None => return Err(Malformed),
        }
    }
}

/// `i` is at the first byte of a value; returns the offset just past it.
fn skip_value(b: &[u8], i: usize) -> Result<usize, Malformed> {
    let mut i = i;
    let mut depth = 0usize;
    loop {
        match b.get(i) {
            None => return Err(Malformed),
            Some(b'"') => i = skip_string(b, i)?.0,
            Some(b'{' | b'[') => {
                depth += 1;
                i += 1;
            }
            Some(b'}' | b']') => {
                depth = depth.checked_sub(1).ok_or(Malformed)?;
                i += 1;
            }
            Some(b',' | b':' | b' ' | b'\t' | b'\n' | b'\r') if depth > 0 => i += 1,
            Some(_) => {
                let start = i;
                while !matches!(
                    b.get(i),
                    None | Some(b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    i += 1;
                }
                if i == start {
                    return Err(Malformed);
                }
            }
        }
        if depth == 0 {
            return Ok(i);
        }
    }
}

fn slice(doc: &str, start: usize, end: usize) -> Result<&str, Malformed> {
    doc.get(start..end).ok_or(Malformed)
}

/// The value of member `key` of a JSON object; `None` when absent or when `doc` is not an
/// object (PostgreSQL gives NULL there too).
pub(crate) fn field<'a>(doc: &'a str, key: &str) -> Result<Option<&'a str>, Malformed> {
    let b = doc.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Ok(None);
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    let mut found = None;
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(Malformed);
        }
        let (kend, escaped) = skip_string(b, i)?;
        let raw = slice(doc, i + 1, kend - 1)?;
        let matches = if escaped {
            unescape(raw)? == key
        } else {
            raw == key
        };
        i = ws(b, kend);
        if b.get(i) != Some(&b':') {
            return Err(Malformed);
        }
        let vstart = ws(b, i + 1);
        let vend = skip_value(b, vstart)?;
        if matches {
            found = Some(slice(doc, vstart, vend)?);
        }
        i = ws(b, vend);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return Ok(found),
            _ => return Err(Malformed),
        }
    }
}

/// Element `index` of a JSON array (negative counts from the end); `None` when out of range
/// or when `doc` is not an array.
pub(crate) fn element(doc: &str, index: i64) -> Result<Option<&str>, Malformed> {
    let b = doc.as_bytes();
    let start = ws(b, 0);
    if b.get(start) != Some(&b'[') {
        return Ok(None);
    }
    let target = if index < 0 {
        let mut n = 0i64;
        each_element(doc, start, |_| {
            n += 1;
            false
        })?;
        match n.checked_add(index) {
            Some(t) if t >= 0 => t,
            _ => return Ok(None),
        }
    } else {
        index
    };
    let mut at = 0i64;
    let mut found = None;
    each_element(doc, start, |v| {
        if at == target {
            found = Some(v);
            return true;
        }
        at += 1;
        false
    })?;
    Ok(found)
}

fn each_element<'a>(
    doc: &'a str,
    start: usize,
    mut f: impl FnMut(&'a str) -> bool,
) -> Result<(), Malformed> {
    let b = doc.as_bytes();
    let mut i = ws(b, start + 1);
    if b.get(i) == Some(&b']') {
        return Ok(());
    }
    loop {
        let vend = skip_value(b, i)?;
        if f(slice(doc, i, vend)?) {
            return Ok(());
        }
        i = ws(b, vend);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b']') => return Ok(()),
            _ => return Err(Malformed),
        }
    }
}

/// `->>`: a string's contents, SQL NULL for JSON null, any other value's text as is.
pub(crate) fn as_text(value: &str) -> Result<Option<Cow<'_, str>>, Malformed> {
    if value == "null" {
        return Ok(None);
    }
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if value.len() >= 2 => {
            if inner.contains('\\') {
                Ok(Some(Cow::Owned(unescape(inner)?)))
            } else {
                Ok(Some(Cow::Borrowed(inner)))
            }
        }
        _ => Ok(Some(Cow::Borrowed(value))),
    }
}

fn hex4(s: &[u8]) -> Result<u32, Malformed> {
    let mut v = 0u32;
    for &c in s.get(..4).ok_or(Malformed)? {
        v = v * 16 + char::from(c).to_digit(16).ok_or(Malformed)?;
    }
    Ok(v)
}

/// The contents of a JSON string (without its quotes) with escapes resolved. `\u0000` is
/// refused, as PostgreSQL's text cannot hold it.
fn unescape(raw: &str) -> Result<String, Malformed> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let run_end = b
            .get(i..)
            .and_then(|r| r.iter().position(|&c| c == b'\\'))
            .map_or(b.len(), |p| i + p);
        out.push_str(slice(raw, i, run_end)?);
        i = run_end;
        if i >= b.len() {
            break;
        }
        let esc = *b.get(i + 1).ok_or(Malformed)?;
        i += 2;
        let c = match esc {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(b.get(i..).unwrap_or(&[]))?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if b.get(i..i + 2) != Some(b"\\u") {
                        return Err(Malformed);
                    }
                    let lo = hex4(b.get(i + 2..).unwrap_or(&[]))?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(Malformed);
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                if code == 0 {
                    return Err(Malformed);
                }
                char::from_u32(code).ok_or(Malformed)?
            }
            _ => return Err(Malformed),
        };
        out.push(c);
    }
    Ok(out)
}
