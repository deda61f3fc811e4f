//! One module per subcommand.
pub mod align;
pub mod args;
pub mod common;
pub mod data;
pub mod dose;
pub mod eval;
pub mod finetune;
pub mod generate;
pub mod import_gguf;
pub mod import_selector;
pub mod judge;
pub mod lambda_sweep;
pub mod pipeline;
pub mod rank;
pub mod select;
pub mod serve;
pub mod win_rate;
