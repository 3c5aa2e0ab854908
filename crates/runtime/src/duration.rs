//! The one duration syntax of every flag of every subcommand: Go's (`time.ParseDuration`, what
//! Helm values and kubelet flags use): one or more `<number><unit>` with units `ns`, `us` (`µs`),
//! `ms`, `s`, `m`, `h` — `500ms`, `30s`, `1h30m`, `1.5h`, and a bare `0`. Also accepted, because
//! values files may have them from earlier releases (the scheduler extender took them): spaces
//! between the parts (`1m 30s`) and ISO 8601 (`PT60S`). A bare number other than 0 is refused
//! as Go refuses it — `10` could mean seconds or milliseconds — and so are negative durations.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration such as 500ms, 30s, 2m or 1h30m: {problem}")]
pub struct Error {
    text: String,
    problem: String,
}

/// Parses `text` (see the module documentation).
pub fn parse(text: &str) -> Result<Duration, Error> {
    let fail = |problem: String| Error {
        text: text.to_owned(),
        problem,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(fail("it is empty".into()));
    }
    if trimmed.starts_with('-') {
        return Err(fail("it is negative".into()));
    }
    if trimmed.starts_with(['P', 'p']) {
        let signed: jiff::SignedDuration = trimmed.parse().map_err(|e| fail(format!("{e}")))?;
        return Duration::try_from(signed).map_err(|_| fail("it is negative".into()));
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    if compact == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = compact.as_str();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if number.is_empty() {
            return Err(fail(format!("expected a number before {unit:?}")));
        }
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(fail(format!("{number:?} needs a unit (ms, s, m, h)"))),
            other => {
                return Err(fail(format!(
                    "unknown unit {other:?} (use ns, us, ms, s, m or h)"
                )));
            }
        };
        total = total
            .checked_add(seconds(number, scale).map_err(fail)?)
            .ok_or_else(|| fail("it is too long".into()))?;
        rest = after;
    }
    Ok(total)
}

fn seconds(number: &str, scale: f64) -> Result<Duration, String> {
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| "it is too long".to_owned())
}

/// For `#[arg(value_parser = tke_runtime::duration::flag)]`.
pub fn flag(text: &str) -> Result<Duration, String> {
    parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_helm_values_write_them() {
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse("2m3s4ms"), Ok(Duration::from_millis(123_004)));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
    }

    #[test]
    fn earlier_forms_still_parse() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(
            parse(" 1m 30s "),
            Ok(Duration::from_secs(90)),
            "the extender's spaced form"
        );
        assert_eq!(parse("PT60S"), Ok(Duration::from_secs(60)), "ISO 8601");
        assert_eq!(parse("pt1m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("-5s", "negative"),
            ("10", "needs a unit"),
            ("1.5", "needs a unit"),
            ("5x", "unknown unit \"x\""),
            ("h", "expected a number"),
            ("1h30", "needs a unit"),
            ("1.2.3s", "not a number"),
            ("99999999999999999999h", "too long"),
        ] {
            match parse(text) {
                Ok(d) => panic!("{text:?} parsed as {d:?}"),
                Err(e) => assert!(e.to_string().contains(says), "{text:?}: {e}"),
            }
        }
    }
}
