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

mod dequant;
mod import;
mod llama_map;
mod reader;
mod tokenizer;

pub use dequant::dequantize_bytes;
pub use import::import_gguf;
pub use import::temp_sibling;
pub use llama_map::{hf_tensor_name, unpermute_qk, ImportSummary};
pub use reader::{GgmlType, GgufFile, GgufTensorInfo, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
// Crate-internal items shared between the submodules (`use super::*`).
#[allow(unused_imports)]
use {dequant::*, import::*, llama_map::*, reader::*, tokenizer::*};
