//! The `LOCAL_REPLICAS: N` annotation: how many of a workload's pods stay on local nodes before
//! the rest may burst. This module only reads it; counting lives in [`crate::workload`] and the
//! decision in [`crate::decision`].

use k8s_openapi::api::core::v1::Pod;

use crate::quote::quoted;

/// Pod-template annotation with the number of replicas to keep local.
pub const LOCAL_REPLICAS: &str = "LOCAL_REPLICAS";

pub type Result<T, E = InvalidLocalReplicas> = std::result::Result<T, E>;

/// A `LOCAL_REPLICAS` value that is not a non-negative decimal integer. Callers treat the
/// annotation as unset and report this once per workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLocalReplicas {
    #[error("LOCAL_REPLICAS is empty; it must be a non-negative decimal integer, so it is ignored")]
    Empty,
    #[error(
        "LOCAL_REPLICAS value {} is not a non-negative decimal integer (digits only, no sign), so it is ignored",
        quoted(value)
    )]
    NotDecimal { value: String },
    #[error(
        "LOCAL_REPLICAS value {} is larger than {}, so it is ignored",
        quoted(value),
        u32::MAX
    )]
    TooLarge { value: String },
}

/// Reads `LOCAL_REPLICAS`: ASCII digits only after trimming whitespace (leading zeros allowed,
/// no sign, at most `u32::MAX`). Absent is `Ok(None)`.
pub fn parse_local_replicas(value: Option<&str>) -> Result<Option<u32>> {
    let Some(value) = value else { return Ok(None) };
    let digits = value.trim();
    if digits.is_empty() {
        return Err(InvalidLocalReplicas::Empty);
    }
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(InvalidLocalReplicas::NotDecimal {
            value: value.to_owned(),
        });
    }
    digits
        .parse::<u32>()
        .map(Some)
        .map_err(|_| InvalidLocalReplicas::TooLarge {
            value: value.to_owned(),
        })
}

/// The pod's `LOCAL_REPLICAS` annotation, read with [`parse_local_replicas`].
pub fn local_replicas(pod: &Pod) -> Result<Option<u32>> {
    parse_local_replicas(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(LOCAL_REPLICAS))
            .map(String::as_str),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replicas_is_a_non_negative_decimal_integer() {
        assert_eq!(parse_local_replicas(None), Ok(None));
        assert_eq!(parse_local_replicas(Some("1")), Ok(Some(1)));
        assert_eq!(parse_local_replicas(Some("0")), Ok(Some(0)));
        assert_eq!(parse_local_replicas(Some(" 10\t")), Ok(Some(10)));
        assert_eq!(parse_local_replicas(Some("007")), Ok(Some(7)));
        assert_eq!(parse_local_replicas(Some("4294967295")), Ok(Some(u32::MAX)));
    }

    #[test]
    fn malformed_local_replicas_is_an_error_naming_the_value() {
        for bad in ["abc", "-1", "+1", "1.5", "1e3", "0x10", "1 2", "١"] {
            let error = parse_local_replicas(Some(bad)).expect_err(bad);
            assert!(
                matches!(error, InvalidLocalReplicas::NotDecimal { .. }),
                "{bad}: {error:?}"
            );
            assert!(error.to_string().contains(&format!("{bad:?}")), "{bad}: {error}");
        }
        assert_eq!(parse_local_replicas(Some("  ")), Err(InvalidLocalReplicas::Empty));
        let too_large = parse_local_replicas(Some("4294967296")).expect_err("overflow");
        assert!(matches!(too_large, InvalidLocalReplicas::TooLarge { .. }));
        assert!(too_large.to_string().contains("4294967296"), "{too_large}");
    }
}
