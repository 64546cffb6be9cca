//! The REST data-plane client (api-version 2024-12-01), one instance per hub.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{header, Method, StatusCode};
use serde::Deserialize;

use super::cache::RequestCache;
use super::token::{unix_now, ClientTokenOptions};
use super::{ConnectionString, ServiceError};
use crate::protocol::EventData;

pub const API_VERSION: &str = "2024-12-01";

/// `encodeURIComponent`'s set, which is what the JS SDK applies to path and query values.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Query values additionally escape `'`, as the SDK sends them; `url` would escape it anyway,
/// and the JWT `aud` must be the exact URL on the wire.
const QUERY_VALUE: &AsciiSet = &COMPONENT.add(b'\'');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// How hard to try: attempts are retried on 429, 5xx and network errors with exponential
/// backoff, but never past `deadline` measured from the first attempt.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub deadline: Duration,
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub excluded: Vec<String>,
    pub filter: Option<String>,
    pub message_ttl_seconds: Option<u32>,
}

/// `sendToGroup` / `joinLeaveGroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    SendToGroup,
    JoinLeaveGroup,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SendToGroup => "sendToGroup",
            Permission::JoinLeaveGroup => "joinLeaveGroup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMember {
    pub connection_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Cheap to clone: one pooled HTTP client shared by every clone.
#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    origin: String,
    hub: String,
    /// Parsed URLs and their REST tokens, reused per URL (see `cache.rs`).
    cache: Arc<RequestCache>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceClient({}, hub {})", self.origin, self.hub)
    }
}

struct Call {
    op: &'static str,
    /// A service-provided absolute URL (a `nextLink`), followed verbatim.
    next_link: Option<String>,
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<(&'static str, Bytes)>,
}

impl ServiceClient {
    pub fn new(
        cs: &ConnectionString,
        hub: impl Into<String>,
        retry: RetryPolicy,
    ) -> Result<Self, ServiceError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hubhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ServiceError::Network {
                op: "init",
                reason: e.to_string(),
            })?;
        Ok(ServiceClient {
            http,
            origin: cs.origin().to_string(),
            hub: hub.into(),
            cache: Arc::new(RequestCache::new(cs.access_key.clone())),
            retry,
        })
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }

    fn hub_path(&self, rest: &str) -> String {
        format!("/api/hubs/{}{rest}", enc(&self.hub))
    }

    fn call(&self, op: &'static str, method: Method, path: String) -> Call {
        Call {
            op,
            method,
            path,
            query: Vec::new(),
            body: None,
            next_link: None,
        }
    }

    pub async fn send_to_all(
        &self,
        data: &EventData,
        opts: &SendOptions,
    ) -> Result<(), ServiceError> {
        let c = self.call("sendToAll", Method::POST, self.hub_path("/:send"));
        self.send(c, data, opts, true).await
    }

    pub async fn send_to_group(
        &self,
        group: &str,
        data: &EventData,
        opts: &SendOptions,
    ) -> Result<(), ServiceError> {
        let c = self.send_to_group_call(group);
        self.send(c, data, opts, true).await
    }

    pub async fn send_to_user(
        &self,
        user: &str,
        data: &EventData,
        opts: &SendOptions,
    ) -> Result<(), ServiceError> {
        let c = self.call(
            "sendToUser",
            Method::POST,
            self.hub_path(&format!("/users/{}/:send", enc(user))),
        );
        self.send(c, data, opts, false).await
    }

    pub async fn send_to_connection(
        &self,
        connection: &str,
        data: &EventData,
        opts: &SendOptions,
    ) -> Result<(), ServiceError> {
        let c = self.call(
            "sendToConnection",
            Method::POST,
            self.hub_path(&format!("/connections/{}/:send", enc(connection))),
        );
        self.send(c, data, opts, false).await
    }

    /// `sendToGroup` with a body that is already JSON text (an outbox payload, serialised when
    /// it was stored): sent as it is, where `send_to_group` would serialise a `Value` again.
    /// The caller vouches that `json` is JSON.
    fn send_to_group_call(&self, group: &str) -> Call {
        self.call(
            "sendToGroup",
            Method::POST,
            self.hub_path(&format!("/groups/{}/:send", enc(group))),
        )
    }

    pub async fn send_json_to_group(
        &self,
        group: &str,
        json: Bytes,
        opts: &SendOptions,
    ) -> Result<(), ServiceError> {
        let c = self.send_to_group_call(group);
        self.send_body(c, ("application/json", json), opts, true)
            .await
    }

    async fn send(
        &self,
        c: Call,
        data: &EventData,
        opts: &SendOptions,
        multi: bool,
    ) -> Result<(), ServiceError> {
        let body = match data {
            EventData::Text(s) => ("text/plain", Bytes::copy_from_slice(s.as_bytes())),
            EventData::Json(v) => (
                "application/json",
                serde_json::to_vec(v).expect("json serialises").into(),
            ),
            EventData::Binary(b) => ("application/octet-stream", b.clone()),
        };
        self.send_body(c, body, opts, multi).await
    }

    async fn send_body(
        &self,
        mut c: Call,
        body: (&'static str, Bytes),
        opts: &SendOptions,
        multi: bool,
    ) -> Result<(), ServiceError> {
        if multi {
            for e in &opts.excluded {
                c.query.push(("excluded", e.clone()));
            }
        }
        if c.op != "sendToConnection" {
            if let Some(f) = &opts.filter {
                c.query.push(("filter", f.clone()));
            }
        }
        if let Some(ttl) = opts.message_ttl_seconds {
            c.query.push(("messageTtlSeconds", ttl.to_string()));
        }
        c.body = Some(body);
        self.execute(c).await.map(drop)
    }

    pub async fn add_connection_to_group(
        &self,
        group: &str,
        connection: &str,
    ) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!(
            "/groups/{}/connections/{}",
            enc(group),
            enc(connection)
        ));
        self.execute(self.call("addConnectionToGroup", Method::PUT, p))
            .await
            .map(drop)
    }

    pub async fn remove_connection_from_group(
        &self,
        group: &str,
        connection: &str,
    ) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!(
            "/groups/{}/connections/{}",
            enc(group),
            enc(connection)
        ));
        self.execute(self.call("removeConnectionFromGroup", Method::DELETE, p))
            .await
            .map(drop)
    }

    pub async fn remove_connection_from_all_groups(
        &self,
        connection: &str,
    ) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!("/connections/{}/groups", enc(connection)));
        self.execute(self.call("removeConnectionFromAllGroups", Method::DELETE, p))
            .await
            .map(drop)
    }

    pub async fn add_user_to_group(&self, group: &str, user: &str) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!("/users/{}/groups/{}", enc(user), enc(group)));
        self.execute(self.call("addUserToGroup", Method::PUT, p))
            .await
            .map(drop)
    }

    pub async fn remove_user_from_group(
        &self,
        group: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!("/users/{}/groups/{}", enc(user), enc(group)));
        self.execute(self.call("removeUserFromGroup", Method::DELETE, p))
            .await
            .map(drop)
    }

    pub async fn remove_user_from_all_groups(&self, user: &str) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!("/users/{}/groups", enc(user)));
        self.execute(self.call("removeUserFromAllGroups", Method::DELETE, p))
            .await
            .map(drop)
    }

    /// Adds the connections matching an OData `filter` to `groups`.
    pub async fn add_connections_to_groups(
        &self,
        groups: &[String],
        filter: &str,
    ) -> Result<(), ServiceError> {
        self.groups_by_filter("addConnectionsToGroups", "/:addToGroups", groups, filter)
            .await
    }

    pub async fn remove_connections_from_groups(
        &self,
        groups: &[String],
        filter: &str,
    ) -> Result<(), ServiceError> {
        self.groups_by_filter(
            "removeConnectionsFromGroups",
            "/:removeFromGroups",
            groups,
            filter,
        )
        .await
    }

    async fn groups_by_filter(
        &self,
        op: &'static str,
        rest: &str,
        groups: &[String],
        filter: &str,
    ) -> Result<(), ServiceError> {
        let mut c = self.call(op, Method::POST, self.hub_path(rest));
        let body = serde_json::json!({ "groups": groups, "filter": filter });
        c.body = Some(("application/json", body.to_string().into()));
        self.execute(c).await.map(drop)
    }

    pub async fn close_connection(
        &self,
        connection: &str,
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        let mut c = self.call(
            "closeConnection",
            Method::DELETE,
            self.hub_path(&format!("/connections/{}", enc(connection))),
        );
        if let Some(r) = reason {
            c.query.push(("reason", r.to_string()));
        }
        self.execute(c).await.map(drop)
    }

    pub async fn close_all_connections(
        &self,
        excluded: &[String],
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        self.close_many(
            "closeAllConnections",
            self.hub_path("/:closeConnections"),
            excluded,
            reason,
        )
        .await
    }

    pub async fn close_group_connections(
        &self,
        group: &str,
        excluded: &[String],
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!("/groups/{}/:closeConnections", enc(group)));
        self.close_many("closeGroupConnections", p, excluded, reason)
            .await
    }

    pub async fn close_user_connections(
        &self,
        user: &str,
        excluded: &[String],
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        let p = self.hub_path(&format!("/users/{}/:closeConnections", enc(user)));
        self.close_many("closeUserConnections", p, excluded, reason)
            .await
    }

    async fn close_many(
        &self,
        op: &'static str,
        path: String,
        excluded: &[String],
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        let mut c = self.call(op, Method::POST, path);
        for e in excluded {
            c.query.push(("excluded", e.clone()));
        }
        if let Some(r) = reason {
            c.query.push(("reason", r.to_string()));
        }
        self.execute(c).await.map(drop)
    }

    pub async fn connection_exists(&self, connection: &str) -> Result<bool, ServiceError> {
        self.exists(
            "connectionExists",
            self.hub_path(&format!("/connections/{}", enc(connection))),
            vec![],
        )
        .await
    }

    pub async fn group_exists(&self, group: &str) -> Result<bool, ServiceError> {
        self.exists(
            "groupExists",
            self.hub_path(&format!("/groups/{}", enc(group))),
            vec![],
        )
        .await
    }

    pub async fn user_exists(&self, user: &str) -> Result<bool, ServiceError> {
        self.exists(
            "userExists",
            self.hub_path(&format!("/users/{}", enc(user))),
            vec![],
        )
        .await
    }

    pub async fn grant_permission(
        &self,
        p: Permission,
        connection: &str,
        target: Option<&str>,
    ) -> Result<(), ServiceError> {
        let mut c = self.call(
            "grantPermission",
            Method::PUT,
            self.permission_path(p, connection),
        );
        c.query = target_query(target);
        self.execute(c).await.map(drop)
    }

    pub async fn revoke_permission(
        &self,
        p: Permission,
        connection: &str,
        target: Option<&str>,
    ) -> Result<(), ServiceError> {
        let mut c = self.call(
            "revokePermission",
            Method::DELETE,
            self.permission_path(p, connection),
        );
        c.query = target_query(target);
        self.execute(c).await.map(drop)
    }

    pub async fn check_permission(
        &self,
        p: Permission,
        connection: &str,
        target: Option<&str>,
    ) -> Result<bool, ServiceError> {
        self.exists(
            "checkPermission",
            self.permission_path(p, connection),
            target_query(target),
        )
        .await
    }

    fn permission_path(&self, p: Permission, connection: &str) -> String {
        self.hub_path(&format!(
            "/permissions/{}/connections/{}",
            p.as_str(),
            enc(connection)
        ))
    }

    /// `HEAD /api/health`: true when the service answers 200.
    pub async fn health(&self) -> Result<bool, ServiceError> {
        let c = self.call("health", Method::HEAD, "/api/health".to_string());
        self.execute(c).await.map(|_| true)
    }

    /// `:generateToken` — a client token minted by the service itself.
    pub async fn generate_token(&self, opts: &ClientTokenOptions) -> Result<String, ServiceError> {
        let mut c = self.call(
            "generateToken",
            Method::POST,
            self.hub_path("/:generateToken"),
        );
        if let Some(u) = &opts.user_id {
            c.query.push(("userId", u.clone()));
        }
        for r in &opts.roles {
            c.query.push(("role", r.clone()));
        }
        // The service's defaults, sent explicitly as the SDK does.
        let minutes = opts
            .expires_in
            .map_or(60, |d| d.as_secs().div_ceil(60).max(1));
        c.query.push(("minutesToExpire", minutes.to_string()));
        for g in &opts.groups {
            c.query.push(("group", g.clone()));
        }
        c.query.push(("clientType", "Default".to_string()));
        let (_, body) = self.execute(c).await?;
        #[derive(Deserialize)]
        struct T {
            token: String,
        }
        serde_json::from_slice::<T>(&body)
            .map(|t| t.token)
            .map_err(|e| ServiceError::InvalidResponse {
                op: "generateToken",
                reason: e.to_string(),
            })
    }

    /// All pages of the connections in `group`.
    pub async fn list_connections_in_group(
        &self,
        group: &str,
    ) -> Result<Vec<GroupMember>, ServiceError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            value: Vec<GroupMember>,
            #[serde(rename = "nextLink", default)]
            next_link: Option<String>,
        }
        let mut out = Vec::new();
        let mut c = self.call(
            "listConnectionsInGroup",
            Method::GET,
            self.hub_path(&format!("/groups/{}/connections", enc(group))),
        );
        loop {
            let (_, body) = self.execute(c).await?;
            let page: Page =
                serde_json::from_slice(&body).map_err(|e| ServiceError::InvalidResponse {
                    op: "listConnectionsInGroup",
                    reason: e.to_string(),
                })?;
            out.extend(page.value);
            let Some(next) = page.next_link.filter(|n| !n.is_empty()) else {
                return Ok(out);
            };
            // Follow nextLink as given (the SDK does), but only on our own endpoint: the
            // request carries a token signed with the access key.
            let link = url::Url::parse(&next).map_err(|e| ServiceError::InvalidResponse {
                op: "listConnectionsInGroup",
                reason: format!("invalid nextLink: {e}"),
            })?;
            if link.origin().ascii_serialization() != self.origin {
                return Err(ServiceError::InvalidResponse {
                    op: "listConnectionsInGroup",
                    reason: format!(
                        "nextLink points to another origin: {}",
                        link.origin().ascii_serialization()
                    ),
                });
            }
            c = self.call(
                "listConnectionsInGroup",
                Method::GET,
                link.path().to_string(),
            );
            c.next_link = Some(link.to_string());
        }
    }

    async fn exists(
        &self,
        op: &'static str,
        path: String,
        query: Vec<(&'static str, String)>,
    ) -> Result<bool, ServiceError> {
        let mut c = self.call(op, Method::HEAD, path);
        c.query = query;
        match self.execute(c).await {
            Ok(_) => Ok(true),
            Err(ServiceError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends with retries. The JWT's `aud` is the exact URL sent; unlike the SDKs, which mint one
    /// per request, it comes from the cache (one per URL, renewed after 80% of its lifetime), so a
    /// broadcast costs neither a mint nor a URL parse. Asked for per attempt: a retry never sends
    /// a token older than the cache allows.
    /// Over 80 lines: one retry loop whose every exit (status, network, deadline) is visible here.
    async fn execute(&self, c: Call) -> Result<(StatusCode, Bytes), ServiceError> {
        let url = match &c.next_link {
            Some(link) => link.clone(),
            None => {
                let mut url = format!("{}{}?api-version={API_VERSION}", self.origin, c.path);
                for (k, v) in &c.query {
                    url.push('&');
                    url.push_str(k);
                    url.push('=');
                    url.push_str(&utf8_percent_encode(v, QUERY_VALUE).to_string());
                }
                url
            }
        };
        let started = Instant::now();
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = self.retry.deadline.saturating_sub(started.elapsed());
            // Sign exactly what will be sent: the parsed URL is what reqwest puts on the wire (it
            // takes the `Url` as it is, without parsing the text again).
            let prepared = self.cache.prepare(&url, unix_now()).map_err(|e| {
                ServiceError::InvalidResponse {
                    op: c.op,
                    reason: format!("invalid URL: {e}"),
                }
            })?;
            let mut req = self
                .http
                .request(c.method.clone(), prepared.url)
                .header(header::AUTHORIZATION, prepared.authorization)
                .timeout(
                    self.retry
                        .attempt_timeout
                        .min(remaining.max(Duration::from_millis(1))),
                );
            if let Some((ct, body)) = &c.body {
                req = req.header(header::CONTENT_TYPE, *ct).body(body.clone());
            }
            let (retryable, err) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = resp.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok((status, body));
                    }
                    if let Some(ra) = retry_after {
                        backoff = backoff.max(ra);
                    }
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                        .replace(['\r', '\n'], " ");
                    (
                        retryable,
                        ServiceError::Status {
                            op: c.op,
                            status: status.as_u16(),
                            body: text,
                        },
                    )
                }
                Err(e) if e.is_timeout() => (true, ServiceError::Timeout { op: c.op }),
                Err(e) => (
                    true,
                    ServiceError::Network {
                        op: c.op,
                        reason: network_reason(&e),
                    },
                ),
            };
            let out_of_time = started.elapsed() + backoff >= self.retry.deadline;
            if !retryable || attempt >= self.retry.max_attempts || out_of_time {
                return Err(err);
            }
            tracing::debug!(op = c.op, attempt, error = %err, "retrying service call");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }
}

fn target_query(target: Option<&str>) -> Vec<(&'static str, String)> {
    target
        .map(|t| vec![("targetName", t.to_string())])
        .unwrap_or_default()
}

/// The innermost cause of a reqwest error, without the URL (which is harmless, but long);
/// the emulator's and the tunnel's upstream calls report it the same way.
pub fn network_reason(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
