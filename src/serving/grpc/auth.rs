//! Bearer-token checks for the gRPC services (`authorization: Bearer <token>`).

use std::sync::Arc;

use tonic::{Request, Status};

/// A tonic interceptor that requires the token when one is configured.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
    service: &'static str,
    /// Another service's token: a caller presenting it is known, but not allowed here.
    other: Option<(Arc<str>, &'static str)>,
}

impl BearerAuth {
    pub fn new(token: Option<String>, service: &'static str) -> BearerAuth {
        BearerAuth { token: token.map(Into::into), service, other: None }
    }

    /// Answers PERMISSION_DENIED, not UNAUTHENTICATED, to callers presenting `other_service`'s
    /// token: they proved who they are, they are just not allowed here.
    pub fn denying(mut self, token: Option<String>, other_service: &'static str) -> BearerAuth {
        self.other = token.map(|t| (t.into(), other_service));
        self
    }

    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else { return Ok(req) };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        match presented {
            Some(token) if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) => Ok(req),
            Some(token) if self.other_service(token).is_some() => Err(Status::permission_denied(format!(
                "{}: this is a {} token, which may not call {}",
                self.service,
                self.other_service(token).unwrap_or_default(),
                self.service
            ))),
            Some(_) => Err(Status::unauthenticated(format!("{}: the bearer token is not valid", self.service))),
            None => Err(Status::unauthenticated(format!(
                "{}: a bearer token is required (metadata `authorization: Bearer <token>`)",
                self.service
            ))),
        }
    }
}

impl BearerAuth {
    /// The service whose token `presented` is, if it is the other service's.
    fn other_service(&self, presented: &str) -> Option<&'static str> {
        let (token, service) = self.other.as_ref()?;
        constant_time_eq(presented.trim().as_bytes(), token.as_bytes()).then_some(*service)
    }
}

/// Compares without an early exit, so the time taken does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn requires_the_token_only_when_configured() {
        let open = BearerAuth::new(None, "Admin");
        assert!(open.check(Request::new(())).is_ok());
        let guarded = BearerAuth::new(Some("s3cret".into()), "Admin");
        assert_eq!(guarded.check(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(guarded.check(req).is_ok());
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(guarded.check(req).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn another_services_token_is_denied_not_unauthenticated() {
        let admin = BearerAuth::new(Some("admin-secret".into()), "modserve.v1.Admin")
            .denying(Some("moderation-secret".into()), "modserve.v1.Moderation");
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer moderation-secret".parse().unwrap());
        let status = admin.check(req).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(!status.message().contains("secret"), "the token is not echoed: {}", status.message());
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer admin-secret".parse().unwrap());
        assert!(admin.check(req).is_ok());
    }
}
