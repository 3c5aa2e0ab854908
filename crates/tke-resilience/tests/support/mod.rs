//! Shared end-to-end support: start our components as real `tke-resilience` processes next to a test
//! bed control plane. One file per component, each owned by that component's tests.
// Each test binary uses only part of the support code.
#![allow(dead_code, unused_imports)]

pub mod admission;
pub mod chart;
pub mod cloudsim;
pub mod eklet;
pub mod extender;
pub mod kubectl;
pub mod terminal;

/// The `tke-resilience` binary under test, built by cargo for this test run.
pub fn binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_tke-resilience"))
}
