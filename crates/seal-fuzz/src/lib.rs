//! Structure-aware fuzzing on stable Rust (no libFuzzer, no nightly) of the
//! parsers that read files users download: GGUF, safetensors (single,
//! sharded, whole HF directories), PEFT adapters, `.pt` selectors, dataset
//! files and chat templates.
//!
//! Seed inputs are built in code and record where their length, count,
//! dtype, shape and offset fields are, so mutations hit those fields often
//! (see [`mutate`]). Each target runs in a child process with a limited
//! address space, watched by the parent for aborts and hangs (see
//! [`harness`]). `seal-fuzz --target all --seconds 60` runs everything.

pub mod harness;
pub mod mutate;
pub mod targets;
