use helios_plugin_abi as _;
