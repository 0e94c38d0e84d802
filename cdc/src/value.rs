//! Column values, as pgoutput sends them in text format, to JSON.
//!
//! Integers and booleans become JSON numbers and booleans; `json`/`jsonb` become the JSON they hold;
//! arrays become JSON arrays (elements converted by the element type, `NULL` as null); `numeric` stays a
//! string so no digit is lost; everything else (text, uuid, dates and timestamps in ISO form, enums, …)
//! is the string Postgres printed. Floats that JSON cannot hold (NaN, ±Infinity) stay strings.

use serde_json::{Number, Value};

/// Type OIDs from PostgreSQL's `pg_type.dat` (stable across versions).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// The element type of the common array types.
fn element_of(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => oid::BOOL,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1009 => oid::TEXT,
        1015 => oid::VARCHAR,
        1014 => 1042,
        1028 => oid::OID,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1231 => oid::NUMERIC,
        2951 => oid::UUID,
        1182 => oid::DATE,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        199 => oid::JSON,
        3807 => oid::JSONB,
        _ => return None,
    })
}

/// Converts one text-format value of type `type_oid`.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    match type_oid {
        oid::BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::String(text.to_owned()),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        oid::JSON | oid::JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        other => match element_of(other) {
            Some(element) => parse_array(text, element).unwrap_or_else(|| Value::String(text.to_owned())),
            None => Value::String(text.to_owned()),
        },
    }
}

/// Whether [`text_to_json`] makes a value of this type a JSON string (text, uuid, dates, enums, …): the
/// types whose text an event rule reads.
pub fn is_json_string(type_oid: u32) -> bool {
    !matches!(
        type_oid,
        oid::BOOL
            | oid::INT2
            | oid::INT4
            | oid::INT8
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::JSON
            | oid::JSONB
    ) && element_of(type_oid).is_none()
}

/// Appends one text-format value of type `type_oid` as JSON: the same JSON as [`text_to_json`] gives,
/// written straight out for the common types (strings, integers, booleans).
pub fn write_json(out: &mut String, type_oid: u32, text: &str) {
    match type_oid {
        oid::BOOL if text == "t" => out.push_str("true"),
        oid::BOOL if text == "f" => out.push_str("false"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => match text.parse::<i64>() {
            Ok(n) => {
                use std::fmt::Write;
                let _ = write!(out, "{n}");
            }
            Err(_) => push_json_str(out, text),
        },
        _ if is_json_string(type_oid) => push_json_str(out, text),
        _ => out.push_str(&text_to_json(type_oid, text).to_string()),
    }
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            use std::fmt::Write;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Parses an array literal such as `{1,2,NULL}`, `{{a,b},{"c d",e}}` or `[0:1]={x,y}`. `None` when the
/// literal is malformed.
pub fn parse_array(text: &str, element: u32) -> Option<Value> {
    // Arrays with non-default bounds are printed with a dimension prefix: drop it.
    let body = match text.strip_prefix('[') {
        Some(_) => text.split_once('=')?.1,
        None => text,
    };
    let mut chars = body.chars().peekable();
    let value = parse_level(&mut chars, element, 0)?;
    if chars.next().is_some() {
        return None;
    }
    Some(value)
}

const MAX_DEPTH: usize = 6;

fn parse_level(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    element: u32,
    depth: usize,
) -> Option<Value> {
    if depth > MAX_DEPTH || chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(Value::Array(items));
    }
    loop {
        match chars.peek()? {
            '{' => items.push(parse_level(chars, element, depth + 1)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                items.push(text_to_json(element, &s));
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    if c == '{' || c == '"' || c == '\\' {
                        return None;
                    }
                    s.push(c);
                    chars.next();
                }
                let s = s.trim();
                if s.is_empty() {
                    return None;
                }
                items.push(if s == "NULL" { Value::Null } else { text_to_json(element, s) });
            }
        }
        match chars.next()? {
            ',' => continue,
            '}' => return Some(Value::Array(items)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn written(type_oid: u32, text: &str) -> String {
        let mut out = String::new();
        write_json(&mut out, type_oid, text);
        out
    }

    #[test]
    fn written_json_is_what_the_converter_gives() {
        let cases: &[(u32, &[&str])] = &[
            (oid::BOOL, &["t", "f", "x"]),
            (oid::INT2, &["0", "-32768", "12"]),
            (oid::INT4, &["2147483647", "-1"]),
            (oid::INT8, &["9223372036854775807", "-9223372036854775808", "99999999999999999999"]),
            (oid::FLOAT8, &["1.5", "NaN", "-Infinity", "1e300"]),
            (oid::NUMERIC, &["12000.00", "NaN", "-0.000001"]),
            (
                oid::TEXT,
                &["plain", "quote \" and \\ back", "tab\tnew\nline\r", "\u{1}\u{8}\u{c}\u{1f}", "ünï 🚀", ""],
            ),
            (oid::JSONB, &[r#"{"a": [1, "x"]}"#, "not json"]),
            (oid::UUID, &["0190a000-0000-7000-8000-000000000021"]),
            (oid::TIMESTAMPTZ, &["2026-11-28 16:17:10.435383+00"]),
            (1007, &["{1,2,NULL}", "{{1},{2}}", "{bad"]),
            (1009, &[r#"{a,"b c",NULL}"#]),
            (12345, &["an enum label"]),
        ];
        for (type_oid, texts) in cases {
            for text in *texts {
                assert_eq!(
                    written(*type_oid, text),
                    text_to_json(*type_oid, text).to_string(),
                    "{type_oid} {text:?}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in any::<String>()) {
            let mut out = String::new();
            push_json_str(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_string(&s).expect("a string serialises"));
        }
    }

    #[test]
    fn scalars_keep_their_meaning() {
        assert_eq!(text_to_json(oid::INT8, "-9223372036854775808"), json!(i64::MIN));
        assert_eq!(text_to_json(oid::INT4, "42"), json!(42));
        assert_eq!(text_to_json(oid::BOOL, "t"), json!(true));
        assert_eq!(text_to_json(oid::BOOL, "f"), json!(false));
        let forty = "1234567890123456789012345678901234567890.0000000001";
        assert_eq!(text_to_json(oid::NUMERIC, forty), json!(forty), "numeric keeps every digit");
        assert_eq!(text_to_json(oid::NUMERIC, "NaN"), json!("NaN"));
        assert_eq!(text_to_json(oid::FLOAT8, "Infinity"), json!("Infinity"));
        assert_eq!(text_to_json(oid::FLOAT8, "1.5"), json!(1.5));
        assert_eq!(text_to_json(oid::JSONB, r#"{"a": [1, null]}"#), json!({"a": [1, null]}));
        assert_eq!(
            text_to_json(oid::UUID, "0190a000-0000-7000-8000-000000000001"),
            json!("0190a000-0000-7000-8000-000000000001")
        );
        assert_eq!(
            text_to_json(oid::TIMESTAMPTZ, "2026-11-28 05:02:08.044272+00"),
            json!("2026-11-28 05:02:08.044272+00")
        );
        assert_eq!(
            text_to_json(99999, "an enum label"),
            json!("an enum label"),
            "unknown types (enums) stay text"
        );
    }

    #[test]
    fn arrays_become_json_arrays() {
        assert_eq!(text_to_json(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(
            text_to_json(1009, r#"{a,"b c","d\"e","NULL",NULL}"#),
            json!(["a", "b c", "d\"e", "NULL", null])
        );
        assert_eq!(text_to_json(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(text_to_json(1007, "[0:1]={7,8}"), json!([7, 8]));
        assert_eq!(text_to_json(1009, "{}"), json!([]));
        assert_eq!(text_to_json(1231, "{1.10,NaN}"), json!(["1.10", "NaN"]));
        assert_eq!(text_to_json(1000, "{t,f}"), json!([true, false]));
        assert_eq!(text_to_json(1007, "{1,2"), json!("{1,2"), "a malformed literal stays text");
    }

    fn literal(items: &[Option<String>]) -> String {
        let quoted: Vec<String> = items
            .iter()
            .map(|i| match i {
                None => "NULL".to_owned(),
                Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            })
            .collect();
        format!("{{{}}}", quoted.join(","))
    }

    proptest! {
        #[test]
        fn text_arrays_round_trip(items in proptest::collection::vec(proptest::option::of(".{0,12}"), 0..8)) {
            let expected: Vec<Value> = items.iter().map(|i| i.clone().map_or(Value::Null, Value::String)).collect();
            prop_assert_eq!(parse_array(&literal(&items), oid::TEXT), Some(Value::Array(expected)));
        }

        #[test]
        fn any_string_parses_or_fails_without_panicking(s in ".{0,64}") {
            let _ = parse_array(&s, oid::INT4);
            let _ = text_to_json(1009, &s);
        }
    }
}
