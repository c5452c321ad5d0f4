//! A fast reader of ARM list pages: a serde [`Deserializer`] over a page's text (checked as
//! UTF-8 once) that skips the values a model does not read with a byte scanner, instead of
//! serde_json's `IgnoredAny`, which parses everything it skips token by token.
//!
//! Most of a VM or NIC on a list page is never read (profiles, disks, the VM agent, DNS
//! settings): about 5 kB of JSON per instance and cycle, nine tenths of it skipped. The
//! scanner jumps over strings eight bytes at a time (to the next `"`, `\` or control
//! character), follows brackets with a depth count (a bit stack, no allocation) and checks
//! the grammar between them.
//!
//! It reads only the common shapes itself (objects, arrays, strings without escapes,
//! `true`, `false`, `null`, skipped values); anything else (a number, a string with
//! escapes, a value of a type the model did not ask for) is handed, as the slice of text
//! the scanner found it to span, to serde_json, so that the models' visitors see exactly
//! what serde_json would have given them. It is at least as strict as serde_json: what
//! serde_json refuses, it refuses too (and it may refuse more: nesting deeper than
//! [`MAX_DEPTH`]). An error here is never the last word: [`decode`]'s callers decode the
//! page again with serde_json, whose answer (its error, with line and column) stands.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The error type: serde_json's, so that a value handed to serde_json needs no conversion.
pub type Error = serde_json::Error;
type Result<T> = std::result::Result<T, Error>;

/// Deepest nesting of arrays and objects read or skipped (serde_json's own limit is 128
/// for what it reads; what it skips is unlimited, and a page deeper than this is left to
/// serde_json).
pub const MAX_DEPTH: u32 = 100;

fn fail(what: &str, at: usize) -> Error {
    de::Error::custom(format_args!("{what} at byte {at}"))
}

/// Decodes `seed` from `text`, which must hold one JSON value and only whitespace after it.
pub fn decode<'de, S: DeserializeSeed<'de>>(text: &'de str, seed: S) -> Result<S::Value> {
    let mut de = Fast::new(text);
    let v = seed.deserialize(&mut de)?;
    match de.ws() {
        None => Ok(v),
        Some(_) => Err(fail("trailing characters", de.i)),
    }
}

/// The index just past the JSON value that starts at `at` (after optional whitespace),
/// checking its grammar as serde_json does (string escapes and control characters
/// included). An error for anything malformed or truncated, or nested deeper than
/// `max_depth`.
pub fn skip_value(b: &[u8], at: usize, max_depth: u32) -> Result<usize> {
    // The open containers, innermost in the lowest bit: 1 an object, 0 an array.
    let mut stack: u128 = 0;
    let mut depth: u32 = 0;
    let max_depth = max_depth.min(127);
    let mut i = at;
    loop {
        // A value is expected at `i`.
        i = skip_ws(b, i);
        let Some(&c) = b.get(i) else {
            return Err(fail("EOF while parsing a value", i));
        };
        match c {
            b'"' => i = string_end(b, i + 1)?.0 + 1,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(fail("nested too deeply", i));
                }
                let object = c == b'{';
                stack = (stack << 1) | u128::from(object);
                i = skip_ws(b, i + 1);
                match b.get(i) {
                    Some(b'}') if object => {
                        i += 1;
                        depth -= 1;
                        stack >>= 1;
                    }
                    Some(b']') if !object => {
                        i += 1;
                        depth -= 1;
                        stack >>= 1;
                    }
                    _ if object => {
                        i = key_colon(b, i)?;
                        continue;
                    }
                    _ => continue,
                }
            }
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            _ => return Err(fail("expected a value", i)),
        }
        // After a value: a comma, or the end of the innermost container.
        loop {
            if depth == 0 {
                return Ok(i);
            }
            i = skip_ws(b, i);
            let object = stack & 1 == 1;
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    if object {
                        i = key_colon(b, i)?;
                    }
                    break;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                Some(_) => return Err(fail("expected a comma or the end", i)),
                None => return Err(fail("EOF inside a container", i)),
            }
            i += 1;
            depth -= 1;
            stack >>= 1;
        }
    }
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// `"key":` at `i` (after whitespace); the index after the colon.
#[inline(always)]
fn key_colon(b: &[u8], i: usize) -> Result<usize> {
    let i = skip_ws(b, i);
    if b.get(i) != Some(&b'"') {
        return Err(fail("expected a key", i));
    }
    let i = skip_ws(b, string_end(b, i + 1)?.0 + 1);
    if b.get(i) != Some(&b':') {
        return Err(fail("expected a colon", i));
    }
    Ok(i + 1)
}

#[inline]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize> {
    let end = i + word.len();
    if b.get(i..end) == Some(word) {
        Ok(end)
    } else {
        Err(fail("expected a literal", i))
    }
}

/// The index past the number at `i` (JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`).
fn number_end(b: &[u8], mut i: usize) -> Result<usize> {
    let digits = |mut i: usize| {
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => {
            i += 1;
            if let Some(b'0'..=b'9') = b.get(i) {
                return Err(fail("invalid number", i));
            }
        }
        Some(b'1'..=b'9') => i = digits(i + 1),
        _ => return Err(fail("invalid number", i)),
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return Err(fail("invalid number", end));
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return Err(fail("invalid number", end));
        }
        i = end;
    }
    Ok(i)
}

/// The index of the `"` closing the string whose text starts at `i`, and whether the
/// string holds an escape. Escapes are checked as serde_json checks a string it skips
/// (`\uXXXX` needs four hex digits; surrogates are not paired here), and so are control
/// characters (refused).
#[inline(always)]
fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool)> {
    let mut escaped = false;
    loop {
        let Some(j) = special(b, i) else {
            return Err(fail("EOF while parsing a string", b.len()));
        };
        match b.get(j) {
            Some(b'"') => return Ok((j, escaped)),
            Some(b'\\') => {}
            _ => return Err(fail("control character in a string", j)),
        }
        escaped = true;
        match b.get(j + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i = j + 2,
            Some(b'u') => {
                let hex = b.get(j + 2..j + 6).unwrap_or_default();
                if hex.len() != 4 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(fail("invalid escape", j));
                }
                i = j + 6;
            }
            _ => return Err(fail("invalid escape", j)),
        }
    }
}

/// Whether `x` ends a string's plain run: `"`, `\` or a control character.
#[inline(always)]
fn is_special(x: u8) -> bool {
    x == b'"' || x == b'\\' || x < 0x20
}

/// Bytes of a word, each `0x01`.
const ONES: u64 = u64::MAX / 255;

/// The high bit of each byte of `w` that is `"`, `\` or below 0x20, and of no byte before
/// the first such byte (a byte of `w ^ c` is zero where `w` holds `c`; `(x - ONES) & !x`
/// sets the high bit of the first zero byte of `x` and of none before it; `(w - 0x20..) &
/// !w` likewise for the first byte below 0x20).
#[inline(always)]
fn special_bits(w: u64) -> u64 {
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (quote | backslash | control) & (ONES << 7)
}

/// The index of the first `"`, `\` or byte below 0x20 at or after `i`, eight bytes at a
/// time.
#[inline(always)]
fn special(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(w) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let bits = special_bits(u64::from_le_bytes(*w));
        if bits != 0 {
            return Some(i + (bits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while let Some(&x) = b.get(i) {
        if is_special(x) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The deserializer (see the module's documentation).
pub struct Fast<'de> {
    s: &'de str,
    b: &'de [u8],
    i: usize,
    /// Containers open around `i` (what is read; a skip adds its own).
    depth: u32,
}

/// serde_json's marker for `RawValue` (never used by the models; handed to serde_json).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl<'de> Fast<'de> {
    pub fn new(s: &'de str) -> Self {
        Fast {
            s,
            b: s.as_bytes(),
            i: 0,
            depth: 0,
        }
    }

    /// The next byte after whitespace (not consumed).
    #[inline]
    fn ws(&mut self) -> Option<u8> {
        self.i = skip_ws(self.b, self.i);
        self.b.get(self.i).copied()
    }

    /// The value at `i` (after whitespace), skipped.
    #[inline]
    fn skip(&mut self) -> Result<()> {
        self.i = skip_value(self.b, self.i, MAX_DEPTH.saturating_sub(self.depth))?;
        Ok(())
    }

    /// The value at `i` (after whitespace) handed to serde_json: `f` is given a
    /// serde_json deserializer over exactly the text of that value.
    fn delegate<T>(
        &mut self,
        f: impl FnOnce(&mut serde_json::Deserializer<serde_json::de::StrRead<'de>>) -> Result<T>,
    ) -> Result<T> {
        self.ws();
        let start = self.i;
        self.skip()?;
        let s: &'de str = self.s;
        let text = s
            .get(start..self.i)
            .ok_or_else(|| fail("not at a character boundary", start))?;
        f(&mut serde_json::Deserializer::from_str(text))
    }

    /// At a `"`: the string's text when it holds no escape (consumed), else None (nothing
    /// consumed).
    #[inline]
    fn plain_str(&mut self) -> Result<Option<&'de str>> {
        let (end, escaped) = string_end(self.b, self.i + 1)?;
        if escaped {
            return Ok(None);
        }
        let s: &'de str = self.s;
        let text = s
            .get(self.i + 1..end)
            .ok_or_else(|| fail("not at a character boundary", self.i))?;
        self.i = end + 1;
        Ok(Some(text))
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(fail("nested too deeply", self.i));
        }
        self.i += 1;
        Ok(())
    }

    fn map<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        self.enter()?;
        let v = visitor.visit_map(Entries {
            de: self,
            first: true,
        })?;
        self.leave(b'}', "expected the end of an object")?;
        Ok(v)
    }

    fn seq<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        self.enter()?;
        let v = visitor.visit_seq(Entries {
            de: self,
            first: true,
        })?;
        self.leave(b']', "expected the end of an array")?;
        Ok(v)
    }

    /// Closes the container entered last: `close` must follow (after whitespace).
    fn leave(&mut self, close: u8, what: &str) -> Result<()> {
        self.depth -= 1;
        match self.ws() {
            Some(c) if c == close => {
                self.i += 1;
                Ok(())
            }
            _ => Err(fail(what, self.i)),
        }
    }
}

/// A shape the purpose-made row readers (`models.rs`) do not read, or malformed text: the
/// element is then read again the general way (through serde, from where it started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Odd;

/// A position to go back to ([`Fast::mark`], [`Fast::rewind`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    i: usize,
    depth: u32,
}

/// A pull reader for the purpose-made row readers: each method reads one value where the
/// reader stands, or answers [`Odd`] for anything but the plain shape it reads (the reader
/// is then to be rewound).
impl<'de> Fast<'de> {
    pub fn mark(&mut self) -> Mark {
        self.ws();
        Mark {
            i: self.i,
            depth: self.depth,
        }
    }

    pub fn rewind(&mut self, to: Mark) {
        self.i = to.i;
        self.depth = to.depth;
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.ws()
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.ws().is_none()
    }

    /// Consumes a `null` if one is next.
    #[inline]
    pub fn null(&mut self) -> bool {
        if self.ws() == Some(b'n') {
            if let Ok(end) = literal(self.b, self.i, b"null") {
                self.i = end;
                return true;
            }
        }
        false
    }

    /// An object: `field` is called with each key (without escapes) and must read or skip
    /// its value.
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'de str) -> std::result::Result<(), Odd>,
    ) -> std::result::Result<(), Odd> {
        if self.ws() != Some(b'{') {
            return Err(Odd);
        }
        self.enter().map_err(|_| Odd)?;
        if self.ws() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.ws() != Some(b'"') {
                return Err(Odd);
            }
            let key = self.plain_str().map_err(|_| Odd)?.ok_or(Odd)?;
            if self.ws() != Some(b':') {
                return Err(Odd);
            }
            self.i += 1;
            field(self, key)?;
            match self.ws() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(Odd),
            }
        }
    }

    /// An array: `item` is called for each element and must read or skip it.
    pub fn array(
        &mut self,
        mut item: impl FnMut(&mut Self) -> std::result::Result<(), Odd>,
    ) -> std::result::Result<(), Odd> {
        if self.ws() != Some(b'[') {
            return Err(Odd);
        }
        self.enter().map_err(|_| Odd)?;
        if self.ws() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.ws().is_none() {
                return Err(Odd);
            }
            item(self)?;
            match self.ws() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(Odd),
            }
        }
    }

    /// Any value, skipped.
    #[inline]
    pub fn skip_any(&mut self) -> std::result::Result<(), Odd> {
        self.skip().map_err(|_| Odd)
    }

    /// A string without escapes (`Some`) or `null` (`None`).
    #[inline]
    pub fn str_or_null(&mut self) -> std::result::Result<Option<&'de str>, Odd> {
        match self.ws() {
            Some(b'"') => self.plain_str().map_err(|_| Odd)?.map(Some).ok_or(Odd),
            Some(b'n') if self.null() => Ok(None),
            _ => Err(Odd),
        }
    }

    /// `true` or `false` (`Some`), or `null` (`None`).
    pub fn bool_or_null(&mut self) -> std::result::Result<Option<bool>, Odd> {
        self.ws();
        for (word, v) in [(&b"true"[..], true), (b"false", false)] {
            if let Ok(end) = literal(self.b, self.i, word) {
                self.i = end;
                return Ok(Some(v));
            }
        }
        if self.null() {
            return Ok(None);
        }
        Err(Odd)
    }
}

/// Methods handed to serde_json as they are (numbers and the types the models never ask
/// for).
macro_rules! delegated {
    ($($name:ident)*) => {$(
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.delegate(|d| d.$name(visitor))
        }
    )*};
}

impl<'de> Deserializer<'de> for &mut Fast<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'"') => match self.plain_str()? {
                Some(s) => visitor.visit_borrowed_str(s),
                None => self.delegate(|d| d.deserialize_any(visitor)),
            },
            Some(b'{') => self.map(visitor),
            Some(b'[') => self.seq(visitor),
            Some(b'n') => {
                self.i = literal(self.b, self.i, b"null")?;
                visitor.visit_unit()
            }
            Some(b't') => {
                self.i = literal(self.b, self.i, b"true")?;
                visitor.visit_bool(true)
            }
            Some(b'f') => {
                self.i = literal(self.b, self.i, b"false")?;
                visitor.visit_bool(false)
            }
            _ => self.delegate(|d| d.deserialize_any(visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b't') => {
                self.i = literal(self.b, self.i, b"true")?;
                visitor.visit_bool(true)
            }
            Some(b'f') => {
                self.i = literal(self.b, self.i, b"false")?;
                visitor.visit_bool(false)
            }
            _ => self.delegate(|d| d.deserialize_bool(visitor)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.ws() == Some(b'"') {
            if let Some(s) = self.plain_str()? {
                return visitor.visit_borrowed_str(s);
            }
        }
        self.delegate(|d| d.deserialize_str(visitor))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.ws() {
            Some(b'n') => {
                self.i = literal(self.b, self.i, b"null")?;
                visitor.visit_none()
            }
            Some(_) => visitor.visit_some(self),
            None => Err(fail("EOF while parsing a value", self.i)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.ws() == Some(b'n') {
            self.i = literal(self.b, self.i, b"null")?;
            return visitor.visit_unit();
        }
        self.delegate(|d| d.deserialize_unit(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name == RAW_VALUE_TOKEN {
            return self.delegate(|d| d.deserialize_newtype_struct(name, visitor));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.ws() == Some(b'[') {
            return self.seq(visitor);
        }
        self.delegate(|d| d.deserialize_seq(visitor))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.ws() == Some(b'{') {
            return self.map(visitor);
        }
        self.delegate(|d| d.deserialize_map(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if self.ws() == Some(b'{') {
            return self.map(visitor);
        }
        self.delegate(|d| d.deserialize_struct(name, fields, visitor))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.delegate(|d| d.deserialize_unit_struct(name, visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        self.delegate(|d| d.deserialize_tuple(len, visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.delegate(|d| d.deserialize_tuple_struct(name, len, visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.delegate(|d| d.deserialize_enum(name, variants, visitor))
    }

    delegated! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_bytes deserialize_byte_buf
    }
}

/// The entries of an object or the elements of an array being read (serde_json's rules
/// for commas and ends).
struct Entries<'a, 'de> {
    de: &'a mut Fast<'de>,
    first: bool,
}

impl<'de> Entries<'_, 'de> {
    /// Before an entry or element: true at `close`, else positioned at the next one.
    fn next(&mut self, close: u8) -> Result<bool> {
        let de = &mut *self.de;
        let peek = match de.ws() {
            Some(c) if c == close => return Ok(false),
            Some(b',') if !self.first => {
                de.i += 1;
                de.ws()
            }
            Some(c) if self.first => {
                self.first = false;
                Some(c)
            }
            Some(_) => return Err(fail("expected a comma or the end", de.i)),
            None => return Err(fail("EOF inside a container", de.i)),
        };
        match peek {
            Some(c) if c == close => Err(fail("trailing comma", de.i)),
            Some(_) => Ok(true),
            None => Err(fail("EOF while parsing a value", de.i)),
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.next(b'}')? {
            return Ok(None);
        }
        let de = &mut *self.de;
        if de.b.get(de.i) != Some(&b'"') {
            return Err(fail("key must be a string", de.i));
        }
        if let Some(key) = de.plain_str()? {
            return seed
                .deserialize(de::value::BorrowedStrDeserializer::<Error>::new(key))
                .map(Some);
        }
        // A key with escapes (as serde_json: the unescaped text, copied).
        let start = de.i;
        let end = string_end(de.b, start + 1)?.0 + 1;
        de.i = end;
        let key: String = serde_json::from_str(de.s.get(start..end).unwrap_or_default())?;
        seed.deserialize(de::value::StrDeserializer::<Error>::new(&key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let de = &mut *self.de;
        if de.ws() != Some(b':') {
            return Err(fail("expected a colon", de.i));
        }
        de.i += 1;
        seed.deserialize(&mut *de)
    }
}

impl<'de> SeqAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.next(b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

impl fmt::Debug for Fast<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fast")
            .field("at", &self.i)
            .field("depth", &self.depth)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::models::{
        NetworkInterface, NicSummary, ScaleSetVmView, VirtualMachine, VirtualMachineScaleSet, VmRow,
    };
    use proptest::prelude::*;
    use serde_json::Value;
    use std::marker::PhantomData;

    /// Where serde_json says the first value of `text` ends (None: it refuses it).
    fn serde_end(text: &str) -> Option<usize> {
        let mut it = serde_json::Deserializer::from_str(text).into_iter::<de::IgnoredAny>();
        match it.next() {
            Some(Ok(_)) => Some(it.byte_offset()),
            _ => None,
        }
    }

    /// Whether `text` is one JSON value and whitespace, by the scanner.
    fn scans_whole(text: &str) -> bool {
        let b = text.as_bytes();
        skip_value(b, 0, MAX_DEPTH).is_ok_and(|end| skip_ws(b, end) == b.len())
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            "[a-z/\"\\\\\u{0}-\u{1f}\u{e9}\u{1f600}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((".{0,6}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Text edits that break or bend JSON.
    fn mutate(text: &str, at: prop::sample::Index, edit: u8, len: usize) -> String {
        const SNIPPETS: [&str; 24] = [
            ",",
            "\"",
            "\\",
            "{",
            "}",
            "[",
            "]",
            ":",
            "null",
            "\u{1}",
            "\t",
            "01",
            "-",
            "1e",
            "\"id\":\"x\",",
            "\\u12",
            "\\x",
            "\\u00e9",
            "0.",
            "-0",
            "1E+2",
            "tru",
            "\u{7f}",
            " ",
        ];
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let i = cuts[at.index(cuts.len())];
        let (head, tail) = text.split_at(i);
        match edit % 3 {
            0 => format!("{head}{}{tail}", SNIPPETS[len % SNIPPETS.len()]),
            1 => {
                let mut j = (i + 1 + len % 4).min(text.len());
                while !text.is_char_boundary(j) {
                    j += 1;
                }
                format!("{head}{}", &text[j..])
            }
            _ => head.to_string(),
        }
    }

    proptest! {
        #[test]
        fn the_word_search_finds_the_first_quote_backslash_or_control_byte(
            text in prop::collection::vec(
                prop_oneof![4 => 0x20u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 1 => 0x7fu8..=0xff],
                0..80,
            ),
            from in 0usize..90,
        ) {
            let naive = text
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, &c)| c == b'"' || c == b'\\' || c < 0x20)
                .map(|(i, _)| i);
            prop_assert_eq!(special(&text, from), naive);
        }

        #[test]
        fn skipping_a_value_lands_where_serde_json_ends_it(v in arb_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                serde_json::to_string(&v).unwrap_or_default()
            };
            let with_tail = format!("{text} ,\"next\"");
            let end = serde_end(&with_tail);
            prop_assert_eq!(end, Some(text.len()));
            let got = skip_value(with_tail.as_bytes(), 0, MAX_DEPTH).ok();
            prop_assert_eq!(got, end);
        }

        #[test]
        fn the_scanner_refuses_exactly_what_serde_json_refuses(
            v in arb_value(),
            at in any::<prop::sample::Index>(),
            edit in any::<u8>(),
            len in any::<usize>(),
        ) {
            let text = mutate(&serde_json::to_string(&v).unwrap_or_default(), at, edit, len);
            let serde_ok = serde_json::from_str::<de::IgnoredAny>(&text).is_ok();
            prop_assert_eq!(scans_whole(&text), serde_ok, "{}", text);
            // Skipping within a longer text agrees too (a value, then more).
            if serde_ok {
                let more = format!("{text}]");
                let end = skip_value(more.as_bytes(), 0, MAX_DEPTH).ok();
                prop_assert_eq!(end, serde_end(&more));
            }
        }

        #[test]
        fn truncated_values_are_refused(v in arb_value(), at in any::<prop::sample::Index>()) {
            let text = serde_json::to_string(&v).unwrap_or_default();
            let cuts: Vec<usize> = (0..text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let cut = &text[..cuts[at.index(cuts.len())]];
            // Only a number cut short can still be a value (`12` of `123`, not `1.` of `1.5`).
            if !matches!(v, Value::Number(_)) {
                prop_assert!(!scans_whole(cut), "{}", cut);
            }
            prop_assert_eq!(scans_whole(cut), serde_json::from_str::<de::IgnoredAny>(cut).is_ok());
        }

        #[test]
        fn the_models_decode_as_serde_json_decodes_them(
            picks in prop::collection::vec((any::<prop::sample::Index>(), arb_value()), 0..4),
            at in any::<prop::sample::Index>(),
            edit in any::<u8>(),
            len in any::<usize>(),
            mutated in any::<bool>(),
        ) {
            for template in [nic_template(), vm_template()] {
                let mut v = template;
                for (path, value) in &picks {
                    replace_at(&mut v, path, value.clone());
                }
                let mut text = serde_json::to_string(&v).unwrap_or_default();
                if mutated {
                    text = mutate(&text, at, edit, len);
                }
                agrees::<NicSummary>(&text)?;
                agrees::<ScaleSetVmView>(&text)?;
                agrees::<VmRow>(&text)?;
                agrees::<NetworkInterface>(&text)?;
                agrees::<VirtualMachine>(&text)?;
                agrees::<VirtualMachineScaleSet>(&text)?;
                agrees::<Value>(&text)?;
            }
        }
    }

    /// A page of `items` through `decode_page_with` (the row readers for the lean rows)
    /// against `Page<T>` through serde_json: the same rows and `nextLink`, or the same error.
    fn page_agrees<T>(text: &str) -> std::result::Result<(), TestCaseError>
    where
        T: serde::de::DeserializeOwned + fmt::Debug + 'static,
    {
        let mut out: Vec<T> = Vec::new();
        let fast =
            crate::azure::models::decode_page_with::<T, T, _>(text.as_bytes(), &mut Some, &mut out)
                .map(|next| format!("{out:?} {next:?}"))
                .map_err(|e| e.to_string());
        let slow = serde_json::from_str::<crate::azure::models::Page<T>>(text)
            .map(|p| format!("{:?} {:?}", p.value, p.next_link))
            .map_err(|e| e.to_string());
        prop_assert_eq!(fast, slow, "{}", text);
        Ok(())
    }

    /// The fast reader gives what serde_json gives, or refuses what serde_json refuses.
    fn agrees<T>(text: &str) -> std::result::Result<(), TestCaseError>
    where
        T: serde::de::DeserializeOwned + fmt::Debug,
    {
        let fast = decode(text, PhantomData::<T>).map(|t| format!("{t:?}"));
        let slow = serde_json::from_str::<T>(text).map(|t| format!("{t:?}"));
        match (fast, slow) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", text),
            (Err(_), Err(_)) => {}
            (Ok(_), Err(e)) => {
                prop_assert!(false, "fast accepted what serde_json refuses ({e}): {text}")
            }
            (Err(e), Ok(_)) => {
                prop_assert!(false, "fast refused ({e}) what serde_json reads: {text}")
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn the_row_readers_read_pages_as_serde_json_reads_them(
            picks in prop::collection::vec((any::<prop::sample::Index>(), arb_value()), 0..4),
            at in any::<prop::sample::Index>(),
            edit in any::<u8>(),
            len in any::<usize>(),
            mutated in any::<bool>(),
            odd in any::<bool>(),
        ) {
            for template in [nic_template(), vm_template()] {
                let mut items = vec![template.clone(), template];
                for (path, value) in &picks {
                    replace_at(&mut items[0], path, value.clone());
                }
                if odd {
                    items.push(Value::from(7));
                }
                let page = serde_json::json!({"value": items, "nextLink": "https://n/2"});
                let mut text = serde_json::to_string(&page).unwrap_or_default();
                if mutated {
                    text = mutate(&text, at, edit, len);
                }
                page_agrees::<NicSummary>(&text)?;
                page_agrees::<ScaleSetVmView>(&text)?;
                page_agrees::<VmRow>(&text)?;
            }
        }
    }

    #[test]
    fn the_row_readers_follow_the_rules_of_the_serde_models() {
        for text in [
            r#"{"value": [{"id": " /A/B ", "properties": {"instanceView": {"statuses": [1, null, {"code": null}, {"code": "PowerState/running"}, {"code": "powerstate/stopped"}, {"code": "ProvisioningState/failed"}], "vmHealth": {"status": {"code": "HealthState/healthy"}}}}}]}"#,
            r#"{"value": [{"id": "x", "properties": null}, {"properties": {"instanceView": null}}, {}], "nextLink": null}"#,
            r#"{"value": [{"id": "x", "id": "y"}]}"#,
            r#"{"value": [{"tags": {"a": "1", "a": null, "b": "2", "b": "3"}, "location": "EastUS"}]}"#,
            r#"{"value": [{"tags": {"n": 1}}]}"#,
            r#"{"value": [{"properties": {"networkProfile": {"networkInterfaces": [null, {"id": "/n/1", "properties": {"primary": "TRUE"}}, {"id": "/n/2", "properties": {"primary": true}}]}}}]}"#,
            r#"{"value": [{"properties": {"virtualMachineScaleSet": {"id": " /S "}, "provisioningState": 3}}]}"#,
            r#"{"value": [{"id": "/x/NIC-1/", "properties": {"primary": true, "virtualMachine": {"id": "/VM"}, "ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.4/24", "privateIPAddressVersion": "IPv4", "primary": null}}, 5]}}]}"#,
            r#"{"value": [{"id": null}, {"properties": {"ipConfigurations": null, "virtualMachine": null}}]}"#,
            r#"{"value": [{"properties": []}]}"#,
            r#"{"value": [{"id": "\u0041"}, {"id": "\/x"}]}"#,
            r#"{"nextLink": 5, "value": []}"#,
            r#"{"value": [{"properties": {"instanceView": {"statuses": {}}}}]}"#,
            r#"{"value": [{"properties": {"instanceView": {"vmHealth": {"status": {"code": "unknown"}}}}}]}"#,
            r#"{"value": [], "x": [}"#,
        ] {
            for check in [
                page_agrees::<NicSummary>(text),
                page_agrees::<ScaleSetVmView>(text),
                page_agrees::<VmRow>(text),
            ] {
                assert!(check.is_ok(), "{check:?}");
            }
        }
    }

    /// Every path (object member or array element) of `v`, in order.
    fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    here.push(Value::String(k.clone()));
                    out.push(here.clone());
                    paths(x, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    here.push(Value::from(i));
                    out.push(here.clone());
                    paths(x, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }

    fn replace_at(v: &mut Value, pick: &prop::sample::Index, with: Value) {
        let mut all = Vec::new();
        paths(v, &mut Vec::new(), &mut all);
        if all.is_empty() {
            return;
        }
        let path = &all[pick.index(all.len())];
        let mut cur = v;
        for step in path {
            cur = match step {
                Value::String(k) => &mut cur[k.as_str()],
                _ => &mut cur[step.as_u64().unwrap_or_default() as usize],
            };
        }
        *cur = with;
    }

    fn nic_template() -> Value {
        serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic-0",
            "name": "nic-0", "location": "eastus", "tags": {"a": "b", "n": 1},
            "properties": {
                "primary": true, "provisioningState": "Succeeded",
                "virtualMachine": {"id": "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm-0"},
                "ipConfigurations": [
                    {"name": "ip", "id": "x", "properties": {"privateIPAddress": "10.0.0.4", "privateIPAddressVersion": "IPv4", "primary": true, "subnet": {"id": "sn"}}},
                    {"properties": {"privateIPAddress": "10.0.0.5/28", "primary": false}}
                ],
                "dnsSettings": {"dnsServers": [], "appliedDnsServers": ["1.2.3.4"]},
                "enableAcceleratedNetworking": false, "macAddress": "00-0D-3A-1B-C7-21"
            }
        })
    }

    fn vm_template() -> Value {
        serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-0",
            "name": "vm-0", "location": "eastus", "tags": {"role": "web"}, "zones": ["1"],
            "sku": {"name": "Standard_D2s_v3", "capacity": 3},
            "properties": {
                "provisioningState": "Succeeded", "orchestrationMode": "Flexible",
                "virtualMachineScaleSet": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/set"},
                "networkProfile": {"networkInterfaces": [{"id": "/n/nic-0", "properties": {"primary": true}}]},
                "storageProfile": {"osDisk": {"diskSizeGB": 30, "caching": "ReadWrite"}, "dataDisks": []},
                "instanceView": {
                    "statuses": [
                        {"code": "ProvisioningState/succeeded", "level": "Info", "time": "2024-01-01T00:00:00Z"},
                        {"code": "PowerState/running"}
                    ],
                    "vmHealth": {"status": {"code": "HealthState/healthy"}}
                },
                "virtualMachineProfile": {"extensionProfile": {"extensions": [
                    {"name": "h", "properties": {"publisher": "p", "type": "ApplicationHealthLinux"}}]}}
            }
        })
    }

    #[test]
    fn strings_with_escapes_numbers_and_odd_types_are_read_as_serde_json_reads_them() {
        for text in [
            r#"{"id": "/A\/B\u0041", "properties": {"primary": "TRUE", "ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.\u0034"}}]}}"#,
            r#"{"id": 12, "location": 1.5e3, "tags": {"k\"": -0.0, "n": [1, {"x": null}]}, "properties": {"provisioningState": 7}}"#,
            r#"{"properties": [1, 2], "id": null}"#,
            r#"  {"id": "x"}  "#,
            "{\"id\":\n\t\"x\"\r}",
            r#"{"id": "a", "id": "b"}"#,
            r#"{"pr\u006fperties": {"primary": true}}"#,
        ] {
            for check in [
                agrees::<NicSummary>(text),
                agrees::<VmRow>(text),
                agrees::<ScaleSetVmView>(text),
                agrees::<NetworkInterface>(text),
                agrees::<VirtualMachine>(text),
                agrees::<Value>(text),
            ] {
                assert!(check.is_ok(), "{check:?}");
            }
        }
    }

    #[test]
    fn malformed_text_is_refused_without_panicking() {
        for text in [
            "",
            " ",
            "{",
            "}",
            "[",
            "{\"id\"",
            "{\"id\":",
            "{\"id\":\"x",
            "{\"id\":\"x\"",
            "{\"id\":\"x\",}",
            "[1,]",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "tru",
            "nul",
            "-",
            "01",
            "1.",
            "1e",
            "1e+",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\u{1}\"",
            "{\"a\":1}x",
            "[}",
            "{]",
            "\"\\",
            "\"\\u",
            "{\"a\":[1,{\"b\":}]}",
        ] {
            assert!(!scans_whole(text), "{text:?}");
            assert!(decode(text, PhantomData::<Value>).is_err(), "{text:?}");
            assert!(decode(text, PhantomData::<VmRow>).is_err(), "{text:?}");
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(scans_whole(&deep(MAX_DEPTH as usize)));
        assert!(!scans_whole(&deep(MAX_DEPTH as usize + 1)));
        // serde_json skips any depth: the page is then left to it (models.rs).
        assert!(serde_json::from_str::<de::IgnoredAny>(&deep(200)).is_ok());
        let in_a_field = format!("{{\"extra\": {}, \"id\": \"x\"}}", deep(150));
        assert!(decode(&in_a_field, PhantomData::<VmRow>).is_err());
    }
}
