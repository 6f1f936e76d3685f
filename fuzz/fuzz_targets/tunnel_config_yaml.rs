//! A named tunnel's config file in YAML (cloudflared's `config.yml`): whatever it holds,
//! parsing it (anchors, aliases, merge keys), filling the config, checking it and finding the
//! line of an error never panics, and an alias bomb stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::tunnel::config::fuzz_config_yaml(data);
});
