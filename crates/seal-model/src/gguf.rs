//! GGUF import: read a llama.cpp GGUF checkpoint (format v2/v3) of
//! architecture `llama`, dequantize it to f32 and write a Hugging Face model
//! directory (`model.safetensors`, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`).
//!
//! # Format
//!
//! A GGUF file is: the magic `GGUF`, a `u32` version, `u64` tensor and
//! metadata counts, the metadata key/value pairs (all GGUF value types,
//! including nested arrays), the tensor infos (name, dims with `ne[0]`
//! innermost, ggml type, offset into the data section), then the tensor data,
//! starting at the next multiple of `general.alignment` (default 32).
//! Everything is little-endian. Supported tensor types: F32, F16, BF16,
//! Q8_0 (blocks of 32: f16 scale `d` + 32 × i8), Q4_0 (f16 `d` + 16 bytes of
//! nibbles, value `(q - 8) · d`) and Q4_1 (f16 `d`, f16 `m` + 16 bytes,
//! value `q · d + m`); in the 4-bit formats byte `j` holds element `j` in its
//! low nibble and element `j + 16` in its high nibble. Other types (K-quants,
//! I-quants, ...) are rejected by name.
//!
//! Because GGUF dims list `ne[0]` (the contiguous axis) first, a GGUF tensor
//! with dims `[in, out]` is the row-major HF matrix `[out, in]`: shapes are
//! reversed, data is not moved.
//!
//! # The Q/K permutation
//!
//! llama.cpp's `convert_hf_to_gguf.py` (class `LlamaModel`, function
//! `permute`) reorders the rows of `q_proj` and `k_proj` so that each head's
//! rotary pairs become interleaved (GGML's "normal" RoPE) instead of split in
//! two halves (HF's `rotate_half`): it reshapes the HF weight
//! `[n_head · head_dim, in]` to `[n_head, 2, head_dim / 2, in]` and swaps axes
//! 1 and 2, using `n_head = head_count` for `attn_q` and
//! `n_head = head_count_kv` for `attn_k`. So GGUF row `h·hd + 2k + j` holds HF
//! row `h·hd + j·hd/2 + k`; [`unpermute_qk`] applies the inverse.
//!
//! # Why an own reader
//!
//! The brief suggested `candle-core`'s `quantized::gguf_file`. candle-core
//! 0.11 pulls in `gemm` (several heavily generic crates), `zip`, `float8`,
//! `safetensors` 0.8, `rand_distr` and a second `tokenizers` (0.23) next to
//! the workspace's 0.22: far more than two minutes of extra compile time on
//! the project's 2-core machine, for a parser of a few hundred lines. So this
//! module reads GGUF itself, with bounds checks on every read so that
//! malformed files give errors naming the file and the key or tensor.
//!
//! # Tokenizer
//!
//! `tokenizer.ggml.model = gpt2` (byte-level BPE) is rebuilt as a
//! `tokenizers` tokenizer: vocabulary from `tokenizer.ggml.tokens`, merges
//! from `tokenizer.ggml.merges`, control tokens (`token_type` 3) as added
//! special tokens and user-defined ones (4) as added tokens, pre-tokenizer
//! chosen by `tokenizer.ggml.pre` (`smollm`: individual digits, then
//! byte-level with the GPT-2 regex and no prefix space; `gpt2`/`default`:
//! byte-level only), byte-level decoder and post-processor (or a
//! BOS/EOS template when `tokenizer.ggml.add_bos_token`/`add_eos_token`).
//! `tokenizer.chat_template` is carried into `tokenizer_config.json`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::error::{ModelError, Result};

/// Little-endian `u32` of the bytes `GGUF`.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default alignment of the tensor data section.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata arrays may nest at most this deep.
const MAX_ARRAY_DEPTH: usize = 8;

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
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
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
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, message: String) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
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

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
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

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String, depth: usize) -> Result<GgufValue> {
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

    fn err(&self, message: String) -> ModelError {
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

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Dequantizes `bytes` of type `ty` holding `n` elements.
pub fn dequantize_bytes(
    ty: GgmlType,
    bytes: &[u8],
    n: usize,
) -> std::result::Result<Vec<f32>, String> {
    let (block, block_bytes) = ty
        .block_layout()
        .ok_or_else(|| format!("unsupported tensor type {ty}"))?;
    if n % block != 0 || bytes.len() != n / block * block_bytes {
        return Err(format!(
            "{ty} data of {} bytes does not hold {n} elements",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16(c[0], c[1]))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16(b[0], b[1]);
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16(b[0], b[1]);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| (i32::from(q & 0x0F) - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| (i32::from(q >> 4) - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = f16(b[0], b[1]);
                let m = f16(b[2], b[3]);
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        _ => return Err(format!("unsupported tensor type {ty}")),
    }
    Ok(out)
}

/// Undoes llama.cpp's Q/K row permutation on a row-major `[rows, cols]`
/// matrix with `n_head` heads (`head_count` for `attn_q`, `head_count_kv`
/// for `attn_k`): HF row `h·hd + j·hd/2 + k` = GGUF row `h·hd + 2k + j`.
pub fn unpermute_qk(
    data: &[f32],
    n_head: usize,
    rows: usize,
    cols: usize,
) -> std::result::Result<Vec<f32>, String> {
    if n_head == 0
        || rows % n_head != 0
        || (rows / n_head) % 2 != 0
        || rows.checked_mul(cols) != Some(data.len())
    {
        return Err(format!(
            "cannot undo the Q/K permutation: {rows}x{cols} matrix ({} values) with {n_head} heads needs an even head dim",
            data.len()
        ));
    }
    if data.is_empty() {
        // nothing to move; rows alone may be huge (a zero-width matrix)
        return Ok(Vec::new());
    }
    let hd = rows / n_head;
    let half_hd = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for k in 0..half_hd {
                let hf_row = h * hd + j * half_hd + k;
                let gg_row = h * hd + 2 * k + j;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&data[gg_row * cols..(gg_row + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// Maps a GGUF tensor name of the llama architecture to its HF name.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match tail {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// What [`import_gguf`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    /// The written HF directory.
    pub out_dir: PathBuf,
    /// `general.architecture` (always `llama` today).
    pub architecture: String,
    /// `general.name`, when present.
    pub model_name: Option<String>,
    /// Number of tensors written to `model.safetensors`.
    pub tensor_count: usize,
    /// Total number of parameters written.
    pub parameter_count: u64,
    /// Tensor count per ggml storage type seen in the GGUF (`Q4_1` → 210, ...).
    pub quantization_types: BTreeMap<String, usize>,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Vocabulary size of the model.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding (no `output.weight` in the GGUF).
    pub tie_word_embeddings: bool,
    /// Whether a chat template was carried over.
    pub has_chat_template: bool,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<String> = self
            .quantization_types
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        write!(
            f,
            "imported {} ({}): {} tensors, {} parameters, {} layers, vocab {}, types [{}], tied embeddings: {}, chat template: {} -> {}",
            self.model_name.as_deref().unwrap_or("model"),
            self.architecture,
            self.tensor_count,
            self.parameter_count,
            self.num_hidden_layers,
            self.vocab_size,
            types.join(", "),
            self.tie_word_embeddings,
            if self.has_chat_template { "yes" } else { "no" },
            self.out_dir.display()
        )
    }
}

/// Llama hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
struct LlamaParams {
    hidden: usize,
    layers: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rms_eps: f64,
    rope_theta: f64,
    context: usize,
    vocab: usize,
    rope_scaling: Option<Json>,
}

/// One tensor of the import plan.
#[derive(Debug, Clone)]
struct PlannedTensor {
    /// HF name.
    hf: String,
    /// GGUF name.
    gguf: String,
    /// HF (row-major) shape.
    shape: Vec<usize>,
    /// Heads for undoing the Q/K permutation, for `attn_q` / `attn_k`.
    unpermute: Option<usize>,
}

impl GgufFile {
    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(format!(
                        "metadata key `{key}`: expected an integer, found {}",
                        v.type_name()
                    ))
                }),
        }
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}`: expected a number, found {}",
                    v.type_name()
                ))
            }),
        }
    }

    fn meta_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}`: expected a string, found {}",
                    v.type_name()
                ))
            }),
        }
    }

    fn require_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    fn llama_params(&self) -> Result<LlamaParams> {
        let hidden = self.require_usize("llama.embedding_length")?;
        let layers = self.require_usize("llama.block_count")?;
        let ffn = self.require_usize("llama.feed_forward_length")?;
        let heads = self.require_usize("llama.attention.head_count")?;
        let kv_heads = self
            .meta_usize("llama.attention.head_count_kv")?
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(self.err(format!(
                "metadata keys `llama.attention.head_count` ({heads}) / `llama.attention.head_count_kv` ({kv_heads}): heads must be a positive multiple of kv heads"
            )));
        }
        let head_dim = match self.meta_usize("llama.attention.key_length")? {
            Some(d) => d,
            None => {
                if hidden % heads != 0 {
                    return Err(self.err(format!(
                        "metadata key `llama.embedding_length` ({hidden}) is not divisible by head_count ({heads})"
                    )));
                }
                hidden / heads
            }
        };
        if let Some(v) = self.meta_usize("llama.attention.value_length")? {
            if v != head_dim {
                return Err(self.err(format!(
                    "metadata key `llama.attention.value_length` ({v}) differs from key_length ({head_dim}); not supported"
                )));
            }
        }
        if let Some(rot) = self.meta_usize("llama.rope.dimension_count")? {
            if rot != head_dim {
                return Err(self.err(format!(
                    "metadata key `llama.rope.dimension_count` ({rot}) differs from head_dim ({head_dim}): partial rotary embeddings are not supported"
                )));
            }
        }
        let rms_eps = self
            .meta_f64("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| {
                self.err("metadata key `llama.attention.layer_norm_rms_epsilon` is missing".into())
            })?;
        let rope_theta = self.meta_f64("llama.rope.freq_base")?.unwrap_or(10_000.0);
        let context = self.meta_usize("llama.context_length")?.unwrap_or(2048);
        let n_tokens = self
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(<[_]>::len);
        let embd_rows = self
            .tensor_info("token_embd.weight")
            .and_then(|t| t.dims.get(1).map(|&d| d as usize));
        let vocab = match (self.meta_usize("llama.vocab_size")?, embd_rows, n_tokens) {
            (Some(v), _, _) => v,
            (None, Some(v), _) => v,
            (None, None, Some(v)) => v,
            _ => return Err(self.err("cannot determine the vocabulary size (no `llama.vocab_size`, no `token_embd.weight`)".into())),
        };
        let rope_scaling = match self.meta_str("llama.rope.scaling.type")? {
            None | Some("none") => match self.meta_f64("llama.rope.scale_linear")? {
                Some(f) if f != 1.0 => {
                    Some(json!({"type": "linear", "rope_type": "linear", "factor": f}))
                }
                _ => None,
            },
            Some("linear") => {
                let f = self.meta_f64("llama.rope.scaling.factor")?.ok_or_else(|| {
                    self.err("metadata key `llama.rope.scaling.factor` is missing".into())
                })?;
                Some(json!({"type": "linear", "rope_type": "linear", "factor": f}))
            }
            Some("yarn") => {
                let f = self.meta_f64("llama.rope.scaling.factor")?.ok_or_else(|| {
                    self.err("metadata key `llama.rope.scaling.factor` is missing".into())
                })?;
                let orig = self
                    .meta_usize("llama.rope.scaling.original_context_length")?
                    .unwrap_or(context);
                Some(
                    json!({"type": "yarn", "rope_type": "yarn", "factor": f, "original_max_position_embeddings": orig}),
                )
            }
            Some(other) => {
                return Err(self.err(format!(
                    "metadata key `llama.rope.scaling.type`: unsupported rope scaling `{other}`"
                )))
            }
        };
        Ok(LlamaParams {
            hidden,
            layers,
            ffn,
            heads,
            kv_heads,
            head_dim,
            rms_eps,
            rope_theta,
            context,
            vocab,
            rope_scaling,
        })
    }

    /// The HF tensors to write, sorted by HF name. Validates names, types
    /// and shapes.
    fn plan_tensors(&self, p: &LlamaParams) -> Result<Vec<PlannedTensor>> {
        let mut plan = Vec::new();
        for t in &self.tensors {
            if t.name == "rope_freqs.weight" {
                return Err(self.err(
                    "tensor `rope_freqs.weight`: Llama-3-style rope frequency factors are not supported".into(),
                ));
            }
            let hf = hf_tensor_name(&t.name).ok_or_else(|| {
                self.err(format!(
                    "tensor `{}`: not a known llama tensor name",
                    t.name
                ))
            })?;
            if !t.ggml_type.is_supported() {
                return Err(self.err(format!(
                    "tensor `{}`: unsupported tensor type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                    t.name, t.ggml_type
                )));
            }
            let tail = t
                .name
                .rsplit_once("blk.")
                .map(|(_, r)| r)
                .unwrap_or(&t.name);
            let q = p.heads.checked_mul(p.head_dim);
            let kv = p.kv_heads.checked_mul(p.head_dim);
            let (Some(q), Some(kv)) = (q, kv) else {
                return Err(self.err(format!(
                    "metadata keys `llama.attention.head_count` ({}) × `llama.attention.key_length` ({}) overflow",
                    p.heads, p.head_dim
                )));
            };
            let (expected, unpermute): (Vec<usize>, Option<usize>) =
                if t.name == "token_embd.weight" || t.name == "output.weight" {
                    (vec![p.vocab, p.hidden], None)
                } else if t.name == "output_norm.weight" || tail.ends_with("_norm.weight") {
                    (vec![p.hidden], None)
                } else if tail.ends_with(".attn_q.weight") {
                    (vec![q, p.hidden], Some(p.heads))
                } else if tail.ends_with(".attn_k.weight") {
                    (vec![kv, p.hidden], Some(p.kv_heads))
                } else if tail.ends_with(".attn_v.weight") {
                    (vec![kv, p.hidden], None)
                } else if tail.ends_with(".attn_output.weight") {
                    (vec![p.hidden, q], None)
                } else if tail.ends_with(".ffn_gate.weight") || tail.ends_with(".ffn_up.weight") {
                    (vec![p.ffn, p.hidden], None)
                } else {
                    (vec![p.hidden, p.ffn], None)
                };
            let layer_ok = match t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
                Some((l, _)) => l.parse::<usize>().map(|l| l < p.layers).unwrap_or(false),
                None => true,
            };
            if !layer_ok {
                return Err(self.err(format!(
                    "tensor `{}`: layer index out of range (block_count = {})",
                    t.name, p.layers
                )));
            }
            if t.shape() != expected {
                return Err(ModelError::ShapeMismatch {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                    expected: expected.iter().map(|&d| d as i64).collect(),
                    found: t.shape().iter().map(|&d| d as i64).collect(),
                });
            }
            plan.push(PlannedTensor {
                hf,
                gguf: t.name.clone(),
                shape: expected,
                unpermute,
            });
        }
        // Checked while listed: `block_count` comes from the file, and the
        // first missing layer ends the loop however large it claims to be.
        let missing = |name: String| -> Result<()> {
            match self.tensor_info(&name) {
                Some(_) => Ok(()),
                None => Err(ModelError::MissingTensor {
                    path: self.path.clone(),
                    tensor: name,
                }),
            }
        };
        missing("token_embd.weight".into())?;
        missing("output_norm.weight".into())?;
        for l in 0..p.layers {
            for part in [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
                "attn_norm",
                "ffn_norm",
            ] {
                missing(format!("blk.{l}.{part}.weight"))?;
            }
        }
        plan.sort_by(|a, b| a.hf.cmp(&b.hf));
        Ok(plan)
    }
}

/// GPT-2's reversible byte → printable-char table (`bytes_to_unicode`).
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The token strings of the GGUF vocabulary plus the special tokens.
struct GgufVocab {
    tokens: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl GgufVocab {
    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }
}

impl GgufFile {
    fn string_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))?
            .as_array()
            .ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}`: expected an array of strings"
                ))
            })?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    self.err(format!(
                        "metadata key `{key}` [{i}]: expected a string, found {}",
                        v.type_name()
                    ))
                })
            })
            .collect()
    }

    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        match self.meta_usize(key)? {
            None => Ok(None),
            Some(id) if id < n_tokens => Ok(Some(id as u32)),
            Some(id) => Err(self.err(format!(
                "metadata key `{key}`: token id {id} is outside the vocabulary ({n_tokens} tokens)"
            ))),
        }
    }

    /// Builds the HF `tokenizer.json` (as JSON) from the GGUF vocabulary.
    fn build_tokenizer_json(&self) -> Result<(Json, GgufVocab)> {
        match self.meta_str("tokenizer.ggml.model")? {
            Some("gpt2") => {}
            Some(other) => {
                return Err(self.err(format!(
                    "metadata key `tokenizer.ggml.model`: tokenizer model `{other}` is not supported (only gpt2 byte-level BPE)"
                )))
            }
            None => return Err(self.err("metadata key `tokenizer.ggml.model` is missing".into())),
        }
        let pre = self.meta_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level
            ]}),
            "default" | "gpt2" => byte_level,
            other => {
                return Err(self.err(format!(
                    "metadata key `tokenizer.ggml.pre`: pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, default)"
                )))
            }
        };

        let raw_tokens = self.string_array("tokenizer.ggml.tokens")?;
        let n = raw_tokens.len();
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(v) => {
                let arr = v.as_array().ok_or_else(|| {
                    self.err(
                        "metadata key `tokenizer.ggml.token_type`: expected an array of integers"
                            .into(),
                    )
                })?;
                if arr.len() != n {
                    return Err(self.err(format!(
                        "metadata key `tokenizer.ggml.token_type`: {} entries for {n} tokens",
                        arr.len()
                    )));
                }
                arr.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64().ok_or_else(|| {
                            self.err(format!("metadata key `tokenizer.ggml.token_type` [{i}]: expected an integer"))
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let merges_raw = match self.get("tokenizer.ggml.merges") {
            Some(_) => self.string_array("tokenizer.ggml.merges")?,
            None => return Err(self.err("metadata key `tokenizer.ggml.merges` is missing".into())),
        };

        // Byte-level vocabularies spell every token in the byte alphabet;
        // re-spell any token that is not (as transformers does).
        let alphabet = byte_level_alphabet();
        let in_alphabet: std::collections::HashSet<char> = alphabet.iter().copied().collect();
        let spelled = |t: &str| t.chars().all(|c| in_alphabet.contains(&c));
        let tokens: Vec<String> = raw_tokens
            .iter()
            .map(|t| {
                if spelled(t) {
                    t.clone()
                } else {
                    t.bytes().map(|b| alphabet[b as usize]).collect()
                }
            })
            .collect();

        let mut vocab = serde_json::Map::new();
        for (id, t) in tokens.iter().enumerate() {
            if vocab.contains_key(t) {
                tracing::warn!(token = %t, id, "duplicate token in GGUF vocabulary; keeping the first id");
                continue;
            }
            vocab.insert(t.clone(), json!(id));
        }
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                self.err(format!("metadata key `tokenizer.ggml.merges` [{i}]: `{m}` is not two tokens separated by a space"))
            })?;
            merges.push(json!([a, b]));
        }

        let mut added = Vec::new();
        for (id, (raw, ty)) in raw_tokens.iter().zip(&types).enumerate() {
            let special = match *ty {
                3 if spelled(raw) => true,
                4 => false,
                _ => continue,
            };
            added.push(json!({
                "id": id, "content": raw, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special
            }));
        }

        let v = GgufVocab {
            bos: self.token_id("tokenizer.ggml.bos_token_id", n)?,
            eos: self.token_id("tokenizer.ggml.eos_token_id", n)?,
            pad: self.token_id("tokenizer.ggml.padding_token_id", n)?,
            unk: self.token_id("tokenizer.ggml.unknown_token_id", n)?,
            add_bos: self
                .get("tokenizer.ggml.add_bos_token")
                .and_then(GgufValue::as_bool)
                .unwrap_or(false),
            add_eos: self
                .get("tokenizer.ggml.add_eos_token")
                .and_then(GgufValue::as_bool)
                .unwrap_or(false),
            tokens,
        };

        let post_processor = if (v.add_bos && v.bos.is_some()) || (v.add_eos && v.eos.is_some()) {
            let mut single = Vec::new();
            let mut pair = Vec::new();
            let mut specials = serde_json::Map::new();
            let bos = v
                .bos
                .filter(|_| v.add_bos)
                .zip(v.token(v.bos).map(str::to_string));
            let eos = v
                .eos
                .filter(|_| v.add_eos)
                .zip(v.token(v.eos).map(str::to_string));
            for (seq, type_id) in [("A", 0), ("B", 1)] {
                let mut items = Vec::new();
                if let Some((_, t)) = &bos {
                    items.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
                }
                items.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
                if let Some((_, t)) = &eos {
                    items.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
                }
                if seq == "A" {
                    single.extend(items.clone());
                }
                pair.extend(items);
            }
            for (id, t) in bos.iter().chain(eos.iter()) {
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
        } else {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        };

        let tok = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges
            }
        });
        Ok((tok, v))
    }
}

/// A unique sibling path of `target` for atomic writes.
pub(crate) fn temp_sibling(target: &Path) -> Result<PathBuf> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| {
            ModelError::InvalidInput(format!("{}: not a valid output path", target.display()))
        })?
        .to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(parent.join(format!(".{name}.tmp-{}-{nanos}-{n}", std::process::id())))
}

fn write_json(path: &Path, value: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// Imports a llama GGUF checkpoint into a new Hugging Face directory
/// `out_dir` (f32 weights). Everything is written into a temporary sibling
/// directory that is renamed to `out_dir` at the end; `out_dir` must not
/// exist (or be an empty directory).
pub fn import_gguf(gguf: &Path, out_dir: &Path) -> Result<ImportSummary> {
    let file = GgufFile::open(gguf)?;
    let arch = file
        .meta_str("general.architecture")?
        .ok_or_else(|| file.err("metadata key `general.architecture` is missing".into()))?
        .to_string();
    if arch != "llama" {
        return Err(file.err(format!(
            "metadata key `general.architecture`: architecture `{arch}` is not supported (only llama)"
        )));
    }
    // Tensor types first: an unknown quantisation is the clearest error
    // about a file from a newer llama.cpp.
    if let Some(t) = file.tensors.iter().find(|t| !t.ggml_type.is_supported()) {
        return Err(file.err(format!(
            "tensor `{}`: unsupported tensor type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
            t.name, t.ggml_type
        )));
    }
    let p = file.llama_params()?;
    let plan = file.plan_tensors(&p)?;
    let tie = file.tensor_info("output.weight").is_none();
    let (tok_json, vocab) = file.build_tokenizer_json()?;
    let tokenizer: tokenizers::Tokenizer = tok_json.to_string().parse().map_err(|e| {
        file.err(format!(
            "the tokenizer rebuilt from `tokenizer.ggml.*` is invalid: {e}"
        ))
    })?;
    if tokenizer.get_vocab_size(true) > p.vocab {
        return Err(file.err(format!(
            "metadata key `tokenizer.ggml.tokens`: {} tokens but the model's vocabulary has {} rows",
            tokenizer.get_vocab_size(true),
            p.vocab
        )));
    }
    let chat_template = file
        .meta_str("tokenizer.chat_template")?
        .map(str::to_string);

    // Checked before the tensors are converted: a non-empty directory, a
    // file or an unwritable place is refused, never replaced.
    seal_data::fsutil::check_output_dir(out_dir, false)?;
    // Removed on every failure path; leftovers of killed runs are removed
    // by the next import into the same place.
    let staging = seal_data::fsutil::StagingDir::new(out_dir)?;
    let tmp = staging.path().to_path_buf();

    // model.safetensors, streamed tensor by tensor
    let st_path = tmp.join("model.safetensors");
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    let mut parameter_count = 0u64;
    for t in &plan {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        parameter_count += n;
        header.insert(
            t.hf.clone(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * n]}),
        );
        offset += 4 * n;
    }
    let mut header_bytes = Json::Object(header).to_string().into_bytes();
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    {
        let f = File::create(&st_path).map_err(|e| ModelError::io(&st_path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let io = |e| ModelError::io(&st_path, e);
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&header_bytes).map_err(io)?;
        let mut buf = Vec::new();
        for t in &plan {
            let (_, mut data) = file.dequantize(&t.gguf)?;
            if let Some(heads) = t.unpermute {
                data = unpermute_qk(&data, heads, t.shape[0], t.shape[1])
                    .map_err(|m| file.err(format!("tensor `{}`: {m}", t.gguf)))?;
            }
            buf.clear();
            buf.reserve(data.len() * 4);
            for v in &data {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf).map_err(io)?;
        }
        let f = w
            .into_inner()
            .map_err(|e| ModelError::io(&st_path, e.into_error()))?;
        f.sync_all().map_err(io)?;
    }

    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden,
        "intermediate_size": p.ffn,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": p.rms_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": p.rope_scaling,
        "max_position_embeddings": p.context,
        "vocab_size": p.vocab,
        "tie_word_embeddings": tie,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "pad_token_id": vocab.pad,
        "torch_dtype": "float32",
    });
    write_json(&tmp.join("config.json"), &config)?;

    let tok_path = tmp.join("tokenizer.json");
    let tok_text = tokenizer.to_string(false).map_err(|e| ModelError::Config {
        path: tok_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&tok_path, tok_text).map_err(|e| ModelError::io(&tok_path, e))?;

    let tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "bos_token": vocab.token(vocab.bos),
        "eos_token": vocab.token(vocab.eos),
        "pad_token": vocab.token(vocab.pad),
        "unk_token": vocab.token(vocab.unk),
        "model_max_length": p.context,
        "clean_up_tokenization_spaces": false,
        "chat_template": chat_template,
    });
    write_json(&tmp.join("tokenizer_config.json"), &tok_config)?;

    let gen_config = json!({
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "pad_token_id": vocab.pad,
    });
    write_json(&tmp.join("generation_config.json"), &gen_config)?;

    staging.commit()?;

    let mut quantization_types = BTreeMap::new();
    for t in file.tensor_infos() {
        *quantization_types.entry(t.ggml_type.name()).or_insert(0) += 1;
    }
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        architecture: arch,
        model_name: file.meta_str("general.name")?.map(str::to_string),
        tensor_count: plan.len(),
        parameter_count,
        quantization_types,
        num_hidden_layers: p.layers,
        vocab_size: p.vocab,
        tie_word_embeddings: tie,
        has_chat_template: chat_template.is_some(),
    })
}
