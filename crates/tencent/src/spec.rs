//! Standard CPU/memory specifications of EKS container instances and the documented rule that maps a
//! pod's resources to one (reference/tencent-cloud.md §3.1–3.2): the smallest standard spec whose CPU
//! and memory both cover the pod, raising the CPU when the memory needs it. Exact integer arithmetic
//! (millicores, MiB), so `0.25` cores or `0.5Gi` never suffer float rounding.

use std::fmt;

const MIB: u64 = 1 << 20;
const GIB_IN_MIB: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "{cpu_millis}m CPU with {memory_mib}Mi memory exceeds the largest standard specification (16 cores, 64Gi)"
    )]
    TooLarge { cpu_millis: u64, memory_mib: u64 },
    #[error("{cpu} cores with {memory_gib}Gi is not a standard specification; {hint}")]
    NotStandard {
        cpu: String,
        memory_gib: String,
        hint: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One standard specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spec {
    pub cpu_millis: u32,
    pub memory_mib: u32,
}

impl Spec {
    /// When no container asks for anything.
    pub const DEFAULT: Spec = Spec {
        cpu_millis: 1000,
        memory_mib: 2 * GIB_IN_MIB,
    };

    /// The API's `Cpu` field, in cores.
    pub fn cpu_cores(self) -> f64 {
        f64::from(self.cpu_millis) / 1000.0
    }

    /// The API's `Memory` field, in GiB.
    pub fn memory_gib(self) -> f64 {
        f64::from(self.memory_mib) / f64::from(GIB_IN_MIB)
    }

    /// Every standard specification, smallest CPU first, then smallest memory.
    pub fn all() -> impl Iterator<Item = Spec> {
        ROWS.iter().flat_map(|row| {
            row.memory_mib().map(|memory_mib| Spec {
                cpu_millis: row.cpu_millis,
                memory_mib,
            })
        })
    }

    pub fn is_standard(self) -> bool {
        Self::all().any(|spec| spec == self)
    }

    /// The specification named by the API's float fields, if it is a standard one.
    pub fn from_api(cpu_cores: f64, memory_gib: f64) -> Option<Spec> {
        let cpu_millis = exact_u32(cpu_cores * 1000.0)?;
        let memory_mib = exact_u32(memory_gib * f64::from(GIB_IN_MIB))?;
        Some(Spec {
            cpu_millis,
            memory_mib,
        })
        .filter(|spec| spec.is_standard())
    }

    /// The smallest standard specification covering the totals (see [`pod_totals`]); nothing asked
    /// for at all gives [`Spec::DEFAULT`].
    pub fn for_totals(totals: Totals) -> Result<Spec> {
        if totals.cpu_millis == 0 && totals.memory_bytes == 0 {
            return Ok(Self::DEFAULT);
        }
        ROWS.iter()
            .filter(|row| u64::from(row.cpu_millis) >= totals.cpu_millis)
            .find_map(|row| {
                row.memory_mib()
                    .find(|&memory_mib| u64::from(memory_mib) * MIB >= totals.memory_bytes)
                    .map(|memory_mib| Spec {
                        cpu_millis: row.cpu_millis,
                        memory_mib,
                    })
            })
            .ok_or(Error::TooLarge {
                cpu_millis: totals.cpu_millis,
                memory_mib: totals.memory_bytes.div_ceil(MIB),
            })
    }

    /// Checks a specification the user named (the `cpu`/`mem` annotations); the error lists what
    /// that CPU allows.
    pub fn standard(cpu_millis: u32, memory_mib: u32) -> Result<Spec> {
        let spec = Spec {
            cpu_millis,
            memory_mib,
        };
        if spec.is_standard() {
            return Ok(spec);
        }
        let hint = match ROWS.iter().find(|row| row.cpu_millis == cpu_millis) {
            Some(row) => {
                let allowed: Vec<String> = row.memory_mib().map(format_gib).collect();
                format!(
                    "{} cores allows {}Gi",
                    format_cores(cpu_millis),
                    allowed.join(", ")
                )
            }
            None => {
                let allowed: Vec<String> = ROWS.iter().map(|row| format_cores(row.cpu_millis)).collect();
                format!("standard CPU sizes are {} cores", allowed.join(", "))
            }
        };
        Err(Error::NotStandard {
            cpu: format_cores(cpu_millis),
            memory_gib: format_gib(memory_mib),
            hint,
        })
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}C/{}GiB",
            format_cores(self.cpu_millis),
            format_gib(self.memory_mib)
        )
    }
}

fn exact_u32(value: f64) -> Option<u32> {
    let rounded = value.round();
    ((value - rounded).abs() < 1e-6 && (0.0..=f64::from(u32::MAX)).contains(&rounded))
        .then_some(rounded as u32)
}

fn format_cores(millis: u32) -> String {
    trim_decimal(f64::from(millis) / 1000.0)
}

fn format_gib(mib: u32) -> String {
    trim_decimal(f64::from(mib) / f64::from(GIB_IN_MIB))
}

fn trim_decimal(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One CPU size and the memory sizes it allows.
struct Row {
    cpu_millis: u32,
    memory: Memory,
}

enum Memory {
    List(&'static [u32]),
    /// Whole GiB from `min` to `max`.
    GibRange {
        min: u32,
        max: u32,
    },
}

impl Row {
    fn memory_mib(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match &self.memory {
            Memory::List(values) => Box::new(values.iter().copied()),
            Memory::GibRange { min, max } => Box::new((*min..=*max).map(|gib| gib * GIB_IN_MIB)),
        }
    }
}

/// The pay-as-you-go table (super-node documentation, "0.25C–16C").
const ROWS: &[Row] = &[
    Row {
        cpu_millis: 250,
        memory: Memory::List(&[512, 1024, 2048]),
    },
    Row {
        cpu_millis: 500,
        memory: Memory::List(&[1024, 2048, 3072, 4096]),
    },
    Row {
        cpu_millis: 1000,
        memory: Memory::GibRange { min: 1, max: 8 },
    },
    Row {
        cpu_millis: 2000,
        memory: Memory::GibRange { min: 4, max: 16 },
    },
    Row {
        cpu_millis: 4000,
        memory: Memory::GibRange { min: 8, max: 32 },
    },
    Row {
        cpu_millis: 8000,
        memory: Memory::GibRange { min: 16, max: 32 },
    },
    Row {
        cpu_millis: 12000,
        memory: Memory::GibRange { min: 24, max: 48 },
    },
    Row {
        cpu_millis: 16000,
        memory: Memory::GibRange { min: 32, max: 64 },
    },
];

/// One container's resources as the caller resolved them; 0 means "not set".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_request_millis: u64,
    pub cpu_limit_millis: u64,
    pub memory_request_bytes: u64,
    pub memory_limit_bytes: u64,
}

/// What the pod needs in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The documented rule: per resource, the larger of the sum of requests and the largest single limit;
/// init containers are totalled the same way and the larger of the two totals wins.
pub fn pod_totals(containers: &[ContainerResources], init_containers: &[ContainerResources]) -> Totals {
    let total = |group: &[ContainerResources]| {
        let sum = |get: fn(&ContainerResources) -> u64| group.iter().map(get).fold(0u64, u64::saturating_add);
        let max = |get: fn(&ContainerResources) -> u64| group.iter().map(get).max().unwrap_or(0);
        Totals {
            cpu_millis: sum(|c| c.cpu_request_millis).max(max(|c| c.cpu_limit_millis)),
            memory_bytes: sum(|c| c.memory_request_bytes).max(max(|c| c.memory_limit_bytes)),
        }
    };
    let (main, init) = (total(containers), total(init_containers));
    Totals {
        cpu_millis: main.cpu_millis.max(init.cpu_millis),
        memory_bytes: main.memory_bytes.max(init.memory_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GI: u64 = 1 << 30;

    fn spec(cpu_millis: u32, memory_gib: f64) -> Spec {
        Spec {
            cpu_millis,
            memory_mib: (memory_gib * 1024.0) as u32,
        }
    }

    fn totals(cpu_millis: u64, memory_bytes: u64) -> Totals {
        Totals {
            cpu_millis,
            memory_bytes,
        }
    }

    #[test]
    fn the_documented_worked_example_needs_four_cores_and_eight_gib() {
        // c1 requests 2C/4Gi with limits 4C/4Gi, c2 requests 1C/2Gi: CPU max(3, 4) = 4, memory
        // max(6, 4) = 6Gi, below the 4-core minimum of 8Gi.
        let c1 = ContainerResources {
            cpu_request_millis: 2000,
            cpu_limit_millis: 4000,
            memory_request_bytes: 4 * GI,
            memory_limit_bytes: 4 * GI,
        };
        let c2 = ContainerResources {
            cpu_request_millis: 1000,
            memory_request_bytes: 2 * GI,
            ..Default::default()
        };
        let pod = pod_totals(&[c1, c2], &[]);
        assert_eq!(pod, totals(4000, 6 * GI));
        assert_eq!(Spec::for_totals(pod).unwrap(), spec(4000, 8.0));
    }

    #[test]
    fn a_pod_asking_for_nothing_gets_one_core_and_two_gib() {
        assert_eq!(
            Spec::for_totals(pod_totals(&[ContainerResources::default()], &[])).unwrap(),
            spec(1000, 2.0)
        );
    }

    #[test]
    fn memory_alone_picks_the_smallest_cpu_that_allows_it() {
        assert_eq!(Spec::for_totals(totals(0, 8 * GI)).unwrap(), spec(1000, 8.0));
        assert_eq!(Spec::for_totals(totals(0, 512 << 20)).unwrap(), spec(250, 0.5));
    }

    #[test]
    fn cpu_alone_gets_the_smallest_memory_of_that_cpu() {
        assert_eq!(Spec::for_totals(totals(2000, 0)).unwrap(), spec(2000, 4.0));
        assert_eq!(Spec::for_totals(totals(100, 0)).unwrap(), spec(250, 0.5));
    }

    #[test]
    fn memory_inside_the_range_rounds_up_to_the_next_size() {
        assert_eq!(
            Spec::for_totals(totals(1000, 1536 << 20)).unwrap(),
            spec(1000, 2.0)
        );
        assert_eq!(Spec::for_totals(totals(250, 700 << 20)).unwrap(), spec(250, 1.0));
    }

    #[test]
    fn memory_beyond_the_range_raises_the_cpu() {
        // 1 core allows at most 8Gi; 9Gi needs 2 cores. 8 cores allow at most 32Gi; 40Gi needs 12.
        assert_eq!(Spec::for_totals(totals(1000, 9 * GI)).unwrap(), spec(2000, 9.0));
        assert_eq!(
            Spec::for_totals(totals(8000, 40 * GI)).unwrap(),
            spec(12000, 40.0)
        );
    }

    #[test]
    fn init_containers_win_when_they_need_more() {
        let app = ContainerResources {
            cpu_request_millis: 500,
            memory_request_bytes: GI,
            ..Default::default()
        };
        let init = ContainerResources {
            cpu_limit_millis: 2000,
            memory_limit_bytes: 3 * GI,
            ..Default::default()
        };
        assert_eq!(pod_totals(&[app], &[init]), totals(2000, 3 * GI));
    }

    #[test]
    fn more_than_the_largest_spec_is_an_error_naming_the_need() {
        let err = Spec::for_totals(totals(17000, GI)).unwrap_err();
        assert_eq!(
            err,
            Error::TooLarge {
                cpu_millis: 17000,
                memory_mib: 1024
            }
        );
        assert!(Spec::for_totals(totals(1000, 65 * GI)).is_err());
    }

    #[test]
    fn api_floats_are_recognised_only_for_standard_specs() {
        assert_eq!(Spec::from_api(0.25, 0.5), Some(spec(250, 0.5)));
        assert_eq!(Spec::from_api(4.0, 8.0), Some(spec(4000, 8.0)));
        assert_eq!(Spec::from_api(4.0, 6.0), None);
        assert_eq!(Spec::from_api(3.0, 8.0), None);
        assert_eq!(Spec::from_api(f64::NAN, 1.0), None);
        assert_eq!(Spec::from_api(-1.0, 1.0), None);
    }

    #[test]
    fn a_non_standard_named_spec_explains_what_is_allowed() {
        let err = Spec::standard(4000, 6 * 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "4 cores with 6Gi is not a standard specification; 4 cores allows 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32Gi"
        );
        let err = Spec::standard(3000, 8 * 1024).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("standard CPU sizes are 0.25, 0.5, 1, 2, 4, 8, 12, 16 cores"),
            "{err}"
        );
        assert_eq!(spec(250, 0.5).to_string(), "0.25C/0.5GiB");
    }

    proptest! {
        #[test]
        fn the_chosen_spec_is_the_smallest_standard_one_that_covers_the_pod(
            cpu_millis in 0u64..=16_000,
            memory_bytes in 0u64..=64 * GI,
        ) {
            let need = totals(cpu_millis, memory_bytes);
            let chosen = Spec::for_totals(need).unwrap();
            prop_assert!(chosen.is_standard());
            if cpu_millis > 0 || memory_bytes > 0 {
                let covers = |s: &Spec| u64::from(s.cpu_millis) >= cpu_millis && u64::from(s.memory_mib) * MIB >= memory_bytes;
                prop_assert!(covers(&chosen));
                let smallest = Spec::all().filter(covers).min().unwrap();
                prop_assert_eq!(chosen, smallest);
            }
        }

        #[test]
        fn more_than_sixteen_cores_never_fits(cpu_millis in 16_001u64..1_000_000, memory_bytes in 0u64..GI) {
            prop_assert!(Spec::for_totals(totals(cpu_millis, memory_bytes)).is_err());
        }
    }
}
