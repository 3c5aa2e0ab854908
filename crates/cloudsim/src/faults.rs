//! What can go wrong on purpose, and what was counted. [`Faults`] is the JSON of
//! `POST /admin/faults` (and of the CLI's fault flags): random error rates per action, added latency,
//! sold-out subnets, and deterministic "fail the next N calls" entries for tests. [`Stats`] is the JSON
//! of `GET /admin/stats`.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The key of `error_rates` and `fail_next.action` that matches every action.
pub const ANY_ACTION: &str = "*";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Per action name (or `*`): the share of calls refused with throttling or an internal error.
    pub error_rates: BTreeMap<String, ErrorRates>,
    /// Added before every API call is answered.
    pub latency_ms: u64,
    /// Creates in these subnets fail with `ResourcesSoldOut`.
    pub sold_out_subnets: BTreeSet<String>,
    /// Consumed in order: the first entry matching the action fails the call and counts down.
    pub fail_next: Vec<FailNext>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorRates {
    /// Probability (0–1) of `RequestLimitExceeded`.
    pub throttle: f64,
    /// Probability (0–1) of `InternalError`.
    pub internal_error: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNext {
    /// An action name or `*`.
    pub action: String,
    /// The error code to answer with, e.g. `RequestLimitExceeded` or `InternalError`.
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// An injected failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub code: String,
    pub message: String,
}

impl Faults {
    /// Checks the values a client sent to the admin endpoint.
    pub fn validate(&self) -> Result<(), String> {
        for (action, rates) in &self.error_rates {
            let total = rates.throttle + rates.internal_error;
            if !(0.0..=1.0).contains(&rates.throttle)
                || !(0.0..=1.0).contains(&rates.internal_error)
                || total > 1.0
            {
                return Err(format!(
                    "error_rates[{action:?}]: rates must be within 0..1 and sum to at most 1"
                ));
            }
        }
        if let Some(entry) = self.fail_next.iter().find(|entry| entry.code.trim().is_empty()) {
            return Err(format!("fail_next for {:?}: the code is empty", entry.action));
        }
        Ok(())
    }

    /// Decides whether this call of `action` fails, consuming a `fail_next` entry if one matches.
    pub fn draw(&mut self, action: &str, rng: &mut impl Rng) -> Option<Injected> {
        if let Some(index) = self
            .fail_next
            .iter()
            .position(|entry| entry.count > 0 && (entry.action == action || entry.action == ANY_ACTION))
        {
            let entry = &mut self.fail_next[index];
            entry.count -= 1;
            let injected = Injected {
                code: entry.code.clone(),
                message: entry
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("cloudsim injected {}", entry.code)),
            };
            if entry.count == 0 {
                self.fail_next.remove(index);
            }
            return Some(injected);
        }
        let rates = self
            .error_rates
            .get(action)
            .or_else(|| self.error_rates.get(ANY_ACTION))?;
        let roll: f64 = rng.random();
        if roll < rates.throttle {
            Some(Injected {
                code: "RequestLimitExceeded".into(),
                message: "The number of requests exceeds the frequency limit (cloudsim injected).".into(),
            })
        } else if roll < rates.throttle + rates.internal_error {
            Some(Injected {
                code: "InternalError".into(),
                message: "Internal error (cloudsim injected).".into(),
            })
        } else {
            None
        }
    }
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Instances created.
    pub creates: u64,
    /// Instances deleted.
    pub deletes: u64,
    pub live_instances: usize,
    /// Creates whose instance name was already live: each is a pod that got a second sandbox.
    pub duplicate_names: u64,
    /// API calls per `X-TC-Action`, refused ones included.
    pub requests: BTreeMap<String, u64>,
    /// Error answers per code.
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    pub fn requests_for(&self, action: &str) -> u64 {
        self.requests.get(action).copied().unwrap_or(0)
    }

    pub fn errors_for(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn fail_next_entries_fail_exactly_count_calls_of_their_action() {
        let mut faults: Faults = serde_json::from_str(
            r#"{"fail_next":[{"action":"DescribeEKSContainerInstances","code":"RequestLimitExceeded","count":2}]}"#,
        )
        .unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(faults.draw("CreateEKSContainerInstances", &mut rng), None);
        for _ in 0..2 {
            assert_eq!(
                faults
                    .draw("DescribeEKSContainerInstances", &mut rng)
                    .unwrap()
                    .code,
                "RequestLimitExceeded"
            );
        }
        assert_eq!(faults.draw("DescribeEKSContainerInstances", &mut rng), None);
        assert!(faults.fail_next.is_empty());
    }

    #[test]
    fn error_rates_inject_roughly_their_share() {
        let mut faults = Faults::default();
        faults.error_rates.insert(
            ANY_ACTION.into(),
            ErrorRates {
                throttle: 0.25,
                internal_error: 0.25,
            },
        );
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<Option<Injected>> = (0..4000).map(|_| faults.draw("X", &mut rng)).collect();
        let count = |code: &str| draws.iter().flatten().filter(|i| i.code == code).count();
        assert!(
            (800..1200).contains(&count("RequestLimitExceeded")),
            "{}",
            count("RequestLimitExceeded")
        );
        assert!(
            (800..1200).contains(&count("InternalError")),
            "{}",
            count("InternalError")
        );
    }

    #[test]
    fn rates_outside_zero_to_one_and_unknown_fields_are_refused() {
        let mut faults = Faults::default();
        faults.error_rates.insert(
            "X".into(),
            ErrorRates {
                throttle: 0.8,
                internal_error: 0.4,
            },
        );
        assert!(faults.validate().unwrap_err().contains("error_rates[\"X\"]"));
        assert!(serde_json::from_str::<Faults>(r#"{"latency":5}"#).is_err());
    }
}
