//! seal-select
