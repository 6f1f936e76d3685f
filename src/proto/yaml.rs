//! YAML config files (cloudflared's `config.yml`) read into the same serde structs as their
//! JSON form, with every error naming the key path and the line and column.
//!
//! ```text
//!  text ──saphyr-parser (events with spans)──▶ Node tree ──Deserializer──▶ TunnelConfig, ...
//!                                              (anchors resolved,
//!                                               `<<` merged, bounded)
//! ```
//!
//! Contract:
//! - One document. Comments, anchors (`&a`), aliases (`*a`) and merge keys (`<<: *a`) work;
//!   tags are ignored.
//! - Bounded: at most [`MAX_DEPTH`] levels of nesting and [`MAX_NODES`] nodes once aliases
//!   are expanded (an alias bomb is an error, not an allocation). The caller bounds the text.
//! - A plain scalar is typed by what the target field wants (`30` fills a string field as
//!   `"30"`, `true` a bool); for `deserialize_any` it is typed as YAML 1.2's core schema
//!   (null, bool, integer, else string). Quoted scalars are always strings.
//! - A key given twice in one mapping is an error (YAML forbids it).
//! - Errors: [`Error`] with the key path (`ingress[1].service`) and the 1-based line and
//!   column of the node at fault; [`Document::position`] finds a path's line for errors
//!   that later checks report by path.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of sequences and mappings.
pub const MAX_DEPTH: usize = 32;
/// Most nodes in a document, counting each alias as the nodes it stands for.
pub const MAX_NODES: usize = 20_000;

/// A line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// What went wrong, where. Display: `line L column C: PATH: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Key path segments, innermost first (they are added as the error goes up).
    path: Vec<String>,
    message: String,
    pos: Option<Pos>,
}

impl Error {
    fn new(message: impl Into<String>, pos: Pos) -> Error {
        Error {
            path: Vec::new(),
            message: message.into(),
            pos: Some(pos),
        }
    }

    /// Where it happened, if known.
    pub fn pos(&self) -> Option<Pos> {
        self.pos
    }

    /// The key path, e.g. `ingress[1].service`; empty at the top.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in self.path.iter().rev() {
            if !seg.starts_with('[') && !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }

    fn at(mut self, pos: Pos) -> Error {
        self.pos.get_or_insert(pos);
        self
    }

    fn under(mut self, seg: String) -> Error {
        self.path.push(seg);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.pos {
            write!(f, "line {} column {}: ", p.line, p.col)?;
        }
        let path = self.path();
        if !path.is_empty() {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error {
            path: Vec::new(),
            message: msg.to_string(),
            pos: None,
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Null,
    /// `plain`: written without quotes or block style, so it may be a null, bool or number.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
struct Node {
    value: Value,
    pos: Pos,
}

impl Node {
    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| k.size() + v.size()).sum(),
            _ => 0,
        }
    }

    /// The scalar text, for a key.
    fn key_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            Value::Null => Some(""),
            _ => None,
        }
    }
}

/// A parsed document.
pub struct Document {
    root: Node,
}

/// Builds the node tree from the parser's events.
struct Builder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Anchor id → the node it names and its size.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    last: Pos,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Pos), Error> {
        match self.parser.next_event() {
            Some(Ok((ev, span))) => {
                self.last = Pos::of(&span);
                Ok((ev, self.last))
            }
            Some(Err(e)) => Err(Error::new(
                e.info().to_owned(),
                Pos {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
            )),
            None => Err(Error::new("unexpected end of the document", self.last)),
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), Error> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(Error::new(
                format!("more than {MAX_NODES} values (counting what each alias stands for)"),
                pos,
            ));
        }
        Ok(())
    }

    fn anchor(&mut self, id: usize, node: &Node) {
        if id != 0 {
            self.anchors.insert(id, (node.clone(), node.size()));
        }
    }

    /// The node that starts with `ev`.
    fn node(&mut self, ev: Event<'a>, pos: Pos, depth: usize) -> Result<Node, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::new(
                format!("nested more than {MAX_DEPTH} levels deep"),
                pos,
            ));
        }
        let node = match ev {
            Event::Alias(id) => {
                let (node, size) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| Error::new("an alias to an unknown anchor", pos))?;
                self.count(size, pos)?;
                // The alias's own place, for errors about it.
                return Ok(Node { pos, ..node });
            }
            Event::Scalar(text, style, anchor, _tag) => {
                self.count(1, pos)?;
                let plain = style == ScalarStyle::Plain;
                let value = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                let node = Node { value, pos };
                self.anchor(anchor, &node);
                node
            }
            Event::SequenceStart(anchor, _) => {
                self.count(1, pos)?;
                let mut items = Vec::new();
                loop {
                    let (ev, at) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, at, depth + 1)?);
                }
                let node = Node {
                    value: Value::Seq(items),
                    pos,
                };
                self.anchor(anchor, &node);
                node
            }
            Event::MappingStart(anchor, _) => {
                self.count(1, pos)?;
                let mut pairs: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (ev, at) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(ev, at, depth + 1)?;
                    let (ev, at) = self.next()?;
                    let value = self.node(ev, at, depth + 1)?;
                    let is_merge =
                        matches!(&key.value, Value::Scalar { text, plain: true } if text == "<<");
                    if is_merge {
                        merge_into(&mut merged, value)?;
                        continue;
                    }
                    let Some(k) = key.key_text() else {
                        return Err(Error::new("a key must be a plain value", key.pos));
                    };
                    if pairs.iter().any(|(p, _)| p.key_text() == Some(k)) {
                        return Err(Error::new(format!("{k}: given twice"), key.pos));
                    }
                    pairs.push((key, value));
                }
                // Merged keys first; the mapping's own keys win.
                for (k, v) in merged {
                    if !pairs.iter().any(|(p, _)| p.key_text() == k.key_text()) {
                        pairs.push((k, v));
                    }
                }
                let node = Node {
                    value: Value::Map(pairs),
                    pos,
                };
                self.anchor(anchor, &node);
                node
            }
            _ => return Err(Error::new("unexpected YAML event", pos)),
        };
        Ok(node)
    }
}

/// `<<: *a` or `<<: [*a, *b]`: the mappings' pairs, the first mapping's keys winning.
fn merge_into(merged: &mut Vec<(Node, Node)>, value: Node) -> Result<(), Error> {
    let maps = match value.value {
        Value::Map(_) => vec![value],
        Value::Seq(items) => items,
        _ => return Err(Error::new("<<: merges only mappings", value.pos)),
    };
    for m in maps {
        let Value::Map(pairs) = m.value else {
            return Err(Error::new("<<: merges only mappings", m.pos));
        };
        for (k, v) in pairs {
            if !merged.iter().any(|(p, _)| p.key_text() == k.key_text()) {
                merged.push((k, v));
            }
        }
    }
    Ok(())
}

impl Document {
    /// Parses one YAML document.
    pub fn parse(text: &str) -> Result<Document, Error> {
        let mut b = Builder {
            parser: Parser::new_from_str(text),
            anchors: HashMap::new(),
            nodes: 0,
            last: Pos { line: 1, col: 1 },
        };
        let mut root = None;
        loop {
            let (ev, pos) = b.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    let (ev, at) = b.next()?;
                    if matches!(ev, Event::DocumentEnd) {
                        continue;
                    }
                    if root.is_some() {
                        return Err(Error::new("more than one YAML document", pos));
                    }
                    root = Some(b.node(ev, at, 0)?);
                }
                _ => return Err(Error::new("unexpected YAML event", pos)),
            }
        }
        let root = root.unwrap_or(Node {
            value: Value::Null,
            pos: Pos { line: 1, col: 1 },
        });
        Ok(Document { root })
    }

    /// Fills `T` from the document.
    pub fn deserialize<'de, T: de::Deserialize<'de>>(&self) -> Result<T, Error> {
        T::deserialize(&self.root)
    }

    /// Where the value at `path` (`ingress[1].service`, as [`Error::path`] writes it) is, or
    /// the nearest enclosing value that exists.
    pub fn position(&self, path: &str) -> Option<Pos> {
        let mut node = &self.root;
        let mut found = None;
        for seg in path_segments(path) {
            let next = match (&node.value, seg) {
                (Value::Map(pairs), Seg::Key(k)) => pairs
                    .iter()
                    .find(|(key, _)| key.key_text() == Some(k))
                    // A block value starts below its key: name the key's line then.
                    .map(|(key, v)| match v.value {
                        Value::Map(_) | Value::Seq(_) => (v, key.pos),
                        _ => (v, v.pos),
                    }),
                (Value::Seq(items), Seg::Index(i)) => items.get(i).map(|n| (n, n.pos)),
                _ => None,
            };
            match next {
                Some((n, pos)) => {
                    node = n;
                    found = Some(pos);
                }
                None => break,
            }
        }
        found
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` → `a`, `b`, `[2]`, `c`.
fn path_segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Some(i) = idx.strip_suffix(']').and_then(|i| i.parse().ok()) {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

// ---- the serde Deserializer over nodes ----

impl Node {
    fn unexpected(&self) -> de::Unexpected<'_> {
        match &self.value {
            Value::Null => de::Unexpected::Unit,
            Value::Scalar { text, .. } => de::Unexpected::Str(text),
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        }
    }

    fn invalid(&self, v: &dyn de::Expected) -> Error {
        de::Error::invalid_type(self.unexpected(), v)
    }

    fn scalar(&self, v: &dyn de::Expected) -> Result<&str, Error> {
        match &self.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.invalid(v)),
        }
    }
}

/// A YAML 1.2 core-schema integer.
fn parse_int(t: &str) -> Option<i128> {
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if let Some(o) = digits.strip_prefix("0o") {
        i128::from_str_radix(o, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn parse_bool(t: &str) -> Option<bool> {
    match t {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

macro_rules! int_method {
    ($method:ident, $ty:ty, $visit:ident) => {
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            let r = self
                .scalar(&v)
                .and_then(|t| {
                    parse_int(t)
                        .and_then(|n| <$ty>::try_from(n).ok())
                        .ok_or_else(|| de::Error::invalid_value(self.unexpected(), &v))
                })
                .and_then(|n| v.$visit(n));
            r.map_err(|e| e.at(self.pos))
        }
    };
}

impl<'de> de::Deserializer<'de> for &Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.value {
            Value::Null => v.visit_unit(),
            Value::Scalar { text, plain: true } => {
                if let Some(b) = parse_bool(text) {
                    v.visit_bool(b)
                } else if let Some(n) = parse_int(text) {
                    match u64::try_from(n) {
                        Ok(u) => v.visit_u64(u),
                        Err(_) => match i64::try_from(n) {
                            Ok(i) => v.visit_i64(i),
                            Err(_) => v.visit_str(text),
                        },
                    }
                } else {
                    v.visit_str(text)
                }
            }
            Value::Scalar { text, .. } => v.visit_str(text),
            Value::Seq(items) => v.visit_seq(Seq { items, next: 0 }),
            Value::Map(pairs) => v.visit_map(Map {
                pairs,
                next: 0,
                value: None,
            }),
        };
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = self
            .scalar(&v)
            .and_then(|t| parse_bool(t).ok_or_else(|| self.invalid(&v)))
            .and_then(|b| v.visit_bool(b));
        r.map_err(|e| e.at(self.pos))
    }

    int_method!(deserialize_i8, i8, visit_i8);
    int_method!(deserialize_i16, i16, visit_i16);
    int_method!(deserialize_i32, i32, visit_i32);
    int_method!(deserialize_i64, i64, visit_i64);
    int_method!(deserialize_u8, u8, visit_u8);
    int_method!(deserialize_u16, u16, visit_u16);
    int_method!(deserialize_u32, u32, visit_u32);
    int_method!(deserialize_u64, u64, visit_u64);

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = self.scalar(&v).and_then(|t| v.visit_str(t));
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        };
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.value {
            Value::Null => v.visit_unit(),
            _ => Err(self.invalid(&v)),
        };
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self).map_err(|e| e.at(self.pos))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.value {
            Value::Seq(items) => v.visit_seq(Seq { items, next: 0 }),
            _ => Err(self.invalid(&v)),
        };
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match &self.value {
            Value::Map(pairs) => v.visit_map(Map {
                pairs,
                next: 0,
                value: None,
            }),
            _ => Err(self.invalid(&v)),
        };
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let r = self.scalar(&v).and_then(|t| {
            let d: de::value::StrDeserializer<'_, Error> = t.into_deserializer();
            v.visit_enum(d)
        });
        r.map_err(|e| e.at(self.pos))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        f32 f64 char bytes byte_buf unit_struct tuple tuple_struct i128 u128
    }
}

struct Seq<'a> {
    items: &'a [Node],
    next: usize,
}

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.get(self.next) else {
            return Ok(None);
        };
        let i = self.next;
        self.next += 1;
        seed.deserialize(item)
            .map(Some)
            .map_err(|e| e.under(format!("[{i}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}

struct Map<'a> {
    pairs: &'a [(Node, Node)],
    next: usize,
    value: Option<&'a (Node, Node)>,
}

impl<'de> MapAccess<'de> for Map<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(pair) = self.pairs.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        self.value = Some(pair);
        seed.deserialize(&pair.0).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let pair = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("bug: a value asked for before its key"))?;
        let key = pair.0.key_text().unwrap_or("?").to_owned();
        seed.deserialize(&pair.1).map_err(|e| e.under(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.pairs.len() - self.next)
    }
}

/// For the fuzz targets: parse `text` and fill a `serde_json::Value` from it. Never panics.
pub fn fuzz_parse(text: &str) {
    if let Ok(doc) = Document::parse(text) {
        let _ = doc.deserialize::<serde_json::Value>();
        let _ = doc.position("a[0].b");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
        #[serde(default)]
        port: Option<u16>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        title: Option<String>,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        items: Vec<Inner>,
        other: Option<Inner>,
    }

    fn load(text: &str) -> Result<Outer, Error> {
        Document::parse(text)?.deserialize()
    }

    #[test]
    fn comments_anchors_aliases_and_merge_keys_fill_the_struct() {
        let o = load(
            "# a comment\n\
             title: 30 # a plain number fills a string field\n\
             flag: true\n\
             other: &base\n  name: a\n  port: 22\n\
             items:\n  - *base\n  - <<: *base\n    name: b\n  - {name: 'c', port: 0x10}\n",
        )
        .unwrap();
        assert_eq!(o.title.as_deref(), Some("30"));
        assert!(o.flag);
        let names: Vec<(&str, Option<u16>)> =
            o.items.iter().map(|i| (i.name.as_str(), i.port)).collect();
        assert_eq!(names, [("a", Some(22)), ("b", Some(22)), ("c", Some(16))]);
    }

    #[test]
    fn errors_name_the_path_line_and_column() {
        let e = load("title: x\nitems:\n  - name: a\n    prot: 22\n").unwrap_err();
        assert_eq!(e.pos(), Some(Pos { line: 4, col: 5 }), "{e}");
        assert_eq!(e.path(), "items[0]");
        assert!(e.to_string().contains("unknown field `prot`"), "{e}");
        let e = load("items:\n  - name: a\n    port: 70000\n").unwrap_err();
        assert_eq!(e.path(), "items[0].port");
        assert_eq!(e.pos(), Some(Pos { line: 3, col: 11 }), "{e}");
        let e = load("flag: maybe\n").unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("line 1 column 7"));
        let e = load("title: a\ntitle: b\n").unwrap_err();
        assert!(e.to_string().contains("title: given twice"), "{e}");
        let e = load("title: [unclosed\n").unwrap_err();
        assert!(e.pos().is_some(), "{e}");
        let e = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
    }

    #[test]
    fn an_alias_bomb_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, prev) in (b'b'..=b'h').zip(b'a'..) {
            let (i, prev) = (i as char, prev as char);
            bomb.push_str(&format!(
                "{i}: &{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = Document::parse(&bomb).err().expect("refused");
        assert!(e.to_string().contains("more than"), "{e}");
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(Document::parse(&deep).is_err());
    }

    #[test]
    fn position_finds_a_path_reported_by_a_later_check() {
        let doc = Document::parse("a: 1\nlist:\n  - x: 1\n  - x: 2\n    y: z\n").unwrap();
        assert_eq!(doc.position("list[1].y"), Some(Pos { line: 5, col: 8 }));
        assert_eq!(doc.position("list[1]"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(doc.position("list[7]"), Some(Pos { line: 2, col: 1 }));
        assert_eq!(doc.position("nope"), None);
    }

    #[test]
    fn fuzz_entry_point_takes_odd_input() {
        for t in [
            "", "---", "*x", "&a a: *a", "<<: 3", ":", "- - - -", "{a: [}", "\t",
        ] {
            fuzz_parse(t);
        }
    }
}
