//! TC3-HMAC-SHA256, the request signature of Tencent Cloud API 3.0: both sides of it. The client signs
//! with [`sign_request`]; a server (cloudsim) parses the `Authorization` header with
//! [`Authorization::parse`] and checks it with [`verify`]. Both go through [`signature_steps`], so a
//! request the client signs is exactly what the verifier recomputes, and every intermediate value of the
//! official worked examples can be checked.

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::credentials::Credentials;

/// The only algorithm API 3.0 accepts.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The fixed last element of the credential scope.
const SCOPE_TERMINATOR: &str = "tc3_request";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("timestamp {0} is outside the representable range")]
    Timestamp(i64),
    #[error("header {name} cannot carry the value {value:?}")]
    HeaderValue { name: &'static str, value: String },
    #[error("the Authorization header is malformed: {0}")]
    MalformedAuthorization(String),
    #[error("the signed header {0} is missing from the request")]
    MissingSignedHeader(String),
    #[error("the credential scope date {scope} does not match the date {expected} of the request timestamp")]
    ScopeDate { scope: String, expected: String },
    #[error("the signature does not match the request")]
    Mismatch,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

type HmacSha256 = Hmac<Sha256>;

/// What the signature covers. Header names and values are trimmed and lower-cased before signing, as
/// the algorithm requires, so callers pass them as they send them.
#[derive(Debug, Clone)]
pub struct SigningInput<'a> {
    pub method: &'a str,
    /// The query string after `?`, already URL-encoded; empty for POST.
    pub canonical_query: &'a str,
    /// The headers to sign, as (name, value).
    pub headers: Vec<(&'a str, &'a str)>,
    pub payload: &'a [u8],
    /// The product, e.g. `tke`: the first label of the official host name.
    pub service: &'a str,
    /// Unix seconds, the value of `X-TC-Timestamp`.
    pub timestamp: i64,
}

/// Every intermediate value of the algorithm, in the order the official documentation prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSteps {
    pub hashed_payload: String,
    pub canonical_request: String,
    pub signed_headers: String,
    pub hashed_canonical_request: String,
    /// UTC date of the timestamp, `YYYY-MM-DD`.
    pub date: String,
    pub credential_scope: String,
    pub string_to_sign: String,
    pub secret_date: [u8; 32],
    pub secret_service: [u8; 32],
    pub secret_signing: [u8; 32],
    /// Lower-case hex.
    pub signature: String,
}

impl SignatureSteps {
    /// The `Authorization` header value for these steps.
    pub fn authorization(&self, secret_id: &str) -> String {
        format!(
            "{ALGORITHM} Credential={secret_id}/{}, SignedHeaders={}, Signature={}",
            self.credential_scope, self.signed_headers, self.signature
        )
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this construction cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The UTC calendar date of a Unix timestamp; the scope uses UTC, never local time.
pub fn utc_date(timestamp: i64) -> Result<String> {
    let ts = jiff::Timestamp::from_second(timestamp).map_err(|_| Error::Timestamp(timestamp))?;
    Ok(jiff::tz::Offset::UTC.to_datetime(ts).date().to_string())
}

/// Runs the algorithm and returns every step.
pub fn signature_steps(secret_key: &str, input: &SigningInput<'_>) -> Result<SignatureSteps> {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.trim().to_ascii_lowercase(),
                value.trim().to_ascii_lowercase(),
            )
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let hashed_payload = sha256_hex(input.payload);
    let canonical_request = format!(
        "{}\n/\n{}\n{canonical_headers}\n{signed_headers}\n{hashed_payload}",
        input.method.to_ascii_uppercase(),
        input.canonical_query,
    );
    let hashed_canonical_request = sha256_hex(canonical_request.as_bytes());
    let date = utc_date(input.timestamp)?;
    let credential_scope = format!("{date}/{}/{SCOPE_TERMINATOR}", input.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{credential_scope}\n{hashed_canonical_request}",
        input.timestamp
    );
    let secret_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let secret_service = hmac_sha256(&secret_date, input.service.as_bytes());
    let secret_signing = hmac_sha256(&secret_service, SCOPE_TERMINATOR.as_bytes());
    let signature = hex::encode(hmac_sha256(&secret_signing, string_to_sign.as_bytes()));
    Ok(SignatureSteps {
        hashed_payload,
        canonical_request,
        signed_headers,
        hashed_canonical_request,
        date,
        credential_scope,
        string_to_sign,
        secret_date,
        secret_service,
        secret_signing,
        signature,
    })
}

/// One API 3.0 call to be signed.
#[derive(Debug, Clone)]
pub struct ApiRequest<'a> {
    pub service: &'a str,
    /// The `Host` header exactly as sent, with `:port` when the port is not the scheme's default.
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    /// `None` for the few actions that take no region.
    pub region: Option<&'a str>,
    pub timestamp: i64,
    pub content_type: &'a str,
    pub payload: &'a [u8],
}

/// Signs a POST the way the official SDKs do (signed headers `content-type;host`) and returns every
/// header the request needs: `Authorization`, `Content-Type`, `Host`, `X-TC-Action`, `X-TC-Version`,
/// `X-TC-Timestamp`, and `X-TC-Region` / `X-TC-Token` when present.
pub fn sign_request(credentials: &Credentials, request: &ApiRequest<'_>) -> Result<HeaderMap> {
    let steps = signature_steps(
        credentials.secret_key.expose(),
        &SigningInput {
            method: "POST",
            canonical_query: "",
            headers: vec![("content-type", request.content_type), ("host", request.host)],
            payload: request.payload,
            service: request.service,
            timestamp: request.timestamp,
        },
    )?;
    let timestamp = request.timestamp.to_string();
    let authorization = steps.authorization(&credentials.secret_id);
    let mut pairs: Vec<(&'static str, &str)> = vec![
        ("authorization", &authorization),
        ("content-type", request.content_type),
        ("host", request.host),
        ("x-tc-action", request.action),
        ("x-tc-version", request.version),
        ("x-tc-timestamp", &timestamp),
    ];
    if let Some(region) = request.region {
        pairs.push(("x-tc-region", region));
    }
    if let Some(token) = &credentials.token {
        pairs.push(("x-tc-token", token.expose()));
    }
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let mut header = HeaderValue::from_str(value).map_err(|_| Error::HeaderValue {
            name,
            // Never echo credentials back in an error.
            value: if matches!(name, "authorization" | "x-tc-token") {
                "<redacted>".into()
            } else {
                value.into()
            },
        })?;
        if matches!(name, "authorization" | "x-tc-token") {
            header.set_sensitive(true);
        }
        headers.insert(HeaderName::from_static(name), header);
    }
    Ok(headers)
}

/// A parsed `Authorization: TC3-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    /// Lower-case header names, as listed.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    pub fn parse(value: &str) -> Result<Self> {
        let malformed = |why: &str| Error::MalformedAuthorization(why.to_string());
        let rest = value
            .trim()
            .strip_prefix(ALGORITHM)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| malformed("it must start with \"TC3-HMAC-SHA256 \""))?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| malformed("expected key=value parts"))?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => return Err(malformed(&format!("unknown part {key:?}"))),
            };
            if slot.replace(value).is_some() {
                return Err(malformed(&format!("{key} appears twice")));
            }
        }
        let credential = credential.ok_or_else(|| malformed("Credential is missing"))?;
        let signed_headers = signed_headers.ok_or_else(|| malformed("SignedHeaders is missing"))?;
        let signature = signature.ok_or_else(|| malformed("Signature is missing"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [secret_id, date, service, terminator] = scope.as_slice() else {
            return Err(malformed("Credential must be SecretId/Date/service/tc3_request"));
        };
        if *terminator != SCOPE_TERMINATOR || secret_id.is_empty() || date.is_empty() || service.is_empty() {
            return Err(malformed("Credential must be SecretId/Date/service/tc3_request"));
        }
        let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_string).collect();
        for required in ["content-type", "host"] {
            if !signed_headers.iter().any(|name| name == required) {
                return Err(malformed(&format!("SignedHeaders must include {required}")));
            }
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("Signature must be 64 hex digits"));
        }
        Ok(Self {
            secret_id: secret_id.to_string(),
            date: date.to_string(),
            service: service.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// A received request, as the verifier sees it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest<'a> {
    pub method: &'a str,
    pub canonical_query: &'a str,
    pub headers: &'a HeaderMap,
    pub payload: &'a [u8],
    pub timestamp: i64,
}

/// Recomputes the signature of `request` with `secret_key` over the headers `authorization` names and
/// compares in constant time. Clock skew and unknown secret ids are the caller's business.
pub fn verify(authorization: &Authorization, secret_key: &str, request: &ReceivedRequest<'_>) -> Result<()> {
    let expected_date = utc_date(request.timestamp)?;
    if authorization.date != expected_date {
        return Err(Error::ScopeDate {
            scope: authorization.date.clone(),
            expected: expected_date,
        });
    }
    let mut headers = Vec::with_capacity(authorization.signed_headers.len());
    for name in &authorization.signed_headers {
        let value = request
            .headers
            .get(name.as_str())
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| Error::MissingSignedHeader(name.clone()))?;
        headers.push((name.as_str(), value));
    }
    let steps = signature_steps(
        secret_key,
        &SigningInput {
            method: request.method,
            canonical_query: request.canonical_query,
            headers,
            payload: request.payload,
            service: &authorization.service,
            timestamp: request.timestamp,
        },
    )?;
    let claimed = hex::decode(&authorization.signature).map_err(|_| Error::Mismatch)?;
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(&steps.secret_signing).map_err(|_| Error::Mismatch)?;
    mac.update(steps.string_to_sign.as_bytes());
    mac.verify_slice(&claimed).map_err(|_| Error::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;

    /// The official POST body, byte for byte (Python `json.dumps` spacing and `\u` escapes).
    const OFFICIAL_PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const EXAMPLE_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
    const EXAMPLE_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";

    fn official_post(headers: Vec<(&'static str, &'static str)>) -> SigningInput<'static> {
        SigningInput {
            method: "POST",
            canonical_query: "",
            headers,
            payload: OFFICIAL_PAYLOAD.as_bytes(),
            service: "cvm",
            timestamp: 1551113065,
        }
    }

    fn content_type_and_host() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Content-Type", "application/json; charset=utf-8"),
            ("Host", "cvm.tencentcloudapi.com"),
        ]
    }

    const POST_CANONICAL_REQUEST: &str = "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\ncontent-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064";
    const POST_STRING_TO_SIGN: &str = "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031";

    #[test]
    fn vector_a_post_with_the_example_key_matches_every_documented_step() {
        let steps = signature_steps(EXAMPLE_KEY, &official_post(content_type_and_host())).unwrap();
        assert_eq!(
            steps.hashed_payload,
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(steps.canonical_request, POST_CANONICAL_REQUEST);
        assert_eq!(
            steps.hashed_canonical_request,
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(steps.date, "2019-02-25");
        assert_eq!(steps.credential_scope, "2019-02-25/cvm/tc3_request");
        assert_eq!(steps.string_to_sign, POST_STRING_TO_SIGN);
        assert_eq!(
            hex::encode(steps.secret_date),
            "d1308c81fe71cfd4e06437bbc067b2b8a3d2d8c0e375d547f15c41d5214b395a"
        );
        assert_eq!(
            hex::encode(steps.secret_service),
            "3c7cb7c7795393edc14fd2e0e6434a518564b4504b88e94f5d11bf59ba3e7050"
        );
        assert_eq!(
            hex::encode(steps.secret_signing),
            "ac658d5dde49e9bfdd14e04e062f66b05d9f637d44b8a8d845327d4a77f666b1"
        );
        assert_eq!(
            steps.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            steps.authorization(EXAMPLE_ID),
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn vector_b_post_with_the_masked_demo_key_matches_every_documented_step() {
        let steps = signature_steps(
            "Gu5t9xGARNpq86cd98joQYCN3*******",
            &official_post(content_type_and_host()),
        )
        .unwrap();
        assert_eq!(steps.canonical_request, POST_CANONICAL_REQUEST);
        assert_eq!(
            steps.hashed_canonical_request,
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(steps.string_to_sign, POST_STRING_TO_SIGN);
        assert_eq!(
            hex::encode(steps.secret_date),
            "f1cb4d518a0eda9d5cbbfdb7850983f1e603eeae484edea76e4dd8d8deb5556e"
        );
        assert_eq!(
            hex::encode(steps.secret_service),
            "e7c609ce81bea53546bed2cc904778bef9ca14082e48e67883443ed64e227cd7"
        );
        assert_eq!(
            hex::encode(steps.secret_signing),
            "8aa8ab5755582f576e94bcfe383b8e29325b0ca90c3590d569221c6a63a091ed"
        );
        assert_eq!(
            steps.signature,
            "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
        assert_eq!(
            steps.authorization("AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******"),
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
    }

    #[test]
    fn vector_c_get_with_a_query_string_matches_every_documented_step() {
        let input = SigningInput {
            method: "GET",
            canonical_query: "Limit=10&Offset=0",
            headers: vec![
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "cvm.tencentcloudapi.com"),
            ],
            payload: b"",
            service: "cvm",
            timestamp: 1539084154,
        };
        let steps = signature_steps(EXAMPLE_KEY, &input).unwrap();
        assert_eq!(
            steps.hashed_payload,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            steps.canonical_request,
            "GET\n/\nLimit=10&Offset=0\ncontent-type:application/x-www-form-urlencoded\nhost:cvm.tencentcloudapi.com\n\ncontent-type;host\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            steps.hashed_canonical_request,
            "91c9c192c14460df6c1ffc69e34e6c5e90708de2a6d282cccf957dbf1aa7f3a7"
        );
        assert_eq!(
            steps.string_to_sign,
            "TC3-HMAC-SHA256\n1539084154\n2018-10-09/cvm/tc3_request\n91c9c192c14460df6c1ffc69e34e6c5e90708de2a6d282cccf957dbf1aa7f3a7"
        );
        assert_eq!(
            hex::encode(steps.secret_date),
            "e476728ff6d7bacfa7847b3d3d6d3a9e6f536992367701d4533354ca7b5d0fa5"
        );
        assert_eq!(
            hex::encode(steps.secret_service),
            "6e3d6d4854b8adc273db620fefefebecb11004f335f9991439eba3c231030714"
        );
        assert_eq!(
            hex::encode(steps.secret_signing),
            "39c4cf287fdff993dc407e649450ae4a0f1e1fd75aedb08d8160e47372e9b62d"
        );
        assert_eq!(
            steps.signature,
            "5da7a33f6993f0614b047e5df4582db9e9bf4672ba50567dba16c6ccf174c474"
        );
        assert_eq!(
            steps.authorization(EXAMPLE_ID),
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2018-10-09/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=5da7a33f6993f0614b047e5df4582db9e9bf4672ba50567dba16c6ccf174c474"
        );
    }

    #[test]
    fn vector_d_signing_x_tc_action_lower_cases_its_value_as_the_current_demo_does() {
        let mut headers = content_type_and_host();
        headers.push(("X-TC-Action", "DescribeInstances"));
        let steps = signature_steps("Gu5t9xGARNpq86cd98joQYCN3*******", &official_post(headers)).unwrap();
        assert_eq!(steps.signed_headers, "content-type;host;x-tc-action");
        assert_eq!(
            steps.hashed_canonical_request,
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
        );
        assert_eq!(
            steps.signature,
            "be4f67d323c78ab9acb7395e43c0dbcf822a9cfac32fea2449a7bc7726b770a3"
        );
    }

    #[test]
    fn the_scope_date_is_the_utc_date_not_the_local_one() {
        // 1551113065 is 2019-02-26 00:44:25 in UTC+8, the documentation's own warning.
        assert_eq!(utc_date(1551113065).unwrap(), "2019-02-25");
        assert!(matches!(utc_date(i64::MAX), Err(Error::Timestamp(_))));
    }

    fn example_credentials(token: Option<&str>) -> Credentials {
        Credentials {
            secret_id: EXAMPLE_ID.into(),
            secret_key: Secret::new(EXAMPLE_KEY),
            token: token.map(Secret::new),
        }
    }

    fn example_request(payload: &[u8]) -> ApiRequest<'_> {
        ApiRequest {
            service: "cvm",
            host: "cvm.tencentcloudapi.com",
            action: "DescribeInstances",
            version: "2017-03-12",
            region: Some("ap-guangzhou"),
            timestamp: 1551113065,
            content_type: "application/json; charset=utf-8",
            payload,
        }
    }

    #[test]
    fn signed_request_headers_reproduce_the_documented_full_request() {
        let headers = sign_request(
            &example_credentials(None),
            &example_request(OFFICIAL_PAYLOAD.as_bytes()),
        )
        .unwrap();
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            get("authorization")
                .ends_with("Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168")
        );
        assert_eq!(get("content-type"), "application/json; charset=utf-8");
        assert_eq!(get("host"), "cvm.tencentcloudapi.com");
        assert_eq!(get("x-tc-action"), "DescribeInstances");
        assert_eq!(get("x-tc-version"), "2017-03-12");
        assert_eq!(get("x-tc-timestamp"), "1551113065");
        assert_eq!(get("x-tc-region"), "ap-guangzhou");
        assert!(headers.get("x-tc-token").is_none());
    }

    #[test]
    fn a_session_token_travels_in_x_tc_token_and_is_marked_sensitive() {
        let headers = sign_request(&example_credentials(Some("tok-123")), &example_request(b"{}")).unwrap();
        let token = headers.get("x-tc-token").unwrap();
        assert_eq!(token.to_str().unwrap(), "tok-123");
        assert!(token.is_sensitive());
        assert!(headers.get("authorization").unwrap().is_sensitive());
    }

    fn received<'a>(headers: &'a HeaderMap, payload: &'a [u8]) -> ReceivedRequest<'a> {
        ReceivedRequest {
            method: "POST",
            canonical_query: "",
            headers,
            payload,
            timestamp: 1551113065,
        }
    }

    #[test]
    fn the_verifier_accepts_what_the_signer_produced() {
        let payload = OFFICIAL_PAYLOAD.as_bytes();
        let headers = sign_request(&example_credentials(None), &example_request(payload)).unwrap();
        let auth = Authorization::parse(headers["authorization"].to_str().unwrap()).unwrap();
        assert_eq!(auth.secret_id, EXAMPLE_ID);
        assert_eq!(auth.service, "cvm");
        assert_eq!(auth.signed_headers, ["content-type", "host"]);
        verify(&auth, EXAMPLE_KEY, &received(&headers, payload)).unwrap();
    }

    #[test]
    fn the_verifier_rejects_a_wrong_key_a_changed_body_and_a_changed_signed_header() {
        let payload = OFFICIAL_PAYLOAD.as_bytes();
        let headers = sign_request(&example_credentials(None), &example_request(payload)).unwrap();
        let auth = Authorization::parse(headers["authorization"].to_str().unwrap()).unwrap();
        assert!(matches!(
            verify(&auth, "another-key", &received(&headers, payload)),
            Err(Error::Mismatch)
        ));
        assert!(matches!(
            verify(&auth, EXAMPLE_KEY, &received(&headers, b"{\"Limit\": 2}")),
            Err(Error::Mismatch)
        ));
        let mut moved = headers.clone();
        moved.insert("host", HeaderValue::from_static("evil.example.com"));
        assert!(matches!(
            verify(&auth, EXAMPLE_KEY, &received(&moved, payload)),
            Err(Error::Mismatch)
        ));
        let mut later = received(&headers, payload);
        later.timestamp += 86_400;
        assert!(matches!(
            verify(&auth, EXAMPLE_KEY, &later),
            Err(Error::ScopeDate { .. })
        ));
        let mut missing = headers.clone();
        missing.remove("content-type");
        assert!(matches!(
            verify(&auth, EXAMPLE_KEY, &received(&missing, payload)),
            Err(Error::MissingSignedHeader(name)) if name == "content-type"
        ));
    }

    #[test]
    fn malformed_authorization_headers_are_refused_with_the_reason() {
        let sig = "a".repeat(64);
        let cases = [
            ("Basic dXNlcjpwYXNz".to_string(), "TC3-HMAC-SHA256"),
            (format!("TC3-HMAC-SHA256 Credential=AK/2019-02-25/cvm, SignedHeaders=content-type;host, Signature={sig}"), "Credential"),
            (format!("TC3-HMAC-SHA256 Credential=AK/2019-02-25/cvm/tc3_request, SignedHeaders=host, Signature={sig}"), "content-type"),
            ("TC3-HMAC-SHA256 Credential=AK/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=xyz".to_string(), "64 hex"),
            ("TC3-HMAC-SHA256 Credential=AK/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host".to_string(), "Signature is missing"),
            (format!("TC3-HMAC-SHA256 Credential=AK/d/cvm/tc3_request, Credential=AK/d/cvm/tc3_request, SignedHeaders=content-type;host, Signature={sig}"), "twice"),
        ];
        for (header, reason) in cases {
            match Authorization::parse(&header) {
                Err(Error::MalformedAuthorization(why)) => assert!(why.contains(reason), "{header}: {why}"),
                other => panic!("{header}: expected a malformed error, got {other:?}"),
            }
        }
    }
}
