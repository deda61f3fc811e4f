//! The GGUF container: metadata values, tensor table and the bounds-checked reader over the memory-mapped file.

use super::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// Little-endian `u32` of the bytes `GGUF`.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default alignment of the tensor data section.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata arrays may nest at most this deep.
pub(super) const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `UINT8`
    U8(u8),
    /// `INT8`
    I8(i8),
    /// `UINT16`
    U16(u16),
    /// `INT16`
    I16(i16),
    /// `UINT32`
    U32(u32),
    /// `INT32`
    I32(i32),
    /// `FLOAT32`
    F32(f32),
    /// `BOOL`
    Bool(bool),
    /// `STRING`
    String(String),
    /// `ARRAY` (elements all of one type)
    Array(Vec<GgufValue>),
    /// `UINT64`
    U64(u64),
    /// `INT64`
    I64(i64),
    /// `FLOAT64`
    F64(f64),
}

impl GgufValue {
    /// The value as a non-negative integer, for any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, for any integer type that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, for float and integer types. An f32 becomes
    /// the f64 of its shortest decimal form (so `1e-5f32` reads as `1e-5`,
    /// not `9.99999974e-6`), which is what a config file should say.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => v.to_string().parse().ok(),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "UINT8",
            Self::I8(_) => "INT8",
            Self::U16(_) => "UINT16",
            Self::I16(_) => "INT16",
            Self::U32(_) => "UINT32",
            Self::I32(_) => "INT32",
            Self::F32(_) => "FLOAT32",
            Self::Bool(_) => "BOOL",
            Self::String(_) => "STRING",
            Self::Array(_) => "ARRAY",
            Self::U64(_) => "UINT64",
            Self::I64(_) => "INT64",
            Self::F64(_) => "FLOAT64",
        }
    }
}

/// A ggml tensor type id (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// 32-bit float.
    pub const F32: Self = Self(0);
    /// 16-bit IEEE float.
    pub const F16: Self = Self(1);
    /// 4-bit, blocks of 32 with one f16 scale.
    pub const Q4_0: Self = Self(2);
    /// 4-bit, blocks of 32 with an f16 scale and an f16 minimum.
    pub const Q4_1: Self = Self(3);
    /// 8-bit, blocks of 32 with one f16 scale.
    pub const Q8_0: Self = Self(8);
    /// bfloat16.
    pub const BF16: Self = Self(30);

    /// The ggml name of the type (`Q4_K`, ...), or `type N` when unknown.
    pub fn name(self) -> String {
        const NAMES: [&str; 40] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
        ];
        NAMES
            .get(self.0 as usize)
            .map(|s| (*s).to_string())
            .unwrap_or_else(|| format!("type {}", self.0))
    }

    /// `(elements per block, bytes per block)` for the types this module
    /// can dequantize; `None` for the others.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            _ => None,
        }
    }

    /// Whether [`GgufFile::dequantize`] supports the type.
    pub fn is_supported(self) -> bool {
        self.block_layout().is_some()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One tensor's entry in the GGUF tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The GGUF tensor name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost (contiguous) axis.
    pub dims: Vec<u64>,
    /// The storage type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The shape in row-major (PyTorch / HF) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (saturating on absurd dims; such tensors are
    /// rejected by [`GgufFile::open`]).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Size of the tensor data in bytes, for supported types.
    pub fn byte_size(&self) -> Option<u64> {
        let (block, bytes) = self.ggml_type.block_layout()?;
        Some(self.n_elements() / block as u64 * bytes as u64)
    }
}

/// An opened (memory-mapped) GGUF file: metadata and tensor table parsed,
/// tensor data read on demand.
pub struct GgufFile {
    pub(super) path: PathBuf,
    pub(super) mmap: memmap2::Mmap,
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) index: HashMap<String, usize>,
    pub(super) data_offset: u64,
    pub(super) alignment: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

/// Bounds-checked little-endian reader over the mapped file.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl<'a> Reader<'a> {
    pub(super) fn err(&self, message: String) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            message,
        }
    }

    pub(super) fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated file: {} needs {n} bytes at offset {}, but the file has {} bytes",
                    what(),
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated file: {} claims a string of {len} bytes at offset {}, but only {} bytes remain",
                    what(),
                    self.pos,
                    self.remaining()
                ))
            })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.err(format!("{}: string is not valid UTF-8 ({e})", what())))
    }

    pub(super) fn value(
        &mut self,
        ty: u32,
        what: &dyn Fn() -> String,
        depth: usize,
    ) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => {
                let [b] = self.array::<1>(what)?;
                match b {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    other => return Err(self.err(format!("{}: invalid bool byte {other}", what()))),
                }
            }
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{}: arrays nested too deeply", what())));
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                let min_size: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(
                            self.err(format!("{}: unknown array element type {other}", what()))
                        )
                    }
                };
                if count.saturating_mul(min_size) > self.remaining() as u64 {
                    return Err(self.err(format!(
                        "truncated file: {} claims {count} array elements at offset {}, but only {} bytes remain",
                        what(),
                        self.pos,
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let item_what = || format!("{} [{i}]", what());
                    items.push(self.value(elem_ty, &item_what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.err(format!("{}: unknown value type {other}", what()))),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file (v2 or v3, little-endian). Checks that
    /// every tensor of a supported type lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let gguf_err = |message: String| ModelError::Gguf {
            path: path.to_path_buf(),
            message,
        };
        if len < 4 {
            return Err(gguf_err(format!(
                "bad magic: file has only {len} bytes (not a GGUF file)"
            )));
        }
        // SAFETY: the map is read-only; as with every memory-mapped reader,
        // the file must not be truncated or rewritten while it is open.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path,
        };

        let magic = r.u32(&|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(gguf_err(format!(
                "bad magic {:?} (expected \"GGUF\"; not a GGUF file)",
                String::from_utf8_lossy(&magic.to_le_bytes())
            )));
        }
        let version = r.u32(&|| "version".into())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(gguf_err(
                    "GGUF version 1 is not supported (only 2 and 3)".into(),
                ))
            }
            v if (1..=3).contains(&v.swap_bytes()) => {
                return Err(gguf_err("big-endian GGUF files are not supported".into()))
            }
            v => {
                return Err(gguf_err(format!(
                    "unsupported GGUF version {v} (only 2 and 3)"
                )))
            }
        }
        let tensor_count = r.u64(&|| "tensor count".into())?;
        let kv_count = r.u64(&|| "metadata count".into())?;
        // every entry takes at least 12 bytes; refuse absurd counts early
        if kv_count.saturating_add(tensor_count).saturating_mul(12) > len {
            return Err(gguf_err(format!(
                "truncated or corrupt header: {kv_count} metadata entries and {tensor_count} tensors cannot fit in {len} bytes"
            )));
        }

        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata key `{key}`");
            let ty = r.u32(&what)?;
            let value = r.value(ty, &what, 0)?;
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut index = HashMap::new();
        for i in 0..tensor_count {
            let name = r.string(&|| format!("name of tensor #{i}"))?;
            let what = || format!("tensor `{name}`");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(gguf_err(format!(
                    "tensor `{name}`: {n_dims} dimensions (expected 1 to 4)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let ggml_type = GgmlType(r.u32(&what)?);
            let offset = r.u64(&what)?;
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(gguf_err(format!("tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(gguf_err(format!(
                        "metadata key `general.alignment`: {v:?} is not a positive power of two"
                    )))
                }
            },
        };
        let header_end = r.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;

        for t in &tensors {
            let n = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let Some(n) = n.filter(|&n| usize::try_from(n).is_ok()) else {
                return Err(gguf_err(format!(
                    "tensor `{}`: dims {:?} overflow",
                    t.name, t.dims
                )));
            };
            let Some((block, bytes)) = t.ggml_type.block_layout() else {
                continue;
            };
            if t.dims[0] % block as u64 != 0 {
                return Err(gguf_err(format!(
                    "tensor `{}`: innermost dimension {} is not a multiple of the {} block size {block}",
                    t.name, t.dims[0], t.ggml_type
                )));
            }
            // checked: with dims near u64::MAX the byte size overflows
            let size = (n / block as u64).checked_mul(bytes as u64);
            let end = size.and_then(|size| {
                data_offset
                    .checked_add(t.offset)
                    .and_then(|s| s.checked_add(size))
            });
            match end {
                Some(end) if end <= len => {}
                _ => {
                    return Err(gguf_err(format!(
                        "truncated file: tensor `{}` ({}, dims {:?} at data offset {}) extends past the end of the file ({len} bytes)",
                        t.name, t.ggml_type, t.dims, t.offset
                    )))
                }
            }
        }

        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            index,
            data_offset,
            alignment,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data-section alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }

    /// The tensor table, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub(super) fn err(&self, message: String) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            message,
        }
    }

    /// The raw bytes of a tensor of a supported type.
    pub fn raw_data(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })?;
        let size = info.byte_size().ok_or_else(|| {
            self.err(format!(
                "tensor `{name}`: unsupported tensor type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                info.ggml_type
            ))
        })?;
        // bounds were checked in `open`
        let start = (self.data_offset + info.offset) as usize;
        self.mmap.get(start..start + size as usize).ok_or_else(|| {
            self.err(format!(
                "truncated file: tensor `{name}` extends past the end of the file"
            ))
        })
    }

    /// Dequantizes a tensor to f32. Returns the shape in row-major (HF)
    /// order and the data. No permutation is undone here (see
    /// [`unpermute_qk`]).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let bytes = self.raw_data(name)?;
        let info = &self.tensors[self.index[name]];
        let data = dequantize_bytes(info.ggml_type, bytes, info.n_elements() as usize)
            .map_err(|m| self.err(format!("tensor `{name}`: {m}")))?;
        Ok((info.shape(), data))
    }
}
