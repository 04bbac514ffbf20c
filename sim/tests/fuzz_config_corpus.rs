//! Replays the `config` fuzz corpus (`fuzz/corpus/config/`) on stable. The config parser lives
//! in the `svcnet` crate, which the core's corpus test cannot reach; this crate depends on it.

use std::path::{Path, PathBuf};

#[test]
fn config_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut loaded = 0;
    for f in files {
        let data = std::fs::read(&f).expect("corpus file");
        // The same body as fuzz/fuzz_targets/config.rs.
        if let Ok(text) = std::str::from_utf8(&data) {
            match svcnet::config::Config::from_toml(text, Path::new("/nonexistent/svcnet.toml")) {
                Ok(_) => loaded += 1,
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    // The committed seeds include the complete example of docs/config.md and a minimal config.
    assert!(loaded >= 2, "the valid seed configs must load");
}
