//! Tokenizer with chat template (placeholder).
/// Tokenizer (placeholder).
pub struct TextTokenizer;
