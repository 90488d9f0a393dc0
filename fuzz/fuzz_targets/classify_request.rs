//! Bytes off the wire -> `ClassifyRequest` -> validated reviews, as the server does before any
//! tokenization or inference. Must never panic; what validation accepts must honour the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modserve::config::{Limits, OversizeText};
use modserve::serving::grpc::{convert, pb};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the oversize policy, so both paths are explored.
    let Some((&mode, wire)) = data.split_first() else { return };
    let Ok(request) = pb::ClassifyRequest::decode(wire) else { return };
    let oversize_text = if mode & 1 == 0 { OversizeText::Reject } else { OversizeText::Truncate };
    let limits = Limits { max_reviews_per_request: 8, max_text_bytes: 64, oversize_text, ..Limits::default() };
    let Ok(input) = convert::validate(request, &limits) else { return };
    assert!(!input.reviews.is_empty() && input.reviews.len() <= limits.max_reviews_per_request);
    let mut ids = std::collections::HashSet::new();
    for review in input.reviews.iter() {
        assert!(!review.id.trim().is_empty(), "an empty id passed validation");
        assert!(ids.insert(review.id.as_str()), "a duplicate id passed validation");
        // Title + "\n" + text, each within the limit.
        assert!(review.model_text.len() <= 2 * limits.max_text_bytes + 1, "{} bytes", review.model_text.len());
        assert!(review.rating.is_none_or(f32::is_finite));
        assert!(review.signals.values().all(|v| v.is_finite()));
    }
});
