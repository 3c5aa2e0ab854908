//! The sandbox agent's metrics. The EKSCI API has no metrics action: on a super node every sandbox VM
//! runs an agent that serves its containers' usage as Prometheus text at
//! `http://<PrivateIp>:<port>/metrics`, the port coming from the pod annotation
//! [`METRICS_PORT_ANNOTATION`] (default [`DEFAULT_METRICS_PORT`]). The agent's exact format is not
//! documented; we read cAdvisor's series names, which are also the kubelet's resource-metric names:
//! `container_cpu_usage_seconds_total`, `container_memory_working_set_bytes` and
//! `container_start_time_seconds`, one series per running container, labelled `container`.
//!
//! Readiness, which the API does not report either: the agent runs the containers' readiness probes
//! and serves the gauge `container_ready{container="web"} 1` (or `0`) for every container that has
//! a readiness probe, running or not: 1 when the probe passes in the container's current run, 0
//! otherwise (not yet passed, failing, or not running). A container without a readiness probe has
//! no series; it is ready when it runs. Any value but 0 or 1 is malformed.
//!
//! [`parse`] reads the usage of the exposition text and [`parse_page`] its readiness too,
//! [`AgentClient`] fetches it, [`metrics_port`] picks the port.
//! Like the rest of this crate it knows nothing of Kubernetes: it hands back container names and
//! numbers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use jiff::Timestamp;

pub const METRICS_PORT_ANNOTATION: &str = "eks.tke.cloud.tencent.com/metrics-port";
pub const DEFAULT_METRICS_PORT: u16 = 9100;

const CPU_FAMILY: &str = "container_cpu_usage_seconds_total";
const MEMORY_FAMILY: &str = "container_memory_working_set_bytes";
const START_FAMILY: &str = "container_start_time_seconds";
const READY_FAMILY: &str = "container_ready";
/// cAdvisor's pause-container and pod-cgroup series carry these; they are no container's usage.
const NOT_CONTAINERS: [&str; 2] = ["", "POD"];
/// A sandbox runs a handful of containers: a few kilobytes of text. Anything near this is not an agent.
const MAX_BODY_BYTES: usize = 4 << 20;
/// How much of an error answer's body is read and quoted.
const STATUS_EXCERPT_BYTES: usize = 256;
/// How much of a malformed line an error quotes.
const LINE_EXCERPT_CHARS: usize = 80;

/// One container's usage as the sandbox agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    /// CPU time since the container started, in core-nanoseconds.
    pub cpu_core_nano_seconds: u64,
    pub memory_working_set_bytes: u64,
    /// `container_start_time_seconds`, if reported.
    pub start_time: Option<Timestamp>,
    /// The sample's timestamp, if the series carried one (else None): the CPU series' timestamp, or
    /// the memory series' when only that one has one (a CPU rate is computed over the CPU sample).
    pub time: Option<Timestamp>,
}

/// Everything a page of the agent says: the running containers' usage, and the readiness of the
/// containers that have a readiness probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentPage {
    pub usage: Vec<ContainerUsage>,
    /// By container name.
    pub ready: BTreeMap<String, bool>,
}

/// Why a scrape gave no usage. Transport failures name the address; the caller knows which pod it is.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection, or the connection broke before the whole answer arrived.
    #[error("sandbox agent at {addr} is unreachable: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: reqwest::Error,
    },
    #[error("sandbox agent at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// HTTP 503: the sandbox is not running (Pending, Succeeded or Failed), so there is no usage yet
    /// or any more. Expected around starts and ends; not worth a warning.
    #[error("sandbox agent at {addr} reports the sandbox is not running: {message}")]
    NotRunning { addr: SocketAddr, message: String },
    /// Any other answer than 200 and 503; `message` is the start of the body's first line.
    #[error("sandbox agent at {addr} answered HTTP {status}: {message}")]
    Status {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    #[error("sandbox agent at {addr} sent more than {limit} bytes of metrics")]
    TooLarge { addr: SocketAddr, limit: usize },
    /// The text is not the exposition format, or a value is not a usage. `excerpt` is the start of
    /// the offending line, never the whole body.
    #[error("malformed agent metrics at line {line}: {reason} (line {excerpt:?})")]
    Malformed {
        line: usize,
        reason: String,
        excerpt: String,
    },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Parses the exposition text. Tolerant like Prometheus: ignores comments, blank lines, other
/// metric families, series without a `container` label or with container="" or "POD"; accepts
/// labels in any order, escaped label values (\" \\ \n), values like 1e3, +Inf is an error for
/// these families, NaN/negative → error. A container needs both cpu and memory series to be
/// reported; a container with only one of them is left out. Errors name the line number.
///
/// Containers come in the order their first series appears. Two series of one family for the same
/// container are an error: summing or picking one could report usage that never happened.
pub fn parse(text: &str) -> Result<Vec<ContainerUsage>> {
    parse_page(text).map(|page| page.usage)
}

/// [`parse`], and the `container_ready` series: a container with one reports its readiness, with
/// or without usage. Its value must be 0 or 1; a second series for one container is an error.
pub fn parse_page(text: &str) -> Result<AgentPage> {
    let mut containers: Vec<Partial> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = |reason: String| AgentError::Malformed {
            line: number,
            reason,
            excerpt: excerpt(raw, LINE_EXCERPT_CHARS),
        };
        let Some(sample) = parse_line(line).map_err(malformed)? else {
            continue;
        };
        let slot = *by_name.entry(sample.container.clone()).or_insert_with(|| {
            containers.push(Partial::new(sample.container.clone()));
            containers.len() - 1
        });
        containers[slot].add(sample, number).map_err(malformed)?;
    }
    let ready = containers
        .iter()
        .filter_map(|partial| Some((partial.name.clone(), partial.ready?.0)))
        .collect();
    Ok(AgentPage {
        usage: containers.into_iter().filter_map(Partial::finish).collect(),
        ready,
    })
}

/// The port to scrape for a pod: the annotation's value if it is a valid port number (1..=65535),
/// else `default`. Returns Err with a clear message for a malformed annotation (so the caller can warn).
pub fn metrics_port(annotations: &BTreeMap<String, String>, default: u16) -> Result<u16, String> {
    let Some(value) = annotations.get(METRICS_PORT_ANNOTATION) else {
        return Ok(default);
    };
    let digits = value.trim();
    match digits.parse::<u16>() {
        Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!(
            "annotation {METRICS_PORT_ANNOTATION}={value:?} is not a port number (1-65535); \
             the default port {default} applies"
        )),
    }
}

/// Fetches and parses one sandbox's metrics.
///
/// Plain HTTP on the sandbox's private IP, as the agent serves it; cheap to clone (clones share
/// connections). No proxy is ever used: the environment's `HTTP_PROXY` is for the internet, and the
/// sandboxes are reached over the VPC.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl AgentClient {
    /// `timeout` bounds each scrape, from connecting to the last byte of the body.
    pub fn new(timeout: Duration) -> Self {
        // The client only ever speaks plain HTTP. A TLS configuration of our own (with no roots)
        // spares it the OS certificate store and the process-wide crypto provider reqwest
        // otherwise needs; building can then only fail on a reqwest/rustls version mismatch,
        // which the unit tests catch.
        let tls =
            rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("tke-resilience/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with a preconfigured rustls backend builds");
        Self { http, timeout }
    }

    /// Fetches and parses one sandbox's metrics.
    pub async fn scrape(&self, addr: SocketAddr) -> Result<Vec<ContainerUsage>> {
        self.scrape_page(addr).await.map(|page| page.usage)
    }

    /// Fetches and parses one sandbox's metrics and readiness.
    pub async fn scrape_page(&self, addr: SocketAddr) -> Result<AgentPage> {
        let transport = |source: reqwest::Error| {
            if source.is_timeout() {
                AgentError::Timeout {
                    addr,
                    timeout: self.timeout,
                }
            } else {
                AgentError::Unreachable { addr, source }
            }
        };
        let response = self
            .http
            .get(format!("http://{addr}/metrics"))
            .header(http::header::ACCEPT, "text/plain; version=0.0.4")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            // The body only explains the status: read the start of it, never all of it.
            let (body, _) = read_body(response, STATUS_EXCERPT_BYTES)
                .await
                .unwrap_or_default();
            let message = excerpt(String::from_utf8_lossy(&body).lines().next().unwrap_or(""), 200);
            return Err(match status.as_u16() {
                503 => AgentError::NotRunning { addr, message },
                status => AgentError::Status {
                    addr,
                    status,
                    message,
                },
            });
        }
        let too_large = AgentError::TooLarge {
            addr,
            limit: MAX_BODY_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_BODY_BYTES as u64)
        {
            return Err(too_large);
        }
        let (body, cut) = read_body(response, MAX_BODY_BYTES).await.map_err(transport)?;
        if cut {
            return Err(too_large);
        }
        let text = String::from_utf8(body).map_err(|err| {
            let bytes = err.as_bytes();
            let valid = err.utf8_error().valid_up_to();
            let line_start = bytes[..valid]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let line_end = bytes[valid..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| valid + i);
            AgentError::Malformed {
                line: bytes[..valid].iter().filter(|&&b| b == b'\n').count() + 1,
                reason: "the text is not UTF-8".to_string(),
                excerpt: excerpt(
                    &String::from_utf8_lossy(&bytes[line_start..line_end]),
                    LINE_EXCERPT_CHARS,
                ),
            }
        })?;
        parse_page(&text)
    }
}

/// At most `limit` bytes of the body, and whether there was more (the rest is never read).
async fn read_body(mut response: reqwest::Response, limit: usize) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The first `chars` characters of `text`, marked when cut.
fn excerpt(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Cpu,
    Memory,
    Start,
    Ready,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Cpu => CPU_FAMILY,
            Family::Memory => MEMORY_FAMILY,
            Family::Start => START_FAMILY,
            Family::Ready => READY_FAMILY,
        }
    }
}

/// One series of ours, value already converted to its unit.
#[derive(Debug)]
struct Sample {
    family: Family,
    container: String,
    /// Core-nanoseconds, bytes, or nanoseconds since the epoch.
    value: u64,
    time: Option<Timestamp>,
}

/// What the lines so far said about one container.
#[derive(Debug)]
struct Partial {
    name: String,
    /// Each with the line it came from, for the duplicate error.
    cpu: Option<(u64, Option<Timestamp>, usize)>,
    memory: Option<(u64, Option<Timestamp>, usize)>,
    start: Option<(Timestamp, usize)>,
    ready: Option<(bool, usize)>,
}

impl Partial {
    fn new(name: String) -> Self {
        Self {
            name,
            cpu: None,
            memory: None,
            start: None,
            ready: None,
        }
    }

    fn add(&mut self, sample: Sample, line: usize) -> Result<(), String> {
        let first = match sample.family {
            Family::Cpu => self.cpu.map(|(_, _, line)| line),
            Family::Memory => self.memory.map(|(_, _, line)| line),
            Family::Start => self.start.map(|(_, line)| line),
            Family::Ready => self.ready.map(|(_, line)| line),
        };
        if let Some(first) = first {
            return Err(format!(
                "a second {} series for container {:?} (the first is at line {first})",
                sample.family.name(),
                self.name
            ));
        }
        match sample.family {
            Family::Cpu => self.cpu = Some((sample.value, sample.time, line)),
            Family::Memory => self.memory = Some((sample.value, sample.time, line)),
            Family::Start => {
                let start = Timestamp::from_nanosecond(i128::from(sample.value))
                    .map_err(|_| format!("start time {} s is out of range", sample.value / 1_000_000_000))?;
                self.start = Some((start, line));
            }
            Family::Ready => self.ready = Some((sample.value == 1, line)),
        }
        Ok(())
    }

    fn finish(self) -> Option<ContainerUsage> {
        let (cpu, cpu_time, _) = self.cpu?;
        let (memory, memory_time, _) = self.memory?;
        Some(ContainerUsage {
            name: self.name,
            cpu_core_nano_seconds: cpu,
            memory_working_set_bytes: memory,
            start_time: self.start.map(|(start, _)| start),
            time: cpu_time.or(memory_time),
        })
    }
}

/// One non-comment line: `None` for a series we do not read.
fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("expected a metric name".to_string());
    }
    let rest = &line[name_end..];
    if !rest.starts_with(['{', ' ', '\t']) {
        return Err(format!("expected labels or a value after the metric name {name}"));
    }
    let family = match name {
        CPU_FAMILY => Family::Cpu,
        MEMORY_FAMILY => Family::Memory,
        START_FAMILY => Family::Start,
        READY_FAMILY => Family::Ready,
        _ => return Ok(None),
    };
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inside) => parse_labels(inside)?,
        None => (Vec::new(), rest),
    };
    let mut tokens = rest.split([' ', '\t']).filter(|token| !token.is_empty());
    let value = tokens.next().ok_or("expected a value")?;
    let time = tokens.next().map(parse_timestamp).transpose()?;
    if let Some(extra) = tokens.next() {
        return Err(format!("unexpected {:?} after the timestamp", excerpt(extra, 20)));
    }
    let Some((_, container)) = labels.into_iter().find(|(label, _)| label == "container") else {
        return Ok(None);
    };
    if NOT_CONTAINERS.contains(&container.as_str()) {
        return Ok(None);
    }
    let value = match family {
        Family::Cpu | Family::Start => scaled(value, 9),
        Family::Memory => scaled(value, 0),
        // Exactly 0 or 1, so 0.6 is not rounded into a readiness.
        Family::Ready => scaled(value, 9).and_then(|nanos| match nanos {
            0 => Ok(0),
            1_000_000_000 => Ok(1),
            _ => Err(format!("{} is not 0 or 1", excerpt(value, 24))),
        }),
    }
    .map_err(|reason| format!("{name}: {reason}"))?;
    Ok(Some(Sample {
        family,
        container,
        value,
        time,
    }))
}

/// Label names and values, in the order given.
type Labels = Vec<(String, String)>;

/// The labels after `{`, and the text after the closing `}`.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err("expected a label name or `}`".to_string());
        }
        rest = rest[name_end..].trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after the label name {name}"))?
            .trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for the label {name}"))?;
        let (value, after) = label_value(rest).map_err(|reason| format!("label {name}: {reason}"))?;
        if labels.iter().any(|(seen, _)| seen == name) {
            return Err(format!("the label {name} is given twice"));
        }
        labels.push((name.to_string(), value));
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected `,` or `}}` after the label {name}"));
        }
    }
}

/// An escaped label value up to its closing quote, and the text after the quote.
fn label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err(format!("unknown escape \\{other}")),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("the value has no closing quote".to_string())
}

/// An optional sample timestamp: integer milliseconds since the epoch.
fn parse_timestamp(token: &str) -> Result<Timestamp, String> {
    let bad = || {
        format!(
            "the timestamp {:?} is not milliseconds since the epoch",
            excerpt(token, 24)
        )
    };
    let millis: i64 = token.parse().map_err(|_| bad())?;
    Timestamp::from_millisecond(millis).map_err(|_| bad())
}

/// A non-negative sample value times 10^`scale`, rounded to an integer. Decimal text (`12.345678`,
/// `6.7108864e+07`) is converted exactly, not through a float: a CPU counter in nanoseconds needs
/// more digits than a float keeps once a container has run for weeks.
fn scaled(token: &str, scale: i64) -> Result<u64, String> {
    if let Some(value) = scaled_decimal(token, scale) {
        return value.ok_or_else(|| format!("{} is out of range", excerpt(token, 24)));
    }
    // Not plain decimal: what a float parser accepts here is NaN, ±Inf or a negative number.
    match token.parse::<f64>() {
        Ok(value) if value.is_nan() => Err("NaN is not a usage".to_string()),
        Ok(value) if value.is_infinite() => Err(format!("{token} is not a usage")),
        Ok(_) => Err(format!("{} is negative", excerpt(token, 24))),
        Err(_) => Err(format!("{:?} is not a number", excerpt(token, 24))),
    }
}

/// `None` when `token` is not `[+]digits[.digits][e[±]digits]`; `Some(None)` when it is but the
/// result does not fit.
fn scaled_decimal(token: &str, scale: i64) -> Option<Option<u64>> {
    let unsigned = token.strip_prefix('+').unwrap_or(token);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |text: &str| text.bytes().all(|b| b.is_ascii_digit());
    if (integer.is_empty() && fraction.is_empty()) || !all_digits(integer) || !all_digits(fraction) {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(text) => {
            let (negative, digits) = match text.as_bytes().first() {
                Some(b'-') => (true, &text[1..]),
                Some(b'+') => (false, &text[1..]),
                _ => (false, text),
            };
            if digits.is_empty() || !all_digits(digits) {
                return None;
            }
            // Beyond a few hundred the answer is 0 or out of range either way.
            let magnitude = digits.trim_start_matches('0');
            let magnitude: i64 = if magnitude.len() > 6 {
                1_000_000
            } else {
                magnitude.parse().unwrap_or(0)
            };
            if negative { -magnitude } else { magnitude }
        }
    };
    // value = digits × 10^shift
    let digits: Vec<u8> = integer
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    if digits.is_empty() {
        return Some(Some(0));
    }
    let shift = exponent + scale - fraction.len() as i64;
    let keep = digits.len() as i64 + shift.min(0);
    if keep <= 0 {
        // Below one: rounds to 1 only when it is at least one half.
        let half = keep == 0 && digits[0] >= 5;
        return Some(Some(u64::from(half)));
    }
    let keep = keep as usize;
    // u64::MAX has 20 digits.
    if keep as i64 + shift.max(0) > 20 {
        return Some(None);
    }
    let mut value: u128 = 0;
    for &digit in &digits[..keep] {
        value = value * 10 + u128::from(digit);
    }
    if shift > 0 {
        value *= 10u128.pow(shift as u32);
    }
    if digits.get(keep).is_some_and(|&next| next >= 5) {
        value += 1;
    }
    Some(u64::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;

    /// What cAdvisor (as embedded in the kubelet) serves on a node, trimmed to one pod: other
    /// families, the pod's own cgroup (container=""), the pause container, labels in its order.
    const CADVISOR: &str = r#"# HELP cadvisor_version_info A metric with a constant '1' value labeled by kernel version, OS version, docker version, cadvisor version & cadvisor revision.
# TYPE cadvisor_version_info gauge
cadvisor_version_info{cadvisorRevision="",cadvisorVersion="",dockerVersion="",kernelVersion="6.1.0",osVersion="Debian GNU/Linux 12"} 1
# HELP container_cpu_system_seconds_total Cumulative system cpu time consumed in seconds.
# TYPE container_cpu_system_seconds_total counter
container_cpu_system_seconds_total{container="web",id="/kubepods/pod1/abc",image="nginx:1.27",name="abc",namespace="default",pod="web-0"} 1.5 1764590000123
# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods/pod1",image="",name="",namespace="default",pod="web-0"} 20.5 1764590000123
container_cpu_usage_seconds_total{container="POD",cpu="total",id="/kubepods/pod1/pause",image="pause:3.10",name="pause",namespace="default",pod="web-0"} 0.01 1764590000123
container_cpu_usage_seconds_total{container="web",cpu="total",id="/kubepods/pod1/abc",image="nginx:1.27",name="abc",namespace="default",pod="web-0"} 12.345678 1764590000123
container_cpu_usage_seconds_total{id="/",cpu="total"} 9000.25 1764590000123
container_cpu_usage_seconds_total{namespace="default",pod="web-0",container="sidecar",image="envoy:1.30"} 8.1e-01 1764590000456

# HELP container_memory_usage_bytes Current memory usage in bytes, including all memory regardless of when it was accessed
# TYPE container_memory_usage_bytes gauge
container_memory_usage_bytes{container="web",namespace="default",pod="web-0"} 9.9e+07 1764590000123
# HELP container_memory_working_set_bytes Current working set in bytes.
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="",namespace="default",pod="web-0"} 1.2e+08 1764590000123
container_memory_working_set_bytes{container="POD",namespace="default",pod="web-0"} 409600 1764590000123
container_memory_working_set_bytes{container="web",namespace="default",pod="web-0"} 6.7108864e+07 1764590000123
container_memory_working_set_bytes{container="sidecar",namespace="default",pod="web-0"} 1e3
container_memory_working_set_bytes{container="lonely",namespace="default",pod="web-0"} 4096 1764590000123
# HELP container_start_time_seconds Start time of the container since unix epoch in seconds.
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="web",namespace="default",pod="web-0"} 1.7645899905e+09
container_start_time_seconds{container="POD",namespace="default",pod="web-0"} 1764589980
# HELP machine_cpu_cores Number of logical CPU cores.
# TYPE machine_cpu_cores gauge
machine_cpu_cores{boot_id="x",machine_id="y",system_uuid="z"} 4
"#;

    fn at_millis(millis: i64) -> Option<Timestamp> {
        Some(Timestamp::from_millisecond(millis).unwrap())
    }

    fn malformed(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(AgentError::Malformed {
                line,
                reason,
                excerpt,
            }) => (line, reason, excerpt),
            other => panic!("{text:?} should be malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_cadvisor_page_yields_the_containers_with_cpu_and_memory() {
        let usage = parse(CADVISOR).unwrap();
        assert_eq!(
            usage,
            [
                ContainerUsage {
                    name: "web".into(),
                    cpu_core_nano_seconds: 12_345_678_000,
                    memory_working_set_bytes: 64 << 20,
                    start_time: Some(Timestamp::from_millisecond(1_764_589_990_500).unwrap()),
                    time: at_millis(1_764_590_000_123),
                },
                ContainerUsage {
                    name: "sidecar".into(),
                    cpu_core_nano_seconds: 810_000_000,
                    memory_working_set_bytes: 1000,
                    start_time: None,
                    time: at_millis(1_764_590_000_456),
                },
            ],
            "the pod cgroup, the pause container, the node and a memory-only container are left out"
        );
    }

    #[test]
    fn readiness_is_read_per_container_with_or_without_usage() {
        let text = "\
container_cpu_usage_seconds_total{container=\"web\"} 1
container_memory_working_set_bytes{container=\"web\"} 2
# HELP container_ready Whether the container's readiness probe passes
# TYPE container_ready gauge
container_ready{container=\"web\"} 1
container_ready{container=\"sidecar\"} 0
container_ready{container=\"POD\"} 1
container_ready{container=\"init\"} 1.0e0
";
        let page = parse_page(text).unwrap();
        assert_eq!(page.usage.len(), 1, "readiness adds no usage");
        assert_eq!(
            page.ready,
            BTreeMap::from([
                ("web".to_owned(), true),
                ("sidecar".to_owned(), false),
                ("init".to_owned(), true),
            ])
        );
        assert_eq!(parse(text).unwrap(), page.usage);
        assert!(parse_page(CADVISOR).unwrap().ready.is_empty());
    }

    #[test]
    fn a_readiness_other_than_0_or_1_is_malformed() {
        for value in ["2", "0.6", "-1", "NaN", "+Inf", "yes"] {
            let (line, reason, _) =
                malformed(&format!("# ready\ncontainer_ready{{container=\"web\"}} {value}"));
            assert_eq!(line, 2, "{value}");
            assert!(reason.starts_with("container_ready: "), "{value}: {reason}");
        }
        let (line, reason, _) =
            malformed("container_ready{container=\"web\"} 1\ncontainer_ready{container=\"web\"} 0");
        assert_eq!(line, 2);
        assert!(reason.contains("a second container_ready series"), "{reason}");
    }

    #[test]
    fn the_contract_example_parses() {
        let text = "\
# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"web\"} 12.345678 1764590000123
# HELP container_memory_working_set_bytes Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container=\"web\"} 67108864 1764590000123
# HELP container_start_time_seconds Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container=\"web\"} 1764589990.5
";
        let usage = parse(text).unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].cpu_core_nano_seconds, 12_345_678_000);
        assert_eq!(usage[0].memory_working_set_bytes, 67_108_864);
        assert_eq!(usage[0].start_time.unwrap().as_millisecond(), 1_764_589_990_500);
    }

    #[test]
    fn escaped_label_values_spaces_and_a_trailing_comma_are_accepted() {
        let text = concat!(
            "container_cpu_usage_seconds_total{ pod = \"p\\\\x\" , container=\"we\\\"b\\n\\\\\", } 1\n",
            "container_memory_working_set_bytes{container=\"we\\\"b\\n\\\\\"}\t2\t-1000\r\n",
        );
        let usage = parse(text).unwrap();
        assert_eq!(usage[0].name, "we\"b\n\\");
        assert_eq!(
            (usage[0].cpu_core_nano_seconds, usage[0].memory_working_set_bytes),
            (SECOND, 2)
        );
        assert_eq!(
            usage[0].time,
            at_millis(-1000),
            "without a CPU timestamp, memory's applies"
        );
        assert_eq!(usage[0].start_time, None);
    }

    #[test]
    fn decimal_values_convert_exactly_and_round_to_the_unit() {
        assert_eq!(scaled("12.345678", 9), Ok(12_345_678_000));
        assert_eq!(scaled("1e3", 0), Ok(1000));
        assert_eq!(scaled("+1E+3", 0), Ok(1000));
        assert_eq!(scaled("6.7108864e+07", 0), Ok(67_108_864));
        assert_eq!(scaled("2.5e-9", 9), Ok(3), "half rounds up");
        assert_eq!(scaled("0.4", 0), Ok(0));
        assert_eq!(scaled(".5", 0), Ok(1));
        assert_eq!(scaled("7.", 0), Ok(7));
        assert_eq!(scaled("0.000", 9), Ok(0));
        assert_eq!(scaled("1e-1000000000", 9), Ok(0));
        assert_eq!(scaled("18446744073.709551615", 9), Ok(u64::MAX));
        assert!(
            scaled("18446744073.709551616", 9)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(scaled("1e400", 0).unwrap_err().contains("out of range"));
        assert_eq!(
            scaled("-0", 0).unwrap_err(),
            "-0 is negative",
            "no negative zero either"
        );
    }

    #[test]
    fn bad_values_are_errors_that_name_the_line() {
        let line = |value: &str| {
            format!("# a comment\n\ncontainer_cpu_usage_seconds_total{{container=\"web\"}} {value}\n")
        };
        for (value, reason) in [
            ("NaN", "NaN is not a usage"),
            ("+Inf", "+Inf is not a usage"),
            ("-Inf", "-Inf is not a usage"),
            ("-1", "-1 is negative"),
            ("-1e-3", "is negative"),
            ("twelve", "is not a number"),
            ("1e", "is not a number"),
            ("0x10", "is not a number"),
            ("1_000", "is not a number"),
            ("1 1.5", "is not milliseconds"),
            ("1 99999999999999999999", "is not milliseconds"),
            ("1 9223372036854775807", "is not milliseconds"),
            ("1 2 3", "unexpected \"3\""),
        ] {
            let (number, got, _) = malformed(&line(value));
            assert_eq!(number, 3, "{value}");
            assert!(got.contains(reason), "{value}: {got:?} should say {reason:?}");
        }
        let (_, got, _) = malformed("container_start_time_seconds{container=\"web\"} NaN");
        assert!(got.starts_with("container_start_time_seconds: NaN"), "{got}");
        let (_, got, _) = malformed("container_memory_working_set_bytes{container=\"web\"} +Inf");
        assert!(got.contains("+Inf"), "{got}");
    }

    #[test]
    fn broken_syntax_is_an_error_with_a_short_excerpt() {
        for (text, reason) in [
            ("<!DOCTYPE html>", "expected a metric name"),
            ("9lives 1", "expected a metric name"),
            ("{container=\"web\"} 1", "expected a metric name"),
            ("container_cpu_usage_seconds_total", "expected labels or a value"),
            ("container-cpu 1", "expected labels or a value"),
            (
                "container_cpu_usage_seconds_total{container=\"web\"}",
                "expected a value",
            ),
            (
                "container_cpu_usage_seconds_total{container=\"web} 1",
                "no closing quote",
            ),
            (
                "container_cpu_usage_seconds_total{container=\"w\\eb\"} 1",
                "unknown escape \\e",
            ),
            (
                "container_cpu_usage_seconds_total{container=web} 1",
                "quoted value",
            ),
            ("container_cpu_usage_seconds_total{container} 1", "expected `=`"),
            (
                "container_cpu_usage_seconds_total{container=\"a\" pod=\"b\"} 1",
                "expected `,`",
            ),
            (
                "container_cpu_usage_seconds_total{=\"a\"} 1",
                "expected a label name",
            ),
            (
                "container_cpu_usage_seconds_total{container=\"a\",container=\"b\"} 1",
                "given twice",
            ),
            (
                "container_cpu_usage_seconds_total{container=\"a\"",
                "expected `,` or `}`",
            ),
        ] {
            let (line, got, _) = malformed(text);
            assert_eq!(line, 1);
            assert!(got.contains(reason), "{text}: {got:?} should say {reason:?}");
        }
        let long = format!(
            "container_cpu_usage_seconds_total{{container=\"{}\"}} x",
            "a".repeat(5000)
        );
        let (_, _, excerpt) = malformed(&long);
        assert_eq!(excerpt.chars().count(), LINE_EXCERPT_CHARS + 1);
        assert!(excerpt.ends_with('…'));
        let err = parse(&long).unwrap_err().to_string();
        assert!(err.len() < 300, "the error quotes a short excerpt: {err}");
    }

    #[test]
    fn a_second_series_for_the_same_container_is_an_error() {
        let text = "container_cpu_usage_seconds_total{container=\"web\",cpu=\"cpu00\"} 1\n\
                    container_cpu_usage_seconds_total{container=\"web\",cpu=\"cpu01\"} 2\n";
        let (line, reason, _) = malformed(text);
        assert_eq!(line, 2);
        assert!(reason.contains("the first is at line 1"), "{reason}");
    }

    #[test]
    fn other_families_are_skipped_without_reading_their_values() {
        let text = "machine_memory_bytes NaN\nprocess_cpu_seconds_total{broken 1 2 3 4\n";
        assert_eq!(parse(text).unwrap(), []);
        assert_eq!(parse("").unwrap(), []);
    }

    #[test]
    fn the_metrics_port_comes_from_the_annotation_or_the_default() {
        let with = |value: &str| BTreeMap::from([(METRICS_PORT_ANNOTATION.to_string(), value.to_string())]);
        assert_eq!(metrics_port(&BTreeMap::new(), DEFAULT_METRICS_PORT), Ok(9100));
        assert_eq!(metrics_port(&with("9200"), DEFAULT_METRICS_PORT), Ok(9200));
        assert_eq!(metrics_port(&with(" 65535 "), DEFAULT_METRICS_PORT), Ok(65535));
        for bad in ["0", "65536", "-1", "+80", "http", "", "80.0"] {
            let err = metrics_port(&with(bad), DEFAULT_METRICS_PORT).unwrap_err();
            assert!(
                err.contains(METRICS_PORT_ANNOTATION) && err.contains("9100"),
                "{bad}: {err}"
            );
        }
    }

    /// An HTTP server that answers every connection with `response` (after reading the request
    /// head, which it hands back), then closes it.
    async fn agent_answering(
        response: Vec<u8>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                // The client may hang up early (a refused body): that is the point of some tests.
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            }
        });
        (addr, received)
    }

    fn answer(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut response = format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n").into_bytes();
        response.extend_from_slice(body);
        response
    }

    fn client() -> AgentClient {
        AgentClient::new(Duration::from_secs(10))
    }

    #[test]
    fn a_scrape_can_run_on_any_worker_thread() {
        fn send<T: Send + 'static>(_: &T) {}
        let client = client();
        let scrape = async move { client.scrape(SocketAddr::from(([127, 0, 0, 1], 9))).await };
        send(&scrape);
    }

    #[tokio::test]
    async fn a_scrape_gets_slash_metrics_and_parses_it() {
        let body = "container_cpu_usage_seconds_total{container=\"web\"} 2.5 1764590000123\n\
                    container_memory_working_set_bytes{container=\"web\"} 67108864 1764590000123\n";
        let headers = format!(
            "content-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n",
            body.len()
        );
        let (addr, mut heads) = agent_answering(answer("200 OK", &headers, body.as_bytes())).await;
        let usage = client().scrape(addr).await.unwrap();
        assert_eq!(
            (
                usage[0].name.as_str(),
                usage[0].cpu_core_nano_seconds,
                usage[0].memory_working_set_bytes
            ),
            ("web", 2_500_000_000, 64 << 20)
        );
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /metrics http/1.1\r\n"), "{head}");
        assert!(head.contains("accept: text/plain; version=0.0.4"), "{head}");
    }

    #[tokio::test]
    async fn a_503_means_not_running_and_other_statuses_are_kept() {
        let (addr, _) = agent_answering(answer(
            "503 Service Unavailable",
            "",
            b"instance is Pending\nmore",
        ))
        .await;
        match client().scrape(addr).await {
            Err(AgentError::NotRunning { addr: at, message }) => {
                assert_eq!((at, message.as_str()), (addr, "instance is Pending"));
            }
            other => panic!("expected NotRunning, got {other:?}"),
        }
        let long = "x".repeat(100_000);
        let (addr, _) = agent_answering(answer("404 Not Found", "", long.as_bytes())).await;
        match client().scrape(addr).await {
            Err(AgentError::Status { status, message, .. }) => {
                assert_eq!(status, 404);
                assert!(message.len() < 300, "only an excerpt: {} bytes", message.len());
            }
            other => panic!("expected Status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_over_four_mebibytes_is_refused_with_or_without_a_length() {
        let announced = format!("content-length: {}\r\n", MAX_BODY_BYTES + 1);
        let (addr, _) = agent_answering(answer("200 OK", &announced, b"")).await;
        assert!(matches!(
            client().scrape(addr).await,
            Err(AgentError::TooLarge {
                limit: MAX_BODY_BYTES,
                ..
            })
        ));
        let line = "container_cpu_usage_seconds_total{container=\"web\"} 1\n";
        let body = line.repeat(MAX_BODY_BYTES / line.len() + 1);
        let (addr, _) = agent_answering(answer("200 OK", "", body.as_bytes())).await;
        assert!(matches!(
            client().scrape(addr).await,
            Err(AgentError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_body_that_is_not_utf8_is_malformed_at_its_line() {
        let body = b"# fine\ncontainer_cpu_usage_seconds_total{container=\"w\xffb\"} 1\n";
        let (addr, _) = agent_answering(answer("200 OK", "", body)).await;
        match client().scrape(addr).await {
            Err(AgentError::Malformed {
                line,
                reason,
                excerpt,
            }) => {
                assert_eq!(line, 2);
                assert!(reason.contains("UTF-8"));
                assert!(excerpt.starts_with("container_cpu_usage_seconds_total{container=\"w\u{fffd}b\""));
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_a_silent_agent_times_out() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        assert!(matches!(
            client().scrape(closed).await,
            Err(AgentError::Unreachable { addr, .. }) if addr == closed
        ));

        let cut_short = answer("200 OK", "content-length: 1000\r\n", b"container_cpu");
        let (addr, _) = agent_answering(cut_short).await;
        assert!(matches!(
            client().scrape(addr).await,
            Err(AgentError::Unreachable { .. })
        ));

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let timeout = Duration::from_millis(200);
        let err = AgentClient::new(timeout).scrape(addr).await.unwrap_err();
        assert!(
            matches!(err, AgentError::Timeout { timeout: t, .. } if t == timeout),
            "{err:?}"
        );
        drop(silent);
    }

    /// What a well-behaved agent writes, with the optional parts chosen by the generator.
    fn render(usage: &[ContainerUsage], extra_label_first: bool) -> String {
        let escape = |name: &str| {
            name.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let labels = |name: &str| {
            if extra_label_first {
                format!("{{namespace=\"default\",container=\"{}\"}}", escape(name))
            } else {
                format!("{{container=\"{}\",pod=\"p\"}}", escape(name))
            }
        };
        let time =
            |time: Option<Timestamp>| time.map_or(String::new(), |t| format!(" {}", t.as_millisecond()));
        let mut text = format!("# HELP {CPU_FAMILY} x\n# TYPE {CPU_FAMILY} counter\n");
        for u in usage {
            let ns = u.cpu_core_nano_seconds;
            text += &format!(
                "{CPU_FAMILY}{} {}.{:09}{}\n",
                labels(&u.name),
                ns / SECOND,
                ns % SECOND,
                time(u.time)
            );
        }
        text += "\nmachine_cpu_cores 4\n";
        for u in usage {
            text += &format!(
                "{MEMORY_FAMILY}{} {}{}\n",
                labels(&u.name),
                u.memory_working_set_bytes,
                time(u.time)
            );
        }
        for u in usage {
            if let Some(start) = u.start_time {
                let ns = start.as_nanosecond();
                let seconds = ns / i128::from(SECOND);
                let fraction = ns % i128::from(SECOND);
                text += &format!("{START_FAMILY}{} {seconds}.{fraction:09}\n", labels(&u.name));
            }
        }
        text
    }

    fn usage_strategy() -> impl Strategy<Value = Vec<ContainerUsage>> {
        let one = (
            "[a-zA-Z0-9_\\-\"\\\\\n .{}=,]{1,12}",
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(0i128..=i128::from(u64::MAX)),
            proptest::option::of(-1_000_000_000_000i64..=4_102_444_800_000),
        )
            .prop_map(|(name, cpu, memory, start, time)| ContainerUsage {
                name,
                cpu_core_nano_seconds: cpu,
                memory_working_set_bytes: memory,
                start_time: start.map(|ns| Timestamp::from_nanosecond(ns).unwrap()),
                time: time.map(|ms| Timestamp::from_millisecond(ms).unwrap()),
            });
        proptest::collection::vec(one, 0..6).prop_map(|mut usage| {
            let mut seen = std::collections::HashSet::new();
            usage.retain(|u| u.name != "POD" && seen.insert(u.name.clone()));
            usage
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_misses(
            text in "(container_(cpu_usage_seconds_total|memory_working_set_bytes|start_time_seconds)\
                     [{}a-z=\",\\\\ .eE+\\-0-9#\t]{0,40}\n?){0,4}"
        ) {
            let _ = parse(&text);
        }

        #[test]
        fn well_formed_text_round_trips(usage in usage_strategy(), extra_label_first in any::<bool>()) {
            let text = render(&usage, extra_label_first);
            prop_assert_eq!(parse(&text).unwrap(), usage, "{}", text);
        }
    }
}
