//! `/containerLogs` as the kubelet serves it: the `v1.PodLogOptions` query parameters, checked
//! the way `ValidatePodLogOptions` checks them, and the body: one line per line break,
//! optionally prefixed with its time in the kubelet's fixed-width RFC 3339 form, cut at exactly
//! `limitBytes`, and sent line by line so `kubectl logs -f` sees each line when it is written.

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use jiff::Timestamp;

use crate::backend::{LogOptions, LogStream};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The kubelet answers 400 when the query cannot be decoded.
    #[error("query parameter {name}={value:?}: {reason}")]
    Undecodable {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    /// And 422 when it decodes but is not a valid PodLogOptions.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A parsed `/containerLogs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    pub options: LogOptions,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

/// Reads the query the apiserver forwards from `kubectl logs`. Unknown parameters are ignored, as
/// the kubelet's parameter codec ignores them; a repeated parameter counts with its first value.
pub fn parse_query(pairs: &[(String, String)]) -> Result<LogRequest> {
    let first = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    // The legacy `tail` parameter wins over `tailLines`; `tail=all` means no limit.
    let tail = match first("tail") {
        Some("all") => None,
        Some(tail) => Some(("tail", tail)),
        None => first("tailLines").map(|value| ("tailLines", value)),
    };
    let tail_lines = tail.map(|(name, value)| integer(name, value)).transpose()?;
    let since_seconds = first("sinceSeconds")
        .map(|value| integer("sinceSeconds", value))
        .transpose()?;
    let limit_bytes = first("limitBytes")
        .map(|value| integer("limitBytes", value))
        .transpose()?;
    let since_time = first("sinceTime")
        .filter(|value| !value.is_empty())
        .map(|value| {
            value.parse::<Timestamp>().map_err(|_| Error::Undecodable {
                name: "sinceTime",
                value: value.to_owned(),
                reason: "expected an RFC 3339 time such as 2026-01-02T15:04:05Z",
            })
        })
        .transpose()?;
    let follow = boolean("follow", first("follow"))?;
    let previous = boolean("previous", first("previous"))?;
    let timestamps = boolean("timestamps", first("timestamps"))?;
    match first("stream") {
        None | Some("") | Some("All") => {}
        Some(other) => {
            return Err(Error::Invalid(format!(
                "stream {other:?}: this node keeps a container's stdout and stderr as one log; ask for All"
            )));
        }
    }

    if tail_lines.is_some_and(|n| n < 0) {
        return Err(Error::Invalid(
            "tailLines: must be greater than or equal to 0".into(),
        ));
    }
    if limit_bytes.is_some_and(|n| n < 1) {
        return Err(Error::Invalid("limitBytes: must be greater than 0".into()));
    }
    if since_seconds.is_some_and(|n| n < 1) {
        return Err(Error::Invalid("sinceSeconds: must be greater than 0".into()));
    }
    if since_seconds.is_some() && since_time.is_some() {
        return Err(Error::Invalid(
            "at most one of sinceTime or sinceSeconds may be specified".into(),
        ));
    }
    let unsigned = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
    Ok(LogRequest {
        options: LogOptions {
            tail_lines: unsigned(tail_lines),
            since_seconds: unsigned(since_seconds),
            since_time,
            previous,
            follow,
            limit_bytes: unsigned(limit_bytes),
        },
        timestamps,
        limit_bytes: unsigned(limit_bytes),
    })
}

fn integer(name: &'static str, value: &str) -> Result<i64> {
    value.trim().parse().map_err(|_| Error::Undecodable {
        name,
        value: value.to_owned(),
        reason: "expected an integer",
    })
}

/// Go's `strconv.ParseBool`, which the kubelet's parameter codec uses; absent or empty is false.
fn boolean(name: &'static str, value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(Error::Undecodable {
            name,
            value: other.to_owned(),
            reason: "expected true or false",
        }),
    }
}

/// The kubelet's `timestamps=true` prefix: RFC 3339 in UTC with exactly nine fractional digits,
/// so prefixes line up and sort as text.
pub fn format_timestamp(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

/// The response body for a log stream: each line as one chunk (so it is flushed on its own),
/// stopping after `limit_bytes` bytes, mid-line if that is where the limit falls, as the kubelet's
/// limit writer does. A backend error ends the body early: the status line has been sent.
pub fn body(
    lines: LogStream,
    timestamps: bool,
    limit_bytes: Option<u64>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let budget = limit_bytes.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    futures::stream::unfold(
        (lines, budget, false),
        move |(mut lines, budget, done)| async move {
            if done || budget == Some(0) {
                return None;
            }
            match lines.next().await? {
                Ok(line) => {
                    let mut chunk = String::with_capacity(line.text.len() + 32);
                    if timestamps && let Some(time) = line.time {
                        chunk.push_str(&format_timestamp(time));
                        chunk.push(' ');
                    }
                    chunk.push_str(&line.text);
                    chunk.push('\n');
                    let mut bytes = chunk.into_bytes();
                    let budget = budget.map(|left| {
                        bytes.truncate(left);
                        left - bytes.len()
                    });
                    Some((Ok(Bytes::from(bytes)), (lines, budget, false)))
                }
                Err(error) => {
                    tracing::debug!(%error, "log stream ended by the backend");
                    Some((Ok(Bytes::new()), (lines, budget, true)))
                }
            }
        },
    )
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{self, LogLine};

    fn query(text: &str) -> Vec<(String, String)> {
        text.split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (pair.to_owned(), String::new()),
            })
            .collect()
    }

    #[test]
    fn kubectl_logs_options_are_read_from_the_query() {
        let request = parse_query(&query(
            "follow=true&tailLines=2&timestamps=true&limitBytes=100&previous=1&sinceSeconds=30",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            request,
            LogRequest {
                options: LogOptions {
                    tail_lines: Some(2),
                    since_seconds: Some(30),
                    since_time: None,
                    previous: true,
                    follow: true,
                    limit_bytes: Some(100),
                },
                timestamps: true,
                limit_bytes: Some(100),
            }
        );
    }

    #[test]
    fn since_time_is_an_rfc3339_time() {
        let request = parse_query(&query("sinceTime=2026-03-01T10:00:00Z")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            request.options.since_time.map(|t| t.to_string()),
            Some("2026-03-01T10:00:00Z".to_owned())
        );
        let error = parse_query(&query("sinceTime=yesterday")).err();
        assert!(
            matches!(
                error,
                Some(Error::Undecodable {
                    name: "sinceTime",
                    ..
                })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn the_legacy_tail_parameter_wins_and_all_means_everything() {
        let request = parse_query(&query("tail=5&tailLines=9")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.options.tail_lines, Some(5));
        let request = parse_query(&query("tail=all&tailLines=9")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.options.tail_lines, None);
    }

    #[test]
    fn values_the_kubelet_rejects_are_rejected_with_the_reason() {
        for (text, needle) in [
            ("tailLines=-1", "tailLines"),
            ("limitBytes=0", "limitBytes"),
            ("sinceSeconds=0", "sinceSeconds"),
            ("sinceSeconds=5&sinceTime=2026-03-01T10:00:00Z", "at most one"),
        ] {
            match parse_query(&query(text)) {
                Err(error @ Error::Invalid(_)) => {
                    assert!(error.to_string().contains(needle), "{text}: {error}")
                }
                other => panic!("{text}: expected a validation error, got {other:?}"),
            }
        }
        for text in ["tailLines=two", "follow=yes", "limitBytes=1e3"] {
            assert!(
                matches!(parse_query(&query(text)), Err(Error::Undecodable { .. })),
                "{text}"
            );
        }
    }

    fn lines(texts: &[(&str, Option<&str>)]) -> LogStream {
        let items: Vec<backend::Result<LogLine>> = texts
            .iter()
            .map(|(text, time)| {
                Ok(LogLine {
                    time: time.map(|t| t.parse().unwrap_or_else(|e| panic!("{e}"))),
                    text: (*text).to_owned(),
                })
            })
            .collect();
        futures::stream::iter(items).boxed()
    }

    async fn collect(body: impl Stream<Item = Result<Bytes, std::io::Error>>) -> (Vec<Bytes>, String) {
        let chunks: Vec<Bytes> = body.map(|c| c.unwrap_or_else(|e| panic!("{e}"))).collect().await;
        let text = chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        (chunks, text)
    }

    #[tokio::test]
    async fn each_line_is_its_own_chunk_with_the_kubelets_timestamp_when_asked() {
        let source = [
            ("web log line 0", Some("2026-03-01T10:00:00Z")),
            ("web log line 1", Some("2026-03-01T10:00:01.5Z")),
        ];
        let (chunks, text) = collect(body(lines(&source), true, None)).await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            text,
            "2026-03-01T10:00:00.000000000Z web log line 0\n2026-03-01T10:00:01.500000000Z web log line 1\n"
        );
        let (_, text) = collect(body(lines(&source), false, None)).await;
        assert_eq!(text, "web log line 0\nweb log line 1\n");
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_stream_at_exactly_that_many_bytes() {
        let source = [("abcdef", None), ("ghijkl", None), ("mnopqr", None)];
        let (_, text) = collect(body(lines(&source), false, Some(10))).await;
        assert_eq!(text, "abcdef\nghi");
        let (_, text) = collect(body(lines(&source), false, Some(7))).await;
        assert_eq!(text, "abcdef\n");
    }

    #[tokio::test]
    async fn a_backend_error_ends_the_body_after_the_lines_before_it() {
        let items: Vec<backend::Result<LogLine>> = vec![
            Ok(LogLine {
                time: None,
                text: "first".into(),
            }),
            Err(backend::Error::new(
                backend::ErrorKind::Unavailable,
                "cloud throttled",
            )),
            Ok(LogLine {
                time: None,
                text: "never".into(),
            }),
        ];
        let (_, text) = collect(body(futures::stream::iter(items).boxed(), false, None)).await;
        assert_eq!(text, "first\n");
    }
}
