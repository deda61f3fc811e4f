//! Reading tensors from PyTorch `torch.save` files without running Python
//! or any pickle code.
//!
//! The official SEAL implementation (<https://github.com/hanshen95/SEAL>,
//! `examples/train_sft_selector.py`) saves its trained data selector with
//! `torch.save(p.logits, ...)`: a zip archive holding `<name>/data.pkl` (a
//! pickle describing the tensor), `<name>/byteorder` and the raw storage
//! bytes in `<name>/data/<key>`. This module parses the zip central
//! directory itself (stored entries only, as PyTorch writes them, with their
//! CRC-32 checked) and runs a tiny pickle *interpreter* that never imports or
//! calls anything: `GLOBAL`, `REDUCE`, `BUILD` and persistent ids are kept as
//! symbolic values, and the result is matched against the shapes PyTorch
//! writes (`torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! ...)`, optionally wrapped in `_rebuild_parameter`). Like PyTorch's
//! `weights_only` unpickler, only the globals a plain tensor save needs are
//! accepted ([`ALLOWED_GLOBALS`]); any other (`os.system`, `builtins.eval`,
//! ...) is an error naming it, wherever it appears. Nesting depth and memo
//! copies are bounded, so a small hostile pickle cannot exhaust the stack
//! or memory. Storage dtypes
//! `Float`, `Double`, `Half` and `BFloat16` are supported; the storage's
//! device tag (e.g. `cuda:0`) is recorded and ignored.

use crate::error::{BilevelError, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A tensor read from a `.pt` file.
#[derive(Debug)]
pub struct PtTensor {
    /// The archive's top-level folder name (e.g. `llama3_softmax`).
    pub archive_name: String,
    /// The storage's device tag as saved (e.g. `cuda:0`).
    pub location: String,
    /// The storage dtype.
    pub kind: Kind,
    /// The tensor's shape.
    pub size: Vec<i64>,
    /// The tensor, on the CPU, in its storage dtype.
    pub tensor: Tensor,
}

struct ZipEntry {
    name: String,
    data_start: usize,
    size: usize,
    crc: u32,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn zip_entries(path: &Path, b: &[u8]) -> Result<Vec<ZipEntry>> {
    let bad = |m: &str| BilevelError::format(path, format!("not a PyTorch zip archive: {m}"));
    // End of central directory: signature, then fixed 22 bytes (+ comment).
    let min = b.len().saturating_sub(22 + 65_535);
    let eocd = (min..=b.len().saturating_sub(22))
        .rev()
        .find(|&o| u32_at(b, o) == Some(0x0605_4b50))
        .ok_or_else(|| bad("no end-of-central-directory record"))?;
    let count = u16_at(b, eocd + 10).ok_or_else(|| bad("truncated EOCD"))? as usize;
    let cd_offset = u32_at(b, eocd + 16).ok_or_else(|| bad("truncated EOCD"))?;
    if cd_offset == u32::MAX || count == u16::MAX as usize {
        return Err(bad("ZIP64 archives are not supported"));
    }
    let mut o = cd_offset as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(b, o) != Some(0x0201_4b50) {
            return Err(bad(&format!("bad central directory entry at byte {o}")));
        }
        let field =
            |off: usize| u16_at(b, o + off).ok_or_else(|| bad("truncated central directory"));
        let method = field(10)?;
        let crc = u32_at(b, o + 16).ok_or_else(|| bad("truncated central directory"))?;
        let csize = u32_at(b, o + 20).ok_or_else(|| bad("truncated central directory"))?;
        let usize_ = u32_at(b, o + 24).ok_or_else(|| bad("truncated central directory"))?;
        let (nlen, xlen, clen) = (
            field(28)? as usize,
            field(30)? as usize,
            field(32)? as usize,
        );
        let local = u32_at(b, o + 42).ok_or_else(|| bad("truncated central directory"))? as usize;
        let name = b
            .get(o + 46..o + 46 + nlen)
            .ok_or_else(|| bad("truncated entry name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 {
            return Err(bad(&format!(
                "entry `{name}` is compressed (method {method}); PyTorch stores entries"
            )));
        }
        if csize != usize_ || csize == u32::MAX || local == u32::MAX as usize {
            return Err(bad(&format!(
                "entry `{name}`: ZIP64 or inconsistent sizes are not supported"
            )));
        }
        if u32_at(b, local) != Some(0x0403_4b50) {
            return Err(bad(&format!(
                "entry `{name}`: bad local header at byte {local}"
            )));
        }
        let lname = u16_at(b, local + 26).ok_or_else(|| bad("truncated local header"))? as usize;
        let lextra = u16_at(b, local + 28).ok_or_else(|| bad("truncated local header"))? as usize;
        let data_start = local + 30 + lname + lextra;
        if data_start + csize as usize > b.len() {
            return Err(bad(&format!(
                "entry `{name}` extends past the end of the file"
            )));
        }
        out.push(ZipEntry {
            name,
            data_start,
            size: csize as usize,
            crc,
        });
        o += 46 + nlen + xlen + clen;
    }
    Ok(out)
}

/// The only `GLOBAL` / `STACK_GLOBAL` callables accepted: what
/// `torch.save(tensor)` writes (as PyTorch's `weights_only` allow-list).
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Deepest nesting of pickle values (a tensor pickle nests about 4 deep);
/// dropping or comparing deeper values could overflow the stack.
const MAX_DEPTH: u32 = 256;
/// Most value nodes memo stores and look-ups may copy in total: the memo
/// holds copies here, so `h`/`\x86` chains would otherwise double the data
/// per opcode.
const MAX_MEMO_NODES: u64 = 1 << 20;

/// Nesting depth and node count of a value, tracked next to it.
#[derive(Debug, Clone, Copy)]
struct Size {
    depth: u32,
    nodes: u64,
}

impl Size {
    const LEAF: Size = Size { depth: 1, nodes: 1 };

    /// The size of a container of `items`.
    fn of<'v>(items: impl IntoIterator<Item = &'v Size>) -> Size {
        items.into_iter().fold(Size::LEAF, |acc, s| Size {
            depth: acc.depth.max(s.depth.saturating_add(1)),
            nodes: acc.nodes.saturating_add(s.nodes),
        })
    }
}

/// A symbolic pickle value: nothing is ever imported or called.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    PersId(Box<Value>),
    Call(Box<Value>, Box<Value>),
    Build(Box<Value>, Box<Value>),
    Mark,
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<(Value, Size)>,
    memo: std::collections::HashMap<u32, (Value, Size)>,
    /// Nodes copied out of the memo so far.
    memo_nodes: u64,
}

impl<'a> Unpickler<'a> {
    fn err(&self, m: impl std::fmt::Display) -> BilevelError {
        BilevelError::format(self.path, format!("data.pkl at byte {}: {m}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.err("truncated pickle"))?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn line(&mut self) -> Result<String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<(Value, Size)> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<(Value, Size)>> {
        let m = self
            .stack
            .iter()
            .rposition(|(v, _)| *v == Value::Mark)
            .ok_or_else(|| self.err("no MARK"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Pushes a value, refusing nesting deeper than [`MAX_DEPTH`].
    fn push(&mut self, v: Value, size: Size) -> Result<()> {
        if size.depth > MAX_DEPTH {
            return Err(self.err(format!(
                "values nested more than {MAX_DEPTH} deep (not a tensor pickle)"
            )));
        }
        self.stack.push((v, size));
        Ok(())
    }

    fn leaf(&mut self, v: Value) {
        self.stack.push((v, Size::LEAF));
    }

    /// Pushes a container of `items` built by `make`.
    fn push_container(
        &mut self,
        items: Vec<(Value, Size)>,
        make: fn(Vec<Value>) -> Value,
    ) -> Result<()> {
        let size = Size::of(items.iter().map(|(_, s)| s));
        self.push(make(items.into_iter().map(|(v, _)| v).collect()), size)
    }

    /// The top of the stack, after growing its size by `added` (the items
    /// APPEND / SETITEM put into it).
    fn top_mut(&mut self, added: Size) -> Result<&mut Value> {
        let pos = self.pos;
        let (v, size) = self.stack.last_mut().ok_or_else(|| {
            BilevelError::format(
                self.path,
                format!("data.pkl at byte {pos}: stack underflow"),
            )
        })?;
        *size = Size::of([&*size, &added]);
        if size.depth > MAX_DEPTH {
            return Err(BilevelError::format(
                self.path,
                format!(
                    "data.pkl at byte {pos}: values nested more than {MAX_DEPTH} deep (not a tensor pickle)"
                ),
            ));
        }
        Ok(v)
    }

    /// A `GLOBAL` / `STACK_GLOBAL`, refused unless allow-listed.
    fn global(&mut self, module: String, name: String) -> Result<()> {
        if !ALLOWED_GLOBALS.contains(&(module.as_str(), name.as_str())) {
            return Err(self.err(format!(
                "global `{module}.{name}` is not allowed: a tensor file only needs {}",
                ALLOWED_GLOBALS
                    .iter()
                    .map(|(m, n)| format!("{m}.{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.leaf(Value::Global(module, name));
        Ok(())
    }

    /// Stores the top of the stack in the memo.
    fn memoize(&mut self, k: u32, what: &str) -> Result<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.err(format!("{what} on empty stack")))?;
        self.count_memo_copy(v.1)?;
        self.memo.insert(k, v);
        Ok(())
    }

    /// Counts a copy into or out of the memo against [`MAX_MEMO_NODES`].
    fn count_memo_copy(&mut self, size: Size) -> Result<()> {
        self.memo_nodes = self.memo_nodes.saturating_add(size.nodes);
        if self.memo_nodes > MAX_MEMO_NODES {
            return Err(self.err(format!(
                "memo copies exceed {MAX_MEMO_NODES} values (not a tensor pickle)"
            )));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                } // PROTO
                0x95 => {
                    self.take(8)?;
                } // FRAME
                b'.' => return Ok(self.pop()?.0),
                b'(' => self.leaf(Value::Mark),
                b'N' => self.leaf(Value::None),
                0x88 => self.leaf(Value::Bool(true)),
                0x89 => self.leaf(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.leaf(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.leaf(Value::Int(v as i64))
                }
                b'M' => {
                    let s = self.take(2)?;
                    self.leaf(Value::Int(u16::from_le_bytes([s[0], s[1]]) as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("LONG1 wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in s.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.leaf(Value::Int(v))
                }
                b'G' => {
                    let s = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(s);
                    self.leaf(Value::Float(f64::from_be_bytes(a)))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.leaf(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.leaf(Value::Str(s))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(s))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?.to_vec();
                    self.leaf(Value::Bytes(s))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memoize(k, "BINPUT")?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(k, "LONG_BINPUT")?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k, "MEMOIZE")?
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let (v, size) = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or_else(|| self.err(format!("memo key {k} unset")))?;
                    self.count_memo_copy(size)?;
                    self.push(v, size)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::Tuple)?
                }
                b')' => self.leaf(Value::Tuple(vec![])),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow in TUPLEn"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_container(items, Value::Tuple)?
                }
                b']' => self.leaf(Value::List(vec![])),
                b'}' => self.leaf(Value::Dict(vec![])),
                b'a' => {
                    let (v, size) = self.pop()?;
                    match self.top_mut(size)? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.err("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let size = Size::of(items.iter().map(|(_, s)| s));
                    match self.top_mut(size)? {
                        Value::List(l) => l.extend(items.into_iter().map(|(v, _)| v)),
                        _ => return Err(self.err("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let (v, vs) = self.pop()?;
                    let (k, ks) = self.pop()?;
                    match self.top_mut(Size::of([&vs, &ks]))? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.err("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let size = Size::of(items.iter().map(|(_, s)| s));
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter().map(|(v, _)| v);
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top_mut(size)? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err(self.err("SETITEMS on a non-dict")),
                    }
                }
                b'Q' => {
                    let (id, size) = self.pop()?;
                    self.push(Value::PersId(Box::new(id)), Size::of([&size]))?
                }
                b'R' | 0x81 => {
                    let (args, a) = self.pop()?;
                    let (func, f) = self.pop()?;
                    self.push(
                        Value::Call(Box::new(func), Box::new(args)),
                        Size::of([&a, &f]),
                    )?
                }
                b'b' => {
                    let (state, s) = self.pop()?;
                    let (obj, o) = self.pop()?;
                    self.push(
                        Value::Build(Box::new(obj), Box::new(state)),
                        Size::of([&s, &o]),
                    )?
                }
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }
}

fn storage_kind(class: &str) -> Option<Kind> {
    Some(match class {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        _ => return None,
    })
}

fn int_list(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Reads the single tensor saved in a `torch.save` file.
pub fn read_pt_tensor(path: &Path) -> Result<PtTensor> {
    let bytes = std::fs::read(path).map_err(|e| BilevelError::io(path, e))?;
    let entries = zip_entries(path, &bytes)?;
    let entry_bytes = |e: &ZipEntry| -> Result<&[u8]> {
        let d = &bytes[e.data_start..e.data_start + e.size];
        if crc32(d) != e.crc {
            return Err(BilevelError::format(
                path,
                format!("entry `{}`: CRC-32 mismatch", e.name),
            ));
        }
        Ok(d)
    };
    let pkl = entries
        .iter()
        .find(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1)
        .ok_or_else(|| {
            BilevelError::format(
                path,
                "no `<name>/data.pkl` entry (not a torch.save archive)",
            )
        })?;
    let archive_name = pkl.name.trim_end_matches("/data.pkl").to_string();
    if let Some(bo) = entries
        .iter()
        .find(|e| e.name == format!("{archive_name}/byteorder"))
    {
        let order = entry_bytes(bo)?;
        if order != b"little" {
            return Err(BilevelError::format(
                path,
                format!(
                    "byteorder is `{}`; only little-endian archives are supported",
                    String::from_utf8_lossy(order)
                ),
            ));
        }
    }
    let root = Unpickler {
        path,
        data: entry_bytes(pkl)?,
        pos: 0,
        stack: vec![],
        memo: Default::default(),
        memo_nodes: 0,
    }
    .run()?;
    let bad = |m: &str| BilevelError::format(PathBuf::from(path), format!("data.pkl: {m}"));
    // Unwrap `_rebuild_parameter(tensor, requires_grad, hooks)`.
    let mut v = &root;
    if let Value::Call(f, args) = v {
        if **f == Value::Global("torch._utils".into(), "_rebuild_parameter".into()) {
            match &**args {
                Value::Tuple(a) if !a.is_empty() => v = &a[0],
                _ => return Err(bad("_rebuild_parameter without arguments")),
            }
        }
    }
    let args = match v {
        Value::Call(f, args)
            if **f == Value::Global("torch._utils".into(), "_rebuild_tensor_v2".into()) =>
        {
            match &**args {
                Value::Tuple(a) if a.len() >= 4 => a,
                _ => {
                    return Err(bad(
                        "_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)",
                    ))
                }
            }
        }
        _ => {
            return Err(bad(
                "the pickled object is not a single tensor (_rebuild_tensor_v2)",
            ))
        }
    };
    let (kind, key, location) = match &args[0] {
        Value::PersId(id) => match &**id {
            Value::Tuple(t) if t.len() >= 4 && t[0] == Value::Str("storage".into()) => {
                let kind = match &t[1] {
                    Value::Global(m, n) if m == "torch" => storage_kind(n)
                        .ok_or_else(|| bad(&format!("unsupported storage type torch.{n}")))?,
                    other => {
                        let shown: String = format!("{other:?}").chars().take(200).collect();
                        return Err(bad(&format!("unsupported storage type {shown}")));
                    }
                };
                let key = match &t[2] {
                    Value::Str(s) => s.clone(),
                    _ => return Err(bad("storage key is not a string")),
                };
                let location = match &t[3] {
                    Value::Str(s) => s.clone(),
                    _ => String::new(),
                };
                (kind, key, location)
            }
            _ => {
                return Err(bad(
                    "persistent id is not a ('storage', type, key, location, numel) tuple",
                ))
            }
        },
        _ => return Err(bad("first argument of _rebuild_tensor_v2 is not a storage")),
    };
    let offset = match &args[1] {
        Value::Int(o) if *o >= 0 => *o,
        _ => return Err(bad("storage offset is not a non-negative integer")),
    };
    let size = int_list(&args[2]).ok_or_else(|| bad("size is not a tuple of integers"))?;
    let stride = int_list(&args[3]).ok_or_else(|| bad("stride is not a tuple of integers"))?;
    if size.len() != stride.len() || size.iter().chain(&stride).any(|&d| d < 0) {
        return Err(bad(&format!(
            "inconsistent size {size:?} / stride {stride:?}"
        )));
    }
    let data_name = format!("{archive_name}/data/{key}");
    let data = entries
        .iter()
        .find(|e| e.name == data_name)
        .ok_or_else(|| {
            BilevelError::format(path, format!("storage entry `{data_name}` is missing"))
        })?;
    let raw = entry_bytes(data)?;
    let elt = kind.elt_size_in_bytes();
    if raw.len() % elt != 0 {
        return Err(BilevelError::format(
            path,
            format!(
                "`{data_name}`: {} bytes is not a multiple of {elt}",
                raw.len()
            ),
        ));
    }
    let numel = (raw.len() / elt) as i64;
    // The view may not hold more elements than its storage: an expanded
    // (stride-0) view would make `contiguous` allocate far beyond the file.
    let view_numel = size.iter().try_fold(1i64, |acc, &n| acc.checked_mul(n));
    if view_numel.is_none_or(|v| v > numel) {
        return Err(BilevelError::format(
            path,
            format!(
                "`{data_name}` holds {numel} values but the tensor has size {size:?} (expanded or overflowing views are not supported)"
            ),
        ));
    }
    // The largest storage index the view touches must exist (checked
    // arithmetic: sizes, strides and offset come from the file).
    let last = size
        .iter()
        .zip(&stride)
        .try_fold(offset, |acc, (&n, &s)| {
            if n == 0 {
                Some(acc)
            } else {
                (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            }
        })
        .unwrap_or(i64::MAX);
    if size.iter().all(|&n| n > 0) && last >= numel {
        return Err(BilevelError::format(
            path,
            format!("`{data_name}` holds {numel} values but the tensor view reaches index {last}"),
        ));
    }
    let storage = Tensor::f_from_data_size(raw, &[numel], kind)?;
    let tensor = storage
        .f_as_strided(&size, &stride, Some(offset))?
        .f_contiguous()?;
    Ok(PtTensor {
        archive_name,
        location,
        kind,
        size,
        tensor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A stored zip of `entries` (no data alignment; the reader needs none).
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let local = out.len() as u32;
            let head = |sig: u32, out: &mut Vec<u8>| {
                out.extend_from_slice(&sig.to_le_bytes());
                out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&crc32(data).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(&[0, 0]);
            };
            head(0x0403_4b50, &mut out);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            // central entry: version made by, then the local layout shifted by 2
            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            central.extend_from_slice(&[20, 0]);
            let mut h = Vec::new();
            head(0, &mut h);
            central.extend_from_slice(&h[4..]);
            central.extend_from_slice(&[0; 10]);
            central.extend_from_slice(&local.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let n = entries.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// The pickle `torch.save` writes, with the storage class, size and
    /// stride opcodes given.
    fn pickle(storage: &[u8], size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p =
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage".to_vec();
        p.extend_from_slice(storage);
        p.extend_from_slice(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00");
        p.extend_from_slice(size);
        p.extend_from_slice(stride);
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR.");
        p
    }

    fn read(pkl: &[u8]) -> Result<PtTensor> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sel.pt");
        let data = [0u8; 16];
        std::fs::write(
            &p,
            zip(&[
                ("sel/data.pkl", pkl),
                ("sel/byteorder", b"little"),
                ("sel/data/0", &data),
            ]),
        )
        .unwrap();
        read_pt_tensor(&p)
    }

    const FLOAT: &[u8] = b"ctorch\nFloatStorage\n";

    #[test]
    fn reads_a_plain_tensor_pickle() {
        let t = read(&pickle(FLOAT, b"K\x02K\x02\x86", b"K\x02K\x01\x86")).unwrap();
        assert_eq!(t.size, vec![2, 2]);
        assert_eq!(t.kind, Kind::Float);
    }

    #[test]
    fn refuses_globals_outside_the_allow_list() {
        // as the rebuild function, as the storage class, and via STACK_GLOBAL
        let cases: [(Vec<u8>, &str); 3] = [
            (
                [
                    &b"\x80\x02cos\nsystem\n"[..],
                    &pickle(FLOAT, b"K\x04\x85", b"K\x01\x85")[35..],
                ]
                .concat(),
                "os.system",
            ),
            (
                pickle(b"cbuiltins\neval\n", b"K\x04\x85", b"K\x01\x85"),
                "builtins.eval",
            ),
            (
                pickle(
                    b"\x8c\x05posix\x8c\x06system\x93",
                    b"K\x04\x85",
                    b"K\x01\x85",
                ),
                "posix.system",
            ),
        ];
        for (pkl, name) in cases {
            let e = read(&pkl).unwrap_err().to_string();
            assert!(
                e.contains(&format!("global `{name}` is not allowed")) && e.contains("sel.pt"),
                "{e}"
            );
        }
    }

    #[test]
    fn memo_doubling_bomb_is_refused() {
        // Each step pairs the memoised value with itself: 2^48 values.
        let mut pkl = b"\x80\x02]q\x01".to_vec();
        for _ in 0..48 {
            pkl.extend_from_slice(b"h\x01h\x01\x86q\x01");
        }
        pkl.push(b'.');
        let e = read(&pkl).unwrap_err().to_string();
        assert!(e.contains("memo copies exceed"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Without a bound, dropping 200 000 nested tuples overflows the stack.
        for op in [0x85u8, b'Q'] {
            let mut pkl = b"\x80\x02N".to_vec();
            pkl.extend(std::iter::repeat_n(op, 200_000));
            pkl.push(b'.');
            let e = read(&pkl).unwrap_err().to_string();
            assert!(e.contains("nested more than"), "{e}");
        }
    }

    #[test]
    fn expanded_or_overflowing_views_are_refused() {
        // 1000 x 1000 stride-0 view of a 4-value storage: 4 MB from 16 bytes
        let e = read(&pickle(FLOAT, b"M\xe8\x03M\xe8\x03\x86", b"K\x00K\x00\x86"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expanded or overflowing"), "{e}");
        // (2 - 1) * i64::MAX + offset overflowed i64
        let e = read(&pickle(
            FLOAT,
            b"K\x02K\x02\x86",
            b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7fK\x01\x86",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("reaches index"), "{e}");
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pt");
        std::fs::write(&p, b"not a zip at all").unwrap();
        let e = read_pt_tensor(&p).unwrap_err().to_string();
        assert!(
            e.contains("x.pt") && e.contains("end-of-central-directory"),
            "{e}"
        );
    }
}
