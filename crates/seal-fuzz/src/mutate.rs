//! Deterministic RNG and the mutators: byte-level havoc, structure-aware
//! overwrites of recorded length/count/dtype/shape fields, and JSON tree
//! mutations.

use serde_json::{Map, Value};

/// SplitMix64: tiny, deterministic per (target, seed, child), no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What a recorded field holds; mutations pick values by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A byte length (string, header, entry size).
    Len,
    /// An element or entry count.
    Count,
    /// A type tag (value type, ggml type, dtype, compression method).
    Dtype,
    /// A tensor dimension.
    Dim,
    /// A file or data offset.
    Offset,
    /// A pickle opcode byte.
    Opcode,
    /// Any other integer (hyper-parameters, ids).
    Int,
}

/// A little-endian integer field of a seed, by byte offset.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Byte offset in the buffer.
    pub off: usize,
    /// Width in bytes (1, 2, 4 or 8).
    pub width: u8,
    /// What it holds.
    pub kind: FieldKind,
}

/// A binary seed and its recorded fields.
#[derive(Debug, Clone, Default)]
pub struct Structured {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Fields worth mutating.
    pub fields: Vec<Field>,
}

impl Structured {
    /// Appends a little-endian field and records it.
    pub fn field(&mut self, value: u64, width: u8, kind: FieldKind) {
        self.fields.push(Field {
            off: self.bytes.len(),
            width,
            kind,
        });
        self.bytes
            .extend_from_slice(&value.to_le_bytes()[..width as usize]);
    }

    /// Appends plain bytes.
    pub fn raw(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }
}

/// Boundary values for integer fields.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    9,
    12,
    13,
    16,
    31,
    32,
    33,
    64,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    1 << 48,
    i64::MAX as u64,
    i64::MIN as u64,
    u64::MAX,
    u64::MAX - 1,
    u64::MAX - 7,
];

fn write_le(buf: &mut [u8], f: Field, v: u64) {
    let w = f.width as usize;
    if let Some(s) = buf.get_mut(f.off..f.off + w) {
        s.copy_from_slice(&v.to_le_bytes()[..w]);
    }
}

fn read_le(buf: &[u8], f: Field) -> u64 {
    let w = f.width as usize;
    let mut a = [0u8; 8];
    if let Some(s) = buf.get(f.off..f.off + w) {
        a[..w].copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// A value for a field: boundary values, small deltas, kind-specific ones.
pub fn field_value(rng: &mut Rng, buf: &[u8], f: Field) -> u64 {
    let old = read_le(buf, f);
    match rng.below(6) {
        0 | 1 => *rng.pick(INTERESTING),
        2 => old.wrapping_add(rng.below(17) as u64).wrapping_sub(8),
        3 => match f.kind {
            FieldKind::Dtype => rng.below(48) as u64,
            FieldKind::Opcode => *rng.pick(PICKLE_OPCODES) as u64,
            FieldKind::Dim => *rng.pick(&[0, 1, 31, 32, 33, 64, 1 << 20, 1 << 31, 1 << 33]),
            FieldKind::Len | FieldKind::Offset => old.wrapping_mul(*rng.pick(&[2, 16, 1 << 20])),
            FieldKind::Count => old.wrapping_add(*rng.pick(&[1, 100, 1 << 30])),
            FieldKind::Int => old ^ (1 << rng.below(64)),
        },
        4 => old ^ (1 << rng.below(f.width as usize * 8)),
        _ => rng.next_u64(),
    }
}

/// Overwrites one recorded field (length-preserving).
pub fn mutate_field(rng: &mut Rng, buf: &mut [u8], fields: &[Field]) {
    if fields.is_empty() {
        return;
    }
    let f = *rng.pick(fields);
    let v = field_value(rng, buf, f);
    write_le(buf, f, v);
}

/// Opcodes the pickle mutators insert (those `torch_pt` knows and some it does not).
pub const PICKLE_OPCODES: &[u8] = &[
    0x80, 0x95, b'.', b'(', b'N', 0x88, 0x89, b'J', b'K', b'M', 0x8a, b'G', b'X', 0x8c, b'B', b'C',
    b'c', 0x93, b'q', b'r', 0x94, b'h', b'j', b't', b')', 0x85, 0x86, 0x87, b']', b'}', b'a', b'e',
    b's', b'u', b'Q', b'R', 0x81, b'b', b'0', b'2', b'i', b'o', b'P', 0x8b,
];

/// One byte-level mutation. `dict` holds tokens worth inserting; `other`
/// is a buffer to splice from.
pub fn havoc_once(rng: &mut Rng, buf: &mut Vec<u8>, dict: &[&[u8]], other: Option<&[u8]>) {
    let len = buf.len();
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            buf[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            buf[i] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff, b'"', b'\n', b'{', b'[', 0xC0, 0xED]);
        }
        2 if len > 0 => buf.truncate(rng.below(len)),
        3 if len > 0 => {
            let i = rng.below(len);
            let n = (1 + rng.below(16)).min(len - i);
            buf.drain(i..i + n);
        }
        4 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            buf.splice(i..i, bytes);
        }
        5 if len > 0 => {
            // duplicate a chunk
            let i = rng.below(len);
            let n = (1 + rng.below(64)).min(len - i);
            let chunk = buf[i..i + n].to_vec();
            let at = rng.below(len + 1);
            buf.splice(at..at, chunk);
        }
        6 | 7 if !dict.is_empty() => {
            let tok = rng.pick(dict).to_vec();
            let i = rng.below(len + 1);
            if rng.one_in(3) && i < len {
                let end = (i + tok.len()).min(len);
                buf.splice(i..end, tok);
            } else {
                buf.splice(i..i, tok);
            }
        }
        8 if len >= 4 => {
            // an interesting integer anywhere
            let w = *rng.pick(&[1u8, 2, 4, 8]);
            let off = rng.below(len);
            let f = Field {
                off,
                width: w,
                kind: FieldKind::Int,
            };
            let v = *rng.pick(INTERESTING);
            write_le(buf, f, v);
        }
        9 => {
            if let Some(o) = other.filter(|o| !o.is_empty()) {
                let i = rng.below(len + 1);
                let a = rng.below(o.len());
                let n = (1 + rng.below(256)).min(o.len() - a);
                buf.truncate(i);
                buf.extend_from_slice(&o[a..a + n]);
            }
        }
        10 if len > 0 => {
            // invalid UTF-8 in the middle of text
            let i = rng.below(len);
            let bads: [&[u8]; 4] = [
                &[0xff],
                &[0xC3],
                &[0xED, 0xA0, 0x80],
                &[0xF4, 0x90, 0x80, 0x80],
            ];
            let bad = *rng.pick(&bads);
            buf.splice(i..i, bad.iter().copied());
        }
        _ if len > 1 => {
            let i = rng.below(len);
            let j = rng.below(len);
            buf.swap(i, j);
        }
        _ => buf.push(rng.next_u64() as u8),
    }
}

/// Several byte-level mutations in a row.
pub fn havoc(rng: &mut Rng, buf: &mut Vec<u8>, dict: &[&[u8]], other: Option<&[u8]>) {
    let n = 1 + rng.below(6);
    for _ in 0..n {
        havoc_once(rng, buf, dict, other);
    }
}

/// Mutates a structured seed: mostly field overwrites, sometimes havoc.
pub fn mutate_structured(rng: &mut Rng, s: &Structured, dict: &[&[u8]]) -> Vec<u8> {
    let mut buf = s.bytes.clone();
    let n = 1 + rng.below(3);
    for _ in 0..n {
        mutate_field(rng, &mut buf, &s.fields);
    }
    if rng.one_in(3) {
        havoc(rng, &mut buf, dict, Some(&s.bytes));
    }
    buf
}

/// Numbers that stress length and index checks when they appear in JSON.
fn interesting_json_number(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::from(0),
        1 => Value::from(-1),
        2 => Value::from(1),
        3 => Value::from(u64::MAX),
        4 => Value::from(i64::MIN),
        5 => Value::from(0x7fff_ffffu64),
        6 => Value::from(0xffff_ffffu64),
        7 => Value::from(1u64 << 40),
        8 => Value::from(1e308),
        9 => Value::from(-0.5),
        10 => Value::from(1u64 << 53),
        _ => Value::from(rng.below(100)),
    }
}

fn random_value(rng: &mut Rng, strings: &[&str]) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => interesting_json_number(rng),
        3 => Value::String(String::new()),
        4 => Value::String(rng.pick(strings).to_string()),
        5 => Value::String("\u{fffd}\u{0}é\u{10ffff}".repeat(1 + rng.below(4))),
        6 => Value::Array(vec![]),
        _ => Value::Object(Map::new()),
    }
}

/// Wraps a value in `depth` arrays or objects.
pub fn nest(rng: &mut Rng, mut v: Value, depth: usize) -> Value {
    let obj = rng.one_in(2);
    for _ in 0..depth {
        v = if obj {
            let mut m = Map::new();
            m.insert("a".into(), v);
            Value::Object(m)
        } else {
            Value::Array(vec![v])
        };
    }
    v
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(m) => m.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The child-index path of pre-order node `k`.
fn path_to(v: &Value, k: &mut usize, path: &mut Vec<usize>) -> bool {
    if *k == 0 {
        return true;
    }
    *k -= 1;
    let children: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        _ => return false,
    };
    for (i, c) in children.into_iter().enumerate() {
        path.push(i);
        if path_to(c, k, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn node_mut(mut v: &mut Value, k: usize) -> &mut Value {
    let mut path = Vec::new();
    let mut k = k;
    path_to(v, &mut k, &mut path);
    for i in path {
        v = match v {
            Value::Array(a) => &mut a[i],
            Value::Object(m) => m.values_mut().nth(i).expect("path from the same tree"),
            _ => unreachable!("path from the same tree"),
        };
    }
    v
}

/// One mutation of a JSON tree: wrong types, missing keys, huge numbers,
/// long or odd strings, deep nesting, duplicated elements. `strings` are
/// values worth trying (names, dtype strings, template snippets).
pub fn mutate_json(rng: &mut Rng, root: &mut Value, strings: &[&str]) {
    let n = count_nodes(root);
    let node = node_mut(root, rng.below(n));
    match rng.below(11) {
        0 => *node = random_value(rng, strings),
        1 => {
            if let Value::Object(m) = node {
                if !m.is_empty() {
                    let key = m
                        .keys()
                        .nth(rng.below(m.len()))
                        .cloned()
                        .unwrap_or_default();
                    m.remove(&key);
                }
            } else {
                *node = Value::Null;
            }
        }
        2 => *node = interesting_json_number(rng),
        3 => {
            let depth = *rng.pick(&[2, 50, 127, 128, 129, 300]);
            let inner = std::mem::take(node);
            *node = nest(rng, inner, depth);
        }
        4 => match node {
            Value::Array(a) if !a.is_empty() => {
                let x = a[rng.below(a.len())].clone();
                let k = *rng.pick(&[1, 2, 10, 100]);
                for _ in 0..k {
                    a.push(x.clone());
                }
            }
            Value::Array(a) => a.push(random_value(rng, strings)),
            _ => *node = Value::Array(vec![std::mem::take(node)]),
        },
        5 => {
            if let Value::Object(m) = node {
                let key = if rng.one_in(2) {
                    rng.pick(strings).to_string()
                } else {
                    "x".into()
                };
                m.insert(key, random_value(rng, strings));
            } else {
                *node = Value::String(rng.pick(strings).to_string());
            }
        }
        6 => {
            if let Value::String(s) = node {
                let tok = rng.pick(strings);
                let mut at = rng.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, tok);
            } else {
                *node = Value::String(rng.pick(strings).to_string());
            }
        }
        7 => {
            if let Value::String(s) = node {
                let mut at = rng.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.truncate(at);
            }
        }
        8 => {
            if let Value::String(s) = node {
                let k = *rng.pick(&[2usize, 100, 10_000]);
                *s = s.repeat(k.min((1 << 20) / s.len().max(1)));
            }
        }
        9 => {
            // array <-> object
            match std::mem::take(node) {
                Value::Array(a) => {
                    *node = Value::Object(
                        a.into_iter()
                            .enumerate()
                            .map(|(i, v)| (i.to_string(), v))
                            .collect(),
                    )
                }
                Value::Object(m) => *node = Value::Array(m.into_iter().map(|(_, v)| v).collect()),
                other => *node = Value::Array(vec![other]),
            }
        }
        _ => {
            if let Value::Number(_) = node {
                *node = Value::String(node.to_string());
            } else if let Value::String(s) = node {
                *node = s
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                    .unwrap_or(Value::Bool(true));
            } else {
                *node = random_value(rng, strings);
            }
        }
    }
}

/// Mutates a JSON document: tree mutations, serialised compact or pretty,
/// then sometimes byte-level havoc on the text.
pub fn mutate_json_doc(rng: &mut Rng, v: &Value, strings: &[&str], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = v.clone();
    let n = 1 + rng.below(3);
    for _ in 0..n {
        mutate_json(rng, &mut v, strings);
    }
    let mut out = if rng.one_in(2) {
        serde_json::to_vec(&v)
    } else {
        serde_json::to_vec_pretty(&v)
    }
    .unwrap_or_default();
    if rng.one_in(4) {
        havoc(rng, &mut out, dict, None);
    }
    out
}

/// JSON text tokens for byte-level mutation of JSON files.
pub const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\n",
    b"\r\n",
    b"\xEF\xBB\xBF",
    b"\xff\xfe",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];
