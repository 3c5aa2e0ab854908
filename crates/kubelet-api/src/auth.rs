//! Who may use the kubelet API, decided as the kubelet decides it (`pkg/kubelet/server/auth.go`,
//! virtual-kubelet's `nodeutil/auth.go`): a client certificate that the TLS layer verified
//! against the client CA names the user (CN) and groups (O); otherwise a bearer token is checked
//! with a TokenReview; the decision is a SubjectAccessReview on `nodes/<subresource>` named after
//! the node, with the verb from the method. Anonymous requests get 401, denied ones 403.
//!
//! Reviews are cached briefly (allowed 10 s, denied 2 s; tokens by their SHA-256, never in
//! clear), so `kubectl logs -f` and a metrics scrape every 15 s cost no apiserver round trip.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    hash::Hash,
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::x509;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The apiserver could not be asked; the request fails instead of being let through.
    #[error("{review}: {message}")]
    Review { review: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An authenticated user, as the apiserver's `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks to do, in SubjectAccessReview terms: `verb` on `nodes/<subresource>`
/// named `node`, core API group, version v1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: String,
    pub subresource: &'static str,
    pub node: String,
}

impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verb={}, resource=nodes, subresource={}, name={}",
            self.verb, self.subresource, self.node
        )
    }
}

/// The apiserver's review APIs: the I/O the decisions depend on.
pub trait Reviews: Send + Sync + 'static {
    /// The user a bearer token belongs to, or `None` when the token is not valid.
    fn review_token(&self, token: &str) -> impl Future<Output = Result<Option<User>>> + Send;

    /// Whether `user` may do `attributes`.
    fn review_access(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// [`Reviews`] through the real apiserver. Needs `create` on `tokenreviews` and
/// `subjectaccessreviews` (ClusterRole `system:auth-delegator`).
#[derive(Clone)]
pub struct KubeReviews {
    client: Client,
}

impl KubeReviews {
    pub fn new(client: Client) -> KubeReviews {
        KubeReviews { client }
    }
}

impl Reviews for KubeReviews {
    async fn review_token(&self, token: &str) -> Result<Option<User>> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::Review {
                review: "TokenReview",
                message: e.to_string(),
            })?;
        let Some(status) = answer.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let info = status.user.unwrap_or_default();
        Ok(info.username.filter(|name| !name.is_empty()).map(|name| User {
            name,
            uid: info.uid.unwrap_or_default(),
            groups: info.groups.unwrap_or_default(),
            extra: info.extra.unwrap_or_default(),
        }))
    }

    async fn review_access(&self, user: &User, attributes: &Attributes) -> Result<bool> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attributes.verb.clone()),
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(attributes.subresource.into()),
                    name: Some(attributes.node.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::Review {
                review: "SubjectAccessReview",
                message: e.to_string(),
            })?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

const ALLOWED_TTL: Duration = Duration::from_secs(10);
const DENIED_TTL: Duration = Duration::from_secs(2);
/// Bounds memory under a flood of distinct tokens.
const CACHE_ENTRIES: usize = 4096;

/// A small TTL map on `tokio::time`, so tests can pause the clock.
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (value, expires) = entries.get(key)?;
        (Instant::now() < *expires).then(|| value.clone())
    }

    fn insert(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

/// The outcome of checking one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(User),
    /// 401: no usable credentials.
    Unauthenticated,
    /// 403, with the kubelet's message naming the user and the attributes.
    Forbidden(String),
    /// 500: a review could not be made.
    Failed(String),
}

/// Authentication and authorisation with their caches.
pub struct Guard<R> {
    reviews: R,
    tokens: Cache<[u8; 32], Option<User>>,
    decisions: Cache<(User, Attributes), bool>,
}

impl<R: Reviews> Guard<R> {
    pub fn new(reviews: R) -> Guard<R> {
        Guard {
            reviews,
            tokens: Cache::new(),
            decisions: Cache::new(),
        }
    }

    /// Who is asking: the verified client certificate's subject first, then a bearer token.
    /// `client_certificate` is the leaf DER the TLS layer verified, if any.
    pub async fn authenticate(
        &self,
        client_certificate: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Result<Option<User>> {
        if let Some(subject) = client_certificate.and_then(x509::subject) {
            return Ok(Some(User {
                name: subject.common_name,
                groups: subject.organizations,
                ..User::default()
            }));
        }
        let Some(token) = authorization.and_then(bearer_token) else {
            return Ok(None);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.tokens.get(&key) {
            return Ok(user);
        }
        let user = self.reviews.review_token(token).await?;
        let ttl = if user.is_some() { ALLOWED_TTL } else { DENIED_TTL };
        self.tokens.insert(key, user.clone(), ttl);
        Ok(user)
    }

    /// Whether `user` may do every one of `required`, where each entry is a list of alternatives
    /// (the first is the specific subresource, later ones fallbacks such as `proxy`).
    pub async fn authorize(
        &self,
        user: &User,
        required: &[Vec<Attributes>],
    ) -> Result<Result<(), Attributes>> {
        for alternatives in required {
            let mut allowed = false;
            for attributes in alternatives {
                if self.allows(user, attributes).await? {
                    allowed = true;
                    break;
                }
            }
            if !allowed && let Some(first) = alternatives.first() {
                return Ok(Err(first.clone()));
            }
        }
        Ok(Ok(()))
    }

    async fn allows(&self, user: &User, attributes: &Attributes) -> Result<bool> {
        let key = (user.clone(), attributes.clone());
        if let Some(allowed) = self.decisions.get(&key) {
            return Ok(allowed);
        }
        let allowed = self.reviews.review_access(user, attributes).await?;
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.decisions.insert(key, allowed, ttl);
        Ok(allowed)
    }

    /// The whole check for one request.
    pub async fn check(
        &self,
        client_certificate: Option<&[u8]>,
        authorization: Option<&str>,
        required: &[Vec<Attributes>],
    ) -> Verdict {
        let user = match self.authenticate(client_certificate, authorization).await {
            Ok(Some(user)) => user,
            Ok(None) => return Verdict::Unauthenticated,
            Err(error) => {
                // As the kubelet does: an authentication that cannot be checked is no authentication.
                tracing::warn!(%error, "cannot authenticate a kubelet API request");
                return Verdict::Unauthenticated;
            }
        };
        match self.authorize(&user, required).await {
            Ok(Ok(())) => Verdict::Allowed(user),
            Ok(Err(denied)) => Verdict::Forbidden(format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
                user.name, denied.verb, denied.subresource
            )),
            Err(error) => {
                tracing::warn!(%error, user = %user.name, "cannot authorise a kubelet API request");
                Verdict::Failed(format!(
                    "Authorization error (user={}, resource=nodes): {error}",
                    user.name
                ))
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as Go's
/// bearer-token authenticator reads it).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    /// Token "good" is alice; alice may read nodes/log on node-a only.
    #[derive(Default, Clone)]
    struct FakeReviews {
        token_calls: Arc<AtomicUsize>,
        access_calls: Arc<AtomicUsize>,
    }

    impl Reviews for FakeReviews {
        async fn review_token(&self, token: &str) -> Result<Option<User>> {
            self.token_calls.fetch_add(1, Ordering::SeqCst);
            Ok((token == "good").then(|| User {
                name: "alice".into(),
                ..User::default()
            }))
        }

        async fn review_access(&self, user: &User, attributes: &Attributes) -> Result<bool> {
            self.access_calls.fetch_add(1, Ordering::SeqCst);
            Ok(user.name == "alice" && attributes.subresource == "log" && attributes.node == "node-a")
        }
    }

    fn log_on(node: &str) -> Vec<Vec<Attributes>> {
        vec![vec![
            Attributes {
                verb: "get".into(),
                subresource: "log",
                node: node.into(),
            },
            Attributes {
                verb: "get".into(),
                subresource: "proxy",
                node: node.into(),
            },
        ]]
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_credentials_or_with_a_bad_token_is_unauthenticated() {
        let guard = Guard::new(FakeReviews::default());
        assert_eq!(
            guard.check(None, None, &log_on("node-a")).await,
            Verdict::Unauthenticated
        );
        assert_eq!(
            guard.check(None, Some("Bearer bad"), &log_on("node-a")).await,
            Verdict::Unauthenticated
        );
        assert_eq!(
            guard.check(None, Some("Basic Z29vZA=="), &log_on("node-a")).await,
            Verdict::Unauthenticated
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_token_is_allowed_what_the_access_review_allows_and_forbidden_the_rest() {
        let guard = Guard::new(FakeReviews::default());
        assert!(matches!(
            guard.check(None, Some("Bearer good"), &log_on("node-a")).await,
            Verdict::Allowed(user) if user.name == "alice"
        ));
        match guard.check(None, Some("bearer good"), &log_on("node-b")).await {
            Verdict::Forbidden(message) => assert_eq!(
                message,
                "Forbidden (user=alice, verb=get, resource=nodes, subresource=log)"
            ),
            other => panic!("expected 403, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reviews_are_cached_briefly_and_asked_again_after_they_expire() {
        let reviews = FakeReviews::default();
        let guard = Guard::new(reviews.clone());
        for _ in 0..5 {
            assert!(matches!(
                guard.check(None, Some("Bearer good"), &log_on("node-a")).await,
                Verdict::Allowed(_)
            ));
        }
        assert_eq!(reviews.token_calls.load(Ordering::SeqCst), 1);
        assert_eq!(reviews.access_calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(ALLOWED_TTL + Duration::from_millis(1)).await;
        let _ = guard.check(None, Some("Bearer good"), &log_on("node-a")).await;
        assert_eq!(reviews.token_calls.load(Ordering::SeqCst), 2);
        assert_eq!(reviews.access_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_denial_is_remembered_for_less_time_than_an_allowance() {
        let reviews = FakeReviews::default();
        let guard = Guard::new(reviews.clone());
        let _ = guard.check(None, Some("Bearer good"), &log_on("node-b")).await;
        // Both alternatives (log, then proxy) were asked and denied.
        assert_eq!(reviews.access_calls.load(Ordering::SeqCst), 2);
        let _ = guard.check(None, Some("Bearer good"), &log_on("node-b")).await;
        assert_eq!(reviews.access_calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(DENIED_TTL + Duration::from_millis(1)).await;
        let _ = guard.check(None, Some("Bearer good"), &log_on("node-b")).await;
        assert_eq!(reviews.access_calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_certificate_names_the_user_without_a_token_review() {
        let reviews = FakeReviews::default();
        let guard = Guard::new(reviews.clone());
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "team");
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let user = guard
            .authenticate(Some(cert.der()), Some("Bearer bad"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            user,
            Some(User {
                name: "alice".into(),
                groups: vec!["team".into()],
                ..User::default()
            })
        );
        assert_eq!(reviews.token_calls.load(Ordering::SeqCst), 0);
    }
}
