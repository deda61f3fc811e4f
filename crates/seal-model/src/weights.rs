//! Reading and writing safetensors checkpoints.
//!
//! Tensors are copied by name into tensors the model already created, with
//! the shape checked and the dtype converted explicitly: tch's
//! `VarStore::load` reads a single file and silently changes dtypes, which is
//! not what a checkpoint loader should do. Sharded checkpoints
//! (`model.safetensors.index.json`) are supported.

use crate::error::{ModelError, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// One or more memory-mapped safetensors files, addressed by tensor name.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    by_name: HashMap<String, usize>,
    /// Where errors say the tensors come from (the file or the index).
    origin: PathBuf,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`, in an HF model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open_file(&single)
        } else if index.exists() {
            Self::open_index(&index)
        } else {
            Err(ModelError::MissingFile {
                path: single,
                what: "weights (model.safetensors or model.safetensors.index.json)".into(),
            })
        }
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let file = map_file(path)?;
        let by_name = file
            .metadata
            .tensors()
            .keys()
            .map(|k| (k.clone(), 0))
            .collect();
        Ok(Self {
            files: vec![file],
            by_name,
            origin: path.to_path_buf(),
        })
    }

    /// Opens a sharded checkpoint through its index file.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index.into(),
            message: e.to_string(),
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        let mut file_ids: HashMap<String, usize> = HashMap::new();
        let mut by_name = HashMap::new();
        for (tensor, shard) in &parsed.weight_map {
            let id = match file_ids.get(shard) {
                Some(id) => *id,
                None => {
                    let path = dir.join(shard);
                    if !path.exists() {
                        return Err(ModelError::MissingFile {
                            path,
                            what: format!("shard listed in {} for `{tensor}`", index.display()),
                        });
                    }
                    files.push(map_file(&path)?);
                    file_ids.insert(shard.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            by_name.insert(tensor.clone(), id);
        }
        Ok(Self {
            files,
            by_name,
            origin: index.to_path_buf(),
        })
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<(&MappedFile, &TensorInfo)> {
        let missing = || ModelError::MissingTensor {
            path: self.origin.clone(),
            tensor: name.to_string(),
        };
        let id = *self.by_name.get(name).ok_or_else(missing)?;
        let file = &self.files[id];
        let info = file.metadata.info(name).ok_or_else(missing)?;
        Ok((file, info))
    }

    /// Shape of a tensor as stored.
    pub fn shape(&self, name: &str) -> Result<Vec<i64>> {
        Ok(self.info(name)?.1.shape.iter().map(|&d| d as i64).collect())
    }

    /// Checks that tensor `name` exists with shape `expected`, without
    /// reading its data (loaders call this before allocating anything sized
    /// by a config file).
    pub fn check_shape(&self, name: &str, expected: &[i64]) -> Result<()> {
        let (file, info) = self.info(name)?;
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != expected {
            return Err(ModelError::ShapeMismatch {
                path: file.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        Ok(())
    }

    /// Loads a tensor, checks its shape, converts it to `kind` on `device`.
    pub fn load(&self, name: &str, expected: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        self.check_shape(name, expected)?;
        let (file, info) = self.info(name)?;
        let found = expected.to_vec();
        let src_kind = kind_of(info.dtype).ok_or_else(|| ModelError::Safetensors {
            path: file.path.clone(),
            message: format!("tensor `{name}` has unsupported dtype {:?}", info.dtype),
        })?;
        let start = 8 + file.header_len + info.data_offsets.0;
        let end = 8 + file.header_len + info.data_offsets.1;
        let bytes = file
            .mmap
            .get(start..end)
            .ok_or_else(|| ModelError::Safetensors {
                path: file.path.clone(),
                message: format!(
                    "tensor `{name}`: data range {start}..{end} is past the end of the file"
                ),
            })?;
        let t = Tensor::f_from_data_size(bytes, &found, src_kind)?;
        if !all_finite(&t)? {
            return Err(ModelError::Safetensors {
                path: file.path.clone(),
                message: format!(
                    "tensor `{name}` holds NaN or infinite values (a diverged run?); refusing to \
                     load it"
                ),
            });
        }
        Ok(t.f_to_kind(kind)?.f_to(device)?)
    }

    /// Loads a tensor as it is stored (dtype kept), on the CPU.
    pub fn load_raw(&self, name: &str) -> Result<Tensor> {
        let shape = self.shape(name)?;
        let (_, info) = self.info(name)?;
        let kind = kind_of(info.dtype).unwrap_or(Kind::Float);
        self.load(name, &shape, kind, Device::Cpu)
    }
}

fn map_file(path: &Path) -> Result<MappedFile> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // Safety: the file is opened read-only; a concurrent writer could change
    // it under us, which checkpoint files do not see (writes are atomic renames).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
            path: path.into(),
            message: e.to_string(),
        })?;
    Ok(MappedFile {
        path: path.to_path_buf(),
        mmap,
        header_len,
        metadata,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Whether every value of a floating-point tensor is finite (other kinds
/// always are).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.is_floating_point() || t.numel() == 0 {
        return Ok(true);
    }
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

/// The bytes of a safetensors file holding `tensors` (moved to the CPU),
/// with optional string metadata. A tensor with NaN or infinite values is
/// an error naming it: nothing diverged is ever written as a checkpoint.
pub fn safetensors_bytes(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_detach()?.f_to(Device::Cpu)?.f_contiguous()?;
        if !all_finite(&t)? {
            return Err(ModelError::InvalidInput(format!(
                "{}: tensor `{name}` holds NaN or infinite values; not written",
                path.display()
            )));
        }
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "tensor `{name}`: dtype {:?} cannot be saved",
                t.kind()
            ))
        })?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        host.push((name.clone(), HostTensor { dtype, shape, data }));
    }
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize(views, metadata).map_err(|e| ModelError::Safetensors {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Writes tensors to a safetensors file atomically (temporary file in the same
/// directory, then rename), with optional string metadata. Tensors must be
/// finite (see [`safetensors_bytes`]).
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = safetensors_bytes(path, tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// The `torch_dtype` name HF's `config.json` uses for `kind`.
pub fn torch_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// Writes bytes to `path` atomically (see [`seal_data::fsutil::write_atomic`]:
/// a temporary file beside it, synced and renamed; devices are written in
/// place, directories refused).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(seal_data::fsutil::write_atomic(path, bytes)?)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ModelError::InvalidInput(format!("{}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())
}

/// Serialises `records` as JSON Lines (one compact object per line) and
/// writes them atomically.
pub fn write_jsonl_atomic<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let line = serde_json::to_string(r)
            .map_err(|e| ModelError::InvalidInput(format!("{}: {e}", path.display())))?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}
