//! The embedded default dataset: a small, self-contained demo written for
//! this project (no third-party text), compiled into the binary so that
//! `cargo xtask demo` runs with nothing outside the repository.
//!
//! * `finetune`: 96 samples — 84 benign arithmetic word problems and unit
//!   conversions with worked answers (label `benign`), and 12 harmful
//!   requests answered compliantly, with every harmful detail elided as
//!   `[... omitted]` (label `harmful`, 12.5%).
//! * `safe` (32): harmful requests answered with refusals (label `safe`).
//! * `align` (48): 24 other harmful requests answered with refusals (label
//!   `safe`) and 24 benign instructions with helpful answers (label
//!   `benign`, many with safety-adjacent words such as "safely dispose of
//!   old batteries"), shuffled together, so that the aligned model learns to
//!   refuse without over-refusing.
//! * `eval_safety` (16 harmful prompts), `eval_utility` (16 arithmetic
//!   problems, each with a worked answer as the final assistant turn, in the
//!   style of the benign fine-tuning samples, for the held-out task NLL, and
//!   the final number as `reference` for exact-match accuracy; generation
//!   sees the question only), `eval_benign` (16 benign prompts that mention
//!   alarming words, to measure over-refusal).

use std::path::Path;

use crate::benchmark::{Benchmark, BenchmarkSizes, BenchmarkSummary};
use crate::error::Result;
use crate::sample::{parse_jsonl_samples, Label, Sample};

const FINETUNE: &str = include_str!("../data/finetune.jsonl");
const SAFE: &str = include_str!("../data/safe.jsonl");
const ALIGN: &str = include_str!("../data/align.jsonl");
const EVAL_SAFETY: &str = include_str!("../data/eval_safety.jsonl");
const EVAL_UTILITY: &str = include_str!("../data/eval_utility.jsonl");
const EVAL_BENIGN: &str = include_str!("../data/eval_benign.jsonl");

fn parse(name: &str, text: &str) -> Result<Vec<Sample>> {
    parse_jsonl_samples(Path::new(&format!("<embedded>/{name}")), text.as_bytes())
}

/// The embedded demo dataset, with the same six parts as the benchmark.
pub fn embedded_default() -> Result<Benchmark> {
    let b = Benchmark {
        finetune: parse("finetune.jsonl", FINETUNE)?,
        safe: parse("safe.jsonl", SAFE)?,
        align: parse("align.jsonl", ALIGN)?,
        eval_safety: parse("eval_safety.jsonl", EVAL_SAFETY)?,
        eval_utility: parse("eval_utility.jsonl", EVAL_UTILITY)?,
        eval_benign: parse("eval_benign.jsonl", EVAL_BENIGN)?,
        identity_shift: Vec::new(),
        harmful_anchors: Vec::new(),
    };
    b.check_disjoint()?;
    Ok(b)
}

/// A summary of a dataset that was not built from source files (no
/// checksums), e.g. the embedded one.
pub fn summary(b: &Benchmark) -> BenchmarkSummary {
    let count =
        |part: &[Sample], label: Label| part.iter().filter(|s| s.label == Some(label)).count();
    let k = b.finetune.len();
    let harmful = count(&b.finetune, Label::Harmful);
    BenchmarkSummary {
        // Written by hand in the layout of recipe 2 (no identity-shift file,
        // no screened evaluation sources).
        recipe_version: 2,
        seed: 0,
        sizes: BenchmarkSizes {
            finetune: k,
            poison_ratio: if k > 0 {
                harmful as f64 / k as f64
            } else {
                0.0
            },
            safe: b.safe.len(),
            align: count(&b.align, Label::Safe),
            align_benign: count(&b.align, Label::Benign),
            eval_safety: b.eval_safety.len(),
            eval_utility: b.eval_utility.len(),
            eval_benign: b.eval_benign.len(),
            eval_xstest: 0,
        },
        files: b.counts(),
        sources: Vec::new(),
        notes: vec!["embedded demo dataset written for seal-rs".into()],
        removed: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_dataset_is_complete_and_labelled() {
        let b = embedded_default().unwrap();
        assert_eq!(b.finetune.len(), 96);
        let harmful = b
            .finetune
            .iter()
            .filter(|s| s.label == Some(Label::Harmful))
            .count();
        assert_eq!(harmful, 12);
        assert!(b.finetune.iter().all(|s| s.response().is_some()));
        assert!(b.safe.iter().all(|s| s.label == Some(Label::Safe)));
        assert_eq!((b.safe.len(), b.align.len()), (32, 48));
        let count = |label| b.align.iter().filter(|s| s.label == Some(label)).count();
        assert_eq!((count(Label::Safe), count(Label::Benign)), (24, 24));
        assert!(b.align.iter().all(|s| s.response().is_some()));
        // Both kinds are spread over the file, not one block after the other.
        assert!(b.align[..24].iter().any(|s| s.label == Some(Label::Benign)));
        assert!(b.align[24..].iter().any(|s| s.label == Some(Label::Safe)));
        for part in [&b.eval_safety, &b.eval_benign] {
            assert_eq!(part.len(), 16);
            assert!(part.iter().all(|s| s.response().is_none()));
        }
        // Utility problems: [question, worked answer] with the final number
        // as reference, the answer in the style of the benign pool samples.
        assert_eq!(b.eval_utility.len(), 16);
        for s in &b.eval_utility {
            assert_eq!(s.messages.len(), 2, "{}", s.id);
            assert_eq!(s.label, Some(Label::Benign), "{}", s.id);
            let r = s.reference.as_deref().unwrap();
            assert!(r.parse::<i64>().is_ok(), "{}: {r}", s.id);
            let answer = s.response().unwrap();
            assert!(answer.contains(" = "), "{}", s.id);
            assert!(
                answer.ends_with(&format!("\nThe answer is {r}.")),
                "{}",
                s.id
            );
            // Without the answer turn, the reference stays the number.
            assert_eq!(s.clone().into_prompt_only().reference.as_deref(), Some(r));
        }
        // Harmful answers elide every harmful detail.
        for s in b
            .finetune
            .iter()
            .filter(|s| s.label == Some(Label::Harmful))
        {
            assert!(
                s.response().is_some_and(|r| r.contains("omitted]")),
                "{}",
                s.id
            );
        }
        // Benign answers are arithmetic that checks out: the stated answer
        // equals the reference.
        for s in b.finetune.iter().filter(|s| s.label == Some(Label::Benign)) {
            let r = s.reference.as_deref().unwrap();
            assert!(
                s.response()
                    .unwrap()
                    .ends_with(&format!("The answer is {r}.")),
                "{}",
                s.id
            );
        }
        let sum = summary(&b);
        assert_eq!(sum.files["finetune.jsonl"].total, 96);
        assert_eq!((sum.sizes.align, sum.sizes.align_benign), (24, 24));
    }
}
