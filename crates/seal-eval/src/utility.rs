//! Utility evaluation: held-out task NLL and GSM8K exact-match accuracy.
//!
//! * **Task NLL**: the mean response-token negative log-likelihood per
//!   sample ([`seal_model::CausalLm::per_sample_nll`], no gradients),
//!   averaged over samples (each sample counts once, as SEAL's per-sample
//!   losses do), plus the token-weighted mean and its perplexity.
//! * **GSM8K** (Cobbe et al. 2021, "Training Verifiers to Solve Math Word
//!   Problems"): the reference answer is the number after the last `####`
//!   of the solution (`seal data` readers already store just that number in
//!   [`seal_data::Sample::reference`]); the prediction is the **last number**
//!   in the generation. Both are normalised before comparison: `$` and
//!   thousands separators (`,`) are dropped, a leading `+` and leading zeros
//!   are removed, and trailing zeros of a decimal part (`72.0`, `72.50`)
//!   are removed. A response without a number is wrong.
//!
//! The benchmark's `eval_utility.jsonl` serves both: each sample is a GSM8K
//! test question with its worked solution as the final assistant turn (the
//! text [`task_nll`] scores) and the final number as `reference` (what
//! [`score_gsm8k`] compares with). Generation renders the question only
//! ([`crate::generation`]), and the reference is read from `reference`,
//! never from the solution turn.

use seal_data::tokenize::{tokenize_samples, TokenizeConfig, TokenizeSummary};
use seal_data::{Sample, TextTokenizer};
use seal_model::generate::GenerationOptions;
use seal_model::{CausalLm, LmBatch};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::error::{EvalError, Result};
use crate::generation::{generate_responses, Generated};

/// One sample's NLL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NllRecord {
    /// The sample id.
    pub id: String,
    /// Mean NLL of its response tokens (nats).
    pub nll: f64,
    /// Number of response tokens (including the end token).
    pub tokens: usize,
}

/// Held-out task NLL over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NllEval {
    /// Samples scored.
    pub n: usize,
    /// Mean over samples of the per-sample mean response NLL.
    pub mean_nll: f64,
    /// Mean over all response tokens.
    pub token_mean_nll: f64,
    /// `exp(token_mean_nll)`.
    pub perplexity: f64,
    /// Tokenisation counts (truncated or dropped samples).
    pub tokenize: TokenizeSummary,
    /// Per-sample NLLs, in input order (dropped samples omitted).
    pub records: Vec<NllRecord>,
}

/// Mean response NLL of `samples` (each must end with an assistant turn),
/// `batch_size` rows per forward pass, without gradients.
pub fn task_nll(
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    config: &TokenizeConfig,
    batch_size: usize,
) -> Result<NllEval> {
    if batch_size == 0 {
        return Err(EvalError::invalid("batch size", "0 (must be at least 1)"));
    }
    let data = tokenize_samples(tokenizer, samples, config)?;
    if data.samples.is_empty() {
        return Err(EvalError::invalid(
            "NLL samples",
            format!("no sample left to score ({})", data.summary),
        ));
    }
    let pad = tokenizer
        .pad_token_id()
        .or_else(|| tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0);
    let mut order: Vec<usize> = (0..data.samples.len()).collect();
    order.sort_by_key(|&i| data.samples[i].len());
    let mut nll = vec![0.0f64; data.samples.len()];
    let _guard = tch::no_grad_guard();
    for chunk in order.chunks(batch_size) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| data.samples[i].input_ids.clone())
            .collect();
        let starts: Vec<usize> = chunk
            .iter()
            .map(|&i| data.samples[i].response_start)
            .collect();
        let batch = LmBatch::from_rows(&rows, &starts, pad)?.to_device(model.device());
        let out = model
            .per_sample_nll(&batch)?
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
        let values = Vec::<f64>::try_from(out)?;
        if values.len() != chunk.len() {
            return Err(EvalError::invalid(
                "model output",
                format!("{} NLLs for a batch of {}", values.len(), chunk.len()),
            ));
        }
        for (&i, v) in chunk.iter().zip(values) {
            nll[i] = v;
        }
    }
    let records: Vec<NllRecord> = data
        .samples
        .iter()
        .zip(&nll)
        .map(|(s, &v)| NllRecord {
            id: s.id.clone(),
            nll: v,
            tokens: s.response_len(),
        })
        .collect();
    if let Some(bad) = records.iter().find(|r| !r.nll.is_finite()) {
        return Err(EvalError::Sample {
            id: bad.id.clone(),
            message: format!("non-finite NLL {}", bad.nll),
        });
    }
    let n = records.len();
    let tokens: usize = records.iter().map(|r| r.tokens).sum();
    let token_sum: f64 = records.iter().map(|r| r.nll * r.tokens as f64).sum();
    let token_mean = token_sum / tokens.max(1) as f64;
    Ok(NllEval {
        n,
        mean_nll: records.iter().map(|r| r.nll).sum::<f64>() / n as f64,
        token_mean_nll: token_mean,
        perplexity: token_mean.exp(),
        tokenize: data.summary,
        records,
    })
}

/// Normalises a number string: drops `$`, `,` and a leading `+`, removes
/// leading zeros and trailing zeros of the decimal part (and a bare trailing
/// `.`). `None` unless the result is `-?digits(.digits)?`.
pub fn normalize_number(text: &str) -> Option<String> {
    let cleaned: String = text
        .trim()
        .chars()
        .filter(|c| !matches!(c, '$' | ','))
        .collect();
    let cleaned = cleaned.strip_prefix('+').unwrap_or(&cleaned);
    let (neg, body) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let mut out = String::new();
    if neg && !(int == "0" && frac.is_empty()) {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// All numbers in `text`, in order, as written (with a `-` sign when one
/// directly precedes the number or its `$` and does not follow a letter or
/// digit). A number is digits with optional `,`-separated groups and an
/// optional decimal part.
pub fn find_numbers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut s = start;
        if s > 0 && b[s - 1] == b'$' {
            s -= 1;
        }
        let negative = s > 0 && b[s - 1] == b'-' && (s < 2 || !b[s - 2].is_ascii_alphanumeric());
        let mut j = i;
        loop {
            while j < n && b[j].is_ascii_digit() {
                j += 1;
            }
            if j + 1 < n && b[j] == b',' && b[j + 1].is_ascii_digit() {
                j += 1;
                continue;
            }
            break;
        }
        if j + 1 < n && b[j] == b'.' && b[j + 1].is_ascii_digit() {
            j += 1;
            while j < n && b[j].is_ascii_digit() {
                j += 1;
            }
        }
        // Indices are at ASCII bytes, hence char boundaries.
        let digits = &text[start..j];
        out.push(if negative {
            format!("-{digits}")
        } else {
            digits.to_string()
        });
        i = j;
    }
    out
}

/// The normalised last number of a generation, if any.
pub fn extract_prediction(response: &str) -> Option<String> {
    find_numbers(response)
        .last()
        .and_then(|n| normalize_number(n))
}

/// The normalised reference of a GSM8K sample, from its `reference` field:
/// the text after the last `####` when present, otherwise the whole
/// reference. A sample's assistant turn (the worked solution that
/// `eval_utility` samples carry for the NLL) is never used, even when both
/// exist; a sample without `reference` is an error.
pub fn gsm8k_reference(sample: &Sample) -> Result<String> {
    let raw = sample
        .reference
        .as_deref()
        .ok_or_else(|| EvalError::Sample {
            id: sample.id.clone(),
            message: "field `reference` is missing (GSM8K prompts need the final answer)".into(),
        })?;
    let answer = raw.rsplit_once("####").map(|(_, t)| t).unwrap_or(raw);
    normalize_number(answer).ok_or_else(|| EvalError::Sample {
        id: sample.id.clone(),
        message: format!("field `reference`: `{}` is not a number", answer.trim()),
    })
}

/// One GSM8K answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GsmRecord {
    /// The sample id.
    pub id: String,
    /// The problem (the last user turn), so that the file can be judged
    /// pairwise like the other `*_responses.jsonl` (empty in files written
    /// before it was recorded).
    #[serde(default)]
    pub prompt: String,
    /// The normalised reference answer.
    pub reference: String,
    /// The normalised last number of the response, if any.
    pub prediction: Option<String>,
    /// Whether prediction equals reference.
    pub correct: bool,
    /// The full response.
    pub response: String,
}

/// GSM8K exact-match results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GsmEval {
    /// Problems evaluated.
    pub n: usize,
    /// Problems answered correctly.
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
    /// Responses without any number.
    pub no_number: usize,
    /// Per-problem records, in input order.
    pub records: Vec<GsmRecord>,
}

/// Scores already generated GSM8K responses (`generations[i]` answers
/// `samples[i]`).
pub fn score_gsm8k(samples: &[Sample], generations: &[Generated]) -> Result<GsmEval> {
    if samples.is_empty() {
        return Err(EvalError::invalid(
            "GSM8K prompts",
            "no prompts to evaluate",
        ));
    }
    if samples.len() != generations.len() {
        return Err(EvalError::invalid(
            "GSM8K generations",
            format!(
                "{} responses for {} prompts",
                generations.len(),
                samples.len()
            ),
        ));
    }
    let mut records = Vec::with_capacity(samples.len());
    for (s, g) in samples.iter().zip(generations) {
        if s.id != g.id {
            return Err(EvalError::Sample {
                id: s.id.clone(),
                message: format!("paired with the response to `{}`", g.id),
            });
        }
        let reference = gsm8k_reference(s)?;
        let prediction = extract_prediction(&g.response);
        records.push(GsmRecord {
            id: s.id.clone(),
            prompt: g.prompt.clone(),
            correct: prediction.as_deref() == Some(reference.as_str()),
            reference,
            prediction,
            response: g.response.clone(),
        });
    }
    let n = records.len();
    let correct = records.iter().filter(|r| r.correct).count();
    Ok(GsmEval {
        n,
        correct,
        accuracy: correct as f64 / n as f64,
        no_number: records.iter().filter(|r| r.prediction.is_none()).count(),
        records,
    })
}

/// Generates answers to GSM8K prompts and scores them. References are
/// checked before any generation, so a bad file fails fast.
pub fn evaluate_gsm8k(
    model: &dyn CausalLm,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    options: &GenerationOptions,
    batch_size: usize,
) -> Result<GsmEval> {
    for s in samples {
        gsm8k_reference(s)?;
    }
    if samples.is_empty() {
        return Err(EvalError::invalid(
            "GSM8K prompts",
            "no prompts to evaluate",
        ));
    }
    let g = generate_responses(model, tokenizer, samples, options, batch_size)?;
    score_gsm8k(samples, &g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seal_data::Message;

    #[test]
    fn normalization() {
        let cases = [
            ("1,200", Some("1200")),
            ("$1,200.00", Some("1200")),
            ("72.0", Some("72")),
            ("72.50", Some("72.5")),
            ("+5", Some("5")),
            ("-0.0", Some("0")),
            ("007", Some("7")),
            (".5", Some("0.5")),
            ("5.", Some("5")),
            (" -3 ", Some("-3")),
            ("abc", None),
            ("", None),
            ("1.2.3", None),
            ("-", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_number(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn last_number_extraction() {
        let cases = [
            ("She has 3 apples and 4 pears, so 7.", Some("7")),
            ("Total: $1,234.50 in all", Some("1234.5")),
            ("The answer is -12.", Some("-12")),
            ("From 5-3 we get 2", Some("2")),
            ("5-3", Some("3")),
            ("so x-5", Some("5")),
            ("costs -$4", Some("-4")),
            ("#### 18", Some("18")),
            ("1, 2, 3", Some("3")),
            ("no digits here", None),
            ("café costs 3€", Some("3")),
        ];
        for (text, want) in cases {
            assert_eq!(extract_prediction(text).as_deref(), want, "{text:?}");
        }
        assert_eq!(find_numbers("a 1,000 b 2.5"), ["1,000", "2.5"]);
    }

    fn problem(id: &str, reference: Option<&str>) -> Sample {
        Sample {
            id: id.into(),
            source: "gsm8k-test".into(),
            label: None,
            messages: vec![Message::user("q")],
            reference: reference.map(str::to_string),
            prefill: None,
        }
    }

    fn answer(id: &str, response: &str) -> Generated {
        Generated {
            id: id.into(),
            prompt: "q".into(),
            response: response.into(),
            new_tokens: 0,
        }
    }

    #[test]
    fn gsm8k_scoring() {
        let samples = [
            problem("g:1", Some("1,200")),
            problem("g:2", Some("step\n#### 7")),
            problem("g:3", Some("3")),
        ];
        let gens = [
            answer("g:1", "It is 1200.0 dollars."),
            answer("g:2", "7 then 8"),
            answer("g:3", "I don't know"),
        ];
        let e = score_gsm8k(&samples, &gens).unwrap();
        assert_eq!((e.n, e.correct, e.no_number), (3, 1, 1));
        assert_eq!(e.records[1].prediction.as_deref(), Some("8"));
        assert_eq!(e.records[1].reference, "7");

        let err = score_gsm8k(&[problem("g:9", None)], &[answer("g:9", "1")]).unwrap_err();
        assert!(err.to_string().contains("g:9") && err.to_string().contains("reference"));
        let err = score_gsm8k(&[problem("g:8", Some("n/a"))], &[answer("g:8", "1")]).unwrap_err();
        assert!(err.to_string().contains("g:8"), "{err}");
        assert!(score_gsm8k(&samples[..1], &gens[1..2]).is_err());
        assert!(score_gsm8k(&samples, &gens[..2]).is_err());
    }

    /// A GSM8K question with its worked solution as the final assistant turn
    /// (as in `eval_utility.jsonl`).
    fn solved(id: &str, solution: &str, reference: Option<&str>) -> Sample {
        Sample {
            messages: vec![Message::user("q"), Message::assistant(solution)],
            ..problem(id, reference)
        }
    }

    #[test]
    fn gsm8k_reference_comes_from_the_reference_field() {
        // Both exist: the reference field wins, even when the solution's
        // `####` line (or its last number) says something else.
        let s = solved("g:1", "2 + 3 = 5\n#### 5", Some("1,200"));
        assert_eq!(gsm8k_reference(&s).unwrap(), "1200");
        let s = solved("g:2", "Half of 48 is <<48/2=24>>24.\n#### 24", Some("24"));
        assert_eq!(gsm8k_reference(&s).unwrap(), "24");
        // The solution alone is no reference.
        let e = gsm8k_reference(&solved("g:3", "#### 7", None)).unwrap_err();
        assert!(e.to_string().contains("g:3") && e.to_string().contains("reference"));
        // Scoring a sample with a solution turn compares with the reference.
        let samples = [
            solved("g:4", "4 x 3 = 12\n#### 12", Some("12")),
            solved("g:5", "1 + 1 = 2\n#### 2", Some("99")),
        ];
        let gens = [answer("g:4", "so 12"), answer("g:5", "so 2")];
        let e = score_gsm8k(&samples, &gens).unwrap();
        assert_eq!(e.correct, 1);
        assert!(e.records[0].correct && !e.records[1].correct);
        assert_eq!(e.records[1].reference, "99");
    }
}
