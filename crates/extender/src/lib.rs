//! The `tke-scheduler` extender: the local-or-cloud filter that kube-scheduler calls over HTTP.
