//! Writing the HF directory: config, tokenizer and safetensors, atomically.

use super::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::error::{ModelError, Result};

/// A unique sibling path of `target` for atomic writes (write there, then
/// rename over `target`).
pub fn temp_sibling(target: &Path) -> Result<PathBuf> {
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

pub(super) fn write_json(path: &Path, value: &Json) -> Result<()> {
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
