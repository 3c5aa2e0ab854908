//! Starting `tke-resilience admission` for end-to-end tests.
