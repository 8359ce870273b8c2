//! Who may read `/metrics`: the Kubernetes API decides, as with controller-runtime's
//! `filters.WithAuthenticationAndAuthorization`.
//!
//! ```text
//!   Authorization: Bearer T ──TokenReview(T)──▶ user, groups ──SubjectAccessReview
//!                                                 (nonResourceURL /metrics, verb get)──▶ allowed?
//!   no token / not authenticated: 401   not allowed: 403   review failed: 500   else: 200
//! ```
//!
//! Answers are cached per token, path and verb ([`ALLOW_TTL`] when allowed, [`DENY_TTL`]
//! otherwise), so scrapes do not cost two API requests each. The operator's ServiceAccount
//! needs `create` on `tokenreviews.authentication.k8s.io` and
//! `subjectaccessreviews.authorization.k8s.io`; a scraper needs `get` on the non-resource
//! URL `/metrics`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

/// How long an allowed request's answer is kept.
pub const ALLOW_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is kept (short, so a new grant takes effect soon).
pub const DENY_TTL: Duration = Duration::from_secs(10);
/// Answers kept at most (a flood of bogus tokens cannot grow the cache without bound).
const MAX_CACHED: usize = 1024;
/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API server said about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `user` may.
    Allowed { user: String },
    /// The token is not valid (401).
    Unauthenticated { reason: String },
    /// `user` may not (403).
    Forbidden { user: String, reason: String },
}

/// A review could not be made (the request gets a 500 and nothing is cached).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview failed: {0}")]
    Authentication(#[source] kube::Error),
    #[error("SubjectAccessReview for {user} failed: {source}")]
    Authorization {
        user: String,
        #[source]
        source: kube::Error,
    },
}

type CacheKey = (String, String, String);

/// Checks bearer tokens with the API server, caching its answers.
pub struct Authorizer {
    client: Client,
    cache: Mutex<HashMap<CacheKey, (Instant, Decision)>>,
    /// How long an allowed answer is kept.
    pub allow_ttl: Duration,
    /// How long a refusal is kept.
    pub deny_ttl: Duration,
}

impl Authorizer {
    /// Reviews with `client` (the operator's own credentials).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
            allow_ttl: ALLOW_TTL,
            deny_ttl: DENY_TTL,
        }
    }

    /// Whether the bearer of `token` may `verb` the non-resource URL `path`.
    pub async fn check(&self, token: &str, path: &str, verb: &str) -> Result<Decision, ReviewError> {
        let key = (token.to_string(), path.to_string(), verb.to_string());
        if let Some(d) = self.cached(&key) {
            return Ok(d);
        }
        let d = self.review(token, path, verb).await?;
        let ttl = match d {
            Decision::Allowed { .. } => self.allow_ttl,
            _ => self.deny_ttl,
        };
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= MAX_CACHED {
            let now = Instant::now();
            c.retain(|_, (until, _)| *until > now);
            if c.len() >= MAX_CACHED {
                c.clear();
            }
        }
        c.insert(key, (Instant::now() + ttl, d.clone()));
        Ok(d)
    }

    fn cached(&self, key: &CacheKey) -> Option<Decision> {
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        c.get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, d)| d.clone())
    }

    async fn review(&self, token: &str, path: &str, verb: &str) -> Result<Decision, ReviewError> {
        let timeout = |e: tokio::time::error::Elapsed| kube::Error::Service(e.into());
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let tr = tokio::time::timeout(
            REVIEW_TIMEOUT,
            Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &tr),
        )
        .await
        .map_err(timeout)
        .and_then(|r| r)
        .map_err(ReviewError::Authentication)?;
        let status = tr.status.unwrap_or_default();
        let user = match status.user {
            Some(u) if status.authenticated == Some(true) => u,
            _ => {
                return Ok(Decision::Unauthenticated {
                    reason: status.error.unwrap_or_else(|| "token not authenticated".into()),
                });
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let sar = tokio::time::timeout(
            REVIEW_TIMEOUT,
            Api::<SubjectAccessReview>::all(self.client.clone()).create(&PostParams::default(), &sar),
        )
        .await
        .map_err(timeout)
        .and_then(|r| r)
        .map_err(|source| ReviewError::Authorization {
            user: name.clone(),
            source,
        })?;
        let status = sar.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Decision::Allowed { user: name }
        } else {
            Decision::Forbidden {
                user: name,
                reason: status.reason.or(status.evaluation_error).unwrap_or_default(),
            }
        })
    }
}
