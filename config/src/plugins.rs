//! `[plugins]` configuration (owned by the plugin-host work).
