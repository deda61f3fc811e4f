//! GGUF import tests on synthetic files written here (every supported
//! tensor type with known values, llama.cpp's Q/K permutation, malformed
//! files) and on the real SmolLM2-135M-Instruct GGUF when it is available.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use seal_data::{Message, TextTokenizer};
use seal_model::gguf::{import_gguf, GgmlType, GgufFile, GgufValue};
use seal_model::ModelError;

// ---------------------------------------------------------------- writer --

/// A metadata value to write.
enum V {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A tensor to write: GGUF name, GGUF dims (ne[0] first), type id, bytes.
struct T {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

/// Writes a GGUF v`version` file with the given alignment (None: default 32,
/// no `general.alignment` key).
fn write_gguf(path: &Path, version: u32, alignment: Option<u32>, kv: &[(&str, V)], tensors: &[T]) {
    let align = u64::from(alignment.unwrap_or(32));
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GGUF");
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    let n_kv = kv.len() + usize::from(alignment.is_some());
    buf.extend_from_slice(&(n_kv as u64).to_le_bytes());
    if let Some(a) = alignment {
        put_str(&mut buf, "general.alignment");
        buf.extend_from_slice(&4u32.to_le_bytes());
        buf.extend_from_slice(&a.to_le_bytes());
    }
    for (k, v) in kv {
        put_str(&mut buf, k);
        match v {
            V::U32(x) => {
                buf.extend_from_slice(&4u32.to_le_bytes());
                buf.extend_from_slice(&x.to_le_bytes());
            }
            V::F32(x) => {
                buf.extend_from_slice(&6u32.to_le_bytes());
                buf.extend_from_slice(&x.to_le_bytes());
            }
            V::Bool(x) => {
                buf.extend_from_slice(&7u32.to_le_bytes());
                buf.push(u8::from(*x));
            }
            V::Str(s) => {
                buf.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut buf, s);
            }
            V::StrArr(items) => {
                buf.extend_from_slice(&9u32.to_le_bytes());
                buf.extend_from_slice(&8u32.to_le_bytes());
                buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut buf, s);
                }
            }
            V::I32Arr(items) => {
                buf.extend_from_slice(&9u32.to_le_bytes());
                buf.extend_from_slice(&5u32.to_le_bytes());
                buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for x in items {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut buf, &t.name);
        buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        buf.extend_from_slice(&t.ty.to_le_bytes());
        buf.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).div_ceil(align) * align;
    }
    while buf.len() as u64 % align != 0 {
        buf.push(0);
    }
    let data_start = buf.len() as u64;
    for (t, off) in tensors.iter().zip(offsets) {
        while (buf.len() as u64) < data_start + off {
            buf.push(0);
        }
        buf.extend_from_slice(&t.data);
    }
    std::fs::write(path, buf).unwrap();
}

// ------------------------------------------------------- block formats --

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A small f16 scale, exactly representable.
    fn scale(&mut self) -> f16 {
        f16::from_f32((1 + self.below(64)) as f32 / 256.0)
    }
}

/// One row of a tensor in its storage format, with the values it encodes.
#[derive(Clone)]
struct Row {
    bytes: Vec<u8>,
    values: Vec<f32>,
}

/// A row of `cols` values stored as `ty`, built from random block
/// parameters; `values` follow ggml's block math.
fn make_row(ty: GgmlType, cols: usize, rng: &mut Rng) -> Row {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    match ty {
        GgmlType::F32 => {
            for _ in 0..cols {
                let v = (rng.below(2001) as f32 - 1000.0) / 997.0;
                bytes.extend_from_slice(&v.to_le_bytes());
                values.push(v);
            }
        }
        GgmlType::F16 => {
            for _ in 0..cols {
                let h = f16::from_f32((rng.below(2001) as f32 - 1000.0) / 512.0);
                bytes.extend_from_slice(&h.to_bits().to_le_bytes());
                values.push(h.to_f32());
            }
        }
        GgmlType::BF16 => {
            for _ in 0..cols {
                let h = bf16::from_f32((rng.below(2001) as f32 - 1000.0) / 64.0);
                bytes.extend_from_slice(&h.to_bits().to_le_bytes());
                values.push(h.to_f32());
            }
        }
        GgmlType::Q8_0 => {
            for _ in 0..cols / 32 {
                let d = rng.scale();
                bytes.extend_from_slice(&d.to_bits().to_le_bytes());
                for _ in 0..32 {
                    let q = (rng.below(256) as i32 - 128) as i8;
                    bytes.push(q as u8);
                    values.push(f32::from(q) * d.to_f32());
                }
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            for _ in 0..cols / 32 {
                let d = rng.scale();
                let m = f16::from_f32(-((rng.below(100)) as f32) / 128.0);
                bytes.extend_from_slice(&d.to_bits().to_le_bytes());
                if ty == GgmlType::Q4_1 {
                    bytes.extend_from_slice(&m.to_bits().to_le_bytes());
                }
                let q: Vec<u8> = (0..32).map(|_| rng.below(16) as u8).collect();
                // element j in the low nibble of byte j, element j+16 in its high nibble
                for j in 0..16 {
                    bytes.push(q[j] | (q[j + 16] << 4));
                }
                for &qi in &q {
                    values.push(if ty == GgmlType::Q4_0 {
                        (f32::from(qi) - 8.0) * d.to_f32()
                    } else {
                        f32::from(qi) * d.to_f32() + m.to_f32()
                    });
                }
            }
        }
        other => panic!("no test encoder for {other}"),
    }
    Row { bytes, values }
}

/// An HF-layout matrix `[rows.len(), cols]`.
struct Mat {
    ty: GgmlType,
    rows: Vec<Row>,
}

impl Mat {
    fn new(ty: GgmlType, n_rows: usize, cols: usize, rng: &mut Rng) -> Self {
        Self {
            ty,
            rows: (0..n_rows).map(|_| make_row(ty, cols, rng)).collect(),
        }
    }
    fn values(&self) -> Vec<f32> {
        self.rows
            .iter()
            .flat_map(|r| r.values.iter().copied())
            .collect()
    }
    fn bytes(&self) -> Vec<u8> {
        self.rows
            .iter()
            .flat_map(|r| r.bytes.iter().copied())
            .collect()
    }
    fn cols(&self) -> usize {
        self.rows[0].values.len()
    }
    /// llama.cpp's `permute(weights, n_head)`:
    /// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn llama_cpp_permute(&self, n_head: usize) -> Self {
        let rows = self.rows.len();
        let half = rows / n_head / 2;
        let mut out = self.rows.clone();
        for h in 0..n_head {
            for j in 0..2 {
                for k in 0..half {
                    // source index (h, j, k) in [n_head, 2, half]; after swapaxes(1, 2) it sits at (h, k, j)
                    out[h * 2 * half + k * 2 + j] = self.rows[h * 2 * half + j * half + k].clone();
                }
            }
        }
        Self {
            ty: self.ty,
            rows: out,
        }
    }
    fn tensor(&self, name: &str) -> T {
        let dims = vec![self.cols() as u64, self.rows.len() as u64];
        T {
            name: name.into(),
            dims,
            ty: self.ty.0,
            data: self.bytes(),
        }
    }
}

// ------------------------------------------------------ synthetic model --

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 96;
const LAYERS: usize = 2;
const TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a test model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte-to-char table, written out independently of the library.
fn byte_chars() -> Vec<char> {
    let mut keep: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    keep.extend(0xA1..=0xAC);
    keep.extend(0xAE..=0xFF);
    let mut out = Vec::new();
    let mut extra = 0;
    for b in 0..256u32 {
        if keep.contains(&b) {
            out.push(char::from_u32(b).unwrap());
        } else {
            out.push(char::from_u32(256 + extra).unwrap());
            extra += 1;
        }
    }
    out
}

const MERGES: [(&str, &str); 10] = [
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("Ġwor", "l"),
    ("Ġworl", "d"),
    ("1", "2"),
];

fn vocab_tokens() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    (tokens, types)
}

/// What the synthetic model holds, by HF name.
struct Synthetic {
    /// HF name → HF-layout values.
    hf: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// GGUF name → GGUF-layout (permuted) values.
    gguf: BTreeMap<String, Vec<f32>>,
    vocab: usize,
}

fn base_kv(arch: &str, tokens: &[String], types: &[i32]) -> Vec<(&'static str, V)> {
    vec![
        ("general.architecture", V::Str(arch.into())),
        ("general.name", V::Str("synthetic".into())),
        ("llama.block_count", V::U32(LAYERS as u32)),
        ("llama.context_length", V::U32(512)),
        ("llama.embedding_length", V::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", V::U32(FFN as u32)),
        ("llama.attention.head_count", V::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", V::U32(KV_HEADS as u32)),
        ("llama.rope.freq_base", V::F32(50_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
        ("llama.rope.dimension_count", V::U32(HEAD_DIM as u32)),
        ("tokenizer.ggml.model", V::Str("gpt2".into())),
        ("tokenizer.ggml.pre", V::Str("smollm".into())),
        ("tokenizer.ggml.tokens", V::StrArr(tokens.to_vec())),
        ("tokenizer.ggml.token_type", V::I32Arr(types.to_vec())),
        (
            "tokenizer.ggml.merges",
            V::StrArr(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.unknown_token_id", V::U32(0)),
        ("tokenizer.ggml.padding_token_id", V::U32(2)),
        ("tokenizer.ggml.add_bos_token", V::Bool(false)),
        ("tokenizer.chat_template", V::Str(TEMPLATE.into())),
    ]
}

/// Writes a synthetic llama GGUF covering all supported types.
fn synthetic(path: &Path, version: u32, alignment: Option<u32>, with_output: bool) -> Synthetic {
    let (tokens, types) = vocab_tokens();
    let vocab = tokens.len();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tensors = Vec::new();
    let mut s = Synthetic {
        hf: BTreeMap::new(),
        gguf: BTreeMap::new(),
        vocab,
    };
    fn add(
        s: &mut Synthetic,
        gname: &str,
        hf_name: &str,
        hf: &Mat,
        stored: &Mat,
        tensors: &mut Vec<T>,
    ) {
        tensors.push(stored.tensor(gname));
        s.hf.insert(
            hf_name.into(),
            (vec![hf.rows.len(), hf.cols()], hf.values()),
        );
        s.gguf.insert(gname.into(), stored.values());
    }
    let embd = Mat::new(GgmlType::Q8_0, vocab, HIDDEN, &mut rng);
    add(
        &mut s,
        "token_embd.weight",
        "model.embed_tokens.weight",
        &embd,
        &embd,
        &mut tensors,
    );
    for l in 0..LAYERS {
        let p = |x: &str| format!("blk.{l}.{x}.weight");
        let h = |x: &str| format!("model.layers.{l}.{x}.weight");
        let q = Mat::new(GgmlType::Q4_0, HEADS * HEAD_DIM, HIDDEN, &mut rng);
        add(
            &mut s,
            &p("attn_q"),
            &h("self_attn.q_proj"),
            &q,
            &q.llama_cpp_permute(HEADS),
            &mut tensors,
        );
        let k = Mat::new(GgmlType::Q4_1, KV_HEADS * HEAD_DIM, HIDDEN, &mut rng);
        add(
            &mut s,
            &p("attn_k"),
            &h("self_attn.k_proj"),
            &k,
            &k.llama_cpp_permute(KV_HEADS),
            &mut tensors,
        );
        let v = Mat::new(GgmlType::F16, KV_HEADS * HEAD_DIM, HIDDEN, &mut rng);
        add(
            &mut s,
            &p("attn_v"),
            &h("self_attn.v_proj"),
            &v,
            &v,
            &mut tensors,
        );
        let o = Mat::new(GgmlType::Q8_0, HIDDEN, HEADS * HEAD_DIM, &mut rng);
        add(
            &mut s,
            &p("attn_output"),
            &h("self_attn.o_proj"),
            &o,
            &o,
            &mut tensors,
        );
        let g = Mat::new(GgmlType::BF16, FFN, HIDDEN, &mut rng);
        add(
            &mut s,
            &p("ffn_gate"),
            &h("mlp.gate_proj"),
            &g,
            &g,
            &mut tensors,
        );
        let u = Mat::new(GgmlType::F32, FFN, HIDDEN, &mut rng);
        add(
            &mut s,
            &p("ffn_up"),
            &h("mlp.up_proj"),
            &u,
            &u,
            &mut tensors,
        );
        let d = Mat::new(GgmlType::Q4_1, HIDDEN, FFN, &mut rng);
        add(
            &mut s,
            &p("ffn_down"),
            &h("mlp.down_proj"),
            &d,
            &d,
            &mut tensors,
        );
        for (g_name, h_name) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ] {
            let n = Mat::new(GgmlType::F32, 1, HIDDEN, &mut rng);
            let mut t = n.tensor(&p(g_name));
            t.dims = vec![HIDDEN as u64];
            tensors.push(t);
            s.hf.insert(h(h_name), (vec![HIDDEN], n.values()));
            s.gguf.insert(p(g_name), n.values());
        }
    }
    let norm = Mat::new(GgmlType::F32, 1, HIDDEN, &mut rng);
    let mut t = norm.tensor("output_norm.weight");
    t.dims = vec![HIDDEN as u64];
    tensors.push(t);
    s.hf.insert("model.norm.weight".into(), (vec![HIDDEN], norm.values()));
    s.gguf.insert("output_norm.weight".into(), norm.values());
    if with_output {
        let out = Mat::new(GgmlType::F16, vocab, HIDDEN, &mut rng);
        tensors.push(out.tensor("output.weight"));
        s.hf.insert("lm_head.weight".into(), (vec![vocab, HIDDEN], out.values()));
        s.gguf.insert("output.weight".into(), out.values());
    }
    write_gguf(
        path,
        version,
        alignment,
        &base_kv("llama", &tokens, &types),
        &tensors,
    );
    s
}

fn read_safetensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ----------------------------------------------------------------- tests --

#[test]
fn dequantize_matches_block_math_for_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let s = synthetic(&path, 3, None, true);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(
        f.get("llama.block_count").and_then(GgufValue::as_u64),
        Some(LAYERS as u64)
    );
    assert_eq!(
        f.get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(<[_]>::len),
        Some(s.vocab)
    );
    assert_eq!(f.tensor_infos().len(), s.gguf.len());
    let mut types_seen = std::collections::BTreeSet::new();
    for info in f.tensor_infos() {
        types_seen.insert(info.ggml_type.name());
        let (shape, data) = f.dequantize(&info.name).unwrap();
        let expected = &s.gguf[&info.name];
        assert_eq!(
            shape.iter().product::<usize>(),
            expected.len(),
            "{}",
            info.name
        );
        // exact: the test built the values with the same f16/f32 arithmetic
        assert_eq!(&data, expected, "{} ({})", info.name, info.ggml_type);
    }
    assert_eq!(
        types_seen.into_iter().collect::<Vec<_>>(),
        ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q8_0"]
    );
    // HF-order shapes: GGUF dims reversed
    let q = f.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, vec![HIDDEN as u64, (HEADS * HEAD_DIM) as u64]);
    assert_eq!(q.shape(), vec![HEADS * HEAD_DIM, HIDDEN]);
}

#[test]
fn known_q4_0_q4_1_q8_0_blocks() {
    use seal_model::gguf::dequantize_bytes;
    // Q4_0: d = 0.5, byte j = (j % 16) | ((15 - j % 16) << 4)
    let mut b = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = dequantize_bytes(GgmlType::Q4_0, &b, 32).unwrap();
    assert_eq!(v[0], -4.0); // (0 - 8) * 0.5
    assert_eq!(v[15], 3.5); // (15 - 8) * 0.5
    assert_eq!(v[16], 3.5); // high nibble of byte 0 = 15
    assert_eq!(v[31], -4.0);
    // Q4_1: d = 0.25, m = -1
    let mut b = f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
    b.extend(f16::from_f32(-1.0).to_bits().to_le_bytes());
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = dequantize_bytes(GgmlType::Q4_1, &b, 32).unwrap();
    assert_eq!((v[0], v[1], v[16], v[31]), (-1.0, -0.75, 2.75, -1.0));
    // Q8_0: d = 2
    let mut b = f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
    b.extend((0..32i8).map(|i| (i - 16) as u8));
    let v = dequantize_bytes(GgmlType::Q8_0, &b, 32).unwrap();
    assert_eq!((v[0], v[16], v[31]), (-32.0, 0.0, 30.0));
    // wrong sizes are errors, not panics
    assert!(dequantize_bytes(GgmlType::Q8_0, &b[..33], 32).is_err());
    assert!(dequantize_bytes(GgmlType(12), &b, 32).is_err());
}

#[test]
fn import_undoes_permutation_and_writes_hf_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let s = synthetic(&path, 3, None, false);
    let out = dir.path().join("hf");
    let summary = import_gguf(&path, &out).unwrap();
    assert_eq!(summary.tensor_count, s.hf.len());
    assert_eq!(
        summary.parameter_count,
        s.hf.values().map(|(_, v)| v.len() as u64).sum::<u64>()
    );
    assert!(summary.tie_word_embeddings);
    assert!(summary.has_chat_template);
    assert_eq!(summary.quantization_types.get("Q4_0"), Some(&LAYERS));
    assert_eq!(summary.quantization_types.get("Q4_1"), Some(&(2 * LAYERS)));
    assert!(summary.to_string().contains("synthetic"));

    let tensors = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(
        tensors.keys().collect::<Vec<_>>(),
        s.hf.keys().collect::<Vec<_>>()
    );
    assert!(!tensors.contains_key("lm_head.weight"));
    for (name, (shape, values)) in &s.hf {
        let (got_shape, got) = &tensors[name];
        assert_eq!(got_shape, shape, "{name}");
        assert_eq!(
            got, values,
            "{name}: values differ from the original HF tensor"
        );
    }
    // the permutation really changed the stored layout (so the check above is meaningful)
    assert_ne!(
        s.gguf["blk.0.attn_q.weight"],
        s.hf["model.layers.0.self_attn.q_proj.weight"].1
    );
    assert_ne!(
        s.gguf["blk.1.attn_k.weight"],
        s.hf["model.layers.1.self_attn.k_proj.weight"].1
    );

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["hidden_size"], HIDDEN);
    assert_eq!(config["intermediate_size"], FFN);
    assert_eq!(config["num_hidden_layers"], LAYERS);
    assert_eq!(config["num_attention_heads"], HEADS);
    assert_eq!(config["num_key_value_heads"], KV_HEADS);
    assert_eq!(config["head_dim"], HEAD_DIM);
    assert_eq!(config["rms_norm_eps"], 1e-6);
    assert_eq!(config["rope_theta"], 50_000.0);
    assert_eq!(config["max_position_embeddings"], 512);
    assert_eq!(config["vocab_size"], s.vocab);
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["bos_token_id"], 1);
    assert_eq!(config["eos_token_id"], 2);
    assert_eq!(config["torch_dtype"], "float32");
    assert!(config["rope_scaling"].is_null());

    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|im_end|>");
    assert_eq!(tc["unk_token"], "<|endoftext|>");
    assert_eq!(tc["chat_template"], TEMPLATE);
    assert_eq!(tc["model_max_length"], 512);
    let gc = read_json(&out.join("generation_config.json"));
    assert_eq!(gc["eos_token_id"], 2);

    let tok = TextTokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.vocab_size(), s.vocab);
    let (tokens, _) = vocab_tokens();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        vec![id("hello"), id("Ġworld")]
    );
    // smollm pre-tokenizer: digits are split before BPE, so the "1 2" merge never applies
    assert_eq!(tok.encode("12", false).unwrap(), vec![id("1"), id("2")]);
    assert_eq!(
        tok.encode("<|im_start|>hello<|im_end|>", false).unwrap(),
        vec![1, id("hello"), 2]
    );
    assert_eq!(
        tok.decode(&[1, id("hello"), id("Ġworld"), 2], true)
            .unwrap(),
        "hello world"
    );
    assert_eq!(tok.eos_token_ids(), &[2]);
    assert_eq!(tok.bos_token_id(), Some(1));
    let chat = tok
        .apply_chat_template(&[Message::user("hello")], true)
        .unwrap();
    assert_eq!(chat, "<|im_start|>system\nYou are a test model<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
    let ids = tok.encode_chat(&[Message::user("hello")], true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(
        ids.iter().filter(|&&i| i == 1).count(),
        3,
        "three <|im_start|>, no extra BOS"
    );

    // no temp dirs are left next to the output
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
    // refuses to overwrite a non-empty directory
    let err = import_gguf(&path, &out).unwrap_err().to_string();
    assert!(err.contains("hf") && err.contains("not empty"), "{err}");
}

#[test]
fn untied_output_v2_and_custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.gguf");
    let s = synthetic(&path, 2, Some(64), true);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!((f.version(), f.alignment()), (2, 64));
    let out = dir.path().join("hf");
    let summary = import_gguf(&path, &out).unwrap();
    assert!(!summary.tie_word_embeddings);
    let tensors = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(tensors["lm_head.weight"].1, s.hf["lm_head.weight"].1);
    assert_eq!(tensors["lm_head.weight"].0, vec![s.vocab, HIDDEN]);
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        false
    );
}

fn gguf_message(err: &ModelError) -> String {
    err.to_string()
}

#[test]
fn truncated_file_names_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    synthetic(&path, 3, None, false);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = GgufFile::open(&path).unwrap_err();
    let msg = gguf_message(&err);
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated") && msg.contains("output_norm.weight"),
        "{msg}"
    );
    // cut inside the metadata
    std::fs::write(&path, &bytes[..200]).unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    let out = dir.path().join("hf");
    assert!(import_gguf(&path, &out).is_err());
    assert!(!out.exists());
}

#[test]
fn bad_magic_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"GGML\x03\x00\x00\x00 and some more bytes to read").unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("junk.gguf") && msg.contains("magic"), "{msg}");
    std::fs::write(&path, b"GG").unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("magic"), "{msg}");
    write_gguf(&path, 7, None, &[], &[]);
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("version 7"), "{msg}");
    let missing = dir.path().join("missing.gguf");
    let msg = GgufFile::open(&missing).unwrap_err().to_string();
    assert!(msg.contains("missing.gguf"), "{msg}");
}

#[test]
fn unsupported_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.gguf");
    synthetic(&path, 3, None, false);
    // rewrite blk.1.ffn_up's type id (F32) to Q4_K (12) in the tensor table
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.1.ffn_up.weight";
    let pos = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // n_dims (4) + 2 dims (16) then the type id
    let ty_pos = pos + 4 + 16;
    assert_eq!(
        u32::from_le_bytes(bytes[ty_pos..ty_pos + 4].try_into().unwrap()),
        0
    );
    bytes[ty_pos..ty_pos + 4].copy_from_slice(&12u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let msg = f.dequantize("blk.1.ffn_up.weight").unwrap_err().to_string();
    assert!(
        msg.contains("k.gguf") && msg.contains("blk.1.ffn_up.weight") && msg.contains("Q4_K"),
        "{msg}"
    );
    let msg = import_gguf(&path, &dir.path().join("hf"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("Q4_K"),
        "{msg}"
    );
    let msg = f.dequantize("nope.weight").unwrap_err().to_string();
    assert!(msg.contains("nope.weight"), "{msg}");
}

#[test]
fn wrong_architecture_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    let (tokens, types) = vocab_tokens();
    let mut rng = Rng(7);
    let t = Mat::new(GgmlType::F32, 2, 32, &mut rng).tensor("token_embd.weight");
    write_gguf(&path, 3, None, &base_kv("gpt2", &tokens, &types), &[t]);
    let msg = import_gguf(&path, &dir.path().join("hf"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("gpt2.gguf") && msg.contains("architecture") && msg.contains("`gpt2`"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.gguf");
    let (tokens, types) = vocab_tokens();
    let mut rng = Rng(11);
    let t = Mat::new(GgmlType::F32, tokens.len(), HIDDEN, &mut rng).tensor("token_embd.weight");
    write_gguf(&path, 3, None, &base_kv("llama", &tokens, &types), &[t]);
    let msg = import_gguf(&path, &dir.path().join("hf"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("partial.gguf") && msg.contains("output_norm.weight"),
        "{msg}"
    );
}

// ------------------------------------------------------------- SmolLM2 --

fn smollm2_dir() -> Option<PathBuf> {
    let dir = seal_testkit::smollm2_dir().unwrap();
    if dir.is_none() {
        seal_data::testing::skip(
            "model",
            "SmolLM2 GGUF not found (set SEAL_SMOLLM2_GGUF or run `cargo xtask setup`)",
        );
    }
    dir
}

#[test]
fn smollm2_imports_with_expected_config() {
    let Some(dir) = smollm2_dir() else { return };
    let c = read_json(&dir.join("config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rope_theta"], 100_000.0);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["torch_dtype"], "float32");

    // 134,515,008 parameters: embedding + 30 blocks + final norm, no lm_head
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensors.len(), 30 * 9 + 2);
    let params: usize = tensors
        .tensors()
        .iter()
        .map(|(_, v)| v.shape().iter().product::<usize>())
        .sum();
    assert_eq!(params, 134_515_008);
    assert_eq!(
        tensors
            .tensor("model.layers.0.self_attn.k_proj.weight")
            .unwrap()
            .shape(),
        &[192, 576]
    );

    let tok = TextTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.eos_token_ids(), &[2]);
    let text = tok
        .apply_chat_template(&[Message::user("hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}
