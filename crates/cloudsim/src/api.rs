//! The HTTP face of the simulator: `POST /` speaks API 3.0 (headers `X-TC-*`, TC3 signature, the
//! `{"Response": ...}` envelope, errors with HTTP 200 as the real API answers them), and `/admin/*`
//! is the unauthenticated control surface for tests and demos (faults, crashes, usage, clock, stats).
//! Creates and deletes also start and stop the instances' sandbox agents (see `agents`).
//!
//! Order of checks for an API call, each failing with the API's own code: action header
//! (`MissingParameter`), signature (`AuthFailure.*`, verified by `tke_tencent::sign`), version
//! (`NoSuchVersion`), region (`UnsupportedRegion`), rate limit (`RequestLimitExceeded`), injected
//! faults, then the action itself (`InvalidAction` for unknown names).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tke_tencent::Credentials;
use tke_tencent::model::Action;
use tke_tencent::model::{
    CreateEksContainerInstancesRequest, CreateEksContainerInstancesResponse,
    DeleteEksContainerInstancesRequest, DeleteEksContainerInstancesResponse,
    DescribeEksContainerInstanceEventRequest, DescribeEksContainerInstanceEventResponse,
    DescribeEksContainerInstanceLogRequest, DescribeEksContainerInstanceLogResponse,
    DescribeEksContainerInstancesRequest, DescribeEksContainerInstancesResponse, SERVICE, VERSION,
};
use tke_tencent::rate_limit::TokenBucket;
use tke_tencent::sign::{Authorization, ReceivedRequest, verify};

use crate::Config;
use crate::agents::{self, Agent};
use crate::clock::SimClock;
use crate::faults::{Faults, Stats};
use crate::instances::{Ipv4Cidr, Lifecycle, Refusal, Samples, Store, UsageChange, refuse};
use crate::netns::Listeners;

const CREATE: &str = CreateEksContainerInstancesRequest::NAME;
const DESCRIBE: &str = DescribeEksContainerInstancesRequest::NAME;
const DELETE: &str = DeleteEksContainerInstancesRequest::NAME;
const DESCRIBE_EVENT: &str = DescribeEksContainerInstanceEventRequest::NAME;
const DESCRIBE_LOG: &str = DescribeEksContainerInstanceLogRequest::NAME;

/// The longest start delay, restart delay or log interval honoured: a year.
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The real API takes POST bodies up to 10 MB.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// The simulator: configuration, clock and all mutable state behind one lock that is never held
/// across an await.
#[derive(Debug)]
pub struct Sim {
    credentials: HashMap<String, Credentials>,
    region: String,
    rate_limit_per_second: u32,
    max_clock_skew: Duration,
    /// Where each instance's sandbox agent listens, on its private IP; `None` for no agents.
    agent_port: Option<u16>,
    /// Where the agents' listeners are made: here, or in the VPC's network namespace.
    listeners: Listeners,
    pub clock: SimClock,
    state: Mutex<SimState>,
}

#[derive(Debug)]
struct SimState {
    store: Store,
    faults: Faults,
    rng: StdRng,
    buckets: HashMap<String, TokenBucket>,
    requests: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// By instance id; instances whose agent could not bind have none.
    agents: HashMap<String, Agent>,
}

impl Sim {
    pub fn new(config: Config, private_cidr: Ipv4Cidr, listeners: Listeners) -> Self {
        // Bounded so that instant arithmetic cannot overflow on any input.
        let bounded = |delay: Duration| delay.min(MAX_DELAY);
        let lifecycle = Lifecycle {
            start_delay: bounded(config.start_delay),
            restart_delay: bounded(config.restart_delay),
            log_interval: bounded(config.log_interval).max(Duration::from_millis(1)),
        };
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            credentials: config
                .credentials
                .into_iter()
                .map(|c| (c.secret_id.clone(), c))
                .collect(),
            region: config.region.clone(),
            rate_limit_per_second: config.rate_limit_per_second,
            max_clock_skew: config.max_clock_skew,
            agent_port: config.agent_port,
            listeners,
            clock: if config.manual_clock {
                SimClock::manual()
            } else {
                SimClock::real()
            },
            state: Mutex::new(SimState {
                store: Store::new(lifecycle, config.region, config.quotas, private_cidr),
                faults: config.faults,
                rng,
                buckets: HashMap::new(),
                requests: BTreeMap::new(),
                errors: BTreeMap::new(),
                agents: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves counters at worst off by one; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn stats(&self) -> Stats {
        let state = self.lock();
        let counters = state.store.counters;
        Stats {
            creates: counters.creates,
            deletes: counters.deletes,
            live_instances: state.store.live(),
            duplicate_names: counters.duplicate_names,
            requests: state.requests.clone(),
            errors: state.errors.clone(),
        }
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.lock().faults = faults;
        Ok(())
    }

    pub fn crash(&self, eks_ci_id: &str, container: Option<&str>, exit_code: i64) -> Result<(), Refusal> {
        let now = self.clock.now();
        self.lock().store.crash(eks_ci_id, container, exit_code, now)
    }

    /// Logs a line typed into the simulated process of `container` (an attach's stdin).
    pub fn type_line(&self, eks_ci_id: &str, container: &str, line: &str) -> Result<(), Refusal> {
        let now = self.clock.now();
        self.lock().store.type_line(eks_ci_id, container, line, now)
    }

    pub fn set_usage(
        &self,
        eks_ci_id: &str,
        container: Option<&str>,
        change: UsageChange,
    ) -> Result<(), Refusal> {
        let now = self.clock.now();
        self.lock().store.set_usage(eks_ci_id, container, change, now)
    }

    /// What the instance's sandbox agent reports at `now`.
    pub fn samples(&self, eks_ci_id: &str, now: tokio::time::Instant) -> Result<Samples, Refusal> {
        self.lock().store.samples(eks_ci_id, now)
    }

    /// The SecretKey of an accepted SecretId, for the agents' request signatures.
    pub fn secret_key(&self, secret_id: &str) -> Option<&str> {
        self.credentials.get(secret_id).map(|c| c.secret_key.expose())
    }

    /// The last `tail` lines of the current run of `container`, as DescribeEksContainerInstanceLog
    /// serves them.
    pub fn container_log(&self, eks_ci_id: &str, container: &str, tail: u64) -> Result<String, Refusal> {
        let now = self.clock.now();
        let request = DescribeEksContainerInstanceLogRequest {
            eks_ci_id: eks_ci_id.to_owned(),
            container_name: Some(container.to_owned()),
            tail: Some(tail),
            ..Default::default()
        };
        self.lock()
            .store
            .log(&request, now, &self.clock)
            .map(|(_, content)| content)
    }

    /// Stops every sandbox agent and waits until their listeners are closed.
    pub async fn stop_agents(&self) {
        let stopping: Vec<Agent> = self.lock().agents.drain().map(|(_, agent)| agent).collect();
        agents::stop(stopping).await;
    }

    async fn answer(self: &Arc<Self>, headers: &HeaderMap, body: &[u8]) -> Value {
        let request_id = {
            let mut state = self.lock();
            let bytes: [u8; 16] = state.rng.random();
            format_request_id(bytes)
        };
        let mut response = match self.handle(headers, body).await {
            Ok(response) => response,
            Err(refusal) => {
                *self.lock().errors.entry(refusal.code.clone()).or_default() += 1;
                json!({"Error": {"Code": refusal.code, "Message": refusal.message}})
            }
        };
        if let Some(object) = response.as_object_mut() {
            object.insert("RequestId".into(), Value::String(request_id));
        }
        json!({ "Response": response })
    }

    async fn handle(self: &Arc<Self>, headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
        let action = header(headers, "x-tc-action")
            .ok_or_else(|| {
                refuse(
                    "MissingParameter",
                    "The request is missing a required parameter `X-TC-Action`.",
                )
            })?
            .to_string();
        let latency = {
            let mut state = self.lock();
            *state.requests.entry(action.clone()).or_default() += 1;
            state.faults.latency_ms
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        self.authenticate(headers, body)?;
        match header(headers, "x-tc-version") {
            Some(VERSION) => {}
            Some(other) => {
                return Err(refuse(
                    "NoSuchVersion",
                    format!("The API version `{other}` does not exist."),
                ));
            }
            None => {
                return Err(refuse(
                    "MissingParameter",
                    "The request is missing a required parameter `X-TC-Version`.",
                ));
            }
        }
        match header(headers, "x-tc-region") {
            Some(region) if region == self.region => {}
            _ if action == "DescribeEKSContainerInstanceRegions" => {}
            Some(other) => {
                return Err(refuse(
                    "UnsupportedRegion",
                    format!("cloudsim serves region {}, not {other}.", self.region),
                ));
            }
            None => {
                return Err(refuse(
                    "MissingParameter",
                    "The request is missing a required parameter `X-TC-Region`.",
                ));
            }
        }
        let mut stopping = Vec::new();
        let response = self.act(&action, body, &mut stopping);
        // Only now that the lock is released: a stopping agent may be in a request that needs it.
        agents::stop(stopping).await;
        response
    }

    /// The rate limit, the injected faults and the action itself, all under the state lock. Agents
    /// of deleted instances are handed back in `stopping`, for the caller to wait on without it.
    fn act(self: &Arc<Self>, action: &str, body: &[u8], stopping: &mut Vec<Agent>) -> Result<Value, Refusal> {
        let now = self.clock.now();
        let mut guard = self.lock();
        let state = &mut *guard;
        if self.rate_limit_per_second > 0 {
            let bucket = state
                .buckets
                .entry(action.to_string())
                .or_insert_with(|| TokenBucket::new(self.rate_limit_per_second, now));
            if !bucket.try_take(now) {
                return Err(refuse(
                    "RequestLimitExceeded",
                    format!(
                        "The number of requests exceeds the frequency limit of {} per second.",
                        self.rate_limit_per_second
                    ),
                ));
            }
        }
        if let Some(injected) = state.faults.draw(action, &mut state.rng) {
            return Err(refuse(&injected.code, injected.message));
        }
        let clock = &self.clock;
        let response = match action {
            CREATE => {
                let request: CreateEksContainerInstancesRequest = parse(body)?;
                let eks_ci_ids =
                    state
                        .store
                        .create(request, now, &state.faults.sold_out_subnets, &mut state.rng)?;
                if let Some(port) = self.agent_port {
                    for id in &eks_ci_ids {
                        let Some(ip) = state.store.private_ip(id) else {
                            continue;
                        };
                        let addr = SocketAddr::from((ip, port));
                        let containers = state.store.containers(id);
                        match Agent::start(
                            Arc::downgrade(self),
                            &self.listeners,
                            id.clone(),
                            addr,
                            containers,
                        ) {
                            Ok(agent) => {
                                state.agents.insert(id.clone(), agent);
                            }
                            // The instance runs as it would in the cloud; only its metrics are missing.
                            Err(err) => tracing::warn!(
                                eks_ci_id = %id,
                                %addr,
                                error = %err,
                                "cannot start the instance's sandbox agent; it serves no metrics"
                            ),
                        }
                    }
                }
                to_json(CreateEksContainerInstancesResponse {
                    eks_ci_ids,
                    request_id: String::new(),
                })
            }
            DESCRIBE => {
                let request: DescribeEksContainerInstancesRequest = parse(body)?;
                let (total_count, eks_cis) = state.store.describe(&request, now, clock)?;
                to_json(DescribeEksContainerInstancesResponse {
                    total_count,
                    eks_cis,
                    request_id: String::new(),
                })
            }
            DELETE => {
                let request: DeleteEksContainerInstancesRequest = parse(body)?;
                state.store.delete(&request.eks_ci_ids)?;
                stopping.extend(request.eks_ci_ids.iter().filter_map(|id| state.agents.remove(id)));
                to_json(DeleteEksContainerInstancesResponse {
                    request_id: String::new(),
                })
            }
            DESCRIBE_EVENT => {
                let request: DescribeEksContainerInstanceEventRequest = parse(body)?;
                let events = state
                    .store
                    .events(&request.eks_ci_id, request.limit, now, clock)?;
                to_json(DescribeEksContainerInstanceEventResponse {
                    events,
                    eks_ci_id: request.eks_ci_id,
                    request_id: String::new(),
                })
            }
            DESCRIBE_LOG => {
                let request: DescribeEksContainerInstanceLogRequest = parse(body)?;
                let (container_name, log_content) = state.store.log(&request, now, clock)?;
                to_json(DescribeEksContainerInstanceLogResponse {
                    container_name,
                    log_content,
                    request_id: String::new(),
                })
            }
            "DescribeEKSContainerInstanceRegions" => {
                let _: Value = parse(body)?;
                json!({"Regions": [{"Alias": "", "RegionName": self.region, "RegionId": 0}], "TotalCount": 1})
            }
            "RestartEKSContainerInstances" | "UpdateEKSContainerInstance" => {
                return Err(refuse(
                    "UnsupportedOperation",
                    format!("cloudsim does not implement {action}."),
                ));
            }
            other => {
                return Err(refuse(
                    "InvalidAction",
                    format!("The API `{other}` does not exist."),
                ));
            }
        };
        Ok(response)
    }

    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let header_value = header(headers, "authorization").ok_or_else(|| {
            refuse(
                "AuthFailure.InvalidAuthorization",
                "The Authorization header is missing.",
            )
        })?;
        let authorization = Authorization::parse(header_value)
            .map_err(|err| refuse("AuthFailure.InvalidAuthorization", err.to_string()))?;
        let credentials = self.credentials.get(&authorization.secret_id).ok_or_else(|| {
            refuse(
                "AuthFailure.SecretIdNotFound",
                format!("The SecretId {} does not exist.", authorization.secret_id),
            )
        })?;
        let timestamp: i64 = header(headers, "x-tc-timestamp")
            .ok_or_else(|| {
                refuse(
                    "MissingParameter",
                    "The request is missing a required parameter `X-TC-Timestamp`.",
                )
            })?
            .parse()
            .map_err(|_| refuse("InvalidParameterValue", "X-TC-Timestamp must be Unix seconds."))?;
        let server_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if timestamp.abs_diff(server_time) > self.max_clock_skew.as_secs() {
            return Err(refuse(
                "AuthFailure.SignatureExpire",
                format!(
                    "Signature expired. Timestamp {timestamp} and server time {server_time} cannot differ by more than {} seconds.",
                    self.max_clock_skew.as_secs()
                ),
            ));
        }
        if authorization.service != SERVICE {
            return Err(refuse(
                "AuthFailure.SignatureFailure",
                format!(
                    "The credential scope names service {}, not {SERVICE}.",
                    authorization.service
                ),
            ));
        }
        let received = ReceivedRequest {
            method: "POST",
            canonical_query: "",
            headers,
            payload: body,
            timestamp,
        };
        verify(&authorization, credentials.secret_key.expose(), &received).map_err(|err| {
            refuse(
                "AuthFailure.SignatureFailure",
                format!("The provided credentials could not be validated ({err}). Please ensure your signature is correct."),
            )
        })?;
        let token = header(headers, "x-tc-token");
        if credentials.token.as_ref().map(|t| t.expose()) != token {
            return Err(refuse(
                "AuthFailure.TokenFailure",
                "The session token is missing or wrong.",
            ));
        }
        Ok(())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn format_request_id(bytes: [u8; 16]) -> String {
    let hex = hex_string(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Malformed JSON is `InvalidParameter`; a missing required field is `MissingParameter`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        refuse(
            "InvalidParameter",
            format!("The request body is not valid JSON: {err}."),
        )
    })?;
    if !value.is_object() {
        return Err(refuse(
            "InvalidParameter",
            "The request body must be a JSON object.",
        ));
    }
    serde_json::from_value(value).map_err(|err| {
        let message = err.to_string();
        let code = if message.starts_with("missing field") {
            "MissingParameter"
        } else {
            "InvalidParameter"
        };
        refuse(code, format!("The request parameters are invalid: {message}."))
    })
}

fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value)
        .unwrap_or_else(|err| json!({"Error": {"Code": "InternalError", "Message": err.to_string()}}))
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/", post(api))
        .route("/admin/stats", get(admin_stats))
        .route("/admin/faults", get(admin_faults).post(admin_set_faults))
        .route("/admin/crash", post(admin_crash))
        .route("/admin/usage", post(admin_usage))
        .route("/admin/clock", post(admin_clock))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(sim)
}

async fn api(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    axum::Json(sim.answer(&headers, &body).await).into_response()
}

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn admin_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|err| Box::new(admin_error(StatusCode::BAD_REQUEST, err.to_string())))
}

async fn admin_stats(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.stats()).into_response()
}

async fn admin_faults(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.faults()).into_response()
}

async fn admin_set_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let faults: Faults = match admin_body(&body) {
        Ok(faults) => faults,
        Err(response) => return *response,
    };
    match sim.set_faults(faults) {
        Ok(()) => axum::Json(sim.faults()).into_response(),
        Err(message) => admin_error(StatusCode::BAD_REQUEST, message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrashRequest {
    eks_ci_id: String,
    #[serde(default)]
    container: Option<String>,
    #[serde(default = "default_exit_code")]
    exit_code: i64,
}

fn default_exit_code() -> i64 {
    1
}

async fn admin_crash(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let request: CrashRequest = match admin_body(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match sim.crash(
        &request.eks_ci_id,
        request.container.as_deref(),
        request.exit_code,
    ) {
        Ok(()) => axum::Json(json!({})).into_response(),
        Err(refusal) if refusal.code == "ResourceNotFound" || refusal.code.ends_with("NotFound") => {
            admin_error(StatusCode::NOT_FOUND, refusal.message)
        }
        Err(refusal) => admin_error(StatusCode::CONFLICT, refusal.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageRequest {
    #[serde(alias = "eks_ci_id")]
    id: String,
    /// All containers of the instance when absent.
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    cpu_millicores: Option<u64>,
    #[serde(default)]
    memory_bytes: Option<u64>,
}

async fn admin_usage(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let request: UsageRequest = match admin_body(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let change = UsageChange {
        cpu_millicores: request.cpu_millicores,
        memory_bytes: request.memory_bytes,
    };
    if change == UsageChange::default() {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "give cpu_millicores, memory_bytes or both",
        );
    }
    match sim.set_usage(&request.id, request.container.as_deref(), change) {
        Ok(()) => axum::Json(json!({})).into_response(),
        Err(refusal) if refusal.code.ends_with("NotFound") => {
            admin_error(StatusCode::NOT_FOUND, refusal.message)
        }
        Err(refusal) => admin_error(StatusCode::CONFLICT, refusal.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    advance_seconds: f64,
}

async fn admin_clock(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let request: ClockRequest = match admin_body(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match Duration::try_from_secs_f64(request.advance_seconds) {
        Ok(by) => {
            sim.clock.advance(by);
            axum::Json(json!({})).into_response()
        }
        Err(_) => admin_error(
            StatusCode::BAD_REQUEST,
            "advance_seconds must be a non-negative number",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_the_apis() {
        let id = format_request_id([0xab; 16]);
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }

    #[test]
    fn a_missing_required_field_is_missing_parameter_and_bad_json_invalid_parameter() {
        let err = parse::<DeleteEksContainerInstancesRequest>(b"{}").unwrap_err();
        assert_eq!(err.code, "MissingParameter");
        assert!(err.message.contains("EksCiIds"), "{}", err.message);
        let err = parse::<DeleteEksContainerInstancesRequest>(b"{\"EksCiIds\": ").unwrap_err();
        assert_eq!(err.code, "InvalidParameter");
        let err = parse::<DeleteEksContainerInstancesRequest>(b"[1]").unwrap_err();
        assert_eq!(err.code, "InvalidParameter");
        let err = parse::<DeleteEksContainerInstancesRequest>(br#"{"EksCiIds": "eksci-1"}"#).unwrap_err();
        assert_eq!(err.code, "InvalidParameter");
    }
}
