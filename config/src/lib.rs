//! HeliosProxy configuration types: plain data, parsed from TOML, validated, no runtime.

pub mod plugins;
