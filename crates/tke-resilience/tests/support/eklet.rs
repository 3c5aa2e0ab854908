//! Starting `tke-resilience eklet` for end-to-end tests.
