//! The config parser (`svcnet::config::Config::from_toml`) on arbitrary text: it must never
//! panic, and every error must render (the error names a key and a line).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = svcnet::config::Config::from_toml(
            text,
            std::path::Path::new("/nonexistent/svcnet.toml"),
        ) {
            let _ = e.to_string();
        }
    }
});
