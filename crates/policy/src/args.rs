//! The policy flags every component takes, defined once so that `eklet`, `admission`,
//! `scheduler-extender` and `explain` read the same names with the same defaults.

use crate::eligibility::{AnnotationMatch, DEFAULT_FORBIDDEN_NAMESPACES, EligibilityConfig};
use crate::switch::{DEFAULT_EKS_CONFIG_NAMESPACE, SwitchMode};

/// `#[command(flatten)]` this into a component's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Namespace of the `eks-config` ConfigMap that holds the global AUTO_SCALE_EKS switch.
    #[arg(long, value_name = "NAMESPACE", default_value = DEFAULT_EKS_CONFIG_NAMESPACE)]
    pub eks_config_namespace: String,

    /// Let a workload's own AUTO_SCALE_EKS win over the global switch (the chart README's rule),
    /// instead of the seed's table.
    #[arg(long)]
    pub local_switch_overrides: bool,

    /// Namespaces whose pods never burst (comma-separated or repeated).
    #[arg(
        long = "forbidden-namespaces",
        value_name = "NS[,NS...]",
        value_delimiter = ',',
        default_values_t = DEFAULT_FORBIDDEN_NAMESPACES.map(String::from)
    )]
    pub forbidden_namespaces: Vec<String>,

    /// An annotation that marks a fixed-IP pod, as KEY or KEY=VALUE (repeatable; replaces the
    /// defaults when given).
    #[arg(long = "fixed-ip-annotation", value_name = "KEY[=VALUE]")]
    pub fixed_ip_annotations: Vec<AnnotationMatch>,

    /// Refuse fixed-IP pods (the chart's start-up flag to allow them is `--fixed-ip-check=false`).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub fixed_ip_check: bool,
}

impl PolicyArgs {
    pub fn eligibility(&self) -> EligibilityConfig {
        let defaults = EligibilityConfig::default();
        EligibilityConfig {
            // `--forbidden-namespaces "a, b"` means a and b.
            forbidden_namespaces: self
                .forbidden_namespaces
                .iter()
                .map(|ns| ns.trim().to_owned())
                .filter(|ns| !ns.is_empty())
                .collect(),
            fixed_ip_annotations: match self.fixed_ip_annotations.is_empty() {
                true => defaults.fixed_ip_annotations,
                false => self.fixed_ip_annotations.clone(),
            },
            fixed_ip_check: self.fixed_ip_check,
        }
    }

    pub fn switch_mode(&self) -> SwitchMode {
        SwitchMode::from_local_switch_overrides(self.local_switch_overrides)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    #[test]
    fn defaults_are_the_seed_rules() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.policy.eligibility(), EligibilityConfig::default());
        assert_eq!(cli.policy.switch_mode(), SwitchMode::Seed);
        assert_eq!(cli.policy.eks_config_namespace, "kube-system");
    }

    #[test]
    fn flags_change_namespaces_fixed_ip_and_switch_mode() {
        let cli = Cli::parse_from([
            "x",
            "--forbidden-namespaces=infra,ops",
            "--fixed-ip-annotation=example.com/ip=static",
            "--fixed-ip-check=false",
            "--local-switch-overrides",
        ]);
        let config = cli.policy.eligibility();
        assert_eq!(config.forbidden_namespaces, ["infra", "ops"]);
        assert_eq!(
            config.fixed_ip_annotations,
            [AnnotationMatch::with_value("example.com/ip", "static")]
        );
        assert!(!config.fixed_ip_check);
        assert_eq!(cli.policy.switch_mode(), SwitchMode::LocalOverrides);
    }

    #[test]
    fn spaces_around_listed_namespaces_are_ignored() {
        let cli = Cli::parse_from(["x", "--forbidden-namespaces=infra, ops ,"]);
        assert_eq!(cli.policy.eligibility().forbidden_namespaces, ["infra", "ops"]);
    }

    #[test]
    fn an_empty_fixed_ip_annotation_key_is_refused() {
        assert!(Cli::try_parse_from(["x", "--fixed-ip-annotation==v"]).is_err());
    }
}
