//! Starting `tke-resilience extender` for end-to-end tests.
