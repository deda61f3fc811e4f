//! Regression tests for crashes found by `seal-fuzz` (crates/seal-fuzz):
//! each input used to panic, abort on allocation, or hang.

use seal_model::gguf::{import_gguf, unpermute_qk, GgufFile};
use seal_model::{Llama, LlamaConfig, LoadOptions, LoraConfig, ModelError};
use std::path::Path;
use tch::{Device, Kind};

/// A GGUF v3 value: (type id, little-endian payload).
fn str_val(s: &str) -> (u32, Vec<u8>) {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    (8, b)
}

fn u32_val(v: u32) -> (u32, Vec<u8>) {
    (4, v.to_le_bytes().to_vec())
}

fn u64_val(v: u64) -> (u32, Vec<u8>) {
    (10, v.to_le_bytes().to_vec())
}

/// A GGUF file with `meta` and zero-offset `tensors` (name, dims, type);
/// no tensor data (tests use zero-sized tensors or expect an error first).
fn gguf(meta: &[(&str, (u32, Vec<u8>))], tensors: &[(&str, &[u64], u32)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, (ty, v)) in meta {
        b.extend_from_slice(&str_val(k).1);
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(v);
    }
    for (name, dims, ty) in tensors {
        b.extend_from_slice(&str_val(name).1);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    }
    // the (empty) data section starts at the next multiple of 32
    b.resize(b.len().div_ceil(32) * 32, 0);
    b
}

fn write(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn gguf_tensor_byte_size_overflow_is_an_error() {
    // n = 2^64 - 32 elements of Q8_0: n / 32 * 34 overflowed u64.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), &gguf(&[], &[("t", &[u64::MAX - 31, 1], 8)]));
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("tensor `t`") && e.contains("past the end"),
        "{e}"
    );
}

fn llama_meta(
    heads: u64,
    key_length: u64,
    block_count: u64,
) -> Vec<(&'static str, (u32, Vec<u8>))> {
    vec![
        ("general.architecture", str_val("llama")),
        ("llama.embedding_length", u32_val(0)),
        ("llama.block_count", u64_val(block_count)),
        ("llama.feed_forward_length", u32_val(0)),
        ("llama.attention.head_count", u64_val(heads)),
        ("llama.attention.key_length", u64_val(key_length)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            (6, 1e-5f32.to_le_bytes().to_vec()),
        ),
        ("llama.vocab_size", u32_val(8)),
    ]
}

#[test]
fn gguf_head_count_times_key_length_overflow_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        &gguf(
            &llama_meta(1 << 33, 1 << 33, 1),
            &[("token_embd.weight", &[0, 8], 0)],
        ),
    );
    let e = import_gguf(&p, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("head_count") && e.contains("overflow"), "{e}");
}

#[test]
fn gguf_huge_block_count_stops_at_the_first_missing_layer() {
    // 2^40 layers used to be listed (9 names each) before any was checked.
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        &gguf(
            &llama_meta(1, 2, 1 << 40),
            &[
                ("token_embd.weight", &[0, 8], 0),
                ("output_norm.weight", &[0], 0),
            ],
        ),
    );
    let e = import_gguf(&p, &dir.path().join("out")).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor { tensor, .. } if tensor == "blk.0.attn_q.weight"),
        "{e}"
    );
}

#[test]
fn unpermute_of_zero_width_or_overflowing_matrices() {
    // rows = 2^40 with no columns looped 2^40 times.
    assert!(unpermute_qk(&[], 1, 1 << 40, 0).unwrap().is_empty());
    // rows × cols overflowed usize.
    assert!(unpermute_qk(&[0.0; 4], 1, 1 << 62, 8).is_err());
}

fn tiny() -> LlamaConfig {
    let mut c = LlamaConfig::tiny(16);
    c.hidden_size = 8;
    c.intermediate_size = 16;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 4;
    c
}

fn edit_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn config_asking_for_more_than_the_weights_hold_is_refused_before_allocating() {
    // hidden_size 2^40 made `Llama::load` allocate the model before any
    // shape was compared (a libtorch allocation panic or an abort).
    let dir = tempfile::tempdir().unwrap();
    let m = Llama::random(&tiny(), Device::Cpu, Kind::Float, 0).unwrap();
    m.save_pretrained(dir.path()).unwrap();
    let cfg = dir.path().join("config.json");
    for (key, value) in [
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("num_hidden_layers", serde_json::json!(1u64 << 40)),
        ("vocab_size", serde_json::json!(1u64 << 40)),
    ] {
        let saved = std::fs::read(&cfg).unwrap();
        edit_json(&cfg, key, value);
        if key == "hidden_size" {
            edit_json(&cfg, "head_dim", serde_json::json!(4));
        }
        let Err(e) = Llama::load(dir.path(), &LoadOptions::default()) else {
            panic!("{key}: loaded");
        };
        assert!(
            matches!(
                e,
                ModelError::ShapeMismatch { .. } | ModelError::MissingTensor { .. }
            ),
            "{key}: {e}"
        );
        std::fs::write(&cfg, saved).unwrap();
    }
    assert!(Llama::load(dir.path(), &LoadOptions::default()).is_ok());
}

#[test]
fn adapter_rank_is_checked_against_the_file_before_allocating() {
    // `r` = 2^40 in adapter_config.json made `load_lora` allocate
    // [2^40, in] factors before reading the file.
    let dir = tempfile::tempdir().unwrap();
    let base = Llama::random(&tiny(), Device::Cpu, Kind::Float, 0).unwrap();
    let mut lora = LoraConfig::default();
    lora.r = 4;
    base.fork_with_lora(&lora, 1)
        .unwrap()
        .save_lora(dir.path(), None)
        .unwrap();
    let cfg = dir.path().join("adapter_config.json");
    let mut m = base.fork_with_lora(&lora, 2).unwrap();
    m.load_lora(dir.path()).unwrap();
    for r in [1u64 << 40, 5, u64::MAX] {
        edit_json(&cfg, "r", serde_json::json!(r));
        let e = m.load_lora(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                ModelError::ShapeMismatch { .. } | ModelError::Config { .. }
            ),
            "r = {r}: {e}"
        );
    }
}
