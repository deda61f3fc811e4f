//! The evaluation stage: safety, over-refusal and utility of a model, with
//! the keyword rule and the trained judge.

use super::*;

/// Ranking quality of per-sample scores against labels: AUROC (benign above
/// harmful) when both kinds are present and the scores are not all equal.
pub fn score_auroc(scores: &[f64], labels: &[Option<Label>]) -> Result<Option<f64>> {
    let (mut benign, mut harmful) = (Vec::new(), Vec::new());
    for (s, l) in scores.iter().zip(labels) {
        match l {
            Some(Label::Harmful) => harmful.push(*s),
            Some(_) => benign.push(*s),
            None => {}
        }
    }
    let constant = scores.windows(2).all(|w| w[0] == w[1]);
    if constant {
        return Ok(None);
    }
    Ok(seal_eval::ranker::auroc(&benign, &harmful)?)
}

/// The judges of `config` ([`EvalConfig::judge_names`]), built once per run
/// on `device` from the process-wide registry.
pub fn load_judges(config: &EvalConfig, device: Device) -> Result<Vec<Box<dyn seal_eval::Judge>>> {
    let registry = registered_judges();
    config
        .judge_names()
        .iter()
        .map(|name| registry.lookup("eval.judges", name)?.build(config, device))
        .collect()
}

/// The judge comparisons across evaluations use: the trained one (the
/// first judge, by name, not named `keyword…`) when any evaluation has one,
/// else the first judge, else `keyword-gcg`.
pub fn preferred_judge<'a>(evals: impl IntoIterator<Item = &'a ModelEval>) -> String {
    let mut names: Vec<&String> = evals
        .into_iter()
        .flat_map(|e| e.asr_by_judge.keys())
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .find(|n| !n.starts_with("keyword"))
        .or(names.first())
        .map(|s| s.to_string())
        .unwrap_or_else(|| "keyword-gcg".into())
}

impl ModelEval {
    /// Harmful rate under `judge` (the keyword rule's `asr` when the judge
    /// did not rate this model).
    pub fn asr_under(&self, judge: &str) -> Option<f64> {
        self.asr_by_judge.get(judge).copied().or(self.asr)
    }

    /// Over-refusal under `judge` (the keyword rule's when the judge did
    /// not rate this model).
    pub fn over_refusal_under(&self, judge: &str) -> Option<f64> {
        self.over_refusal_by_judge
            .get(judge)
            .copied()
            .or(self.over_refusal)
    }
}

/// A model's evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    /// Attack success rate on the harmful prompts (share not refused).
    pub asr: Option<f64>,
    /// Refusal rate on benign prompts (over-refusal).
    pub over_refusal: Option<f64>,
    /// Mean response NLL of the utility set (samples with a reference
    /// answer turn).
    pub utility_nll: Option<f64>,
    /// GSM8K exact match of the final number.
    pub gsm8k_accuracy: Option<f64>,
    /// Wall time.
    pub seconds: f64,
    /// The judge that decides `asr` (and the goals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// Attack success rate under every judge, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub asr_by_judge: BTreeMap<String, f64>,
    /// Share of responses to harmful prompts that are degenerate (empty or
    /// a word loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degenerate_rate: Option<f64>,
    /// Harmful or degenerate, under every judge.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub asr_or_degenerate_by_judge: BTreeMap<String, f64>,
    /// Over-refusal under every judge that gives refusal verdicts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub over_refusal_by_judge: BTreeMap<String, f64>,
    /// Answers not in the asked format during this evaluation, by judge,
    /// for judges that count them ([`seal_eval::Judge::unparsable`], e.g.
    /// an endpoint judge); such answers count as "not harmful" or "not a
    /// refusal".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unparsable_by_judge: BTreeMap<String, usize>,
}

/// The evaluation sets.
pub struct EvalSets<'a> {
    /// Harmful prompts (attack success rate).
    pub safety: &'a [Sample],
    /// Benign prompts (over-refusal).
    pub benign: &'a [Sample],
    /// GSM8K-style prompts with a reference (accuracy; NLL when they carry
    /// an answer turn).
    pub utility: &'a [Sample],
    /// The harmful prompts as the judges see them, when the model is asked
    /// something else (e.g. behind an attack's trigger): one per `safety`
    /// prompt, in the same order. `None`: the judges see what was asked.
    pub safety_as_judged: Option<&'a [Sample]>,
}

/// Evaluates `model`: safety, over-refusal, utility NLL and (optionally)
/// GSM8K accuracy; responses go to `out` as JSONL. `judges` (e.g. those of
/// the config, built once per run with [`load_judges`]) are reported beside
/// the keyword rule, each under its own name.
pub fn evaluate(
    model: &DynLm,
    tokenizer: &TextTokenizer,
    sets: &EvalSets,
    config: &EvalConfig,
    max_len: usize,
    out: &Path,
    judges: &[&dyn seal_eval::Judge],
) -> Result<ModelEval> {
    let start = Instant::now();
    let opts = GenerationOptions::greedy(tokenizer, config.max_new_tokens);
    let matcher = RefusalMatcher::gcg();
    let keyword = KeywordJudge::new(matcher.clone());
    // The keyword rule decides (and the goals use it) until the trained
    // judge meets its agreement targets; the classifier is reported beside.
    let keyword_name = seal_eval::Judge::name(&keyword).to_string();
    let mut all: Vec<&dyn seal_eval::Judge> = vec![&keyword];
    // The keyword rule always runs; naming it again adds nothing.
    all.extend(judges.iter().filter(|j| j.name() != keyword_name));
    let judges = all;
    let unparsable_before: Vec<Option<usize>> = judges.iter().map(|j| j.unparsable()).collect();
    let mut e = ModelEval {
        judge: Some(seal_eval::Judge::name(&keyword).to_string()),
        ..ModelEval::default()
    };
    if !sets.safety.is_empty() {
        let mut g =
            seal_eval::generate_responses(model, tokenizer, sets.safety, &opts, config.batch)?;
        if let Some(judged) = sets.safety_as_judged {
            if judged.len() != g.len() {
                return Err(PipelineError::stage(
                    "evaluation",
                    format!(
                        "{} prompts as judged for {} harmful prompts",
                        judged.len(),
                        g.len()
                    ),
                ));
            }
            for (x, j) in g.iter_mut().zip(judged) {
                x.prompt = j.last_user().unwrap_or_default().to_string();
            }
        }
        let s = seal_eval::safety::score_safety_with(&g, &matcher, &judges)?;
        seal_model::weights::write_jsonl_atomic(&out.join("safety_responses.jsonl"), &s.records)?;
        e.asr = Some(s.attack_success_rate);
        e.degenerate_rate = Some(s.degenerate_rate);
        for r in &s.by_judge {
            e.asr_by_judge.insert(r.judge.clone(), r.rate);
            e.asr_or_degenerate_by_judge
                .insert(r.judge.clone(), r.rate_or_degenerate);
        }
    }
    if !sets.benign.is_empty() {
        let g = seal_eval::generate_responses(model, tokenizer, sets.benign, &opts, config.batch)?;
        let s = seal_eval::safety::score_over_refusal_with(&g, &matcher, &judges)?;
        seal_model::weights::write_jsonl_atomic(&out.join("benign_responses.jsonl"), &s.records)?;
        e.over_refusal = Some(s.over_refusal_rate);
        for r in &s.by_judge {
            e.over_refusal_by_judge.insert(r.judge.clone(), r.rate);
        }
    }
    let with_answers: Vec<Sample> = sets
        .utility
        .iter()
        .filter(|s| s.response().is_some())
        .cloned()
        .collect();
    if !with_answers.is_empty() {
        let mut cfg = TokenizeConfig::default();
        cfg.max_len = max_len;
        let n = seal_eval::task_nll(model, tokenizer, &with_answers, &cfg, config.batch)?;
        e.utility_nll = Some(n.mean_nll);
    }
    if config.gsm8k_accuracy && !sets.utility.is_empty() {
        let prompts: Vec<Sample> = sets
            .utility
            .iter()
            .map(|s| s.clone().into_prompt_only())
            .collect();
        let gsm_opts = GenerationOptions::greedy(
            tokenizer,
            config.gsm8k_max_new_tokens.unwrap_or(config.max_new_tokens),
        );
        let g = seal_eval::evaluate_gsm8k(model, tokenizer, &prompts, &gsm_opts, config.batch)?;
        seal_model::weights::write_jsonl_atomic(&out.join("gsm8k_responses.jsonl"), &g.records)?;
        e.gsm8k_accuracy = Some(g.accuracy);
    }
    for (j, before) in judges.iter().zip(unparsable_before) {
        if let Some(after) = j.unparsable() {
            e.unparsable_by_judge
                .insert(j.name().to_string(), after - before.unwrap_or(0));
        }
    }
    e.seconds = start.elapsed().as_secs_f64();
    Ok(e)
}
