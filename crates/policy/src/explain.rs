//! The report behind `tke-resilience explain pod`: everything the policy looked at for one pod
//! and what it concluded, as text for people ([`fmt::Display`]) or JSON for machines
//! ([`Serialize`]). Fetching the objects is the CLI's job; this module only assembles.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::decision::{BurstDecision, PlacementInput, decide};
use crate::eligibility::Eligibility;
use crate::local_replicas::LOCAL_REPLICAS;
use crate::reason::{Reason, Violation};
use crate::switch::{DecidedBy, Switch, SwitchMode, SwitchSetting};
use crate::workload::{WorkloadRef, controlling_owner, namespace_of};

/// What `explain` knows. Unlike the scheduler it usually cannot tell whether a local node fits,
/// so `local_node_fits` may be unknown and the report then says what happens either way.
#[derive(Debug, Clone, Copy)]
pub struct ExplainInput<'a> {
    pub pod: &'a Pod,
    pub global: &'a SwitchSetting,
    pub mode: SwitchMode,
    pub eligibility: &'a Eligibility,
    pub local_count: u32,
    pub local_node_fits: Option<bool>,
}

/// One switch as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchReport {
    pub value: Switch,
    /// Where it was read and what it said, in words.
    pub source: String,
    pub warning: Option<String>,
}

impl SwitchReport {
    fn of(setting: &SwitchSetting) -> SwitchReport {
        SwitchReport {
            value: setting.value,
            source: setting.to_string(),
            warning: setting.warning().map(|warning| warning.to_string()),
        }
    }
}

/// The switches and what they allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchesReport {
    pub mode: SwitchMode,
    pub global: SwitchReport,
    pub local: SwitchReport,
    pub burst_allowed: bool,
    pub decided_by: DecidedBy,
    pub because: String,
}

/// `LOCAL_REPLICAS` and the count it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalReplicasReport {
    /// As read; `None` when absent or invalid.
    pub value: Option<u32>,
    /// The annotation as written.
    pub raw: Option<String>,
    pub local_count: u32,
}

/// One eligibility rule and how the pod fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    pub code: Reason,
    pub rule: &'static str,
    pub passed: bool,
    pub messages: Vec<String>,
}

/// Where the pod goes, when whether a local node fits may be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Placement {
    Local,
    Cloud,
    LocalOnly,
    /// Local if a local node fits, otherwise the cloud; shown when fit is unknown.
    LocalFirst,
}

/// The decision part of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionReport {
    pub local_node_fits: Option<bool>,
    pub placement: Placement,
    /// Why the pod is `LocalOnly`; empty otherwise.
    pub reasons: Vec<Violation>,
    pub summary: String,
}

/// Everything `explain pod` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub namespace: String,
    pub pod: String,
    pub switches: SwitchesReport,
    pub workload: Option<WorkloadRef>,
    pub local_replicas: LocalReplicasReport,
    pub eligible: bool,
    pub rules: Vec<RuleReport>,
    pub decision: DecisionReport,
    /// Every bad value the policy had to ignore, the global switch's included.
    pub warnings: Vec<String>,
}

/// Assembles the report for one pod.
pub fn explain(input: &ExplainInput<'_>) -> Explanation {
    // Unknown fit is decided as "fits": if that is Local, no fit would be Cloud (the pod is
    // allowed and eligible), which is what LocalFirst says; any other answer does not depend on fit.
    let chosen = decide(&PlacementInput {
        pod: input.pod,
        global: input.global,
        mode: input.mode,
        eligibility: input.eligibility,
        local_count: input.local_count,
        local_node_fits: input.local_node_fits.unwrap_or(true),
    });
    let placement = match (&chosen.decision, input.local_node_fits) {
        (BurstDecision::LocalOnly { .. }, _) => Placement::LocalOnly,
        (BurstDecision::Cloud, _) => Placement::Cloud,
        (BurstDecision::Local, Some(_)) => Placement::Local,
        (BurstDecision::Local, None) => Placement::LocalFirst,
    };
    let summary = match (placement, chosen.local_replicas) {
        (Placement::LocalFirst, Some(wanted)) => format!(
            "local count {} is below {LOCAL_REPLICAS} {wanted}, so the pod goes local if a local node fits, \
             otherwise to the cloud",
            input.local_count
        ),
        (Placement::LocalFirst, None) => {
            format!("no {LOCAL_REPLICAS}: the pod goes local if a local node fits, otherwise to the cloud")
        }
        _ => chosen.summary(input.local_count),
    };
    let reasons = match &chosen.decision {
        BurstDecision::LocalOnly { reasons } => reasons.clone(),
        _ => Vec::new(),
    };

    let rules = Reason::ELIGIBILITY_RULES
        .iter()
        .map(|&code| {
            let messages: Vec<String> = input
                .eligibility
                .violations_of(code)
                .map(|violation| violation.message.clone())
                .collect();
            RuleReport {
                code,
                rule: code.rule(),
                passed: messages.is_empty(),
                messages,
            }
        })
        .collect();

    let warnings = input
        .global
        .warning()
        .map(|warning| format!("{}: {warning}", input.global.location()))
        .into_iter()
        .chain(chosen.warnings.iter().map(ToString::to_string))
        .collect();

    Explanation {
        namespace: namespace_of(input.pod).to_owned(),
        pod: input.pod.metadata.name.clone().unwrap_or_default(),
        switches: SwitchesReport {
            mode: input.mode,
            global: SwitchReport::of(input.global),
            local: SwitchReport::of(&chosen.local_switch),
            burst_allowed: chosen.permission.allowed,
            decided_by: chosen.permission.decided_by,
            because: chosen.permission.because.clone(),
        },
        workload: controlling_owner(input.pod),
        local_replicas: LocalReplicasReport {
            value: chosen.local_replicas,
            raw: input
                .pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(LOCAL_REPLICAS))
                .cloned(),
            local_count: input.local_count,
        },
        eligible: input.eligibility.is_eligible(),
        rules,
        decision: DecisionReport {
            local_node_fits: input.local_node_fits,
            placement,
            reasons,
            summary,
        },
        warnings,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |flag: bool| if flag { "yes" } else { "no" };
        writeln!(f, "Pod:            {}/{}", self.namespace, self.pod)?;
        let mode = match self.switches.mode {
            SwitchMode::Seed => "seed table",
            SwitchMode::LocalOverrides => "local overrides global",
        };
        writeln!(f, "Switches:       {mode}")?;
        writeln!(f, "  global:       {}", self.switches.global.source)?;
        writeln!(f, "  local:        {}", self.switches.local.source)?;
        writeln!(
            f,
            "  burst allowed: {} ({})",
            yes_no(self.switches.burst_allowed),
            self.switches.because
        )?;
        match &self.workload {
            Some(workload) => writeln!(f, "Workload:       {workload} (uid {})", workload.uid)?,
            None => writeln!(f, "Workload:       none (no controlling owner reference)")?,
        }
        let wanted = match (self.local_replicas.value, &self.local_replicas.raw) {
            (Some(value), _) => value.to_string(),
            (None, Some(_)) => "invalid, ignored".to_owned(),
            (None, None) => "not set".to_owned(),
        };
        writeln!(
            f,
            "{LOCAL_REPLICAS}: {wanted} (local count {})",
            self.local_replicas.local_count
        )?;
        writeln!(
            f,
            "Eligibility:    {}",
            if self.eligible { "eligible" } else { "not eligible" }
        )?;
        for rule in &self.rules {
            let verdict = if rule.passed { "pass" } else { "FAIL" };
            writeln!(f, "  {verdict} {:<24} {}", rule.code.as_str(), rule.rule)?;
            for message in &rule.messages {
                writeln!(f, "       {message}")?;
            }
        }
        let placement = match self.decision.placement {
            Placement::Local => "Local",
            Placement::Cloud => "Cloud",
            Placement::LocalOnly => "LocalOnly",
            Placement::LocalFirst => "LocalFirst",
        };
        writeln!(f, "Decision:       {placement} - {}", self.decision.summary)?;
        if !self.decision.reasons.is_empty() {
            let codes: Vec<&str> = self
                .decision
                .reasons
                .iter()
                .map(|reason| reason.reason.as_str())
                .collect();
            writeln!(f, "  reasons:      {}", codes.join(", "))?;
        }
        // Eligibility messages are listed under their rules above; the switch's is not.
        for reason in self
            .decision
            .reasons
            .iter()
            .filter(|reason| reason.reason == Reason::BurstDisabled)
        {
            writeln!(f, "  {reason}")?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "Warnings:")?;
            for warning in &self.warnings {
                writeln!(f, "  {warning}")?;
            }
        }
        Ok(())
    }
}
