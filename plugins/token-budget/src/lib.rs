use helios_plugin_abi::*;
