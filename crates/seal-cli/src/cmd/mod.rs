//! One module per subcommand.
pub mod data;
pub mod generate;
pub mod import_gguf;
