//! `modserve.v1.Feedback`: validates verdicts against the serving state and hands them to
//! `feedback::Feedback`.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::pb::feedback_server;
use super::pb::{SubmitVerdictsRequest, SubmitVerdictsResponse};
use super::service::protocol;
use super::{convert, status};
use crate::error::Error;
use crate::feedback::Feedback;
use crate::metrics;
use crate::serving::classify::Classifier;

pub struct FeedbackService {
    classifier: Classifier,
    feedback: Feedback,
}

impl FeedbackService {
    pub fn new(classifier: Classifier, feedback: Feedback) -> FeedbackService {
        FeedbackService { classifier, feedback }
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
