//! Bearer-token checks for the gRPC services (`authorization: Bearer <token>`).

use std::sync::Arc;

use tonic::{Request, Status};

/// A tonic interceptor that requires the token when one is configured.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
    service: &'static str,
}

impl BearerAuth {
    pub fn new(token: Option<String>, service: &'static str) -> BearerAuth {
        BearerAuth { token: token.map(Into::into), service }
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
            Some(_) => Err(Status::unauthenticated(format!("{}: the bearer token is not valid", self.service))),
            None => Err(Status::unauthenticated(format!(
                "{}: a bearer token is required (metadata `authorization: Bearer <token>`)",
                self.service
            ))),
        }
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
}
