//! The config loader: any text is a `Config` or a one-line error naming the file, never a
//! panic; the `[[price]]` entries of a config that loads build a rate table (or a clear error)
//! without panicking either. (`prices_file` is not read: a fuzzer must not open paths.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(config) => {
            let _ = meter::pricing::RateTable::from_layers(config.prices, Vec::new());
        }
        Err(err) => {
            let message = err.to_string();
            assert!(message.starts_with("config fuzz.toml: "), "{message}");
            assert!(!message.chars().any(char::is_control), "{message}");
        }
    }
});
