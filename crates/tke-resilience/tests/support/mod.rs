//! Shared end-to-end support: start our components as real `tke-resilience` processes next to a test
//! bed control plane, through the test bed's launchers (`tke_testbed::components`), and the
//! constants and fixtures the tests share. One file per component, each owned by that component's
//! tests; [`PATIENCE`] and [`binary`] here.
// Each test binary uses only part of the support code.
#![allow(dead_code, unused_imports)]

pub mod admission;
pub mod chart;
pub mod cloudsim;
pub mod eklet;
pub mod extender;
pub mod kubectl;
pub mod terminal;

/// How long anything in these tests may take before it counts as failed; generous for a busy
/// 2-core machine, never a performance threshold.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(180);

/// The `tke-resilience` binary under test, built by cargo for this test run.
pub fn binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_tke-resilience"))
}
