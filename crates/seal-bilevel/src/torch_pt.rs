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
//! ...)`, optionally wrapped in `_rebuild_parameter`). Storage dtypes
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
    stack: Vec<Value>,
    memo: std::collections::HashMap<u32, Value>,
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

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or_else(|| self.err("no MARK"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| {
            BilevelError::format(
                self.path,
                format!("data.pkl at byte {pos}: stack underflow"),
            )
        })
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
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let s = self.take(2)?;
                    self.stack
                        .push(Value::Int(u16::from_le_bytes([s[0], s[1]]) as i64))
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
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let s = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(s);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(s))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(s))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| self.err("BINPUT on empty stack"))?;
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| self.err("LONG_BINPUT on empty stack"))?;
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| self.err("MEMOIZE on empty stack"))?;
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or_else(|| self.err(format!("memo key {k} unset")))?;
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow in TUPLEn"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(vec![])),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'a' => {
                    let v = self.pop()?;
                    match self.top_mut()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.err("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top_mut()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.err("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_mut()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.err("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs: Vec<(Value, Value)> = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect();
                    match self.top_mut()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err(self.err("SETITEMS on a non-dict")),
                    }
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.stack.push(Value::PersId(Box::new(id)))
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.stack.push(Value::Call(Box::new(func), Box::new(args)))
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    self.stack
                        .push(Value::Build(Box::new(obj), Box::new(state)))
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
                    other => return Err(bad(&format!("unsupported storage type {other:?}"))),
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
    // The largest storage index the view touches must exist.
    let last = offset
        + size
            .iter()
            .zip(&stride)
            .map(|(&n, &s)| if n == 0 { 0 } else { (n - 1) * s })
            .sum::<i64>();
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
