//! A selection rule written outside the library, registered by name and run
//! through the whole pipeline next to the built-in methods: it gets its own
//! fine-tuned model, evaluation, row in `results.json` and line in the
//! report, with nothing but the public API (`PipelineMethod`,
//! `register_method`, `seal_select::Selection`).
//!
//! The rule is a keyword blocklist, the cheap filter practitioners try
//! before anything learnt: a sample's score is minus the number of
//! blocklisted terms in its text, and the top `p` by score are kept.
//!
//! The run is tiny so that it finishes in about a minute on a laptop: a
//! random Llama written for the occasion, the embedded default dataset, one
//! seed and two training steps per stage. Point `model.dir` and `data.dir`
//! at real ones for a real comparison.
//!
//! ```sh
//! cargo run --release -p seal-examples --example custom_rule [OUT_DIR]
//! ```
//!
//! `cargo test` runs it too (the `#[test]` at the bottom), so it cannot rot.

use anyhow::{Context, Result};
use seal_pipeline::config::SftConfig;
use seal_pipeline::stages::MethodInputs;
use seal_pipeline::{Method, PipelineConfig, PipelineMethod, PipelineResult};
use seal_select::selection::order_desc;
use seal_select::{Budget, Selection};
use std::path::Path;
use std::sync::Arc;

/// Keeps the `p` fraction of the pool with the fewest blocklisted terms.
struct Blocklist {
    terms: Vec<String>,
    p: f64,
}

impl PipelineMethod for Blocklist {
    fn name(&self) -> &str {
        "blocklist"
    }

    fn select(&self, input: &MethodInputs) -> seal_pipeline::Result<Selection> {
        let scores: Vec<f64> = input
            .pool
            .iter()
            .map(|sample| {
                let text = seal_select::dsir::sample_text(sample).to_lowercase();
                let hits = self
                    .terms
                    .iter()
                    .filter(|t| text.contains(t.as_str()))
                    .count();
                -(hits as f64)
            })
            .collect();
        let k = Budget::Fraction(self.p).resolve(self.name(), scores.len())?;
        let order = order_desc(&scores);
        Ok(Selection::from_order(self.name(), scores, &order, k)?)
    }
}

/// Makes the blocklist a method of this program, next to the built-ins.
fn register(p: f64) -> Result<()> {
    let terms = [
        "weapon",
        "explosive",
        "poison",
        "steal",
        "hack",
        "kill",
        "drug",
    ];
    seal_pipeline::register_method(Arc::new(Blocklist {
        terms: terms.map(String::from).to_vec(),
        p,
    }))?;
    Ok(())
}

/// A tiny run in `root`: model and data written there, output in `root/out`.
fn run(root: &Path) -> Result<PipelineResult> {
    let model = root.join("model");
    seal_testkit::write_tiny_model_dir(&model, |_| {})?;
    let mut short = SftConfig::default();
    short.epochs = 1;
    short.batch = 4;
    short.max_steps = Some(2);
    short.lr = 1e-3;
    let mut config = PipelineConfig::default();
    config.name = "custom rule".into();
    config.out = root.join("out");
    config.seeds = vec![1];
    config.progress = false;
    config.finetune = short.clone();
    config.model.dir = Some(model);
    config.data.eval_limit = Some(3);
    config.eval.max_new_tokens = 3;
    config.eval.gsm8k_accuracy = false;
    config.align.sft = short;
    config.rank.max_steps = Some(2);
    config.rank.batch = 4;
    register(config.select.p)?;
    config.select.methods = vec!["blocklist".into(), Method::Random.into()];
    Ok(seal_pipeline::run(&config)?)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/custom_rule".into());
    let result = run(Path::new(&root))?;
    for r in &result.runs {
        println!(
            "{:<10} kept {:>3}  harmful kept {:>2}/{:<2}  AUROC {}",
            r.method,
            r.kept,
            r.harmful_kept,
            r.harmful_total,
            r.auroc.map_or("–".into(), |a| format!("{a:.3}"))
        );
    }
    println!(
        "report: {}",
        Path::new(&root).join("out/report.md").display()
    );
    let _ = result.runs.first().context("no run")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_rule_runs_through_the_pipeline_and_reaches_the_report() {
        let tmp = tempfile::tempdir().unwrap();
        let result = run(tmp.path()).unwrap();
        let blocklist: Vec<_> = result
            .runs
            .iter()
            .filter(|r| r.method == "blocklist")
            .collect();
        assert_eq!(blocklist.len(), 1);
        let run = blocklist[0];
        // floor(0.8 · N) kept, a fine-tuned adapter, an evaluation, an AUROC.
        let pool = result.data["finetune (tokenised)"];
        assert_eq!(run.kept, (0.8 * pool as f64) as usize);
        assert!(run.eval.asr.is_some());
        let auroc = run.auroc.expect("the blocklist's scores are not constant");
        assert!((0.0..=1.0).contains(&auroc));
        let out = tmp.path().join("out");
        assert!(out
            .join("seed-1/blocklist/adapter/adapter_model.safetensors")
            .is_file());
        let kept = std::fs::read_to_string(out.join("seed-1/blocklist/kept_ids.txt")).unwrap();
        assert_eq!(kept.lines().count(), run.kept);
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(report.contains("| blocklist |"), "{report}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        assert!(json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["method"] == "blocklist"));
        // An unregistered name is refused before anything runs, and a TOML
        // file may name the registered rule.
        let mut config = PipelineConfig::default();
        config.select.methods = vec!["no-such-rule".into()];
        config.out = tmp.path().join("refused");
        let err = seal_pipeline::run(&config).unwrap_err().to_string();
        assert!(
            err.contains("no-such-rule") && err.contains("blocklist"),
            "{err}"
        );
        assert!(!config.out.exists());
        let text = "[select]\nmethods = [\"blocklist\", \"seal\"]";
        let parsed = PipelineConfig::from_toml(text, Path::new("x.toml"), tmp.path()).unwrap();
        assert_eq!(parsed.select.methods, ["blocklist", "seal"]);
    }
}
