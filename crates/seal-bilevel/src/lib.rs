//! seal-bilevel
