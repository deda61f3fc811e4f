//! safetensors: `WeightFiles::open_file` / `open_dir` (single file and
//! sharded index) with `shape`, `load` and `load_raw` of every tensor, and
//! `Llama::load` of a whole HF directory (`config.json` + weights). Seeds
//! are written with the `safetensors` crate and `Llama::save_pretrained`;
//! mutations target the header length and, inside the JSON header, each
//! tensor's dtype, shape and data offsets.

use std::borrow::Cow;
use std::path::Path;

use safetensors::tensor::Dtype;
use seal_model::weights::WeightFiles;
use seal_model::{Llama, LlamaConfig, LoadOptions};
use serde_json::Value;
use tch::{Device, Kind};

use super::{Case, Pool, Target};
use crate::mutate::{
    havoc, mutate_json, mutate_json_doc, FieldKind, Rng, Structured, INTERESTING, JSON_DICT,
};

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
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

/// A safetensors file of small tensors of many dtypes, written by the
/// `safetensors` crate.
pub fn sample_safetensors(names: &[&str]) -> Vec<u8> {
    let specs: &[(Dtype, &[usize], usize)] = &[
        (Dtype::F32, &[2, 3], 4),
        (Dtype::F16, &[4], 2),
        (Dtype::BF16, &[1, 2, 2], 2),
        (Dtype::I64, &[2], 8),
        (Dtype::U8, &[3], 1),
        (Dtype::BOOL, &[2], 1),
        (Dtype::F64, &[1], 8),
        (Dtype::I32, &[0, 5], 4),
        (Dtype::I8, &[], 1),
    ];
    let raws: Vec<(String, Raw)> = names
        .iter()
        .zip(specs.iter().cycle())
        .map(|(n, (dtype, shape, elt))| {
            let numel: usize = shape.iter().product();
            let data = (0..numel * elt).map(|i| (i % 2) as u8).collect();
            (
                n.to_string(),
                Raw {
                    dtype: *dtype,
                    shape: shape.to_vec(),
                    data,
                },
            )
        })
        .collect();
    let views: Vec<(&str, &Raw)> = raws.iter().map(|(n, r)| (n.as_str(), r)).collect();
    safetensors::serialize(
        views,
        Some([("format".to_string(), "pt".to_string())].into()),
    )
    .expect("serialising the seed")
}

/// Strings worth trying in headers and configs.
pub const STRINGS: &[&str] = &[
    "F32",
    "F16",
    "BF16",
    "F64",
    "I64",
    "I32",
    "I16",
    "I8",
    "U8",
    "U16",
    "U32",
    "U64",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
    "F4",
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
    "llama",
    "model.embed_tokens.weight",
    "lm_head.weight",
    "weight_map",
    "hidden_size",
    "vocab_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "tie_word_embeddings",
    "rope_scaling",
    "llama3",
    "linear",
];

/// Splits a safetensors file into its JSON header and data.
pub fn split(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let v = serde_json::from_slice(header).ok()?;
    Some((v, &bytes[8 + n..]))
}

/// Re-assembles a header and data (length prefix correct).
pub fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// A structure-aware mutation of a safetensors file: one tensor entry's
/// dtype, shape or offsets, the header length, the data, or the JSON.
pub fn mutate_safetensors(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let Some((mut header, data)) = split(bytes) else {
        let mut b = bytes.to_vec();
        havoc(rng, &mut b, JSON_DICT, None);
        return b;
    };
    let mut data = data.to_vec();
    let names: Vec<String> = header
        .as_object()
        .map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default();
    let num = |rng: &mut Rng| -> Value {
        let v = *rng.pick(INTERESTING);
        if rng.one_in(3) {
            Value::from(v as i64)
        } else {
            Value::from(v)
        }
    };
    let op = rng.below(8);
    if let (Some(name), true) = (names.get(rng.below(names.len().max(1))), op < 4) {
        let entry = &mut header[name.as_str()];
        match op {
            0 => entry["dtype"] = Value::from(*rng.pick(&STRINGS[..16])),
            1 => {
                let shape = entry["shape"].as_array_mut();
                if let Some(s) = shape {
                    match rng.below(4) {
                        0 if !s.is_empty() => {
                            let i = rng.below(s.len());
                            s[i] = num(rng);
                        }
                        1 => s.push(num(rng)),
                        2 => {
                            s.pop();
                        }
                        _ => {
                            // same element count, other factorisation
                            s.insert(0, Value::from(1));
                        }
                    }
                }
            }
            2 => {
                if let Some(o) = entry["data_offsets"].as_array_mut() {
                    if !o.is_empty() {
                        let i = rng.below(o.len());
                        o[i] = num(rng);
                    }
                }
            }
            _ => mutate_json(rng, entry, STRINGS),
        }
        return join(&header, &data);
    }
    match op {
        4 => {
            // lie about the header length
            let mut out = join(&header, &data);
            let mut s = Structured {
                bytes: std::mem::take(&mut out),
                fields: vec![crate::mutate::Field {
                    off: 0,
                    width: 8,
                    kind: FieldKind::Len,
                }],
            };
            crate::mutate::mutate_field(rng, &mut s.bytes, &s.fields);
            s.bytes
        }
        5 => {
            if !data.is_empty() {
                let n = rng.below(data.len());
                data.truncate(n);
            } else {
                data.extend_from_slice(&[0; 7]);
            }
            join(&header, &data)
        }
        6 => {
            mutate_json(rng, &mut header, STRINGS);
            join(&header, &data)
        }
        _ => {
            let mut b = join(&header, &data);
            havoc(rng, &mut b, JSON_DICT, None);
            b
        }
    }
}

/// The safetensors target.
pub struct SafetensorsTarget {
    seeds: Vec<Case>,
    pool: Pool,
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

impl SafetensorsTarget {
    /// Seeds: one file, a sharded checkpoint, and a tiny llama directory.
    pub fn new() -> Self {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        let single = Case::one("model.safetensors", sample_safetensors(&names));
        let index = serde_json::json!({
            "metadata": {"total_size": 64},
            "weight_map": {"a": SHARD1, "b": SHARD1, "c": SHARD2, "d": SHARD2}
        });
        let sharded = Case {
            files: vec![
                (
                    "model.safetensors.index.json".into(),
                    serde_json::to_vec_pretty(&index).unwrap_or_default(),
                ),
                (SHARD1.into(), sample_safetensors(&["a", "b"])),
                (SHARD2.into(), sample_safetensors(&["c", "d"])),
            ],
        };
        let mut seeds = vec![single, sharded];
        if let Some(model) = tiny_model_dir() {
            seeds.push(model);
        }
        Self {
            seeds,
            pool: Pool::default(),
        }
    }
}

impl Default for SafetensorsTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// A tiny llama saved by `save_pretrained`.
fn tiny_model_dir() -> Option<Case> {
    let mut cfg = LlamaConfig::tiny(16);
    cfg.hidden_size = 8;
    cfg.intermediate_size = 16;
    cfg.num_hidden_layers = 1;
    cfg.num_attention_heads = 2;
    cfg.num_key_value_heads = 1;
    cfg.head_dim = 4;
    let model = Llama::random(&cfg, Device::Cpu, Kind::Float, 0).ok()?;
    let dir = std::env::temp_dir().join(format!("seal-fuzz-seed-{}", std::process::id()));
    model.save_pretrained(&dir).ok()?;
    let read = |n: &str| std::fs::read(dir.join(n)).ok();
    let case = Case {
        files: vec![
            ("config.json".into(), read("config.json")?),
            ("model.safetensors".into(), read("model.safetensors")?),
        ],
    };
    let _ = std::fs::remove_dir_all(&dir);
    Some(case)
}

/// Mutates one file of a case with the safetensors or JSON mutator.
pub fn mutate_case(rng: &mut Rng, seed: &Case, strings: &[&str]) -> Case {
    let mut case = seed.clone();
    let n = 1 + usize::from(rng.one_in(4));
    for _ in 0..n {
        let i = rng.below(case.files.len());
        let (name, bytes) = &mut case.files[i];
        *bytes = if name.ends_with(".safetensors") {
            mutate_safetensors(rng, bytes)
        } else {
            match serde_json::from_slice::<Value>(bytes) {
                Ok(v) => mutate_json_doc(rng, &v, strings, JSON_DICT),
                Err(_) => {
                    let mut b = bytes.clone();
                    havoc(rng, &mut b, JSON_DICT, None);
                    b
                }
            }
        };
    }
    case
}

impl Target for SafetensorsTarget {
    fn generate(&mut self, rng: &mut Rng) -> Case {
        if rng.one_in(5) {
            if let Some(c) = self.pool.mutate(rng, JSON_DICT, STRINGS) {
                return c;
            }
        }
        let seed = rng.pick(&self.seeds).clone();
        mutate_case(rng, &seed, STRINGS)
    }

    fn run(&mut self, dir: &Path, _scratch: &Path) -> bool {
        if dir.join("config.json").exists() {
            return Llama::load(dir, &LoadOptions::default()).is_ok();
        }
        let Ok(w) = WeightFiles::open_dir(dir) else {
            return false;
        };
        let names: Vec<String> = w.names().map(str::to_string).collect();
        let mut ok = true;
        for n in &names {
            match w.shape(n) {
                Ok(shape) => {
                    ok &= w.load(n, &shape, Kind::Float, Device::Cpu).is_ok();
                    ok &= w.load_raw(n).is_ok();
                }
                Err(_) => ok = false,
            }
        }
        ok
    }

    fn accept(&mut self, case: Case) {
        let bits = case.files.iter().map(|f| f.1.len() as u64).sum();
        self.pool.add(case, bits);
    }
}
