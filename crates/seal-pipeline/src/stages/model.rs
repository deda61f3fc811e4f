//! Model directories: the base model resolved (GGUF imported once into the
//! cache), loaded, and its padding id.

use super::*;

/// Files of a model directory besides the weights and `config.json`.
pub(super) const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Marks a finished cache entry (written last).
pub(super) const COMPLETE: &str = ".seal-complete";

/// The model directory to start from: `dir`, or `gguf` imported once into
/// `cache`, or (neither given) the SmolLM2-135M-Instruct GGUF of the
/// project's `.venv` (`$SEAL_SMOLLM2_GGUF` overrides its location).
pub fn resolve_model(dir: Option<&Path>, gguf: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    let gguf = match gguf {
        Some(g) => g.to_path_buf(),
        None => seal_model::locate::smollm2_gguf().ok_or_else(|| {
            PipelineError::config(
                "model",
                "no model given and the SmolLM2 GGUF is not installed (run `cargo xtask setup`, \
                 or set model.dir / model.gguf)",
            )
        })?,
    };
    let stem = gguf
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let meta = std::fs::metadata(&gguf).map_err(|e| PipelineError::io(&gguf, e))?;
    // Keyed by the canonical path: `a/../b` and a symlink name the same file.
    let gguf = std::fs::canonicalize(&gguf).unwrap_or(gguf);
    let key = short_hash(&[
        gguf.display().to_string().as_bytes(),
        &meta.len().to_le_bytes(),
    ]);
    let target = cache.join(format!("{stem}-{key}"));
    if target.join(COMPLETE).is_file() {
        return Ok(target);
    }
    tracing::info!("importing {} into {}", gguf.display(), target.display());
    let staging = StagingDir::new(&target)?;
    seal_model::gguf::import_gguf(&gguf, staging.path())?;
    finish_cache_entry(staging)?;
    Ok(target)
}

pub(super) fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Moves a finished staging directory to `target` (file by file when
/// `target` exists: only the files written here are replaced) and marks it
/// complete last, so a killed run never leaves an entry a later run trusts.
pub(super) fn finish_cache_entry(staging: StagingDir) -> Result<()> {
    let dir = staging.commit()?;
    seal_data::fsutil::write_atomic(&dir.join(COMPLETE), b"ok\n")?;
    Ok(())
}

/// Loads a model directory (weights and tokenizer) with its base weights
/// in `dtype`.
pub fn load(dir: &Path, device: Device, dtype: seal_model::WeightDtype) -> Result<Pretrained> {
    let mut options = LoadOptions::default();
    options.device = device;
    options.kind = dtype.kind();
    Ok(Pretrained::load(dir, &options)?)
}

/// The padding id: the pad token, else the first EOS, else 0.
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    tokenizer
        .pad_token_id()
        .or_else(|| tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0)
}
