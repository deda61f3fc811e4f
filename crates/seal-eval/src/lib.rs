//! seal-eval
