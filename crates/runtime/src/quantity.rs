//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`), read as the apiserver writes them,
//! for sizing sandboxes and for the downward API's `resourceFieldRef`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi, 512Mi)")]
pub struct Error(pub String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The quantity in base units (cores, bytes, count). Precision is that of `f64`, ample for
/// resource sizes.
pub fn parse(text: &str) -> Result<f64> {
    let invalid = || Error(text.to_owned());
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().map_err(|_| invalid())?;
            10f64.powi(power)
        }
        _ => return Err(invalid()),
    };
    let value = value * multiplier;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    Ok(value)
}

/// CPU in millicores, rounded up as the kubelet does.
pub fn millis(text: &str) -> Result<u64> {
    Ok(round_up(parse(text)? * 1000.0))
}

/// Whole units (bytes, devices), rounded up.
pub fn units(text: &str) -> Result<u64> {
    Ok(round_up(parse(text)?))
}

fn round_up(value: f64) -> u64 {
    // Parsing `0.1` * 1000 gives 100.00000000000001; a tolerance keeps it at 100.
    let rounded = value.round();
    let ceiling = if (value - rounded).abs() < 1e-6 {
        rounded
    } else {
        value.ceil()
    };
    if ceiling >= u64::MAX as f64 {
        u64::MAX
    } else {
        ceiling as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_binary_and_exponent_suffixes_are_understood() {
        assert_eq!(millis("500m"), Ok(500));
        assert_eq!(millis("2"), Ok(2000));
        assert_eq!(millis("0.1"), Ok(100));
        assert_eq!(units("1Gi"), Ok(1 << 30));
        assert_eq!(units("512Mi"), Ok(512 << 20));
        assert_eq!(units("1.5Gi"), Ok(3 << 29));
        assert_eq!(units("1k"), Ok(1000));
        assert_eq!(units("2e3"), Ok(2000));
        assert_eq!(units("128974848"), Ok(128_974_848));
    }

    #[test]
    fn fractions_of_a_unit_round_up() {
        assert_eq!(millis("1.0001m"), Ok(2));
        assert_eq!(units("100m"), Ok(1));
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        for bad in [
            "", "m", "Gi", "1.2.3", "-1", "1Qi", "abc", "1e", "1e+", ".", "1 Gi",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
