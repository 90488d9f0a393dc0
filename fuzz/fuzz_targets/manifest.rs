//! Model manifest text -> `Manifest`: must never panic, and what it accepts must be usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modserve::inference::model::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Manifest::parse(text) {
        Err(errors) => assert!(!errors.is_empty(), "a rejection names at least one problem"),
        Ok(manifest) => {
            assert!(!manifest.labels.is_empty());
            assert!(manifest.max_sequence_length > 0);
            // File names stay inside the package: every component a plain name ("mod..el.onnx" is
            // one; "../model.onnx" is not).
            for file in [&manifest.model_file, &manifest.tokenizer_file] {
                let inside = std::path::Path::new(file)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                assert!(inside, "{file}");
            }
        }
    }
});
