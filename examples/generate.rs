//! Load SmolLM2-135M-Instruct (imported once from the GGUF that `cargo xtask
//! setup` installs) and answer a question with greedy decoding.
//!
//! `cargo run --release -p seal-examples --example generate -- "Your question"`

use anyhow::Context;
use seal_data::Message;
use seal_model::generate::{generate_chat, GenerationOptions};
use seal_model::{LoadOptions, Pretrained};

fn main() -> anyhow::Result<()> {
    seal_model::runtime::tune_allocator();
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".into());
    let dir = seal_testkit::smollm2_dir()?
        .context("SmolLM2 GGUF not found: run `cargo xtask setup` first")?;
    let pre = Pretrained::load(&dir, &LoadOptions::default())?;
    let opts = GenerationOptions::greedy(&pre.tokenizer, 64);
    let answers = generate_chat(
        &pre.model,
        &pre.tokenizer,
        &[vec![Message::user(question.clone())]],
        &opts,
    )?;
    println!("Q: {question}\nA: {}", answers[0]);
    Ok(())
}
