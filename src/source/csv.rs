//! CSV bodies (`format = "csv"`): a header row, then one record per row,
//! RFC 4180 quoting. Each row becomes the JSON object a JSON API would have
//! sent for it, so ids, watermarks, keyset cursors and the curated format's
//! type inference work exactly as for JSON:
//!
//! - an empty field is `null`;
//! - `true` / `false` are booleans;
//! - a field that is a JSON number (`42`, `-1.5`, `6.02e23`; not `007`, `+1`
//!   or `.5`) is that number, written as it came (no rounding here);
//! - anything else is a string.
//!
//! A header with an empty or repeated name, a row with another number of
//! fields than the header, or bytes that are not UTF-8 make the page a bad
//! response (dead-lettered with the row number), never a guess.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The records of a CSV body as JSON object texts.
pub fn records(body: &[u8]) -> Result<Vec<Cow<'static, str>>, String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body);
    let header = reader
        .headers()
        .map_err(|e| describe(&e, "the header row"))?
        .clone();
    let mut keys = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(format!("csv header column {} has no name", i + 1));
        }
        if header.iter().take(i).any(|earlier| earlier == name) {
            return Err(format!("csv header repeats column {name:?}"));
        }
        keys.push(serde_json::to_string(name).map_err(|e| e.to_string())?);
    }
    let mut out = Vec::new();
    let mut row = ::csv::StringRecord::new();
    loop {
        match reader.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(describe(&e, "a row")),
        }
        let mut text = String::with_capacity(row.as_slice().len() + 8 * keys.len() + 2);
        text.push('{');
        for (i, (key, field)) in keys.iter().zip(row.iter()).enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(key);
            text.push(':');
            push_value(&mut text, field);
        }
        text.push('}');
        out.push(Cow::Owned(text));
    }
    Ok(out)
}

fn push_value(text: &mut String, field: &str) {
    if field.is_empty() {
        text.push_str("null");
    } else if field == "true" || field == "false" || is_json_number(field) {
        text.push_str(field);
    } else {
        // A string always serializes.
        let _ = write!(text, "{}", serde_json::Value::from(field));
    }
}

/// The JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

fn describe(error: &::csv::Error, what: &str) -> String {
    let line = error
        .position()
        .map(|p| format!(" (line {})", p.line()))
        .unwrap_or_default();
    match error.kind() {
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("csv row{line} has {len} fields, the header {expected_len}"),
        ::csv::ErrorKind::Utf8 { .. } => format!("csv {what}{line} is not valid utf-8"),
        _ => format!("malformed csv{line}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parsed(body: &str) -> Vec<Value> {
        records(body.as_bytes())
            .unwrap()
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }

    #[test]
    fn rows_become_the_json_objects_an_api_would_send() {
        let body = "\u{feff}id,name,amount,active,zip,note,big\r\n\
                    1,\"Smith, Jane\",12.50,true,007,\"she said \"\"hi\"\"\",123456789012345678901234567890\r\n\
                    2,Ümit,-3,false,,\"two\nlines\",6.02e23\n";
        let rows = parsed(body);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            json!({"id": 1, "name": "Smith, Jane", "amount": 12.5, "active": true,
                   "zip": "007", "note": "she said \"hi\"", "big": 1.2345678901234568e29})
        );
        // Numbers are written as they came: the curated format sees the text.
        assert!(
            records(body.as_bytes()).unwrap()[0].contains("\"big\":123456789012345678901234567890")
        );
        assert_eq!(
            rows[1],
            json!({"id": 2, "name": "Ümit", "amount": -3, "active": false,
                   "zip": null, "note": "two\nlines", "big": 6.02e23})
        );
        assert!(parsed("a,b\n").is_empty());
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for yes in ["0", "-0", "42", "-1.5", "6.02e23", "1E-7", "10.0"] {
            assert!(is_json_number(yes), "{yes}");
        }
        for no in [
            "", "-", "007", "+1", ".5", "1.", "1e", "0x10", "NaN", "inf", "1 ",
        ] {
            assert!(!is_json_number(no), "{no}");
        }
    }

    #[test]
    fn ragged_rows_bad_headers_and_bad_bytes_are_refused_with_the_place() {
        let ragged = records(b"a,b\n1,2\n3\n").unwrap_err();
        assert!(
            ragged.contains("1 fields") && ragged.contains("line 3"),
            "{ragged}"
        );
        let repeated = records(b"a,b,a\n1,2,3\n").unwrap_err();
        assert!(repeated.contains("repeats column \"a\""), "{repeated}");
        let unnamed = records(b"a,,c\n1,2,3\n").unwrap_err();
        assert!(unnamed.contains("column 2 has no name"), "{unnamed}");
        let latin1 = records(b"a,b\n1,caf\xe9\n").unwrap_err();
        assert!(latin1.contains("not valid utf-8"), "{latin1}");
    }
}
