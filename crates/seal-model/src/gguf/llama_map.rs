//! Llama weights from GGUF: HF names, the Q/K row permutation undone, hyper-parameters and the import plan.

use super::*;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::{json, Value as Json};

use crate::error::{ModelError, Result};

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
pub(super) struct LlamaParams {
    pub(super) hidden: usize,
    pub(super) layers: usize,
    pub(super) ffn: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) rms_eps: f64,
    pub(super) rope_theta: f64,
    pub(super) context: usize,
    pub(super) vocab: usize,
    pub(super) rope_scaling: Option<Json>,
}

/// One tensor of the import plan.
#[derive(Debug, Clone)]
pub(super) struct PlannedTensor {
    /// HF name.
    pub(super) hf: String,
    /// GGUF name.
    pub(super) gguf: String,
    /// HF (row-major) shape.
    pub(super) shape: Vec<usize>,
    /// Heads for undoing the Q/K permutation, for `attn_q` / `attn_k`.
    pub(super) unpermute: Option<usize>,
}

impl GgufFile {
    pub(super) fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
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

    pub(super) fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
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

    pub(super) fn meta_str(&self, key: &str) -> Result<Option<&str>> {
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

    pub(super) fn require_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    pub(super) fn llama_params(&self) -> Result<LlamaParams> {
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
    pub(super) fn plan_tensors(&self, p: &LlamaParams) -> Result<Vec<PlannedTensor>> {
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
