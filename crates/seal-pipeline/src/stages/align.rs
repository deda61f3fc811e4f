//! The alignment stage: LoRA SFT on the align set, merged into the base and
//! cached by content.

use super::*;

/// The alignment stage's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aligned {
    /// The aligned model directory (weights merged, tokenizer copied).
    pub dir: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Training time (0 when cached).
    pub seconds: f64,
    /// Per-step log (empty when cached).
    pub log: Vec<SftStep>,
}

/// The alignment stage: LoRA SFT of the model in `base` on `samples`
/// (refusals to harmful requests plus a benign share, `align.jsonl`),
/// merged into the base weights and written as a model directory under
/// `cache`, keyed by the base model, the data and the settings (a second
/// run with the same inputs reuses it).
#[allow(clippy::too_many_arguments)]
pub fn align(
    base: &Path,
    samples: &[Sample],
    config: &AlignConfig,
    max_len: usize,
    device: Device,
    dtype: seal_model::WeightDtype,
    cache: &Path,
    progress: bool,
) -> Result<Aligned> {
    let mut settings = serde_json::to_vec(&(config, max_len)).unwrap_or_default();
    // f32 keys stay those of builds before `dtype` existed: their cache
    // entries remain valid.
    if dtype != seal_model::WeightDtype::F32 {
        settings.extend_from_slice(format!("dtype={dtype}").as_bytes());
    }
    let sample_bytes = serde_json::to_vec(samples).unwrap_or_default();
    // By content, not by path: every run imports its base model into its
    // own directory, and a shared cache serves them all.
    let key = short_hash(&[&model_digest(base)?, &settings, &sample_bytes]);
    let target = cache.join(format!("aligned-{key}"));
    if target.join(COMPLETE).is_file() {
        tracing::info!("aligned model from the cache: {}", target.display());
        return Ok(Aligned {
            dir: target,
            cached: true,
            seconds: 0.0,
            log: Vec::new(),
        });
    }
    align_to(
        base, samples, config, max_len, device, dtype, &target, progress, None,
    )
}

/// SHA-256 of a model directory's content: its config, tokenizer files and
/// every weight file (streamed), in name order.
pub fn model_digest(dir: &Path) -> Result<Vec<u8>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| PipelineError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n == "config.json"
                || n.starts_with("tokenizer")
                || n.ends_with(".safetensors")
                || n.ends_with(".safetensors.index.json")
        })
        .collect();
    names.sort();
    if !names.iter().any(|n| n == "config.json") {
        return Err(PipelineError::io(
            &dir.join("config.json"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no config.json"),
        ));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for name in names {
        let path = dir.join(&name);
        let mut f = std::fs::File::open(&path).map_err(|e| PipelineError::io(&path, e))?;
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        loop {
            let n =
                std::io::Read::read(&mut f, &mut buf).map_err(|e| PipelineError::io(&path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().to_vec())
}

/// The alignment stage without the cache: trains, merges and writes the
/// aligned model directory to `target` (staged next to it and moved into
/// place at the end, so a killed run leaves no half-written model; only the
/// files written here replace files of an existing `target`). The LoRA SFT
/// is checkpointed (and resumed) as `checkpoints` says.
#[allow(clippy::too_many_arguments)]
pub fn align_to(
    base: &Path,
    samples: &[Sample],
    config: &AlignConfig,
    max_len: usize,
    device: Device,
    dtype: seal_model::WeightDtype,
    target: &Path,
    progress: bool,
    checkpoints: Option<&Checkpointing>,
) -> Result<Aligned> {
    if samples.is_empty() {
        return Err(PipelineError::stage("align", "no alignment samples"));
    }
    // Before hours of training: a file or an unwritable place is refused.
    seal_data::fsutil::check_output_dir(target, true)?;
    let start = Instant::now();
    let Pretrained {
        model, tokenizer, ..
    } = load(base, device, dtype)?;
    let distilled = match &config.self_distill {
        Some(d) => Some(self_distill(&model, &tokenizer, samples, d, max_len)?),
        None => None,
    };
    let samples = distilled.as_deref().unwrap_or(samples);
    let data = tokenize(&tokenizer, "align", samples, max_len)?;
    if data.is_empty() {
        return Err(PipelineError::stage(
            "align",
            format!("every align sample is longer than max_len {max_len}"),
        ));
    }
    tracing::info!(samples = data.len(), "alignment: LoRA SFT");
    let pad = pad_id(&tokenizer);
    let sft = SftData {
        finetune: data,
        safe: None,
        weights: None,
    };
    let mut run = finetune_on(
        model,
        sft,
        0.0,
        pad,
        &config.sft,
        config.seed,
        progress,
        checkpoints,
    )?;
    run.model.merge_lora()?;
    let mut model = run.model;
    let mut log = run.log;
    if config.refusal_epochs > 0 {
        let refusals: Vec<Sample> = samples
            .iter()
            .filter(|s| s.label == Some(Label::Safe))
            .cloned()
            .collect();
        let data = tokenize(&tokenizer, "align refusals", &refusals, max_len)?;
        if data.is_empty() {
            return Err(PipelineError::stage(
                "align",
                "refusal_epochs is set but the align set has no refusal (label `safe`) that fits max_len",
            ));
        }
        tracing::info!(
            samples = data.len(),
            epochs = config.refusal_epochs,
            "alignment: LoRA SFT on the refusals alone"
        );
        let sft = SftConfig {
            epochs: config.refusal_epochs,
            ..config.sft.clone()
        };
        let mut again = finetune_on(
            model,
            SftData {
                finetune: data,
                safe: None,
                weights: None,
            },
            0.0,
            pad,
            &sft,
            config.seed,
            progress,
            None,
        )?;
        again.model.merge_lora()?;
        model = again.model;
        log.extend(again.log);
    }
    let staging = StagingDir::new(target)?;
    let staged = staging.path();
    model.save_pretrained(staged)?;
    if let Some(distilled) = &distilled {
        // The data the model was aligned on, for audit.
        seal_data::write_jsonl_samples(staged.join("align_data.jsonl"), distilled)?;
    }
    for f in TOKENIZER_FILES {
        let src = base.join(f);
        if src.is_file() {
            let dst = staged.join(f);
            std::fs::copy(&src, &dst).map_err(|e| PipelineError::io(&dst, e))?;
        }
    }
    seal_model::weights::write_jsonl_atomic(&staged.join("align_log.jsonl"), &log)?;
    finish_cache_entry(staging)?;
    Ok(Aligned {
        dir: target.to_path_buf(),
        cached: false,
        seconds: start.elapsed().as_secs_f64(),
        log,
    })
}

/// The alignment set with its benign samples answered by `model` itself
/// (greedy), as `[align.self_distill]` asks. Prompts of `max_len` tokens or
/// more are skipped: training leaves those samples out anyway.
pub(super) fn self_distill(
    model: &DynLm,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    config: &SelfDistill,
    max_len: usize,
) -> Result<Vec<Sample>> {
    let start = Instant::now();
    let fits = |s: &Sample| {
        s.label == Some(Label::Benign)
            && seal_data::tokenize::tokenize_prompt(tokenizer, None, s, false)
                .is_ok_and(|ids| ids.len() < max_len)
    };
    let options = GenerationOptions::greedy(tokenizer, config.max_new_tokens);
    let (out, stats) =
        seal_eval::regenerate_responses(model, tokenizer, samples, fits, &options, config.batch)?;
    tracing::info!(
        replaced = stats.replaced,
        kept_cut = stats.truncated,
        kept_empty = stats.empty,
        seconds = start.elapsed().as_secs_f64(),
        "alignment: benign responses self-distilled"
    );
    Ok(out)
}
