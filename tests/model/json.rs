//! A tiny ordered JSON value for outputs and state views: objects keep their field order
//! (serde_json's `preserve_order` feature is not enabled), and the compact text is exact.

use rust_decimal::Decimal;

/// A JSON value whose objects keep insertion order.
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// An output or state object: ordered `(field, value)` pairs.
pub type Obj = Vec<(String, J)>;

impl J {
    pub fn s(text: impl Into<String>) -> J {
        J::Str(text.into())
    }

    /// A decimal amount as a normalized string (`"12.5"`, `"0"`, `"-3"`).
    pub fn d(value: Decimal) -> J {
        J::Str(format_decimal(value))
    }

    pub fn opt_s(text: Option<&str>) -> J {
        text.map_or(J::Null, J::s)
    }

    pub fn opt_d(value: Option<Decimal>) -> J {
        value.map_or(J::Null, J::d)
    }

    pub fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(n) => out.push_str(&n.to_string()),
            J::Str(text) => write_str(text, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            J::Obj(fields) => write_obj(fields, out),
        }
    }

    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }
}

fn write_obj(fields: &[(String, J)], out: &mut String) {
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(key, out);
        out.push(':');
        value.write(out);
    }
    out.push('}');
}

/// A JSON string literal, escaped as serde_json escapes it (`"`, `\\`, control characters).
fn write_str(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Compact JSON text of an output object, fields in their given order.
pub fn output_to_json_string(obj: &Obj) -> String {
    let mut out = String::new();
    write_obj(obj, &mut out);
    out
}

/// Builds an object from `(name, value)` pairs.
pub fn obj(fields: Vec<(&str, J)>) -> Obj {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Normalized plain notation: no trailing zeros, `"0"` for zero, `-` for negatives.
pub fn format_decimal(value: Decimal) -> String {
    if value.is_zero() {
        return "0".to_string();
    }
    value.normalize().to_string()
}

/// Standard base64 with padding (for dead letters of payloads that are not UTF-8).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
