//! Config file text -> validated `Config`: must never panic (no file is read), every rejection
//! names its problems, and an accepted config is internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modserve::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, std::path::Path::new("/fuzz/modserve.toml"), &Overrides::default()) {
        Err(errors) => assert!(!errors.is_empty(), "a rejection names at least one problem"),
        Ok(config) => {
            for task in &config.tasks {
                assert!(config.models.contains_key(&task.live), "task {} has an unknown live model", task.name);
                for shadow in &task.shadows {
                    assert!(config.models.contains_key(&shadow.model));
                    assert!((0.0..=1.0).contains(&shadow.sample_rate));
                }
            }
        }
    }
});
