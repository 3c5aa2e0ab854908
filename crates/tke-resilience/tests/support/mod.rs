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

/// The `tke-resilience` binary under test: the one cargo built for this test run, or `TKE_BINARY`
/// when set (a release build, for benchmarks).
pub fn binary() -> std::path::PathBuf {
    match std::env::var_os("TKE_BINARY").filter(|path| !path.is_empty()) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::PathBuf::from(env!("CARGO_BIN_EXE_tke-resilience")),
    }
}
