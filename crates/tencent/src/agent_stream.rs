//! Exec, attach and port-forward through the sandbox agent: **our** protocol. The EKS agent's own
//! streaming protocol is not documented, so this one is defined here, and both sides use this
//! module: eklet's `tencent` provider as the client and cloudsim's agents as the server.
//!
//! - Transport: a WebSocket to the agent's port (the metrics port) at the sandbox's private IP.
//! - `GET /exec/{container}?command=..&command=..&input=1&output=1&error=1&tty=1` and
//!   `GET /attach/{container}?input=1&output=1&error=1&tty=1` speak exactly the kubelet's
//!   `v5.channel.k8s.io` subprotocol ([`SUBPROTOCOL`]): one binary message per frame, the first
//!   byte the channel ([`STDIN`], [`STDOUT`], [`STDERR`], [`ERROR`] with a `metav1.Status`,
//!   [`RESIZE`] with `{"Width","Height"}`, [`CLOSE`] with the closed channel as payload), so eklet
//!   relays bytes, not semantics. Closing the WebSocket ends the session; the agent kills an exec's
//!   process then.
//! - `GET /portForward?port=N`: a plain binary WebSocket, a byte pipe to `N` on the sandbox's own
//!   address; one WebSocket per forwarded connection, closed when either side is done. A
//!   zero-length binary message from the client is its half-close (no more bytes from it; the
//!   answer still flows). A port nothing listens on is refused before the upgrade (HTTP 502).
//!
//! Authentication ([`sign`], [`verify`]): the agent serves only a caller that proves it holds the
//! cloud credentials the sandbox was created with. The request carries
//! `Authorization: EKSAGENT-HMAC-SHA256 Credential=<SecretId>, Timestamp=<unix seconds>,
//! Signature=<hex>`, the signature an HMAC-SHA256 with the SecretKey over [`string_to_sign`]: the
//! scheme, the instance id, the method, the path and the raw query, and the timestamp. So a
//! signature is good for one request line to one sandbox, for [`MAX_SKEW`] either side of the
//! agent's clock; a replay of the same request line within that window is not detected (the
//! agent keeps no nonce store). The SecretKey never travels, and no session token is sent.
//! Unsigned or malformed requests get 401, a wrong key, another sandbox or a stale timestamp 403.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::credentials::Credentials;

/// The scheme in the `Authorization` header.
pub const SCHEME: &str = "EKSAGENT-HMAC-SHA256";
/// The WebSocket subprotocol of exec and attach: the kubelet's.
pub const SUBPROTOCOL: &str = "v5.channel.k8s.io";
/// How far a request's timestamp may be from the agent's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// A `metav1.Status`: Success, or Failure with reason `NonZeroExitCode`.
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: the payload is the channel whose sender is done (stdin's end).
pub const CLOSE: u8 = 255;

/// Why the agent refuses a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the request is not signed (no {SCHEME} Authorization header)")]
    Unsigned,
    #[error("the Authorization header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the SecretId {0} is not known here")]
    UnknownSecretId(String),
    #[error("the request's timestamp is {skew} s away from the agent's clock (at most {} s)", MAX_SKEW.as_secs())]
    Stale { skew: u64 },
    #[error("the signature does not match the request")]
    Mismatch,
}

impl AuthError {
    /// 401 for a request that proves nothing, 403 for one whose proof fails.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Unsigned | AuthError::Malformed(_) => 401,
            AuthError::UnknownSecretId(_) | AuthError::Stale { .. } | AuthError::Mismatch => 403,
        }
    }
}

/// What is signed, one field a line.
pub fn string_to_sign(instance_id: &str, method: &str, path: &str, query: &str, timestamp: i64) -> String {
    format!(
        "{SCHEME}\n{instance_id}\n{}\n{path}\n{query}\n{timestamp}",
        method.to_ascii_uppercase()
    )
}

fn mac(secret_key: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret_key.as_bytes()).unwrap_or_else(|_| unreachable!())
}

/// The `Authorization` header value for a request to the agent of `instance_id`.
pub fn sign(
    credentials: &Credentials,
    instance_id: &str,
    method: &str,
    path: &str,
    query: &str,
    timestamp: i64,
) -> String {
    let mut mac = mac(credentials.secret_key.expose());
    mac.update(string_to_sign(instance_id, method, path, query, timestamp).as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    format!(
        "{SCHEME} Credential={}, Timestamp={timestamp}, Signature={signature}",
        credentials.secret_id
    )
}

/// Checks a request to the agent of `instance_id`, `now` being the agent's Unix time; `secret_key`
/// looks a SecretId up. Compares in constant time.
pub fn verify<'a>(
    authorization: Option<&str>,
    secret_key: impl Fn(&str) -> Option<&'a str>,
    instance_id: &str,
    method: &str,
    path: &str,
    query: &str,
    now: i64,
) -> Result<(), AuthError> {
    let value = authorization.ok_or(AuthError::Unsigned)?;
    let rest = value
        .trim()
        .strip_prefix(SCHEME)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or(AuthError::Unsigned)?;
    let (mut credential, mut timestamp, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(AuthError::Malformed("expected key=value parts"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "Timestamp" => &mut timestamp,
            "Signature" => &mut signature,
            _ => return Err(AuthError::Malformed("unknown part")),
        };
        if slot.replace(value).is_some() {
            return Err(AuthError::Malformed("a part appears twice"));
        }
    }
    let credential = credential.ok_or(AuthError::Malformed("Credential is missing"))?;
    let timestamp: i64 = timestamp
        .ok_or(AuthError::Malformed("Timestamp is missing"))?
        .parse()
        .map_err(|_| AuthError::Malformed("Timestamp is not a number"))?;
    let signature = hex::decode(signature.ok_or(AuthError::Malformed("Signature is missing"))?)
        .map_err(|_| AuthError::Malformed("Signature is not hex"))?;
    let key = secret_key(credential).ok_or_else(|| AuthError::UnknownSecretId(credential.to_owned()))?;
    let skew = timestamp.abs_diff(now);
    if skew > MAX_SKEW.as_secs() {
        return Err(AuthError::Stale { skew });
    }
    let mut mac = mac(key);
    mac.update(string_to_sign(instance_id, method, path, query, timestamp).as_bytes());
    mac.verify_slice(&signature).map_err(|_| AuthError::Mismatch)
}

/// What an exec or attach asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRequest {
    /// Empty for attach.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamRequest {
    /// The query string, percent-encoded, in a fixed order.
    pub fn query(&self) -> String {
        let mut pairs: Vec<String> = self
            .command
            .iter()
            .map(|part| format!("command={}", encode(part)))
            .collect();
        for (name, on) in [
            ("input", self.stdin),
            ("output", self.stdout),
            ("error", self.stderr),
            ("tty", self.tty),
        ] {
            if on {
                pairs.push(format!("{name}=1"));
            }
        }
        pairs.join("&")
    }

    /// Reads a query as [`query`](Self::query) writes it (and as the kubelet reads one: `1` or
    /// `true` switch a stream on). Unknown parameters are ignored.
    pub fn parse(query: &str) -> Result<StreamRequest, String> {
        let mut request = StreamRequest::default();
        for (name, value) in parse_query(query)? {
            let on = value == "1" || value.eq_ignore_ascii_case("true");
            match name.as_str() {
                "command" => request.command.push(value),
                "input" => request.stdin = on,
                "output" => request.stdout = on,
                "error" => request.stderr = on,
                "tty" => request.tty = on,
                _ => {}
            }
        }
        Ok(request)
    }
}

/// The path of an exec into `container`, percent-encoded.
pub fn exec_path(container: &str) -> String {
    format!("/exec/{}", encode(container))
}

/// The path of an attach to `container`, percent-encoded.
pub fn attach_path(container: &str) -> String {
    format!("/attach/{}", encode(container))
}

pub const PORT_FORWARD_PATH: &str = "/portForward";

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes percent-encoding (and `+` as a space, as forms write it).
pub fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("a malformed percent escape in {text:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

/// A query's (name, value) pairs, decoded, in order.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// How an exec ended, as the error channel says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// A Failure without an exit code: its message.
    Failed(String),
}

/// The error channel's `metav1.Status` for an exit code, as the kubelet writes it.
pub fn status_json(code: i32) -> Vec<u8> {
    let status = if code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    serde_json::to_vec(&status).unwrap_or_default()
}

/// The error channel's `metav1.Status` for a failure that is not an exit code.
pub fn failure_json(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
    }))
    .unwrap_or_default()
}

/// Reads the error channel's `metav1.Status`.
pub fn parse_status(payload: &[u8]) -> Outcome {
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Outcome::Failed(format!(
            "the agent's status is not JSON: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ));
    };
    if status["status"] == "Success" {
        return Outcome::Exited(0);
    }
    let code = (status["reason"] == "NonZeroExitCode")
        .then(|| status["details"]["causes"].as_array())
        .flatten()
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str()?.parse().ok())
        });
    match code {
        Some(code) => Outcome::Exited(code),
        None => Outcome::Failed(
            status["message"]
                .as_str()
                .unwrap_or("the command failed")
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_900_000;

    fn credentials() -> Credentials {
        Credentials::new("AKIDagent", "agent-secret-key")
    }

    fn check(authorization: Option<&str>, instance: &str, query: &str, now: i64) -> Result<(), AuthError> {
        verify(
            authorization,
            |id| (id == "AKIDagent").then_some("agent-secret-key"),
            instance,
            "GET",
            "/exec/web",
            query,
            now,
        )
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_to_it_does_not() {
        let header = sign(&credentials(), "eksci-1", "get", "/exec/web", "command=ls", NOW);
        assert!(header.starts_with("EKSAGENT-HMAC-SHA256 Credential=AKIDagent, Timestamp="));
        assert!(!header.contains("agent-secret-key"), "the key never travels");
        assert_eq!(check(Some(&header), "eksci-1", "command=ls", NOW + 10), Ok(()));
        assert_eq!(
            check(Some(&header), "eksci-1", "command=rm", NOW),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            check(Some(&header), "eksci-2", "command=ls", NOW),
            Err(AuthError::Mismatch),
            "a signature is for one sandbox"
        );
        let wrong_key = sign(
            &Credentials::new("AKIDagent", "another-key"),
            "eksci-1",
            "GET",
            "/exec/web",
            "command=ls",
            NOW,
        );
        let refused = check(Some(&wrong_key), "eksci-1", "command=ls", NOW).unwrap_err();
        assert_eq!(refused, AuthError::Mismatch);
        assert_eq!(refused.http_status(), 403);
    }

    #[test]
    fn unsigned_unknown_and_stale_requests_are_refused() {
        assert_eq!(check(None, "eksci-1", "", NOW), Err(AuthError::Unsigned));
        assert_eq!(check(None, "eksci-1", "", NOW).unwrap_err().http_status(), 401);
        assert_eq!(
            check(Some("Bearer abc"), "eksci-1", "", NOW),
            Err(AuthError::Unsigned)
        );
        assert!(matches!(
            check(Some("EKSAGENT-HMAC-SHA256 Credential=x"), "eksci-1", "", NOW),
            Err(AuthError::Malformed(_))
        ));
        let stranger = sign(
            &Credentials::new("AKIDother", "agent-secret-key"),
            "eksci-1",
            "GET",
            "/exec/web",
            "",
            NOW,
        );
        assert_eq!(
            check(Some(&stranger), "eksci-1", "", NOW),
            Err(AuthError::UnknownSecretId("AKIDother".into()))
        );
        let header = sign(&credentials(), "eksci-1", "GET", "/exec/web", "", NOW);
        assert_eq!(check(Some(&header), "eksci-1", "", NOW + 300), Ok(()));
        assert_eq!(
            check(Some(&header), "eksci-1", "", NOW + 301),
            Err(AuthError::Stale { skew: 301 })
        );
        assert_eq!(
            check(Some(&header), "eksci-1", "", NOW - 301),
            Err(AuthError::Stale { skew: 301 })
        );
    }

    #[test]
    fn a_stream_request_round_trips_through_its_query() {
        let request = StreamRequest {
            command: vec!["sh".into(), "-c".into(), "echo \"a&b=c\" 100% ü+".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let query = request.query();
        assert!(!query.contains(' ') && !query.contains('"'), "{query}");
        assert_eq!(StreamRequest::parse(&query), Ok(request));
        assert_eq!(exec_path("my container"), "/exec/my%20container");
        assert!(StreamRequest::parse("command=%zz").is_err());
    }

    #[test]
    fn exit_codes_travel_as_the_kubelets_status() {
        assert_eq!(parse_status(&status_json(0)), Outcome::Exited(0));
        assert_eq!(parse_status(&status_json(3)), Outcome::Exited(3));
        assert_eq!(parse_status(&status_json(127)), Outcome::Exited(127));
        assert_eq!(
            parse_status(&failure_json("container gone")),
            Outcome::Failed("container gone".into())
        );
        assert!(matches!(parse_status(b"\xff not json"), Outcome::Failed(_)));
    }
}
