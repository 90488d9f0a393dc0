//! The `[launch]` table: what a shadow must show to be promoted, read by `modserve report` and
//! `modserve eval` (`offline::report::criteria` judges a report against it).

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// Defaults for every `[launch]` key.
pub mod defaults {
    /// Fewer comparisons than this say too little about the candidate.
    pub const MIN_COMPARED: u64 = 1000;
    pub const MIN_VERDICTS: u64 = 100;
    /// Precision may fall at most this much (absolute, 0.02 = 2 points) below live's.
    pub const MAX_PRECISION_DROP: f64 = 0.02;
    pub const MAX_ERROR_RATE: f64 = 0.001;
    pub const MAX_SHED_RATE: f64 = 0.05;
}

/// The `[launch]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLaunchCriteria {
    pub min_compared: Option<u64>,
    pub min_verdicts: Option<u64>,
    pub max_precision_drop: Option<f64>,
    pub max_recall_drop: Option<f64>,
    /// A humantime duration, e.g. "50ms".
    pub max_p99: Option<String>,
    pub max_error_rate: Option<f64>,
    pub max_shed_rate: Option<f64>,
    pub max_review_queue_increase: Option<f64>,
    pub cost_wrong_reject: Option<f64>,
    pub cost_missed_abuse: Option<f64>,
    pub reviews_per_day: Option<u64>,
}

/// Validated launch criteria. `None` limits are not checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaunchCriteria {
    /// Compared reviews (the confusion matrix total) needed; 0 = no minimum. Default 1000.
    pub min_compared: u64,
    /// Moderator verdicts on the candidate needed; 0 = no minimum. Default 100.
    pub min_verdicts: u64,
    /// Largest allowed fall of precision below live's, at REVIEW and at REJECT. Default 0.02.
    pub max_precision_drop: Option<f64>,
    /// Largest allowed fall of recall below live's, at both levels. Default: not checked.
    pub max_recall_drop: Option<f64>,
    /// Largest allowed candidate inference p99 per batch. Default: not checked.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub max_p99: Option<Duration>,
    /// Largest allowed share of sampled reviews whose candidate inference failed. Default 0.001.
    pub max_error_rate: Option<f64>,
    /// Largest allowed share of sampled reviews shed before inference. Default 0.05.
    pub max_shed_rate: Option<f64>,
    /// Largest allowed rise of the forecast REVIEW queue items per day over live's, as a share
    /// of live's (0.05 = 5% more). Default: not checked.
    pub max_review_queue_increase: Option<f64>,
    /// Weights of a wrong REJECT and of missed abuse: the candidate's expected cost per day may
    /// not exceed live's. Both or neither are set. Default: not checked.
    pub cost: Option<CostWeights>,
    /// Reviews a day, to scale an offline evaluation's forecast to a day (a report from
    /// Prometheus measures it). Default: offline forecasts are per 1000 reviews.
    pub reviews_per_day: Option<u64>,
}

/// The cost model of `[launch]`: what a wrong REJECT and a missed abuse each cost, in any unit
/// the two share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostWeights {
    pub wrong_reject: f64,
    pub missed_abuse: f64,
}

impl Default for LaunchCriteria {
    fn default() -> Self {
        LaunchCriteria {
            min_compared: defaults::MIN_COMPARED,
            min_verdicts: defaults::MIN_VERDICTS,
            max_precision_drop: Some(defaults::MAX_PRECISION_DROP),
            max_recall_drop: None,
            max_p99: None,
            max_error_rate: Some(defaults::MAX_ERROR_RATE),
            max_shed_rate: Some(defaults::MAX_SHED_RATE),
            max_review_queue_increase: None,
            cost: None,
            reviews_per_day: None,
        }
    }
}

/// Raw `[launch]` -> typed criteria, pushing one error per bad key (each naming it) and using the
/// default in its place.
pub fn validate_criteria(raw: &RawLaunchCriteria, errors: &mut Vec<String>) -> LaunchCriteria {
    let d = LaunchCriteria::default();
    let mut share = |key: &str, value: Option<f64>, default: Option<f64>| match value {
        None => default,
        Some(v) if (0.0..=1.0).contains(&v) => Some(v),
        Some(v) => {
            errors.push(format!("launch.{key} {v}: must be within 0..=1"));
            default
        }
    };
    let max_precision_drop = share("max_precision_drop", raw.max_precision_drop, d.max_precision_drop);
    let max_recall_drop = share("max_recall_drop", raw.max_recall_drop, d.max_recall_drop);
    let max_error_rate = share("max_error_rate", raw.max_error_rate, d.max_error_rate);
    let max_shed_rate = share("max_shed_rate", raw.max_shed_rate, d.max_shed_rate);
    let max_review_queue_increase = share("max_review_queue_increase", raw.max_review_queue_increase, None);
    let max_p99 = raw.max_p99.as_deref().and_then(|text| match humantime::parse_duration(text) {
        Ok(p) if !p.is_zero() => Some(p),
        Ok(_) => {
            errors.push(format!("launch.max_p99 {text:?}: must be more than 0"));
            None
        }
        Err(e) => {
            errors.push(format!("launch.max_p99 {text:?}: not a duration like \"50ms\" ({e})"));
            None
        }
    });
    let cost = cost_weights(raw, errors);
    let reviews_per_day = match raw.reviews_per_day {
        Some(0) => {
            errors.push("launch.reviews_per_day 0: must be more than 0".to_string());
            None
        }
        n => n,
    };
    LaunchCriteria {
        min_compared: raw.min_compared.unwrap_or(d.min_compared),
        min_verdicts: raw.min_verdicts.unwrap_or(d.min_verdicts),
        max_precision_drop,
        max_recall_drop,
        max_p99,
        max_error_rate,
        max_shed_rate,
        max_review_queue_increase,
        cost,
        reviews_per_day,
    }
}

/// `cost_wrong_reject` and `cost_missed_abuse`: both or neither, each a finite weight >= 0.
fn cost_weights(raw: &RawLaunchCriteria, errors: &mut Vec<String>) -> Option<CostWeights> {
    let mut weight = |key: &str, value: Option<f64>| match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            errors.push(format!("launch.{key} {v}: must be a finite weight >= 0"));
            None
        }
        v => v,
    };
    let wrong_reject = weight("cost_wrong_reject", raw.cost_wrong_reject);
    let missed_abuse = weight("cost_missed_abuse", raw.cost_missed_abuse);
    match (raw.cost_wrong_reject, raw.cost_missed_abuse) {
        (Some(_), None) => errors.push("launch.cost_wrong_reject: set cost_missed_abuse with it".to_string()),
        (None, Some(_)) => errors.push("launch.cost_missed_abuse: set cost_wrong_reject with it".to_string()),
        _ => {}
    }
    Some(CostWeights { wrong_reject: wrong_reject?, missed_abuse: missed_abuse? })
}

fn serialize_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}
