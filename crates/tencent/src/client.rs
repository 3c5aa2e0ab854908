//! The EKSCI client: one method per action over signed HTTPS POSTs, with the per-action rate limit
//! and the retry policy applied to every attempt, and the API's batch limits (100 ids per describe,
//! 20 per delete) hidden behind methods that take any number of ids.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::model::{
    Action, CreateEksContainerInstancesRequest, DELETE_MAX_IDS, DESCRIBE_MAX_LIMIT,
    DeleteEksContainerInstancesRequest, DescribeEksContainerInstanceEventRequest,
    DescribeEksContainerInstanceLogRequest, DescribeEksContainerInstanceLogResponse,
    DescribeEksContainerInstancesRequest, DescribeEksContainerInstancesResponse, EksCi, Envelope, ErrorBody,
    Event, Filter, SERVICE, VERSION,
};
use crate::rate_limit::{RateLimiter, RateLimits};
use crate::retry::{RetryPolicy, with_retries};
use crate::sign::{ApiRequest, sign_request};

pub const DEFAULT_API_DOMAIN: &str = "tencentcloudapi.com";
pub const DEFAULT_ENDPOINT: &str = "https://tke.tencentcloudapi.com";
/// The official SDKs send exactly this, without a charset; the signature covers it.
const CONTENT_TYPE: &str = "application/json";
/// How much of an unexpected body an error quotes.
const BODY_EXCERPT: usize = 256;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://tke.<apiDomain>`, or cloudsim's `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// e.g. `ap-guangzhou` (the chart's `regionLong`).
    pub region: String,
    pub credentials: Credentials,
    pub rate_limits: RateLimits,
    pub retry: RetryPolicy,
    /// Per attempt.
    pub timeout: Duration,
    /// `X-TC-Language` for error messages: `en-US` or `zh-CN`.
    pub language: Option<String>,
}

impl ClientConfig {
    pub fn new(region: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            region: region.into(),
            credentials,
            rate_limits: RateLimits::default(),
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            language: Some("en-US".to_string()),
        }
    }

    /// The endpoint for an API domain such as `tencentcloudapi.com` or `internal.tencentcloudapi.com`.
    pub fn endpoint_for_domain(api_domain: &str) -> String {
        format!("https://{SERVICE}.{}", api_domain.trim().trim_matches('.'))
    }
}

/// Cheap to clone; clones share the HTTP connections and the rate limits.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: Url,
    /// Exactly the `Host` header reqwest sends for `url`, which the signature covers.
    host: String,
    config: ClientConfig,
    limiter: RateLimiter,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.config.endpoint)
            .field("region", &self.inner.config.region)
            .field("secret_id", &self.inner.config.credentials.secret_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let url = Url::parse(&config.endpoint)
            .map_err(|err| Error::Config(format!("endpoint {:?}: {err}", config.endpoint)))?;
        if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() {
            return Err(Error::Config(format!(
                "endpoint {:?} must be http(s)://host[:port] with no path",
                config.endpoint
            )));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => {
                return Err(Error::Config(format!(
                    "endpoint {:?} has no host",
                    config.endpoint
                )));
            }
        };
        if config.region.trim().is_empty() {
            return Err(Error::Config("the region is empty".to_string()));
        }
        // reqwest built without a crypto provider panics when none is installed; ring is the
        // workspace's provider, and an already installed one is kept.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("tke-resilience/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::Config(format!("HTTP client: {err}")))?;
        let limiter = RateLimiter::new(config.rate_limits.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                url,
                host,
                config,
                limiter,
            }),
        })
    }

    pub fn region(&self) -> &str {
        &self.inner.config.region
    }

    /// The credentials the client signs with; the sandbox agents accept the same
    /// ([`crate::agent_stream`]).
    pub fn credentials(&self) -> &Credentials {
        &self.inner.config.credentials
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.config.endpoint
    }

    /// Sends one action, rate-limited and retried per the configuration.
    pub async fn call<A: Action>(&self, request: &A) -> Result<A::Response> {
        self.call_in_subnet(request, None).await
    }

    async fn call_in_subnet<A: Action>(&self, request: &A, subnet_id: Option<&str>) -> Result<A::Response> {
        let payload = serde_json::to_vec(request).map_err(|err| Error::InvalidRequest {
            action: A::NAME,
            reason: err.to_string(),
        })?;
        with_retries(&self.inner.config.retry, A::NAME, A::IDEMPOTENT, |_| async {
            self.inner.limiter.acquire(A::NAME).await;
            self.send::<A>(&payload, subnet_id).await
        })
        .await
    }

    async fn send<A: Action>(&self, payload: &[u8], subnet_id: Option<&str>) -> Result<A::Response> {
        let inner = &self.inner;
        let action = A::NAME;
        // The signature needs wall-clock Unix time: the server compares it with its own clock.
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut headers = sign_request(
            &inner.config.credentials,
            &ApiRequest {
                service: SERVICE,
                host: &inner.host,
                action,
                version: VERSION,
                region: Some(&inner.config.region),
                timestamp,
                content_type: CONTENT_TYPE,
                payload,
            },
        )
        .map_err(|source| Error::Sign { action, source })?;
        // reqwest derives the same Host from the URL (or :authority over HTTP/2); sending our own
        // copy too would duplicate it there.
        headers.remove(http::header::HOST);
        let mut builder = inner
            .http
            .post(inner.url.clone())
            .headers(headers)
            .body(payload.to_vec());
        if let Some(language) = &inner.config.language {
            builder = builder.header("X-TC-Language", language);
        }
        let response = builder
            .send()
            .await
            .map_err(|err| self.transport_error(action, err))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| self.transport_error(action, err))?;
        if let Ok(Envelope {
            response:
                ErrorBody {
                    error: Some(error),
                    request_id,
                },
        }) = serde_json::from_slice::<Envelope<ErrorBody>>(&body)
        {
            return Err(Error::Api {
                action,
                code: error.code,
                message: error.message,
                request_id,
                subnet_id: subnet_id.map(str::to_string),
            });
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let body = text.chars().take(BODY_EXCERPT).collect();
            return Err(Error::HttpStatus {
                action,
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice::<Envelope<A::Response>>(&body)
            .map(|envelope| envelope.response)
            .map_err(|source| Error::Decode { action, source })
    }

    fn transport_error(&self, action: &'static str, err: reqwest::Error) -> Error {
        if err.is_timeout() {
            Error::Timeout {
                action,
                timeout: self.inner.config.timeout,
            }
        } else if err.is_connect() {
            Error::Connect {
                action,
                endpoint: self.inner.config.endpoint.clone(),
                source: err,
            }
        } else {
            Error::Transport { action, source: err }
        }
    }

    /// Creates the instance(s) of `request` and returns their ids. Never retried after an error that
    /// leaves open whether the instance was made; look it up by name before creating again.
    pub async fn create_instances(
        &self,
        request: &CreateEksContainerInstancesRequest,
    ) -> Result<Vec<String>> {
        Ok(self
            .call_in_subnet(request, Some(&request.subnet_id))
            .await?
            .eks_ci_ids)
    }

    /// One DescribeEKSContainerInstances call, as given.
    pub async fn describe_instances(
        &self,
        request: &DescribeEksContainerInstancesRequest,
    ) -> Result<DescribeEksContainerInstancesResponse> {
        self.call(request).await
    }

    /// The instances among `ids` that exist, in as many calls of at most 100 ids as needed. An id
    /// missing from the answer is an instance that does not exist (any more).
    pub async fn describe_instances_by_id(&self, ids: &[String]) -> Result<Vec<EksCi>> {
        let mut found = Vec::with_capacity(ids.len());
        for batch in ids.chunks(DESCRIBE_MAX_LIMIT as usize) {
            let request = DescribeEksContainerInstancesRequest {
                // Without it the API's default page of 20 would cut the answer short.
                limit: Some(batch.len() as u64),
                eks_ci_ids: Some(batch.to_vec()),
                ..Default::default()
            };
            found.extend(self.call(&request).await?.eks_cis);
        }
        Ok(found)
    }

    /// Every instance matching all `filters`, paging by 100. Instances created or deleted while paging
    /// may be missed or seen twice; callers reconcile by id.
    pub async fn list_instances(&self, filters: Vec<Filter>) -> Result<Vec<EksCi>> {
        let filters = (!filters.is_empty()).then_some(filters);
        let mut all = Vec::new();
        loop {
            let request = DescribeEksContainerInstancesRequest {
                limit: Some(DESCRIBE_MAX_LIMIT),
                offset: Some(all.len() as u64),
                filters: filters.clone(),
                eks_ci_ids: None,
            };
            let page = self.call(&request).await?;
            let received = page.eks_cis.len();
            all.extend(page.eks_cis);
            if received == 0 || all.len() as u64 >= page.total_count {
                return Ok(all);
            }
        }
    }

    /// Deletes any number of instances, 20 per call. On an error, the batches before it are deleted and
    /// the rest are not tried.
    pub async fn delete_instances(&self, ids: &[String]) -> Result<()> {
        for batch in ids.chunks(DELETE_MAX_IDS) {
            let request = DeleteEksContainerInstancesRequest {
                eks_ci_ids: batch.to_vec(),
                release_auto_created_eip: None,
            };
            self.call(&request).await?;
        }
        Ok(())
    }

    /// The instance's events, newest first; `limit` defaults to 50 on the server, at most 100.
    pub async fn describe_events(&self, eks_ci_id: &str, limit: Option<u64>) -> Result<Vec<Event>> {
        let request = DescribeEksContainerInstanceEventRequest {
            eks_ci_id: eks_ci_id.to_string(),
            limit,
        };
        Ok(self.call(&request).await?.events)
    }

    pub async fn describe_log(
        &self,
        request: &DescribeEksContainerInstanceLogRequest,
    ) -> Result<DescribeEksContainerInstanceLogResponse> {
        self.call(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.to_string(),
            ..ClientConfig::new("ap-guangzhou", Credentials::new("AKID", "s3cr3t-k3y"))
        }
    }

    #[test]
    fn the_endpoint_follows_the_api_domain() {
        assert_eq!(
            ClientConfig::endpoint_for_domain("tencentcloudapi.com"),
            DEFAULT_ENDPOINT
        );
        assert_eq!(
            ClientConfig::endpoint_for_domain("internal.tencentcloudapi.com"),
            "https://tke.internal.tencentcloudapi.com"
        );
    }

    #[test]
    fn the_signed_host_carries_a_non_default_port_only() {
        let client = Client::new(config("http://127.0.0.1:8080")).unwrap();
        assert_eq!(client.inner.host, "127.0.0.1:8080");
        let client = Client::new(config("https://tke.tencentcloudapi.com")).unwrap();
        assert_eq!(client.inner.host, "tke.tencentcloudapi.com");
        let client = Client::new(config("https://TKE.TencentCloudAPI.com:443/")).unwrap();
        assert_eq!(client.inner.host, "tke.tencentcloudapi.com");
    }

    #[test]
    fn bad_endpoints_and_regions_are_configuration_errors() {
        for endpoint in [
            "tke.tencentcloudapi.com",
            "ftp://tke.tencentcloudapi.com",
            "https://tke.tencentcloudapi.com/v3",
        ] {
            assert!(
                matches!(Client::new(config(endpoint)), Err(Error::Config(_))),
                "{endpoint}"
            );
        }
        let no_region = ClientConfig {
            region: " ".into(),
            ..config(DEFAULT_ENDPOINT)
        };
        assert!(matches!(Client::new(no_region), Err(Error::Config(_))));
    }

    #[test]
    fn the_client_debug_output_has_no_secret_key() {
        let client = Client::new(config(DEFAULT_ENDPOINT)).unwrap();
        let shown = format!("{client:?} {:?}", client.inner.config);
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("s3cr3t-k3y"), "{shown}");
    }
}
