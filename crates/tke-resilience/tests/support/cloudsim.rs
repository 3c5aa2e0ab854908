//! Starting `tke-resilience cloudsim` for end-to-end tests.
