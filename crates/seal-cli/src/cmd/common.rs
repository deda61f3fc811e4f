//! Set-up shared by the training commands (`seal rank`, `seal finetune`):
//! runtime, model loading, tokenisation with drop warnings, optimiser.

use anyhow::{bail, Context, Result};
use seal_data::tokenize::TokenizedSample;
use seal_data::{Sample, TextTokenizer};
use seal_model::{LoadOptions, Pretrained};
use std::path::{Path, PathBuf};
use tch::Device;

/// Tunes the allocator, sets libtorch's thread count and parses `--device`.
pub fn runtime(threads: Option<i32>, device: &str) -> Result<Device> {
    seal_model::runtime::tune_allocator();
    if let Some(t) = threads {
        tch::set_num_threads(t);
    }
    seal_model::runtime::parse_device(device)
        .with_context(|| format!("--device `{device}`: expected cpu, cuda, cuda:N or auto"))
}

/// Loads a model directory (weights and tokenizer) onto `device`, its base
/// weights in `dtype`.
pub fn load_model(
    dir: &Path,
    device: Device,
    dtype: seal_model::WeightDtype,
) -> Result<Pretrained> {
    let mut options = LoadOptions::default();
    options.device = device;
    options.kind = dtype.kind();
    Pretrained::load(dir, &options)
        .with_context(|| format!("loading the model from {}", dir.display()))
}

/// Tokenises one named set with the chat template, warning about samples
/// dropped for being longer than `max_len`.
pub fn tokenize_set(
    tokenizer: &TextTokenizer,
    name: &str,
    samples: &[Sample],
    max_len: usize,
) -> Result<Vec<TokenizedSample>> {
    seal_pipeline::stages::tokenize(tokenizer, name, samples, max_len)
        .with_context(|| format!("tokenising the {name} set"))
}

pub use seal_pipeline::stages::{model_optimizer, pad_id};

/// Options of a command that are not settings of its result: a resumed run
/// may change them.
const NOT_SETTINGS: [&str; 7] = [
    "out",
    "resume",
    "force",
    "no_progress",
    "threads",
    "device",
    "checkpoint_every",
];

/// Checks the output directory of a training command before any work:
/// a new or empty directory, or (with `--force`, or `--resume` of a run
/// that left checkpoints there) an existing one.
fn check_out_dir(out: &Path, force: bool, resume: bool) -> Result<()> {
    let resumable = resume && out.join("checkpoints").is_dir();
    seal_data::fsutil::check_output_dir(out, force || resumable).with_context(|| {
        if out.join("checkpoints").is_dir() && !resume {
            "--out holds an earlier run (checkpoints/): pass --resume to continue it if it \
             was interrupted, or choose another directory"
                .to_string()
        } else {
            "--out".to_string()
        }
    })
}

/// Records a run's settings (`args` without [`NOT_SETTINGS`]) in
/// `dir/settings.json`, or, when resuming a run that recorded them, refuses
/// any that changed: a resumed run with another learning rate (say) would
/// be neither run.
pub fn record_settings(dir: &Path, args: &impl serde::Serialize, resume: bool) -> Result<()> {
    let mut settings = serde_json::to_value(args).context("recording the settings")?;
    if let Some(map) = settings.as_object_mut() {
        for k in NOT_SETTINGS {
            map.remove(k);
        }
    }
    let path = dir.join("settings.json");
    if resume && path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let old: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not the settings of a run", path.display()))?;
        let (Some(old), Some(new)) = (old.as_object(), settings.as_object()) else {
            bail!("{}: not the settings of a run", path.display());
        };
        let changed: Vec<String> = old
            .iter()
            .filter(|(k, v)| new.get(*k) != Some(*v))
            .map(|(k, v)| {
                let now = new.get(k).cloned().unwrap_or(serde_json::Value::Null);
                format!("--{} ({v} → {now})", k.replace('_', "-"))
            })
            .collect();
        if !changed.is_empty() {
            bail!(
                "--resume: this run changes {} of the interrupted run ({}); resume with the \
                 same options, or start a new run in another directory",
                changed.join(", "),
                path.display()
            );
        }
        return Ok(());
    }
    let text = serde_json::to_vec_pretty(&settings).context("recording the settings")?;
    seal_data::fsutil::write_atomic(&path, &text)?;
    Ok(())
}

/// The output directory of a resumable training command. Dropped before
/// [`RunDir::finish`] (an error), it removes what the run created but
/// cannot resume from: the recorded settings when no checkpoint was
/// written, and directories it created that are left empty.
pub struct RunDir {
    out: PathBuf,
    checkpoints: PathBuf,
    created_out: bool,
    created_checkpoints: bool,
    finished: bool,
}

impl RunDir {
    /// Checks `out` (see [`check_out_dir`]) and records the run's settings
    /// in `out/checkpoints` (see [`record_settings`]).
    pub fn start(
        out: &Path,
        force: bool,
        resume: bool,
        args: &impl serde::Serialize,
    ) -> Result<Self> {
        check_out_dir(out, force, resume)?;
        let checkpoints = out.join("checkpoints");
        let mut dir = Self {
            out: out.to_path_buf(),
            created_out: !out.exists(),
            created_checkpoints: !checkpoints.exists(),
            checkpoints,
            finished: false,
        };
        if let Err(e) = record_settings(&dir.checkpoints, args, resume) {
            dir.finished = !dir.created_checkpoints;
            return Err(e);
        }
        Ok(dir)
    }

    /// The checkpoint directory.
    pub fn checkpoints(&self) -> &Path {
        &self.checkpoints
    }

    /// The run succeeded: everything stays.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.finished || self.checkpoints.join(seal_bilevel::train::LATEST).exists() {
            return;
        }
        if self.created_checkpoints {
            let _ = std::fs::remove_file(self.checkpoints.join("settings.json"));
            let _ = std::fs::remove_dir(&self.checkpoints);
        }
        if self.created_out {
            let _ = std::fs::remove_dir(&self.out);
        }
    }
}

/// The prompt limit of `--max-prompt-tokens` / `--truncate-prompts`.
pub fn prompt_limit(tokens: usize, truncate: bool) -> seal_model::generate::PromptLimit {
    use seal_model::generate::PromptLimit;
    if truncate {
        PromptLimit::TruncateLeft(tokens)
    } else {
        PromptLimit::Error(tokens)
    }
}
