//! The client's error and its one classification. Every failure — an API error code in the response
//! envelope, an HTTP status, a timeout, a refused connection — becomes an [`Error`] whose
//! [`ErrorKind`] decides, in this one place, whether it is retried, whether another subnet may help,
//! and what the caller shows on the Pod (the cloud's code and message are kept verbatim).

use std::time::Duration;

/// What a caller does with a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Throttling, internal errors, 5xx, timeouts, connection errors: try again later.
    Transient,
    /// The zone behind the subnet has no capacity for this instance now; another subnet may.
    SoldOut { subnet_id: Option<String> },
    /// The instance (or container) does not exist.
    NotFound,
    /// Retrying the same request cannot succeed: bad credentials or parameters, quota, unsupported.
    Permanent,
}

/// Client-side codes, named as the official SDKs name them, so every error has a code to show.
pub mod client_codes {
    pub const NETWORK_ERROR: &str = "ClientError.NetworkError";
    pub const HTTP_STATUS_CODE_ERROR: &str = "ClientError.HttpStatusCodeError";
    pub const PARSE_JSON_ERROR: &str = "ClientError.ParseJsonError";
    pub const TIMEOUT: &str = "ClientError.Timeout";
    pub const INVALID_REQUEST: &str = "ClientError.InvalidRequest";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with `Response.Error`.
    #[error("{action} failed: {code}: {message} (RequestId {request_id})")]
    Api {
        action: &'static str,
        code: String,
        message: String,
        request_id: String,
        /// The subnet the request targeted, when it had one: sold-out errors are per subnet.
        subnet_id: Option<String>,
    },
    #[error("{action} failed: HTTP status {status}: {body}")]
    HttpStatus {
        action: &'static str,
        status: u16,
        body: String,
    },
    #[error("{action} timed out after {timeout:?}")]
    Timeout { action: &'static str, timeout: Duration },
    /// The request never reached the server, so it certainly was not executed.
    #[error("{action}: cannot connect to {endpoint}: {source}")]
    Connect {
        action: &'static str,
        endpoint: String,
        source: reqwest::Error,
    },
    /// Anything else on the wire; whether the server executed the request is unknown.
    #[error("{action}: transport error: {source}")]
    Transport {
        action: &'static str,
        source: reqwest::Error,
    },
    #[error("{action}: the response is not the expected JSON: {source}")]
    Decode {
        action: &'static str,
        source: serde_json::Error,
    },
    #[error("{action}: invalid request: {reason}")]
    InvalidRequest { action: &'static str, reason: String },
    #[error("{action}: cannot sign the request: {source}")]
    Sign {
        action: &'static str,
        source: crate::sign::Error,
    },
    #[error("invalid client configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Classifies an API error code (the response's `Error.Code`).
pub fn classify_code(code: &str, subnet_id: Option<&str>) -> ErrorKind {
    let family = code.split('.').next().unwrap_or(code);
    match (family, code) {
        ("RequestLimitExceeded" | "ServiceUnavailable", _) => ErrorKind::Transient,
        // Lack of permission or a bad parameter wears an InternalError prefix in the TKE codes.
        (
            _,
            "InternalError.CamNoAuth" | "InternalError.AccountUserNotAuthenticated" | "InternalError.Param",
        ) => ErrorKind::Permanent,
        (_, "InternalError.ContainerNotFound") => ErrorKind::NotFound,
        ("InternalError", _) => ErrorKind::Transient,
        ("ResourcesSoldOut" | "ResourceInsufficient", _) => ErrorKind::SoldOut {
            subnet_id: subnet_id.map(str::to_string),
        },
        ("ResourceNotFound", _) => ErrorKind::NotFound,
        _ => ErrorKind::Permanent,
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Api { code, subnet_id, .. } => classify_code(code, subnet_id.as_deref()),
            Self::HttpStatus { status, .. } if *status >= 500 || *status == 429 => ErrorKind::Transient,
            Self::HttpStatus { .. } => ErrorKind::Permanent,
            Self::Timeout { .. } | Self::Connect { .. } | Self::Transport { .. } => ErrorKind::Transient,
            // A proxy or a truncated answer, not an answer of the API.
            Self::Decode { .. } => ErrorKind::Transient,
            Self::InvalidRequest { .. } | Self::Sign { .. } | Self::Config(_) => ErrorKind::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// True when the server certainly did not execute the request, so even a non-idempotent action
    /// (Create) may be sent again without risking a second instance.
    pub fn request_was_not_executed(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Api { code, .. } => {
                code.starts_with("RequestLimitExceeded") || code.starts_with("AuthFailure")
            }
            _ => false,
        }
    }

    pub fn is_throttling(&self) -> bool {
        matches!(self, Self::Api { code, .. } if code.starts_with("RequestLimitExceeded"))
    }

    /// The cloud's error code, or the SDK-style client code; what a Pod event shows as the reason.
    pub fn code(&self) -> &str {
        match self {
            Self::Api { code, .. } => code,
            Self::HttpStatus { .. } => client_codes::HTTP_STATUS_CODE_ERROR,
            Self::Timeout { .. } => client_codes::TIMEOUT,
            Self::Connect { .. } | Self::Transport { .. } => client_codes::NETWORK_ERROR,
            Self::Decode { .. } => client_codes::PARSE_JSON_ERROR,
            Self::InvalidRequest { .. } | Self::Sign { .. } | Self::Config(_) => {
                client_codes::INVALID_REQUEST
            }
        }
    }

    /// The cloud's message for API errors, else this error's own description.
    pub fn message(&self) -> String {
        match self {
            Self::Api { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str, subnet: Option<&str>) -> Error {
        Error::Api {
            action: "CreateEKSContainerInstances",
            code: code.into(),
            message: "m".into(),
            request_id: "r".into(),
            subnet_id: subnet.map(str::to_string),
        }
    }

    #[test]
    fn throttling_internal_errors_and_unavailability_are_transient() {
        for code in [
            "RequestLimitExceeded",
            "RequestLimitExceeded.UinLimitExceeded",
            "RequestLimitExceeded.IPLimitExceeded",
            "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
            "InternalError",
            "InternalError.UnexceptedInternal",
            "InternalError.CmdTimeout",
            "InternalError.Db",
            "ServiceUnavailable",
        ] {
            assert_eq!(classify_code(code, None), ErrorKind::Transient, "{code}");
        }
    }

    #[test]
    fn auth_parameter_quota_and_unsupported_errors_are_permanent() {
        for code in [
            "AuthFailure.SignatureFailure",
            "AuthFailure.SecretIdNotFound",
            "AuthFailure.SignatureExpire",
            "AuthFailure.UnauthorizedOperation",
            "InvalidParameter",
            "InvalidParameter.Param",
            "InvalidParameterValue",
            "MissingParameter",
            "UnknownParameter",
            "LimitExceeded",
            "UnsupportedOperation",
            "InvalidAction",
            "InternalError.CamNoAuth",
            "InternalError.Param",
            "ResourceUnavailable.EksContainerStatus",
            "FailedOperation",
        ] {
            assert_eq!(classify_code(code, None), ErrorKind::Permanent, "{code}");
        }
    }

    #[test]
    fn sold_out_and_insufficient_resources_name_the_subnet() {
        for code in [
            "ResourcesSoldOut",
            "ResourceInsufficient",
            "ResourceInsufficient.SpecifiedInstanceType",
        ] {
            assert_eq!(
                api(code, Some("subnet-a")).kind(),
                ErrorKind::SoldOut {
                    subnet_id: Some("subnet-a".into())
                },
                "{code}"
            );
        }
    }

    #[test]
    fn missing_instances_and_containers_are_not_found() {
        assert_eq!(classify_code("ResourceNotFound", None), ErrorKind::NotFound);
        assert_eq!(
            classify_code("InternalError.ContainerNotFound", None),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn http_5xx_and_429_are_transient_other_statuses_permanent() {
        let status = |status| Error::HttpStatus {
            action: "X",
            status,
            body: String::new(),
        };
        assert!(status(502).is_transient());
        assert!(status(429).is_transient());
        assert_eq!(status(403).kind(), ErrorKind::Permanent);
        assert_eq!(status(502).code(), "ClientError.HttpStatusCodeError");
    }

    #[test]
    fn only_throttling_and_refused_auth_prove_a_request_was_not_executed() {
        assert!(api("RequestLimitExceeded", None).request_was_not_executed());
        assert!(api("AuthFailure.SignatureFailure", None).request_was_not_executed());
        assert!(!api("InternalError", None).request_was_not_executed());
        let timeout = Error::Timeout {
            action: "X",
            timeout: Duration::from_secs(1),
        };
        assert!(timeout.is_transient());
        assert!(!timeout.request_was_not_executed());
    }

    #[test]
    fn the_cloud_code_message_and_request_id_are_kept_for_the_pod() {
        let err = api("ResourcesSoldOut", Some("subnet-a"));
        assert_eq!(err.code(), "ResourcesSoldOut");
        assert_eq!(err.message(), "m");
        assert_eq!(err.request_id(), Some("r"));
        assert_eq!(
            err.to_string(),
            "CreateEKSContainerInstances failed: ResourcesSoldOut: m (RequestId r)"
        );
    }
}
