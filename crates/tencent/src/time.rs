//! The time strings of the EKSCI API. Responses use Go's `time.Time.String()` form
//! (`2021-06-24 03:32:43.424977053 +0000 UTC`) and sometimes RFC 3339; an unset time is Go's zero time
//! `0001-01-01 00:00:00 +0000 UTC`. Requests (`StartTime` of the log action) use RFC 3339.

use jiff::Timestamp;

const GO_LAYOUT: &str = "%Y-%m-%d %H:%M:%S%.f %z";

/// Formats like Go's `time.Time.String()` in UTC, as the API does.
pub fn format_api_time(timestamp: Timestamp) -> String {
    format!("{} UTC", timestamp.strftime(GO_LAYOUT))
}

/// Parses either form the API uses. `None` for the empty string, Go's zero time and anything
/// unparsable: every caller treats those alike, as "no time known".
pub fn parse_api_time(value: &str) -> Option<Timestamp> {
    let value = value.trim();
    if value.is_empty() || value.starts_with("0001-01-01") {
        return None;
    }
    if let Ok(timestamp) = value.parse::<Timestamp>() {
        return Some(timestamp);
    }
    // Go appends the zone abbreviation after the numeric offset; the offset alone is authoritative.
    let without_zone_name = value.rsplit_once(' ').map_or(value, |(head, _)| head);
    jiff::fmt::strtime::parse(GO_LAYOUT, without_zone_name)
        .ok()?
        .to_timestamp()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_string_form_of_the_official_examples_parses_to_the_same_instant() {
        let parsed = parse_api_time("2021-06-24 03:32:43.424977053 +0000 UTC").unwrap();
        assert_eq!(
            parsed,
            "2021-06-24T03:32:43.424977053Z".parse::<Timestamp>().unwrap()
        );
        let whole_second = parse_api_time("2021-06-24 03:32:02 +0000 UTC").unwrap();
        assert_eq!(whole_second.as_second(), 1624505522);
    }

    #[test]
    fn rfc3339_times_parse_too() {
        let parsed = parse_api_time("2024-09-09T00:00:00+00:00").unwrap();
        assert_eq!(parsed, "2024-09-09T00:00:00Z".parse::<Timestamp>().unwrap());
    }

    #[test]
    fn the_zero_time_and_empty_strings_mean_no_time() {
        assert_eq!(parse_api_time("0001-01-01 00:00:00 +0000 UTC"), None);
        assert_eq!(parse_api_time(""), None);
        assert_eq!(parse_api_time("yesterday"), None);
    }

    #[test]
    fn formatting_matches_go_and_round_trips() {
        let instant: Timestamp = "2021-06-24T03:32:43.424977053Z".parse().unwrap();
        assert_eq!(
            format_api_time(instant),
            "2021-06-24 03:32:43.424977053 +0000 UTC"
        );
        let whole: Timestamp = "2021-06-24T03:32:02Z".parse().unwrap();
        assert_eq!(format_api_time(whole), "2021-06-24 03:32:02 +0000 UTC");
        assert_eq!(parse_api_time(&format_api_time(instant)), Some(instant));
    }
}
