//! The outline of a JSON text: its syntax checked completely, and the entries of its top-level
//! object, read without recursion.
//!
//! Owns: reading a message that serde refused, so that the input decoder can keep SEMANTICS
//! §2.1's order of checks (malformed JSON, then an unknown `type`, then the field) and name the
//! field at fault. serde_json refuses a text nested deeper than 128 levels as if it were
//! malformed; a well-formed message with an unknown field whose value is nested that deep is
//! still a message with an unknown field (`invalid_field`), so the syntax is checked here,
//! where depth costs one byte of heap per level and no stack.
//!
//! Must never: recurse, panic on any bytes, or accept what serde_json refuses as a
//! `serde_json::Value` for a reason other than its depth limit (and the reverse). Only refused
//! input is read here: the decoder's fast paths never come here.
//!
//! Invariants: [`read`] accepts exactly RFC 8259 JSON texts with serde_json's strictness:
//! UTF-8 throughout, no control characters in strings, escapes among `\" \\ \/ \b \f \n \r \t
//! \uXXXX` with UTF-16 surrogates paired, numbers `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
//! of any length, whitespace among space, tab, newline and carriage return. A unit test and the
//! fuzz target `input_decode` compare it with serde_json on texts within serde_json's depth.

use std::borrow::Cow;
use std::fmt;

/// The JSON type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    /// The type as serde names it in its messages (`boolean`, `map`, …).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "boolean",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "sequence",
            Kind::Object => "map",
        }
    }
}

/// One entry of the top-level object, in the order written (repeated keys are all kept).
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    /// The key, unescaped.
    pub key: Cow<'a, str>,
    pub kind: Kind,
    /// The value's text exactly as written (a complete JSON value).
    pub text: &'a str,
    /// The value unescaped, when it is a string.
    pub string: Option<Cow<'a, str>>,
}

/// What a well-formed JSON text is.
#[derive(Debug, PartialEq)]
pub enum Outline<'a> {
    Object(Vec<Entry<'a>>),
    /// Not an object: the top-level value's type.
    Other(Kind),
}

/// Where and why a text is not JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the first byte that cannot be read.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

type Read<T> = Result<T, SyntaxError>;

/// Reads `payload` as one JSON text: its outline, or the first syntax error.
pub fn read(payload: &[u8]) -> Read<Outline<'_>> {
    let text = std::str::from_utf8(payload).map_err(|error| SyntaxError {
        at: error.valid_up_to(),
        what: "invalid UTF-8",
    })?;
    let mut reader = Reader {
        text,
        bytes: payload,
        at: 0,
    };
    reader.skip_whitespace();
    let outline = if reader.peek() == Some(b'{') {
        Outline::Object(reader.top_level_object()?)
    } else {
        Outline::Other(reader.value()?)
    };
    reader.skip_whitespace();
    if reader.at != payload.len() {
        return Err(reader.error("trailing characters"));
    }
    Ok(outline)
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &'static str) -> SyntaxError {
        SyntaxError { at: self.at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// The next byte, consumed; the end of the text is an error.
    fn bump(&mut self) -> Read<u8> {
        let byte = self.peek().ok_or_else(|| self.error("unexpected end"))?;
        self.at += 1;
        Ok(byte)
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The next non-whitespace byte must be `expected`.
    fn expect(&mut self, expected: u8, what: &'static str) -> Read<()> {
        self.skip_whitespace();
        if self.peek() != Some(expected) {
            return Err(self.error(what));
        }
        self.at += 1;
        Ok(())
    }

    fn top_level_object(&mut self) -> Read<Vec<Entry<'a>>> {
        self.expect(b'{', "expected '{'")?;
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(entries);
        }
        loop {
            self.expect(b'"', "expected a key")?;
            let key = self.string_body(true)?.unwrap_or(Cow::Borrowed(""));
            self.expect(b':', "expected ':'")?;
            self.skip_whitespace();
            let start = self.at;
            let (kind, string) = if self.peek() == Some(b'"') {
                self.at += 1;
                (Kind::String, self.string_body(true)?)
            } else {
                (self.value()?, None)
            };
            entries.push(Entry {
                key,
                kind,
                text: &self.text[start..self.at],
                string,
            });
            self.skip_whitespace();
            match self.bump()? {
                b',' => {}
                b'}' => return Ok(entries),
                _ => {
                    self.at -= 1;
                    return Err(self.error("expected ',' or '}'"));
                }
            }
        }
    }

    /// One complete value, nested to any depth: the open containers are a stack of their
    /// closing brackets on the heap.
    fn value(&mut self) -> Read<Kind> {
        self.skip_whitespace();
        let mut open: Vec<u8> = Vec::new();
        let mut kind = None;
        loop {
            // A value starts here.
            self.skip_whitespace();
            let first = self.bump()?;
            let this = match first {
                b'{' => Kind::Object,
                b'[' => Kind::Array,
                b'"' => Kind::String,
                b't' | b'f' => Kind::Bool,
                b'n' => Kind::Null,
                b'-' | b'0'..=b'9' => Kind::Number,
                _ => {
                    self.at -= 1;
                    return Err(self.error("expected a value"));
                }
            };
            kind.get_or_insert(this);
            match first {
                b'{' => {
                    self.skip_whitespace();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        self.member_key()?;
                        open.push(b'}');
                        continue;
                    }
                }
                b'[' => {
                    self.skip_whitespace();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                b'"' => {
                    self.string_body(false)?;
                }
                b't' => self.literal(b"rue")?,
                b'f' => self.literal(b"alse")?,
                b'n' => self.literal(b"ull")?,
                _ => self.number_rest(first)?,
            }
            // A value ended: close what it completes, up to the next element or the end.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(kind.unwrap_or(this));
                };
                self.skip_whitespace();
                match self.bump()? {
                    b',' => {
                        if close == b'}' {
                            self.member_key()?;
                        }
                        break;
                    }
                    byte if byte == close => {
                        open.pop();
                    }
                    _ => {
                        self.at -= 1;
                        return Err(self.error(if close == b'}' {
                            "expected ',' or '}'"
                        } else {
                            "expected ',' or ']'"
                        }));
                    }
                }
            }
        }
    }

    /// A nested object's `"key":`.
    fn member_key(&mut self) -> Read<()> {
        self.expect(b'"', "expected a key")?;
        self.string_body(false)?;
        self.expect(b':', "expected ':'")
    }

    fn literal(&mut self, rest: &[u8]) -> Read<()> {
        if self.bytes.get(self.at..self.at + rest.len()) != Some(rest) {
            return Err(self.error("invalid literal"));
        }
        self.at += rest.len();
        Ok(())
    }

    fn digits(&mut self) -> Read<()> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error("invalid number"));
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        Ok(())
    }

    /// A number whose first byte (`-` or a digit) was read.
    fn number_rest(&mut self, first: u8) -> Read<()> {
        let lead = if first == b'-' { self.bump()? } else { first };
        match lead {
            b'0' => {}
            b'1'..=b'9' => {
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
            }
            _ => {
                self.at -= 1;
                return Err(self.error("invalid number"));
            }
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    fn hex4(&mut self) -> Read<u16> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("unexpected end in an escape"))?;
        let mut value = 0u16;
        for &digit in digits {
            let nibble = (digit as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid escape"))?;
            value = value * 16 + nibble as u16;
        }
        self.at += 4;
        Ok(value)
    }

    /// A string whose opening quote was read; its unescaped text when `keep`.
    fn string_body(&mut self, keep: bool) -> Read<Option<Cow<'a, str>>> {
        let start = self.at;
        let mut owned: Option<String> = None;
        let mut plain_from = start;
        loop {
            let byte = self
                .peek()
                .ok_or_else(|| self.error("unexpected end in a string"))?;
            match byte {
                b'"' => {
                    let tail = &self.text[plain_from..self.at];
                    self.at += 1;
                    if !keep {
                        return Ok(None);
                    }
                    return Ok(Some(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut text) => {
                            text.push_str(tail);
                            Cow::Owned(text)
                        }
                    }));
                }
                0..=0x1F => return Err(self.error("control character in a string")),
                b'\\' => {
                    let text = owned.get_or_insert_with(String::new);
                    text.push_str(&self.text[plain_from..self.at]);
                    self.at += 1;
                    let unescaped = match self.bump()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => {
                            self.at -= 1;
                            return Err(self.error("invalid escape"));
                        }
                    };
                    text.push(unescaped);
                    plain_from = self.at;
                }
                _ => self.at += 1,
            }
        }
    }

    /// `\u` was read: one character, from one escape or a surrogate pair of two.
    fn unicode_escape(&mut self) -> Read<char> {
        let high = self.hex4()?;
        match high {
            0xDC00..=0xDFFF => Err(self.error("lone surrogate in an escape")),
            0xD800..=0xDBFF => {
                if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                    return Err(self.error("lone surrogate in an escape"));
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.error("lone surrogate in an escape"));
                }
                let code = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                char::from_u32(code).ok_or_else(|| self.error("invalid escape"))
            }
            _ => char::from_u32(u32::from(high)).ok_or_else(|| self.error("invalid escape")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's verdict on a text, where its depth limit does not decide it.
    fn serde_verdict(text: &[u8]) -> Option<bool> {
        match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(_) => Some(true),
            Err(error) if error.to_string().starts_with("recursion limit exceeded") => None,
            Err(_) => Some(false),
        }
    }

    #[test]
    fn agrees_with_serde_json_on_syntax() {
        let cases: &[&str] = &[
            "{}",
            " { } ",
            "[]",
            "1",
            "-0",
            "-0.5e+10",
            "01",
            "1.",
            ".5",
            "1e",
            "1E-",
            "-",
            "--1",
            "123456789012345678901234567890e999999",
            "true",
            "tru",
            "nul",
            "null x",
            r#""a\u00e9\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            r#""\ud83dx""#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12G4""#,
            "\"a\u{1}b\"",
            "\"tab\there\"",
            r#"{"a":1,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a" 1}"#,
            r#"{1:2}"#,
            r#"{"a":[1,2,{"b":[]}],"c":{"d":null}}"#,
            r#"[1,]"#,
            r#"[,1]"#,
            r#"[1 2]"#,
            r#"{"a":{"b":1]}"#,
            "{\"a\":\"\u{e9}\"}",
            "",
            "   ",
            "\u{feff}{}",
            "{}\n",
            "{}\u{0b}",
            r#"{"a":1}{"b":2}"#,
        ];
        for case in cases {
            assert_eq!(
                serde_verdict(case.as_bytes()),
                Some(read(case.as_bytes()).is_ok()),
                "{case:?}"
            );
        }
        for bytes in [&b"{\"a\":\"\xff\"}"[..], b"\xc3", b"{\"\xe2\x82\":1}"] {
            assert_eq!(serde_verdict(bytes), Some(read(bytes).is_ok()), "{bytes:?}");
        }
    }

    #[test]
    fn reads_the_top_level_entries_as_serde_json_does() {
        let text = r#" {"type" : "usage", "id":"e\"1", "q":[1,{"x":[]}], "n":-1.5e3, "z":null,
                       "k\u00e9y":{"a":"b"}, "id":"again"} "#;
        let Ok(Outline::Object(entries)) = read(text.as_bytes()) else {
            panic!("an object");
        };
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_ref()).collect();
        assert_eq!(keys, ["type", "id", "q", "n", "z", "kéy", "id"]);
        assert_eq!(entries[1].string.as_deref(), Some("e\"1"));
        assert_eq!(entries[2].kind, Kind::Array);
        assert_eq!(entries[2].text, r#"[1,{"x":[]}]"#);
        assert_eq!(entries[3].text, "-1.5e3");
        assert_eq!(entries[4].kind, Kind::Null);
        assert_eq!(entries[5].kind, Kind::Object);
        let serde: serde_json::Value = serde_json::from_str(text).unwrap();
        // `id` is repeated: the map keeps the last.
        assert_eq!(serde["id"], "again");
        for entry in &entries[2..6] {
            let value: serde_json::Value = serde_json::from_str(entry.text).unwrap();
            assert_eq!(serde[entry.key.as_ref()], value, "{}", entry.key);
        }
        assert_eq!(read(b"[1]"), Ok(Outline::Other(Kind::Array)));
        assert_eq!(read(b" \"x\" "), Ok(Outline::Other(Kind::String)));
    }

    /// Depth costs no stack: far past serde_json's 128 levels, and at the payload sizes a
    /// catalog allows.
    #[test]
    fn reads_any_depth() {
        let depth = 1_000_000;
        let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let Ok(Outline::Object(entries)) = read(deep.as_bytes()) else {
            panic!("well-formed");
        };
        assert_eq!(entries[0].kind, Kind::Array);
        let objects = format!(r#"{}{}"#, r#"{"a":"#.repeat(depth), "}".repeat(depth));
        assert_eq!(
            read(objects.as_bytes()).map(|_| ()),
            Err(SyntaxError {
                at: objects.len() - depth,
                what: "expected a value",
            })
        );
        let unclosed = "[".repeat(depth);
        assert!(read(unclosed.as_bytes()).is_err());
    }
}
