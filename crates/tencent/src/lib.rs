//! A client for the Tencent Cloud EKS container-instance API (TC3-HMAC-SHA256 signed API 3.0). It knows nothing of Kubernetes.
