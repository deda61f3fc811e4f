//! GGUF: `GgufFile::open`, `dequantize` of every tensor, and `import_gguf`
//! for files that open. The seed is a one-layer llama GGUF written by hand
//! with every header count, string length, value type, array count,
//! hyper-parameter, tensor dim, ggml type and offset recorded.

use std::path::Path;

use seal_model::gguf::{import_gguf, GgufFile};

use super::{Case, Pool, Target};
use crate::mutate::{havoc, mutate_structured, FieldKind, Rng, Structured};

/// A metadata value of the seed.
#[derive(Debug, Clone)]
pub enum Meta {
    /// `UINT32`
    U32(u32),
    /// `FLOAT32`
    F32(f32),
    /// `UINT64`
    U64(u64),
    /// `BOOL`
    Bool(bool),
    /// `STRING`
    Str(String),
    /// `ARRAY` of `STRING`
    Strs(Vec<String>),
    /// `ARRAY` of `INT32`
    I32s(Vec<i32>),
}

struct GgufWriter {
    s: Structured,
}

impl GgufWriter {
    fn string(&mut self, t: &str) {
        self.s.field(t.len() as u64, 8, FieldKind::Len);
        self.s.raw(t.as_bytes());
    }

    fn value(&mut self, v: &Meta) {
        match v {
            Meta::U32(x) => {
                self.s.field(4, 4, FieldKind::Dtype);
                self.s.field(u64::from(*x), 4, FieldKind::Int);
            }
            Meta::F32(x) => {
                self.s.field(6, 4, FieldKind::Dtype);
                self.s.raw(&x.to_le_bytes());
            }
            Meta::U64(x) => {
                self.s.field(10, 4, FieldKind::Dtype);
                self.s.field(*x, 8, FieldKind::Int);
            }
            Meta::Bool(b) => {
                self.s.field(7, 4, FieldKind::Dtype);
                self.s.field(u64::from(*b), 1, FieldKind::Int);
            }
            Meta::Str(t) => {
                self.s.field(8, 4, FieldKind::Dtype);
                self.string(t);
            }
            Meta::Strs(items) => {
                self.s.field(9, 4, FieldKind::Dtype);
                self.s.field(8, 4, FieldKind::Dtype);
                self.s.field(items.len() as u64, 8, FieldKind::Count);
                for t in items {
                    self.string(t);
                }
            }
            Meta::I32s(items) => {
                self.s.field(9, 4, FieldKind::Dtype);
                self.s.field(5, 4, FieldKind::Dtype);
                self.s.field(items.len() as u64, 8, FieldKind::Count);
                for x in items {
                    self.s.field(*x as u32 as u64, 4, FieldKind::Int);
                }
            }
        }
    }
}

/// A tensor of the seed: name, GGUF dims (innermost first), ggml type.
pub type TensorSpec = (String, Vec<u64>, u32);

fn byte_size(dims: &[u64], ty: u32) -> u64 {
    let n = dims.iter().fold(1u64, |a, &d| a.saturating_mul(d));
    let (block, bytes) = match ty {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        8 => (32, 34),
        _ => (256, 144),
    };
    n / block * bytes
}

/// Writes a GGUF v3 file, recording its fields.
pub fn write_gguf(meta: &[(String, Meta)], tensors: &[TensorSpec], seed: u64) -> Structured {
    let mut w = GgufWriter {
        s: Structured::default(),
    };
    w.s.raw(b"GGUF");
    w.s.field(3, 4, FieldKind::Int);
    w.s.field(tensors.len() as u64, 8, FieldKind::Count);
    w.s.field(meta.len() as u64, 8, FieldKind::Count);
    for (k, v) in meta {
        w.string(k);
        w.value(v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, ty) in tensors {
        w.string(name);
        w.s.field(dims.len() as u64, 4, FieldKind::Count);
        for d in dims {
            w.s.field(*d, 8, FieldKind::Dim);
        }
        w.s.field(u64::from(*ty), 4, FieldKind::Dtype);
        w.s.field(offset, 8, FieldKind::Offset);
        offsets.push(offset);
        offset = (offset + byte_size(dims, *ty)).div_ceil(32) * 32;
    }
    while w.s.bytes.len() % 32 != 0 {
        w.s.bytes.push(0);
    }
    let data_start = w.s.bytes.len();
    let mut rng = Rng::new(seed);
    for ((_, dims, ty), off) in tensors.iter().zip(offsets) {
        w.s.bytes.resize(data_start + off as usize, 0);
        for _ in 0..byte_size(dims, *ty) {
            // small values: f16/bf16 high bytes kept in a sane range
            w.s.bytes.push((rng.next_u64() as u8) & 0x3f);
        }
    }
    w.s.bytes.resize(data_start + offset as usize, 0);
    w.s
}

/// The metadata of a one-layer llama with a 8-token byte-level BPE vocabulary.
pub fn llama_meta() -> Vec<(String, Meta)> {
    let s = |x: &str| Meta::Str(x.into());
    let tokens: Vec<String> = ["<s>", "</s>", "a", "b", "ab", "Ġ", "c", "Ġa"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    vec![
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("fuzz")),
        ("general.alignment".into(), Meta::U32(32)),
        ("llama.embedding_length".into(), Meta::U32(32)),
        ("llama.block_count".into(), Meta::U32(1)),
        ("llama.feed_forward_length".into(), Meta::U32(32)),
        ("llama.attention.head_count".into(), Meta::U32(2)),
        ("llama.attention.head_count_kv".into(), Meta::U32(1)),
        ("llama.attention.key_length".into(), Meta::U32(16)),
        ("llama.rope.dimension_count".into(), Meta::U32(16)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Meta::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), Meta::F32(10000.0)),
        ("llama.context_length".into(), Meta::U32(64)),
        ("llama.vocab_size".into(), Meta::U32(8)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Meta::I32s(vec![3, 3, 1, 1, 1, 1, 1, 1]),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Meta::Strs(vec!["a b".into(), "Ġ a".into()]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Meta::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(1)),
        ("tokenizer.ggml.add_bos_token".into(), Meta::Bool(true)),
        (
            "tokenizer.chat_template".into(),
            s("{% for m in messages %}{{ m['content'] }}{% endfor %}"),
        ),
    ]
}

/// The tensors of the one-layer llama (all supported storage types).
pub fn llama_tensors() -> Vec<TensorSpec> {
    let t = |n: &str, d: &[u64], ty: u32| (n.to_string(), d.to_vec(), ty);
    vec![
        t("token_embd.weight", &[32, 8], 8),
        t("output_norm.weight", &[32], 0),
        t("blk.0.attn_q.weight", &[32, 32], 2),
        t("blk.0.attn_k.weight", &[32, 16], 3),
        t("blk.0.attn_v.weight", &[32, 16], 1),
        t("blk.0.attn_output.weight", &[32, 32], 30),
        t("blk.0.ffn_gate.weight", &[32, 32], 0),
        t("blk.0.ffn_up.weight", &[32, 32], 1),
        t("blk.0.ffn_down.weight", &[32, 32], 8),
        t("blk.0.attn_norm.weight", &[32], 0),
        t("blk.0.ffn_norm.weight", &[32], 0),
    ]
}

/// A llama GGUF whose hyper-parameters are drawn from edge values and whose
/// tensor dims agree with them, so the checks after parsing (plan, Q/K
/// un-permutation, tokenizer) see absurd but consistent files. Data that
/// would exceed 1 MiB is avoided by making the hidden size 0.
pub fn random_llama(rng: &mut Rng) -> Structured {
    let mut pick = |v: &[u64]| *rng.pick(v);
    let mut hidden = pick(&[0, 32, 64]);
    let heads = pick(&[1, 2, 4, 1 << 16, 1 << 31, 1 << 32, u64::MAX]);
    let kv = pick(&[1, 2, heads, 0]);
    let head_dim = pick(&[16, 0, 1, 2, 32, 1 << 40, 1 << 62, u64::MAX]);
    let ffn = pick(&[32, 0, 1 << 40]);
    let layers = pick(&[1, 0, 2, 1 << 40]);
    let vocab = pick(&[8, 0, 9, 1 << 40]);
    let q = heads.wrapping_mul(head_dim);
    let kvd = kv.wrapping_mul(head_dim);
    let big = [q, kvd, ffn, vocab]
        .iter()
        .any(|&d| d.saturating_mul(hidden.max(1)).saturating_mul(4) > 1 << 20);
    if big {
        hidden = 0;
    }
    let mut meta = llama_meta();
    for (k, v) in meta.iter_mut() {
        let set = match k.as_str() {
            "llama.embedding_length" => Some(hidden),
            "llama.block_count" => Some(layers.min(2)),
            "llama.feed_forward_length" => Some(ffn),
            "llama.attention.head_count" => Some(heads),
            "llama.attention.head_count_kv" => Some(kv),
            "llama.attention.key_length" | "llama.rope.dimension_count" => Some(head_dim),
            "llama.vocab_size" => Some(vocab),
            _ => None,
        };
        if let Some(x) = set {
            *v = Meta::U64(x);
        }
    }
    if layers > 2 {
        meta.push(("llama.block_count".into(), Meta::U64(layers)));
    }
    let ty = if hidden % 32 == 0 {
        pick(&[0, 1, 8])
    } else {
        0
    } as u32;
    let t = |n: &str, d: &[u64]| (n.to_string(), d.to_vec(), ty);
    let mut tensors = vec![
        t("token_embd.weight", &[hidden, vocab]),
        t("output_norm.weight", &[hidden]),
    ];
    for l in 0..layers.min(2) {
        let b = |x: &str| format!("blk.{l}.{x}.weight");
        tensors.extend([
            t(&b("attn_q"), &[hidden, q]),
            t(&b("attn_k"), &[hidden, kvd]),
            t(&b("attn_v"), &[hidden, kvd]),
            t(&b("attn_output"), &[q, hidden]),
            t(&b("ffn_gate"), &[hidden, ffn]),
            t(&b("ffn_up"), &[hidden, ffn]),
            t(&b("ffn_down"), &[ffn, hidden]),
            t(&b("attn_norm"), &[hidden]),
            t(&b("ffn_norm"), &[hidden]),
        ]);
    }
    write_gguf(&meta, &tensors, rng.next_u64())
}

/// Tokens worth splicing into GGUF files.
const DICT: &[&[u8]] = &[
    b"GGUF",
    b"llama",
    b"general.alignment",
    b"llama.block_count",
    b"tokenizer.ggml.tokens",
    b"token_embd.weight",
    b"blk.0.attn_q.weight",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x09\x00\x00\x00\x09\x00\x00\x00",
];

/// The GGUF target.
pub struct GgufTarget {
    seeds: Vec<Structured>,
    pool: Pool,
}

impl GgufTarget {
    /// Builds the seeds: the plain llama, one with a hyper-parameter
    /// variant per key, one with an output head and an unsupported type.
    pub fn new() -> Self {
        let meta = llama_meta();
        let tensors = llama_tensors();
        let mut seeds = vec![write_gguf(&meta, &tensors, 1)];
        // Values at the edges of what import accepts, so mutations start near them.
        let mut m2 = meta.clone();
        m2.push(("llama.rope.scaling.type".into(), Meta::Str("yarn".into())));
        m2.push(("llama.rope.scaling.factor".into(), Meta::F32(2.0)));
        m2.push((
            "llama.rope.scaling.original_context_length".into(),
            Meta::U32(32),
        ));
        let mut t2 = tensors.clone();
        t2.push(("output.weight".into(), vec![32, 8], 1));
        seeds.push(write_gguf(&m2, &t2, 2));
        let mut t3 = tensors;
        t3.push(("blk.0.extra.weight".into(), vec![256, 2], 12));
        seeds.push(write_gguf(&meta, &t3, 3));
        Self {
            seeds,
            pool: Pool::default(),
        }
    }
}

impl Default for GgufTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for GgufTarget {
    fn generate(&mut self, rng: &mut Rng) -> Case {
        if rng.one_in(5) {
            if let Some(c) = self.pool.mutate(rng, DICT, &[]) {
                return c;
            }
        }
        if rng.one_in(4) {
            let s = random_llama(rng);
            let bytes = if rng.one_in(2) {
                s.bytes
            } else {
                mutate_structured(rng, &s, DICT)
            };
            return Case::one("model.gguf", bytes);
        }
        let seed = rng.pick(&self.seeds);
        let mut bytes = mutate_structured(rng, seed, DICT);
        if rng.one_in(8) {
            havoc(rng, &mut bytes, DICT, None);
        }
        Case::one("model.gguf", bytes)
    }

    fn run(&mut self, dir: &Path, scratch: &Path) -> bool {
        let path = dir.join("model.gguf");
        let Ok(file) = GgufFile::open(&path) else {
            return false;
        };
        let names: Vec<String> = file.tensor_infos().iter().map(|t| t.name.clone()).collect();
        for n in &names {
            let _ = file.raw_data(n);
            let _ = file.dequantize(n);
        }
        drop(file);
        import_gguf(&path, &scratch.join("out")).is_ok()
    }

    fn accept(&mut self, case: Case) {
        let bits = case.files.first().map(|f| f.1.len() as u64).unwrap_or(0);
        self.pool.add(case, bits);
    }
}
