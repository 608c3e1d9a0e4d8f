//! A direct reader for the common usage event, beside serde (SEMANTICS §2.1 is unchanged).
//!
//! [`usage`] reads a JSON object whose keys are only usage fields, each at most once, with
//! `type` absent or `"usage"`, every value a string without escapes or control characters
//! (`dims` an object of such strings), and nothing after it but whitespace. It returns exactly
//! the fields serde would have read into `Raw`; for anything else (escapes, numbers, `null`,
//! unknown or repeated keys, other types, malformed JSON) it returns `None` and the message
//! goes through serde, so every refusal and its detail come from one place. A test compares
//! the two readers on generated and mutated payloads (`tests.rs`).
//!
//! Owns: reading the usage shape into [`UsageFields`], nothing more: the fields are checked by
//! the same code as serde's (`check.rs`).
//!
//! Must never: refuse a message (`None` hands it to serde, it is no verdict), unescape or
//! convert a value, or panic on any bytes.
//!
//! Invariants: every string returned borrows the payload between two quotes (checked UTF-8,
//! so a char boundary) and is exactly its JSON value; `dims` holds at most `4 × DIMS_MAX`
//! pairs, as serde's reader would have taken.

use std::borrow::Cow;

use super::serde_path::NumberText;
use super::DIMS_MAX;

/// What a usage event carries, as read (not yet checked).
pub(super) struct UsageFields<'a> {
    pub id: Option<Cow<'a, str>>,
    pub account: Option<Cow<'a, str>>,
    pub ts: Option<Cow<'a, str>>,
    pub meter: Option<Cow<'a, str>>,
    pub quantity: Option<NumberText<'a>>,
    pub dims: Option<Vec<(String, String)>>,
}

struct Reader<'a> {
    /// The whole payload, checked to be UTF-8 once; strings are slices of it between
    /// quotes (always char boundaries).
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next non-whitespace byte, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// A string without escapes or control characters, the opening quote already read.
    fn string_body(&mut self) -> Option<&'a str> {
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1F => return None,
                _ => self.at += 1,
            }
        }
        let text = self.text.get(start..self.at)?;
        self.at += 1;
        Some(text)
    }

    fn string(&mut self) -> Option<&'a str> {
        match self.next()? {
            b'"' => self.string_body(),
            _ => None,
        }
    }

    fn dims(&mut self) -> Option<Vec<(String, String)>> {
        if self.next()? != b'{' {
            return None;
        }
        let mut pairs = Vec::new();
        let mut byte = self.next()?;
        if byte == b'}' {
            return Some(pairs);
        }
        loop {
            if byte != b'"' || pairs.len() >= DIMS_MAX * 4 {
                return None;
            }
            let key = self.string_body()?;
            if self.next()? != b':' {
                return None;
            }
            let value = self.string()?;
            pairs.push((key.to_string(), value.to_string()));
            match self.next()? {
                b',' => byte = self.next()?,
                b'}' => return Some(pairs),
                _ => return None,
            }
        }
    }
}

pub(super) fn usage(payload: &[u8]) -> Option<UsageFields<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut reader = Reader {
        text,
        bytes: payload,
        at: 0,
    };
    let mut fields = UsageFields {
        id: None,
        account: None,
        ts: None,
        meter: None,
        quantity: None,
        dims: None,
    };
    let mut typed = false;
    if reader.next()? != b'{' {
        return None;
    }
    let mut byte = reader.next()?;
    if byte != b'}' {
        loop {
            if byte != b'"' {
                return None;
            }
            let key = reader.string_body()?;
            if reader.next()? != b':' {
                return None;
            }
            // A repeated key is refused by serde: leave it to serde.
            fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
                match slot {
                    Some(_) => None,
                    None => {
                        *slot = Some(value);
                        Some(())
                    }
                }
            }
            match key {
                "id" => set(&mut fields.id, Cow::Borrowed(reader.string()?))?,
                "account" => set(&mut fields.account, Cow::Borrowed(reader.string()?))?,
                "ts" => set(&mut fields.ts, Cow::Borrowed(reader.string()?))?,
                "meter" => set(&mut fields.meter, Cow::Borrowed(reader.string()?))?,
                "quantity" => set(
                    &mut fields.quantity,
                    NumberText(Cow::Borrowed(reader.string()?)),
                )?,
                "dims" => set(&mut fields.dims, reader.dims()?)?,
                "type" if !typed && reader.string()? == "usage" => typed = true,
                _ => return None,
            }
            match reader.next()? {
                b',' => byte = reader.next()?,
                b'}' => break,
                _ => return None,
            }
        }
    }
    reader.skip_whitespace();
    (reader.at == payload.len()).then_some(fields)
}
