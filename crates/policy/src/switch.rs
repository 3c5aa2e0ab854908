//! The `AUTO_SCALE_EKS` switches: the global one in ConfigMap `eks-config`, the local one in a
//! pod annotation, how their text is read, and the two rules ([`SwitchMode`]) that combine them
//! into "bursting allowed or not", together with the sentence that says why.

use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde::Serialize;

use crate::quote::quoted;

/// Annotation key of the local switch and ConfigMap key of the global one.
pub const AUTO_SCALE_EKS: &str = "AUTO_SCALE_EKS";
/// Name of the ConfigMap holding the global switch.
pub const EKS_CONFIG_NAME: &str = "eks-config";
/// Key of the global switch inside [`EKS_CONFIG_NAME`].
pub const EKS_CONFIG_KEY: &str = AUTO_SCALE_EKS;
/// Namespace of [`EKS_CONFIG_NAME`] unless `--eks-config-namespace` says otherwise.
pub const DEFAULT_EKS_CONFIG_NAMESPACE: &str = "kube-system";

pub type Result<T, E = InvalidSwitch> = std::result::Result<T, E>;

/// A switch value that is neither `true` nor `false`. It counts as [`Switch::Undefined`]; the
/// caller reports it as a Warning event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "AUTO_SCALE_EKS value {} is neither true nor false, so it counts as undefined",
    quoted(value)
)]
pub struct InvalidSwitch {
    /// The text as written.
    pub value: String,
}

/// The value of one switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Switch {
    #[serde(rename = "true")]
    On,
    #[serde(rename = "false")]
    Off,
    /// Absent, or a value that is neither `true` nor `false`.
    #[serde(rename = "undefined")]
    Undefined,
}

impl Switch {
    /// Reads a switch: `true`/`false` in any case, surrounding whitespace ignored; absent is
    /// `Undefined` without complaint; anything else is an error the caller turns into
    /// `Undefined` plus a warning.
    pub fn parse(value: Option<&str>) -> Result<Switch> {
        let Some(value) = value else {
            return Ok(Switch::Undefined);
        };
        let trimmed = value.trim();
        if trimmed.eq_ignore_ascii_case("true") {
            Ok(Switch::On)
        } else if trimmed.eq_ignore_ascii_case("false") {
            Ok(Switch::Off)
        } else {
            Err(InvalidSwitch {
                value: value.to_owned(),
            })
        }
    }

    /// `true`, `false` or `undefined`, as in the seed's table.
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::On => "true",
            Switch::Off => "false",
            Switch::Undefined => "undefined",
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a switch was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchSource {
    /// The global switch, from ConfigMap `eks-config` in this namespace.
    ConfigMap { namespace: String, exists: bool },
    /// The local switch, from the pod's annotations.
    PodAnnotation,
}

/// One switch as read, with its origin, so decisions can say where their answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSetting {
    pub value: Switch,
    pub source: SwitchSource,
    /// The text as written, when the key is present.
    pub raw: Option<String>,
}

impl SwitchSetting {
    /// The global switch from ConfigMap `eks-config` in `namespace`, `None` when it does not
    /// exist. A missing ConfigMap or key is `Undefined`, which the switch table treats exactly
    /// like the documented default "on".
    pub fn global(namespace: &str, config_map: Option<&ConfigMap>) -> SwitchSetting {
        let raw = config_map
            .and_then(|config_map| config_map.data.as_ref())
            .and_then(|data| data.get(EKS_CONFIG_KEY))
            .cloned();
        SwitchSetting::read(
            SwitchSource::ConfigMap {
                namespace: namespace.to_owned(),
                exists: config_map.is_some(),
            },
            raw,
        )
    }

    /// The local switch from the pod's own annotations (copied from the pod template).
    pub fn local(pod: &Pod) -> SwitchSetting {
        let raw = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(AUTO_SCALE_EKS))
            .cloned();
        SwitchSetting::read(SwitchSource::PodAnnotation, raw)
    }

    fn read(source: SwitchSource, raw: Option<String>) -> SwitchSetting {
        let value = Switch::parse(raw.as_deref()).unwrap_or(Switch::Undefined);
        SwitchSetting { value, source, raw }
    }

    /// The complaint to report when the value was present but unreadable.
    pub fn warning(&self) -> Option<InvalidSwitch> {
        Switch::parse(self.raw.as_deref()).err()
    }

    /// Where the value lives, e.g. `ConfigMap kube-system/eks-config` or `pod annotation`.
    pub fn location(&self) -> String {
        match &self.source {
            SwitchSource::ConfigMap { namespace, .. } => format!("ConfigMap {namespace}/{EKS_CONFIG_NAME}"),
            SwitchSource::PodAnnotation => "pod annotation".to_owned(),
        }
    }
}

/// Reads like `AUTO_SCALE_EKS=false in ConfigMap kube-system/eks-config` or
/// `pod annotation AUTO_SCALE_EKS absent (undefined)`.
impl fmt::Display for SwitchSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, &self.raw) {
            (
                SwitchSource::ConfigMap {
                    namespace,
                    exists: false,
                },
                _,
            ) => {
                write!(
                    f,
                    "ConfigMap {namespace}/{EKS_CONFIG_NAME} does not exist (undefined)"
                )
            }
            (SwitchSource::ConfigMap { namespace, .. }, None) => {
                write!(
                    f,
                    "ConfigMap {namespace}/{EKS_CONFIG_NAME} has no {EKS_CONFIG_KEY} key (undefined)"
                )
            }
            (SwitchSource::ConfigMap { namespace, .. }, Some(raw)) => {
                write!(
                    f,
                    "{EKS_CONFIG_KEY}={} in ConfigMap {namespace}/{EKS_CONFIG_NAME}",
                    shown(self.value, raw)
                )
            }
            (SwitchSource::PodAnnotation, None) => {
                write!(f, "pod annotation {AUTO_SCALE_EKS} absent (undefined)")
            }
            (SwitchSource::PodAnnotation, Some(raw)) => {
                write!(f, "pod annotation {AUTO_SCALE_EKS}={}", shown(self.value, raw))
            }
        }
    }
}

fn shown(value: Switch, raw: &str) -> String {
    match value {
        Switch::Undefined => format!("{} (not true or false: undefined)", quoted(raw)),
        _ => value.as_str().to_owned(),
    }
}

/// How the global and the local switch combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchMode {
    /// The seed's table: bursting is allowed unless the global switch is `false` and the local
    /// switch is not `true`. A workload's `false` does not opt it out while the global switch is
    /// on or undefined.
    #[default]
    Seed,
    /// The chart README's rule (`--local-switch-overrides`): a local `true` or `false` takes
    /// precedence over the global switch; without one the global switch decides, and an
    /// undefined global switch allows.
    LocalOverrides,
}

impl SwitchMode {
    /// The mode selected by the `--local-switch-overrides` flag.
    pub fn from_local_switch_overrides(enabled: bool) -> SwitchMode {
        if enabled {
            SwitchMode::LocalOverrides
        } else {
            SwitchMode::Seed
        }
    }
}

/// Which switch the answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    Global,
    Local,
    /// Neither switch said anything that counts: the documented default, on.
    Default,
}

/// Whether bursting is allowed by the switches, which one decided, and why in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BurstPermission {
    pub allowed: bool,
    pub decided_by: DecidedBy,
    pub because: String,
}

/// The switch table on bare values.
pub fn burst_allowed(global: Switch, local: Switch, mode: SwitchMode) -> bool {
    decide(global, local, mode).0
}

fn decide(global: Switch, local: Switch, mode: SwitchMode) -> (bool, DecidedBy) {
    match (mode, global, local) {
        (SwitchMode::Seed, Switch::Off, Switch::On) => (true, DecidedBy::Local),
        (SwitchMode::Seed, Switch::Off, _) => (false, DecidedBy::Global),
        (SwitchMode::Seed, Switch::On, _) => (true, DecidedBy::Global),
        (SwitchMode::Seed, Switch::Undefined, _) => (true, DecidedBy::Default),
        (SwitchMode::LocalOverrides, _, Switch::On) => (true, DecidedBy::Local),
        (SwitchMode::LocalOverrides, _, Switch::Off) => (false, DecidedBy::Local),
        (SwitchMode::LocalOverrides, Switch::On, Switch::Undefined) => (true, DecidedBy::Global),
        (SwitchMode::LocalOverrides, Switch::Off, Switch::Undefined) => (false, DecidedBy::Global),
        (SwitchMode::LocalOverrides, Switch::Undefined, Switch::Undefined) => (true, DecidedBy::Default),
    }
}

/// The switch table on settings, with the explanation `explain` and events show.
pub fn burst_permission(global: &SwitchSetting, local: &SwitchSetting, mode: SwitchMode) -> BurstPermission {
    let (allowed, decided_by) = decide(global.value, local.value, mode);
    let because = match (decided_by, allowed, mode) {
        (DecidedBy::Local, _, SwitchMode::Seed) => {
            format!("{local} overrides {global}")
        }
        (DecidedBy::Local, _, SwitchMode::LocalOverrides) => {
            format!("{local} takes precedence over the global switch ({global})")
        }
        (DecidedBy::Global, false, SwitchMode::Seed) => {
            format!("{global}, and the pod annotation {AUTO_SCALE_EKS} is not true")
        }
        (DecidedBy::Global, _, _) => format!("{global}; {local}"),
        (DecidedBy::Default, _, _) => format!("bursting is on by default: {global}; {local}"),
    };
    let because = if mode == SwitchMode::Seed && allowed && local.value == Switch::Off {
        format!(
            "{because}; in the seed's switch table a pod's false opts out only while the global \
             switch is false (--local-switch-overrides changes that)"
        )
    } else {
        because
    };
    BurstPermission {
        allowed,
        decided_by,
        because,
    }
}
