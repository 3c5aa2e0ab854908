//! `cloudsim`: a local server that speaks the EKS container-instance API, for the demo, the tests and the benchmarks.
