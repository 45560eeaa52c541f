//! The statement pipeline: the stages every statement passes.
pub mod plugins;
