//! `modserve.v1.Feedback`: validates verdicts against the serving state and hands them to
//! `feedback::Feedback`.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::pb::feedback_server;
use super::pb::{SubmitVerdictsRequest, SubmitVerdictsResponse};
use super::service::protocol;
use super::upload::MessageCheck;
use super::{convert, status};
use crate::error::Error;
use crate::feedback::Feedback;
use crate::metrics::{self, TransportRefusal};
use crate::serving::classify::Classifier;

pub struct FeedbackService {
    classifier: Classifier,
    feedback: Feedback,
}

/// The path of SubmitVerdicts, whose messages are checked against the queue before they are read.
pub const SUBMIT_VERDICTS_PATH: &str = "/modserve.v1.Feedback/SubmitVerdicts";

impl FeedbackService {
    pub fn new(classifier: Classifier, feedback: Feedback) -> FeedbackService {
        FeedbackService { classifier, feedback }
    }

    /// Whether a SubmitVerdicts message (or HTTP body) of `bytes` may be read: `Feedback::admit`
    /// against the feedback settings serving now.
    pub fn admit(&self, bytes: usize) -> Result<(), Status> {
        // Without a state the handler answers UNAVAILABLE itself.
        let Ok(state) = self.classifier.state() else { return Ok(()) };
        self.feedback.admit(bytes, &state.config.feedback).map_err(Status::from)
    }

    /// The check each SubmitVerdicts message passes at its prefix, before it is read.
    pub fn message_check(self: &Arc<Self>) -> MessageCheck {
        let service = self.clone();
        Arc::new(move |declared| {
            service.admit(declared as usize).map_err(|status| (status, TransportRefusal::FeedbackQueueFull))
        })
    }

    fn handle(&self, req: SubmitVerdictsRequest) -> Result<SubmitVerdictsResponse, Error> {
        let state = self.classifier.state()?;
        let verdicts = crate::feedback::verdict::validate(convert::verdicts(req), &state)?;
        let submitted = self.feedback.submit(&state, verdicts)?;
        Ok(SubmitVerdictsResponse { accepted: submitted.accepted as u32, duplicates: submitted.duplicates as u32 })
    }
}

#[tonic::async_trait]
impl feedback_server::Feedback for FeedbackService {
    async fn submit_verdicts(
        &self,
        request: Request<SubmitVerdictsRequest>,
    ) -> Result<Response<SubmitVerdictsResponse>, Status> {
        let started = Instant::now();
        let protocol = protocol(&request);
        let result = self.handle(request.into_inner()).map_err(|e| {
            tracing::debug!(error = %e, "verdicts refused");
            Status::from(e)
        });
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        metrics::request_finished("SubmitVerdicts", protocol, status::code_name(code), started.elapsed().as_secs_f64());
        result.map(Response::new)
    }
}
