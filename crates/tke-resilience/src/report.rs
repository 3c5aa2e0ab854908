//! `tke-resilience report`: what the burst used and cost over a past range, from the Prometheus
//! that scrapes eklet.
//!
//! eklet counts the billed size × time of every cloud sandbox in `eklet_cloud_*_total` counters
//! (`tke_eklet::usage`). This asks Prometheus for `increase()` of each over the range, summed by
//! namespace (or by namespace and workload): `increase()` adds up across the counter resets of
//! eklet restarts, and over series that ended in the range (an eklet replaced by another pod).
//!
//! "Cloud pods" are counted in pod-hours, from `eklet_cloud_pod_seconds_total`: one hour of one
//! sandbox running is one pod-hour (3 pods for 20 minutes = 1 pod-hour). eklet exports no count of
//! distinct pods per namespace (it would need pod names as labels), and pod-hours are what the
//! bill is proportional to.
//!
//! The pure part (ranges, price lists, the Prometheus answer, the figures and their formats) is
//! apart from the one HTTP call per counter, so each is tested without a Prometheus.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Prometheus that scrapes eklet, e.g. http://prometheus-operated.monitoring:9090.
    #[arg(long, value_name = "URL")]
    prometheus: String,
    /// How far back to count: a Prometheus duration such as 30d, 12h, 1w or 1h30m (units s, m, h, d, w, y).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_since)]
    since: Since,
    /// One line per namespace, or per namespace and controlling workload.
    #[arg(long, value_enum, default_value_t = By::Namespace)]
    by: By,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// A YAML price list: `core-hour`, `gib-hour`, `gpu-hour` (prices per unit-hour) and `currency`.
    /// The --price-* and --currency flags override what it says.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// Price of one CPU core for one hour.
    #[arg(long, value_name = "PRICE")]
    price_core_hour: Option<f64>,
    /// Price of one GiB of memory for one hour.
    #[arg(long, value_name = "PRICE")]
    price_gib_hour: Option<f64>,
    /// Price of one GPU for one hour.
    #[arg(long, value_name = "PRICE")]
    price_gpu_hour: Option<f64>,
    /// The currency of the prices, shown next to the cost (e.g. CNY).
    #[arg(long)]
    currency: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Namespace,
    Workload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

/// Errors a user can act on, each printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the price list {path}: {source}")]
    PricesUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the price list {path} is not valid: {message}")]
    PricesInvalid { path: PathBuf, message: String },
    #[error("{what} must be a number of 0 or more, not {value}")]
    BadPrice { what: &'static str, value: f64 },
    #[error("--prometheus {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot reach Prometheus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "Prometheus at {url} answered HTTP {status} with an error for `{query}`: {error_type}: {message}"
    )]
    Prometheus {
        url: String,
        status: u16,
        query: String,
        error_type: String,
        message: String,
    },
    #[error("the answer of {url} to `{query}` (HTTP {status}) is not a Prometheus query result: {problem}")]
    NotPrometheus {
        url: String,
        status: u16,
        query: String,
        problem: Problem,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with an answer that should be Prometheus' JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("{0}")]
    Shape(String),
    /// Prometheus' own `"status": "error"` answer.
    #[error("{error_type}: {message}")]
    Refused { error_type: String, message: String },
}

// ---------------------------------------------------------------------------------------------
// The range.

/// `--since`: the text as given (for messages) and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub text: String,
    pub seconds: u64,
}

/// A Prometheus duration: one or more `<number><unit>`, units from the largest down, each at most
/// once (`1h30m`, not `30m1h`); y = 365d, w = 7d as in Prometheus.
pub fn parse_since(text: &str) -> Result<Since, String> {
    const UNITS: [(&str, u64); 6] = [
        ("y", 365 * 86_400),
        ("w", 7 * 86_400),
        ("d", 86_400),
        ("h", 3_600),
        ("m", 60),
        ("s", 1),
    ];
    let bad = |why: &str| format!("{text:?} is not a duration such as 30d, 12h or 1h30m: {why}");
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut rest = text;
    let mut seconds: u64 = 0;
    // Units must come in UNITS' order; `next` is the first one still allowed.
    let mut next = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        if rest.starts_with("ms") {
            return Err(bad("milliseconds are too short for a usage report"));
        }
        let Some(position) = UNITS.iter().position(|(unit, _)| rest.starts_with(unit)) else {
            return Err(bad("each number needs a unit: s, m, h, d, w or y"));
        };
        if position < next {
            return Err(bad("units go from the largest to the smallest, each once"));
        }
        next = position + 1;
        rest = &rest[UNITS[position].0.len()..];
        seconds = number
            .checked_mul(UNITS[position].1)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(|| bad("it is too long"))?;
    }
    if seconds == 0 {
        return Err(bad("it must be longer than 0s"));
    }
    Ok(Since {
        text: text.to_owned(),
        seconds,
    })
}

// ---------------------------------------------------------------------------------------------
// Prices.

/// A price list: per core-hour, per GiB-hour, per GPU-hour, and the currency. Unset prices count
/// nothing; without any price there is no cost.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Prices {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_hour: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gib_hour: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_hour: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl Prices {
    /// The price list in a YAML file's text (`path` for messages).
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Prices> {
        let invalid = |message: String| Error::PricesInvalid {
            path: path.to_owned(),
            message,
        };
        // An empty file (or one with only comments) is an empty price list.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Prices::default());
        }
        // serde-saphyr follows its message with a snippet of the file; the message names the line.
        let prices: Prices = serde_saphyr::from_str(text).map_err(|e| {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default();
            invalid(first.trim_start_matches("error: ").to_owned())
        })?;
        prices.validated().map_err(|e| invalid(e.to_string()))
    }

    /// `self` with every price `over` sets replaced.
    pub fn overridden_by(self, over: Prices) -> Prices {
        Prices {
            core_hour: over.core_hour.or(self.core_hour),
            gib_hour: over.gib_hour.or(self.gib_hour),
            gpu_hour: over.gpu_hour.or(self.gpu_hour),
            currency: over.currency.or(self.currency),
        }
    }

    pub fn validated(self) -> Result<Prices> {
        for (what, value) in [
            ("the price per core-hour", self.core_hour),
            ("the price per GiB-hour", self.gib_hour),
            ("the price per GPU-hour", self.gpu_hour),
        ] {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(Error::BadPrice { what, value });
            }
        }
        Ok(self)
    }

    fn any(&self) -> bool {
        self.core_hour.is_some() || self.gib_hour.is_some() || self.gpu_hour.is_some()
    }

    /// The estimated cost of `usage`, when there is any price.
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        self.any().then(|| {
            usage.cpu_core_hours() * self.core_hour.unwrap_or(0.0)
                + usage.memory_gib_hours() * self.gib_hour.unwrap_or(0.0)
                + usage.gpu_hours() * self.gpu_hour.unwrap_or(0.0)
        })
    }

    /// Resources that were used but have no price, so the cost leaves them out.
    pub fn unpriced(&self, usage: &Usage) -> Vec<&'static str> {
        if !self.any() {
            return Vec::new();
        }
        [
            ("CPU", usage.cpu_core_seconds, self.core_hour),
            ("memory", usage.memory_byte_seconds, self.gib_hour),
            ("GPU", usage.gpu_seconds, self.gpu_hour),
        ]
        .into_iter()
        .filter(|(_, used, price)| *used > 0.0 && price.is_none())
        .map(|(what, _, _)| what)
        .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The counters and what Prometheus answers.

/// The usage counters eklet exports (`tke_eklet::usage`), in the order of [`Usage`]'s fields.
pub const COUNTERS: [&str; 4] = [
    "eklet_cloud_pod_seconds_total",
    "eklet_cloud_cpu_core_seconds_total",
    "eklet_cloud_memory_byte_seconds_total",
    "eklet_cloud_gpu_seconds_total",
];

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What the sandboxes of one group (or all) used over the range, in the counters' units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub pod_seconds: f64,
    pub cpu_core_seconds: f64,
    pub memory_byte_seconds: f64,
    pub gpu_seconds: f64,
}

impl Usage {
    fn field(&mut self, counter: usize) -> &mut f64 {
        match counter {
            0 => &mut self.pod_seconds,
            1 => &mut self.cpu_core_seconds,
            2 => &mut self.memory_byte_seconds,
            _ => &mut self.gpu_seconds,
        }
    }

    fn add(&mut self, other: &Usage) {
        self.pod_seconds += other.pod_seconds;
        self.cpu_core_seconds += other.cpu_core_seconds;
        self.memory_byte_seconds += other.memory_byte_seconds;
        self.gpu_seconds += other.gpu_seconds;
    }

    fn is_zero(&self) -> bool {
        self.pod_seconds == 0.0
            && self.cpu_core_seconds == 0.0
            && self.memory_byte_seconds == 0.0
            && self.gpu_seconds == 0.0
    }

    pub fn pod_hours(&self) -> f64 {
        self.pod_seconds / 3600.0
    }
    pub fn cpu_core_hours(&self) -> f64 {
        self.cpu_core_seconds / 3600.0
    }
    pub fn memory_gib_hours(&self) -> f64 {
        self.memory_byte_seconds / 3600.0 / GIB
    }
    pub fn gpu_hours(&self) -> f64 {
        self.gpu_seconds / 3600.0
    }
}

impl By {
    /// The labels a line is keyed by.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            By::Namespace => &["namespace"],
            By::Workload => &["namespace", "workload_kind", "workload"],
        }
    }
}

/// The PromQL for one counter: its increase over the range, summed by the grouping labels.
pub fn query(counter: &str, by: By, since: &Since) -> String {
    format!(
        "sum by ({}) (increase({counter}[{}s]))",
        by.labels().join(", "),
        since.seconds
    )
}

/// One sample of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The samples of a `/api/v1/query` answer, or why it is not one.
pub fn parse_vector(body: &[u8]) -> Result<Vec<Sample>, Problem> {
    let shape = |what: &str| Problem::Shape(what.to_owned());
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Problem::NotJson(format!("{e}; it starts {:?}", preview(body))))?;
    match value.get("status").and_then(|s| s.as_str()) {
        Some("success") => {}
        Some("error") => {
            let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            return Err(Problem::Refused {
                error_type: text("errorType"),
                message: text("error"),
            });
        }
        _ => return Err(shape("no \"status\": \"success\" or \"error\"")),
    }
    let data = value.get("data").ok_or_else(|| shape("no \"data\""))?;
    match data.get("resultType").and_then(|t| t.as_str()) {
        Some("vector") => {}
        Some(other) => return Err(Problem::Shape(format!("a {other}, not an instant vector"))),
        None => return Err(shape("no \"data.resultType\"")),
    }
    let results = data
        .get("result")
        .and_then(|r| r.as_array())
        .ok_or_else(|| shape("no \"data.result\" list"))?;
    results
        .iter()
        .map(|sample| {
            let labels = match sample.get("metric") {
                None | Some(serde_json::Value::Null) => BTreeMap::new(),
                Some(serde_json::Value::Object(map)) => map
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect::<Option<BTreeMap<_, _>>>()
                    .ok_or_else(|| shape("a label value that is not a string"))?,
                Some(_) => return Err(shape("\"metric\" is not an object")),
            };
            let text = sample
                .get("value")
                .and_then(|v| v.as_array())
                .and_then(|pair| pair.get(1))
                .and_then(|v| v.as_str())
                .ok_or_else(|| shape("a sample without a [time, \"value\"] pair"))?;
            let number: f64 = text
                .parse()
                .map_err(|_| Problem::Shape(format!("sample value {text:?} is not a number")))?;
            if !number.is_finite() {
                return Err(Problem::Shape(format!("sample value {text:?} is not finite")));
            }
            Ok((labels, number))
        })
        .collect()
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(80)]);
    text.chars().filter(|c| !c.is_control()).collect()
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The figures: one line per group, sorted, and their total.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub since: Since,
    pub by: By,
    pub prices: Prices,
    pub lines: Vec<(Vec<String>, Usage)>,
    pub total: Usage,
}

impl Report {
    /// The report from each counter's samples (in [`COUNTERS`]' order). Groups that used nothing
    /// (a workload whose counters did not move in the range) are left out.
    pub fn new(since: Since, by: By, prices: Prices, samples: [Vec<Sample>; 4]) -> Report {
        let mut groups: BTreeMap<Vec<String>, Usage> = BTreeMap::new();
        for (counter, samples) in samples.iter().enumerate() {
            for (labels, value) in samples {
                let key = by
                    .labels()
                    .iter()
                    .map(|l| labels.get(*l).cloned().unwrap_or_default())
                    .collect();
                // increase() may extrapolate a hair below 0 around a reset; nothing is used back.
                *groups.entry(key).or_default().field(counter) += value.max(0.0);
            }
        }
        let lines: Vec<(Vec<String>, Usage)> = groups.into_iter().filter(|(_, u)| !u.is_zero()).collect();
        let mut total = Usage::default();
        for (_, usage) in &lines {
            total.add(usage);
        }
        Report {
            since,
            by,
            prices,
            lines,
            total,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn empty_message(&self) -> String {
        format!("no cloud usage in the last {}", self.since.text)
    }

    fn currency(&self) -> &str {
        self.prices.currency.as_deref().unwrap_or("")
    }

    /// Aligned columns for people, with a TOTAL line.
    pub fn table(&self) -> String {
        if self.is_empty() {
            return format!("{}\n", self.empty_message());
        }
        let mut header: Vec<String> = match self.by {
            By::Namespace => vec!["NAMESPACE".into()],
            By::Workload => vec!["NAMESPACE".into(), "WORKLOAD".into()],
        };
        header.extend(["POD-HOURS", "CPU CORE-HOURS", "MEMORY GIB-HOURS", "GPU-HOURS"].map(String::from));
        let priced = self.prices.any();
        if priced {
            header.push(match self.currency() {
                "" => "COST".to_owned(),
                currency => format!("COST ({currency})"),
            });
        }
        let row = |names: Vec<String>, usage: &Usage| {
            let mut cells = names;
            cells.extend(
                [
                    usage.pod_hours(),
                    usage.cpu_core_hours(),
                    usage.memory_gib_hours(),
                    usage.gpu_hours(),
                ]
                .map(hours),
            );
            if let Some(cost) = self.prices.cost(usage) {
                cells.push(money(cost));
            }
            cells
        };
        let mut rows = vec![header];
        for (key, usage) in &self.lines {
            let names = match self.by {
                By::Namespace => vec![key[0].clone()],
                By::Workload => vec![
                    key[0].clone(),
                    match (key[1].as_str(), key[2].as_str()) {
                        ("", "") => "(no controller)".to_owned(),
                        (kind, name) => format!("{kind}/{name}"),
                    },
                ],
            };
            rows.push(row(names, usage));
        }
        let mut names = vec!["TOTAL".to_owned()];
        if self.by == By::Workload {
            names.push(String::new());
        }
        rows.push(row(names, &self.total));
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("   ").trim_end());
        }
        out
    }

    /// One object for machines: the range, the prices, each group and the total.
    pub fn json(&self) -> serde_json::Value {
        let figures = |usage: &Usage| {
            let mut object = serde_json::json!({
                "pod_hours": usage.pod_hours(),
                "cpu_core_hours": usage.cpu_core_hours(),
                "memory_gib_hours": usage.memory_gib_hours(),
                "gpu_hours": usage.gpu_hours(),
            });
            if let Some(cost) = self.prices.cost(usage) {
                object["cost"] = cost.into();
            }
            object
        };
        let groups: Vec<serde_json::Value> = self
            .lines
            .iter()
            .map(|(key, usage)| {
                let mut object = figures(usage);
                for (label, value) in self.by.labels().iter().zip(key) {
                    object[*label] = value.clone().into();
                }
                object
            })
            .collect();
        serde_json::json!({
            "since": self.since.text,
            "since_seconds": self.since.seconds,
            "by": self.by,
            "prices": self.prices,
            "groups": groups,
            "total": figures(&self.total),
        })
    }

    /// A header and one line per group, for spreadsheets (which sum on their own: no total line).
    pub fn csv(&self) -> String {
        let mut header: Vec<&str> = self.by.labels().to_vec();
        header.extend(["pod_hours", "cpu_core_hours", "memory_gib_hours", "gpu_hours"]);
        if self.prices.any() {
            header.push("cost");
        }
        let mut out = format!("{}\n", header.join(","));
        for (key, usage) in &self.lines {
            let mut cells: Vec<String> = key.iter().map(|k| csv_field(k)).collect();
            cells.extend(
                [
                    usage.pod_hours(),
                    usage.cpu_core_hours(),
                    usage.memory_gib_hours(),
                    usage.gpu_hours(),
                ]
                .map(|v| v.to_string()),
            );
            if let Some(cost) = self.prices.cost(usage) {
                cells.push(cost.to_string());
            }
            let _ = writeln!(out, "{}", cells.join(","));
        }
        out
    }

    /// What the report prints on stdout in `output`.
    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Table => self.table(),
            Output::Json => format!("{:#}\n", self.json()),
            Output::Csv => self.csv(),
        }
    }
}

/// Hours with three decimals: 180 core-seconds is 0.050.
fn hours(value: f64) -> String {
    format!("{value:.3}")
}

/// Costs with two decimals, or four below one unit (cents of cents add up over a month).
fn money(value: f64) -> String {
    if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// I/O.

/// The price list from `--prices` and the flags.
fn prices(args: &Args) -> Result<Prices> {
    let from_file = match &args.prices {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::PricesUnreadable {
                path: path.clone(),
                source,
            })?;
            Prices::parse(path, &text)?
        }
        None => Prices::default(),
    };
    from_file
        .overridden_by(Prices {
            core_hour: args.price_core_hour,
            gib_hour: args.price_gib_hour,
            gpu_hour: args.price_gpu_hour,
            currency: args.currency.clone(),
        })
        .validated()
}

/// Asks Prometheus at `base` for one instant query.
async fn instant_query(client: &reqwest::Client, base: &str, query: &str) -> Result<Vec<Sample>> {
    let url = format!("{base}/api/v1/query");
    let unreachable = |error: reqwest::Error| Error::Unreachable {
        url: base.to_owned(),
        reason: error_chain(&error.without_url()),
    };
    let response = client
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(unreachable)?;
    parse_vector(&body).map_err(|problem| match problem {
        Problem::Refused { error_type, message } => Error::Prometheus {
            url: base.to_owned(),
            status,
            query: query.to_owned(),
            error_type,
            message,
        },
        problem => Error::NotPrometheus {
            url: base.to_owned(),
            status,
            query: query.to_owned(),
            problem,
        },
    })
}

/// An error and its causes on one line: reqwest's own says only "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Runs the report and prints it; what goes wrong is an [`Error`] for `main` to print.
pub async fn run(args: Args) -> Result<()> {
    let prices = prices(&args)?;
    let base = args.prometheus.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) || reqwest::Url::parse(&base).is_err() {
        return Err(Error::BadUrl {
            url: args.prometheus.clone(),
        });
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Unreachable {
            url: base.clone(),
            reason: error_chain(&e),
        })?;
    let mut samples: [Vec<Sample>; 4] = Default::default();
    for (counter, slot) in COUNTERS.iter().zip(samples.iter_mut()) {
        *slot = instant_query(&client, &base, &query(counter, args.by, &args.since)).await?;
    }
    let report = Report::new(args.since, args.by, prices, samples);
    print!("{}", report.render(args.output));
    if report.is_empty() && args.output != Output::Table {
        eprintln!("{}", report.empty_message());
    }
    let unpriced = report.prices.unpriced(&report.total);
    if !unpriced.is_empty() {
        eprintln!(
            "note: the cost leaves out {} usage, which has no price (--price-core-hour, --price-gib-hour, --price-gpu-hour)",
            unpriced.join(" and ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn since(text: &str) -> Since {
        parse_since(text).unwrap()
    }

    #[test]
    fn durations_are_read_as_prometheus_reads_them() {
        for (text, seconds) in [
            ("30d", 30 * 86_400),
            ("90s", 90),
            ("10m", 600),
            ("12h", 43_200),
            ("1w", 604_800),
            ("1y", 365 * 86_400),
            ("1h30m", 5_400),
            ("1d12h", 129_600),
            ("2w3d4h5m6s", 2 * 604_800 + 3 * 86_400 + 4 * 3_600 + 5 * 60 + 6),
        ] {
            assert_eq!(since(text).seconds, seconds, "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_a_duration_looks_like() {
        for (text, why) in [
            ("", "empty"),
            ("30", "unit"),
            ("d", "number"),
            ("30x", "unit"),
            ("30D", "unit"),
            ("-1d", "number"),
            ("1.5h", "unit"),
            ("30m1h", "largest"),
            ("1h1h", "largest"),
            ("0d", "longer than 0s"),
            ("100ms", "milliseconds"),
            ("99999999999999999999s", "too large"),
            ("999999999999y", "too long"),
            (" 30d", "number"),
        ] {
            let error = parse_since(text).unwrap_err();
            assert!(error.contains("30d, 12h or 1h30m"), "{text}: {error}");
            assert!(error.contains(why), "{text}: {error} (want {why})");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_a_duration_or_an_error_never_a_panic(text in "\\PC{0,12}") {
            let _ = parse_since(&text);
        }

        #[test]
        fn any_answer_is_samples_or_a_problem_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_vector(&body);
        }

        #[test]
        fn any_json_answer_is_samples_or_a_problem_never_a_panic(value in arbitrary_json()) {
            let _ = parse_vector(value.to_string().as_bytes());
            let wrapped = serde_json::json!({"status": "success", "data": value});
            let _ = parse_vector(wrapped.to_string().as_bytes());
            let vector = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [value]}});
            let _ = parse_vector(vector.to_string().as_bytes());
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z\"+.0-9]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("metric".to_owned()),
                        Just("value".to_owned()),
                        Just("resultType".to_owned()),
                        Just("result".to_owned()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const ANSWER: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"namespace":"shop"},"value":[1700000000.1,"180.5"]},
        {"metric":{},"value":[1700000000.1,"2"]}]}}"#;

    #[test]
    fn an_instant_vector_becomes_labelled_samples() {
        let samples = parse_vector(ANSWER.as_bytes()).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].0["namespace"], "shop");
        assert_eq!(samples[0].1, 180.5);
        assert!(samples[1].0.is_empty());
    }

    #[test]
    fn answers_that_are_not_a_query_result_are_named_for_what_is_wrong() {
        let problem = |body: &str| parse_vector(body.as_bytes()).unwrap_err().to_string();
        assert!(
            problem("<html>Grafana</html>").starts_with("not JSON"),
            "{}",
            problem("<html>")
        );
        assert!(problem("").starts_with("not JSON"));
        assert_eq!(problem("{}"), r#"no "status": "success" or "error""#);
        assert_eq!(problem(r#"{"status":"success"}"#), r#"no "data""#);
        assert_eq!(
            problem(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#),
            "a matrix, not an instant vector"
        );
        assert_eq!(
            problem(r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#),
            r#"no "data.result" list"#
        );
        assert_eq!(
            problem(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#
            ),
            r#"sample value "x" is not a number"#
        );
        assert_eq!(
            problem(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#
            ),
            r#"sample value "NaN" is not finite"#
        );
        assert_eq!(
            problem(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"1"]}]}}"#
            ),
            "a label value that is not a string"
        );
        assert_eq!(
            problem(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#
            ),
            r#"a sample without a [time, "value"] pair"#
        );
        assert_eq!(
            parse_vector(br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#).unwrap_err(),
            Problem::Refused {
                error_type: "bad_data".into(),
                message: "parse error".into()
            }
        );
    }

    #[test]
    fn a_price_list_is_read_from_yaml_and_flags_override_it() {
        let path = std::path::Path::new("prices.yaml");
        let file = Prices::parse(
            path,
            "# list prices\ncore-hour: 0.12\ngib-hour: 0.016\ngpu-hour: 2.5\ncurrency: CNY\n",
        )
        .unwrap();
        assert_eq!(
            file,
            Prices {
                core_hour: Some(0.12),
                gib_hour: Some(0.016),
                gpu_hour: Some(2.5),
                currency: Some("CNY".into()),
            }
        );
        let merged = file.overridden_by(Prices {
            core_hour: Some(0.2),
            currency: Some("USD".into()),
            ..Prices::default()
        });
        assert_eq!(merged.core_hour, Some(0.2));
        assert_eq!(merged.gib_hour, Some(0.016));
        assert_eq!(merged.currency.as_deref(), Some("USD"));
        assert_eq!(Prices::parse(path, "# nothing yet\n").unwrap(), Prices::default());
    }

    #[test]
    fn a_bad_price_list_names_the_file_and_the_problem() {
        let path = std::path::Path::new("prices.yaml");
        let error = |text: &str| Prices::parse(path, text).unwrap_err().to_string();
        let typo = error("core-hours: 0.12\n");
        assert!(
            typo.contains("prices.yaml") && typo.contains("core-hours"),
            "{typo}"
        );
        let word = error("core-hour: cheap\n");
        assert!(word.contains("prices.yaml"), "{word}");
        let negative = error("gib-hour: -1\n");
        assert!(
            negative.contains("GiB-hour") && negative.contains("-1"),
            "{negative}"
        );
        assert!(error("- 1\n- 2\n").contains("prices.yaml"));
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// 3 pods of 1 core and 2 GiB for 60 s in `shop`, one 0.5-core pod for an hour in `batch`.
    fn report(by: By, prices: Prices) -> Report {
        let shop = labels(&[
            ("namespace", "shop"),
            ("workload_kind", "Deployment"),
            ("workload", "web"),
        ]);
        let batch = labels(&[("namespace", "batch"), ("workload_kind", ""), ("workload", "")]);
        let key = |l: &BTreeMap<String, String>| {
            by.labels()
                .iter()
                .map(|k| ((*k).to_owned(), l[*k].clone()))
                .collect::<BTreeMap<_, _>>()
        };
        Report::new(
            since("10m"),
            by,
            prices,
            [
                vec![(key(&shop), 180.0), (key(&batch), 3600.0)],
                vec![(key(&shop), 180.0), (key(&batch), 1800.0)],
                vec![(key(&shop), 360.0 * GIB), (key(&batch), 3600.0 * GIB)],
                vec![],
            ],
        )
    }

    fn cny() -> Prices {
        Prices {
            core_hour: Some(0.12),
            gib_hour: Some(0.016),
            gpu_hour: None,
            currency: Some("CNY".into()),
        }
    }

    #[test]
    fn the_table_shows_hours_cost_and_a_total() {
        let table = report(By::Namespace, cny()).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "NAMESPACE   POD-HOURS   CPU CORE-HOURS   MEMORY GIB-HOURS   GPU-HOURS   COST (CNY)",
                "batch       1.000       0.500            1.000              0.000       0.0760",
                "shop        0.050       0.050            0.100              0.000       0.0076",
                "TOTAL       1.050       0.550            1.100              0.000       0.0836",
            ]
        );
        let by_workload = report(By::Workload, Prices::default()).table();
        assert!(
            by_workload.contains("batch       (no controller)"),
            "{by_workload}"
        );
        assert!(
            by_workload.contains("shop        Deployment/web"),
            "{by_workload}"
        );
        assert!(!by_workload.contains("COST"), "no prices, no cost: {by_workload}");
    }

    #[test]
    fn json_and_csv_carry_the_same_figures() {
        let report = report(By::Workload, cny());
        let json = report.json();
        assert_eq!(json["since"], "10m");
        assert_eq!(json["since_seconds"], 600);
        assert_eq!(json["by"], "workload");
        assert_eq!(json["prices"]["currency"], "CNY");
        let shop = &json["groups"][1];
        assert_eq!(shop["namespace"], "shop");
        assert_eq!(shop["workload_kind"], "Deployment");
        assert_eq!(shop["workload"], "web");
        assert_eq!(shop["cpu_core_hours"], 0.05);
        assert_eq!(shop["memory_gib_hours"], 0.1);
        assert!(
            (json["total"]["cost"].as_f64().unwrap() - 0.0836).abs() < 1e-9,
            "{json}"
        );
        let csv = report.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "namespace,workload_kind,workload,pod_hours,cpu_core_hours,memory_gib_hours,gpu_hours,cost"
        );
        assert!(
            lines[2].starts_with("shop,Deployment,web,0.05,0.05,0.1,0,"),
            "{csv}"
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    #[test]
    fn an_empty_range_says_so() {
        let empty = Report::new(since("30d"), By::Namespace, cny(), Default::default());
        assert!(empty.is_empty());
        assert_eq!(empty.table(), "no cloud usage in the last 30d\n");
        assert_eq!(empty.json()["groups"], serde_json::json!([]));
        assert_eq!(
            empty.csv(),
            "namespace,pod_hours,cpu_core_hours,memory_gib_hours,gpu_hours,cost\n"
        );
        // Counters that did not move in the range are no usage either.
        let idle = Report::new(
            since("1h"),
            By::Namespace,
            cny(),
            [
                vec![(labels(&[("namespace", "shop")]), 0.0)],
                vec![],
                vec![],
                vec![],
            ],
        );
        assert!(idle.is_empty());
    }

    #[test]
    fn queries_sum_the_increase_by_the_grouping_labels() {
        assert_eq!(
            query(COUNTERS[1], By::Workload, &since("1h30m")),
            "sum by (namespace, workload_kind, workload) (increase(eklet_cloud_cpu_core_seconds_total[5400s]))"
        );
    }

    #[test]
    fn unpriced_usage_is_named() {
        let report = report(
            By::Namespace,
            Prices {
                core_hour: Some(1.0),
                ..Prices::default()
            },
        );
        assert_eq!(report.prices.unpriced(&report.total), ["memory"]);
        assert!(Prices::default().unpriced(&report.total).is_empty());
    }
}
