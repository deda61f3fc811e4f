//! Fuzz targets. Each builds valid seeds in code, mutates them with
//! knowledge of their structure, and runs the project's parser on the
//! result. Errors are the expected outcome; only panics, aborts and hangs
//! count as crashes.

pub mod chat;
pub mod datasets;
pub mod gguf;
pub mod lora;
pub mod safetensors;
pub mod torch_pt;

use std::path::Path;

use crate::mutate::{havoc, mutate_json_doc, Rng, JSON_DICT};

/// One input: files written into the case directory.
#[derive(Debug, Clone, Default)]
pub struct Case {
    /// File name (no directories) and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Case {
    /// A case of one file.
    pub fn one(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            files: vec![(name.to_string(), bytes)],
        }
    }

    /// The contents of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// A fuzz target.
pub trait Target {
    /// The next input.
    fn generate(&mut self, rng: &mut Rng) -> Case;
    /// Parses the case in `dir` (`scratch` is an empty directory for
    /// outputs). Returns whether it was accepted (worth mutating further).
    fn run(&mut self, dir: &Path, scratch: &Path) -> bool;
    /// Keeps an accepted case for further mutation.
    fn accept(&mut self, case: Case);
}

/// Names of all targets, in the order `--target all` runs them.
pub const ALL: &[&str] = &[
    "gguf",
    "safetensors",
    "lora",
    "torch-pt",
    "datasets",
    "chat-template",
];

/// The target called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "gguf" => Box::new(gguf::GgufTarget::new()),
        "safetensors" => Box::new(safetensors::SafetensorsTarget::new()),
        "lora" => Box::new(lora::LoraTarget::new()),
        "torch-pt" => Box::new(torch_pt::TorchPtTarget::new()),
        "datasets" => Box::new(datasets::DatasetsTarget::new()),
        "chat-template" => Box::new(chat::ChatTarget::new()),
        _ => return None,
    })
}

/// Accepted cases, re-mutated now and then (a cheap stand-in for coverage
/// feedback: cases that get through a parser are good starting points).
#[derive(Debug, Default)]
pub struct Pool {
    cases: Vec<Case>,
}

impl Pool {
    /// Keeps `case`, replacing a random one when full.
    pub fn add(&mut self, case: Case, rng_bits: u64) {
        const MAX: usize = 64;
        if self.cases.len() < MAX {
            self.cases.push(case);
        } else {
            self.cases[(rng_bits % MAX as u64) as usize] = case;
        }
    }

    /// A kept case with one file mutated (JSON-aware for `.json` files),
    /// or `None` while the pool is empty.
    pub fn mutate(&self, rng: &mut Rng, dict: &[&[u8]], strings: &[&str]) -> Option<Case> {
        if self.cases.is_empty() {
            return None;
        }
        let mut case = rng.pick(&self.cases).clone();
        if case.files.is_empty() {
            return Some(case);
        }
        let i = rng.below(case.files.len());
        let (name, bytes) = &mut case.files[i];
        let json = name.ends_with(".json") || name.ends_with(".jsonl");
        if json && rng.one_in(2) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                *bytes = mutate_json_doc(rng, &v, strings, JSON_DICT);
                return Some(case);
            }
        }
        havoc(rng, bytes, if json { JSON_DICT } else { dict }, None);
        Some(case)
    }
}
