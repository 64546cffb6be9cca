//! The Azure Table Storage store (also served by Azurite and by Cosmos DB for Table): one table,
//! reached through a small REST client of our own over `reqwest`.
//!
//! # Why our own client
//!
//! The new official Azure SDK for Rust (`azure_core` 0.2x/1.x) has no Table storage crate today;
//! `azure_data_tables` 0.21 is from the SDK's retired `legacy` line (unmaintained, its own
//! `azure_core` 0.21 and HTTP stack). What this store needs is five REST calls (insert, get,
//! merge, delete, query) plus entity-group transactions (`$batch`), signed with SharedKey (HMAC-
//! SHA256 over five lines, `hmac`/`sha2`/`base64` already in the tree) or a managed identity's
//! bearer token. `reqwest` is already linked (the Web PubSub REST client), so the store adds no
//! dependency, no second HTTP stack, nothing to initialize at cold start, and a few tens of KiB
//! of code to the binary.
//!
//! # Entities
//!
//! Keys are built from base64url (`A-Za-z0-9-_`) of the names, joined by `.`, so no user text
//! reaches a key unescaped (Table keys forbid `/ \ # ?` and control characters).
//!
//! | entity | `PartitionKey` | `RowKey` | properties |
//! |---|---|---|---|
//! | message | `r.<room>` | `m.` + [`invert`]ed message id | `id`, `room`, `connectionId`, `ceId`, `userId` (absent when anonymous), `text`, `atMs` (Int64) |
//! | message claim | `r.<room>` | `c.<connectionId>.<ce-id>` | `messageId`, `atMs` (Int64, claim time) |
//! | notice claim | `r.<room>` | `n.<connectionId>.<ce-id>` | `atMs` (Int64, claim time) |
//! | pending broadcast | `r.<room>` | `o.m.<connectionId>.<ce-id>` / `o.n.…` | `id`, `kind`, `room`, `payload`, `connectionId`, `ceId`, `createdMs`, `dueMs` (Int64), `attempts` (Int32) |
//! | room hint | `rooms` | `r.<room>` | `room`, `touchedMs` (Int64), `pending` (Boolean) |
//! | health probe | `health` | `probe` | `atMs` |
//!
//! # Atomicity: one entity-group transaction per delivery
//!
//! Everything a delivery writes lives in its room's partition, so it is one `$batch` changeset
//! (all or nothing): an append inserts the claim, the message and its pending broadcast; a
//! notice inserts its claim and its broadcast. The claim is keyed by connection id + `ce-id`
//! (never the event time), so a retry — whatever its `ce-time` — fails the whole changeset with
//! 409 `EntityAlreadyExists` and reads back what the first delivery wrote (`inserted: false`,
//! with its broadcast while unsent). Unlike DynamoDB (no transactions there: claim and message
//! are two writes), a claim never exists without its message. Deliveries are deduplicated
//! within their room — a retry of a webhook carries the same body, hence the same room.
//!
//! # The outbox without secondary indexes
//!
//! Table storage has no secondary index, and a filter across partitions is a table scan. Pending
//! broadcasts are entities in their room's partition (range `o.` … `o/`), and the `rooms`
//! partition holds one *hint* per room that may have some: before its `$batch`, a delivery
//! upserts its room's hint with `pending = true` and `touchedMs = now` (each process skips that
//! write for [`HINT_REFRESH`] after doing it). The sweeper lists the hints with `pending eq
//! true`, reads each such room's `o.` range, and sorts what is due by due time. A hint whose
//! room has nothing pending is set back to `pending = false` only when it was touched more than
//! [`HINT_GRACE`] ago (and with `If-Match` on the ETag it read), so a delivery between its hint
//! write and its `$batch` is never missed. The sweep costs one query per room with pending
//! broadcasts, not a scan of the messages.
//!
//! # History
//!
//! RowKeys sort ascending, so a message's RowKey is its id with every digit inverted
//! (`9 - d`, `f - h`): ascending RowKeys are newest-first ids. A page is one partition range
//! query (`RowKey gt 'm.<inverted cursor>' and RowKey lt 'm/'`) following the service's
//! continuation tokens until [`PageRequest::fetch`] messages came back; the cursor stays the
//! opaque message id of every store.
//!
//! # Retention
//!
//! Table storage has no TTL. [`MessageStore::purge_expired`] (run hourly by
//! [`super::spawn_retention`], with or without `HUBHOOK_RETENTION_DAYS`; without it the cutoff is
//! 0, so only expired presence goes) walks the `rooms` partition and deletes, room by
//! room, messages whose event time is older than the cutoff together with their claims (one
//! `$batch` of up to 100 operations), then notice claims claimed before the cutoff, then presence
//! entries whose `expiresMs` has passed (SQLite prunes its own on each join; DynamoDB's TTL
//! expires them) — at most `limit` entities per call.
//!
//! # Failures and deadlines
//!
//! Every store call is bounded by [`AzureTableOptions::deadline`] as a whole; each HTTP attempt
//! by a third of it, connecting by at most 1 s. Connection failures, timeouts, 408, 429, 500,
//! 502, 503 (`ServerBusy`) and 504 are retried (up to 5 attempts, jittered backoff from 25 ms)
//! and then reported as [`StoreError::Unavailable`] (503) with the operation, the error code and
//! the request id — never the endpoint, a key or a token. Other answers are
//! [`StoreError::Failed`].
//!
//! # Authentication
//!
//! - `AZURE_STORAGE_CONNECTION_STRING`: SharedKey (`AccountName`, `AccountKey`, and
//!   `TableEndpoint` or `DefaultEndpointsProtocol` + `EndpointSuffix`); `UseDevelopmentStorage=true`
//!   means Azurite on `127.0.0.1:10002`.
//! - `AZURE_STORAGE_ACCOUNT_URL` (the table endpoint, `https://ACCOUNT.table.core.windows.net`)
//!   with the managed identity the Functions host exposes (`IDENTITY_ENDPOINT`,
//!   `IDENTITY_HEADER`): a bearer token for `https://storage.azure.com/`, cached until five
//!   minutes before it expires. The identity needs the role **Storage Table Data Contributor**
//!   on the account (or the table).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::*;

/// REST API version: 2019-02-02 is the first that takes OAuth bearer tokens.
pub const API_VERSION: &str = "2019-02-02";
/// The partition of the room hints.
const ROOMS: &str = "rooms";
/// A hint touched less than this long ago is never cleared (a delivery may be between its
/// hint write and its `$batch`).
pub const HINT_GRACE_MS: i64 = 10 * 60 * 1000;
/// How long a process trusts its own hint write (well inside [`HINT_GRACE_MS`]).
pub const HINT_REFRESH_MS: i64 = 2 * 60 * 1000;
/// See [`HINT_GRACE_MS`].
pub const HINT_GRACE: Duration = Duration::from_millis(HINT_GRACE_MS as u64);
/// See [`HINT_REFRESH_MS`].
pub const HINT_REFRESH: Duration = Duration::from_millis(HINT_REFRESH_MS as u64);
/// The sweeper and the backlog read at most this many pending broadcasts.
pub const OUTBOX_SCAN_LIMIT: usize = 10_000;
/// Table storage's limit of operations in one changeset.
const MAX_BATCH_OPS: usize = 100;
/// Longest reason in a [`StoreError`].
const MAX_REASON: usize = 600;
const ACCEPT: &str = "application/json;odata=minimalmetadata";
const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// The App Service / Functions identity endpoint's protocol version (`X-IDENTITY-HEADER`).
const IDENTITY_API_VERSION: &str = "2019-08-01";
/// A managed identity's token is used until this long before it expires, then fetched anew.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Azurite's published development account (not a secret).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where the table is and how to sign for it. `Debug` shows neither key nor header.
#[derive(Clone, PartialEq, Eq)]
pub enum Account {
    SharedKey {
        /// Table endpoint, no trailing slash (`http://127.0.0.1:10002/devstoreaccount1`).
        endpoint: String,
        name: String,
        key: Vec<u8>,
    },
    ManagedIdentity {
        endpoint: String,
        identity_endpoint: String,
        identity_header: String,
    },
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::SharedKey { endpoint, name, .. } => f
                .debug_struct("SharedKey")
                .field("endpoint", endpoint)
                .field("name", name)
                .finish_non_exhaustive(),
            Account::ManagedIdentity { endpoint, .. } => f
                .debug_struct("ManagedIdentity")
                .field("endpoint", endpoint)
                .finish_non_exhaustive(),
        }
    }
}

/// Why a storage account could not be read from the settings. No variant holds a value from
/// them: a connection string carries the account key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("expected Key=Value pairs separated by ';'")]
    NotKeyValue,
    #[error("bad development key")]
    BadDevelopmentKey,
    #[error("no AccountName")]
    NoAccountName,
    #[error("no AccountKey (a SAS connection string is not supported; use a managed identity)")]
    NoAccountKey,
    #[error("AccountKey is not base64")]
    KeyNotBase64,
    #[error("the table endpoint is not an http(s) URL")]
    EndpointNotHttp,
    #[error("IDENTITY_ENDPOINT is not a URL")]
    IdentityEndpointNotUrl,
}

impl Account {
    /// Parses a storage connection string (`Key=Value;…`). The error never echoes a value.
    pub fn from_connection_string(cs: &str) -> Result<Account, AccountError> {
        let mut kv: HashMap<String, String> = HashMap::new();
        for part in cs.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or(AccountError::NotKeyValue)?;
            kv.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        if kv
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(Account::SharedKey {
                endpoint: format!("http://127.0.0.1:10002/{DEV_ACCOUNT}"),
                name: DEV_ACCOUNT.into(),
                key: STANDARD
                    .decode(DEV_KEY)
                    .map_err(|_| AccountError::BadDevelopmentKey)?,
            });
        }
        let name = kv
            .get("accountname")
            .filter(|n| !n.is_empty())
            .ok_or(AccountError::NoAccountName)?
            .clone();
        let key = kv.get("accountkey").ok_or(AccountError::NoAccountKey)?;
        let key = STANDARD
            .decode(key)
            .map_err(|_| AccountError::KeyNotBase64)?;
        let endpoint = match kv.get("tableendpoint") {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => {
                let proto = kv
                    .get("defaultendpointsprotocol")
                    .map_or("https", String::as_str);
                let suffix = kv
                    .get("endpointsuffix")
                    .map_or("core.windows.net", String::as_str);
                format!("{proto}://{name}.table.{suffix}")
            }
        };
        check_endpoint(&endpoint)?;
        Ok(Account::SharedKey {
            endpoint,
            name,
            key,
        })
    }

    /// The managed identity of an Azure Functions (App Service) host.
    pub fn managed_identity(
        account_url: &str,
        identity_endpoint: &str,
        identity_header: &str,
    ) -> Result<Account, AccountError> {
        let endpoint = account_url.trim_end_matches('/').to_string();
        check_endpoint(&endpoint)?;
        url::Url::parse(identity_endpoint).map_err(|_| AccountError::IdentityEndpointNotUrl)?;
        Ok(Account::ManagedIdentity {
            endpoint,
            identity_endpoint: identity_endpoint.to_string(),
            identity_header: identity_header.to_string(),
        })
    }

    pub fn endpoint(&self) -> &str {
        match self {
            Account::SharedKey { endpoint, .. } | Account::ManagedIdentity { endpoint, .. } => {
                endpoint
            }
        }
    }

    /// Azurite (or another local emulator): where a missing table may be created.
    pub fn is_local(&self) -> bool {
        url::Url::parse(self.endpoint()).is_ok_and(|u| {
            matches!(
                u.host_str(),
                Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
            )
        })
    }
}

fn check_endpoint(e: &str) -> Result<(), AccountError> {
    match url::Url::parse(e) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => Ok(()),
        _ => Err(AccountError::EndpointNotHttp),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureTableOptions {
    pub retention_days: Option<u32>,
    /// Upper bound of one store call, retries included.
    pub deadline: Duration,
    /// Create the table when it is missing (Azurite starts empty; in Azure the template makes it
    /// and the identity's data role cannot create tables).
    pub create_table_if_missing: bool,
}

impl Default for AzureTableOptions {
    fn default() -> Self {
        AzureTableOptions {
            retention_days: None,
            deadline: Duration::from_secs(5),
            create_table_if_missing: false,
        }
    }
}

pub struct AzureTableStore {
    http: reqwest::Client,
    account: Account,
    table: String,
    opts: AzureTableOptions,
    token: tokio::sync::Mutex<Option<(String, i64)>>,
    /// Rooms whose hint this process set pending, and when.
    hinted: Mutex<HashMap<String, i64>>,
}

/// Opens the store (no network call unless the table is to be created).
pub async fn connect(
    account: Account,
    table: &str,
    opts: AzureTableOptions,
) -> Result<AzureTableStore, StoreError> {
    let store = AzureTableStore::new(account, table, opts)?;
    if store.opts.create_table_if_missing {
        store.ensure_table().await?;
    }
    Ok(store)
}

/// An answer that was not retried: status, headers, body.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn json(&self) -> Result<Value, StoreError> {
        serde_json::from_slice(&self.body)
            .map_err(|_| StoreError::Failed("azuretable: unreadable JSON answer".into()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The error code (`odata.error.code`, or `x-ms-error-code`) and message.
    fn error(&self) -> (Option<String>, Option<String>) {
        let v: Option<Value> = serde_json::from_slice(&self.body).ok();
        let e = v.as_ref().and_then(|v| v.get("odata.error"));
        let code = e
            .and_then(|e| e["code"].as_str())
            .map(str::to_string)
            .or_else(|| self.header("x-ms-error-code"));
        let message = e.and_then(|e| {
            e["message"]["value"]
                .as_str()
                .or_else(|| e["message"].as_str())
                .map(str::to_string)
        });
        (code, message)
    }

    /// A [`StoreError`] for an answer the caller did not expect.
    fn fail(&self, op: &str) -> StoreError {
        let (code, message) = self.error();
        let mut reason = format!("azuretable {op}: HTTP {}", self.status.as_u16());
        if let Some(c) = code {
            reason = format!("{reason} {}", one_line(&c, 100));
        }
        if let Some(m) = message {
            reason = format!("{reason}: {}", one_line(&m, 300));
        }
        if let Some(id) = self.header("x-ms-request-id") {
            reason = format!("{reason} (request id {})", one_line(&id, 100));
        }
        if is_transient(self.status) {
            StoreError::Unavailable(clip(reason))
        } else {
            StoreError::Failed(clip(reason))
        }
    }

    fn code_is(&self, code: &str) -> bool {
        self.error().0.as_deref() == Some(code)
    }
}

fn is_transient(s: StatusCode) -> bool {
    matches!(s.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// One operation of a changeset.
enum BatchOp {
    Insert(Map<String, Value>),
    Delete {
        pk: String,
        rk: String,
    },
    /// Deleted only if unchanged since read (`If-Match` its etag): a 412 otherwise.
    DeleteIfUnchanged {
        pk: String,
        rk: String,
        etag: String,
    },
}

/// The first failed operation of a changeset, or success.
enum BatchOutcome {
    Committed,
    Rejected { status: u16, code: Option<String> },
}

impl AzureTableStore {
    pub fn new(
        account: Account,
        table: &str,
        opts: AzureTableOptions,
    ) -> Result<AzureTableStore, StoreError> {
        let deadline = opts.deadline.max(Duration::from_millis(100));
        let http = reqwest::Client::builder()
            .connect_timeout(deadline.min(Duration::from_secs(1)))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|_| StoreError::Failed("azuretable: cannot build the HTTP client".into()))?;
        Ok(AzureTableStore {
            http,
            account,
            table: table.to_string(),
            opts,
            token: tokio::sync::Mutex::new(None),
            hinted: Mutex::new(HashMap::new()),
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table unless it exists (for Azurite; see
    /// [`AzureTableOptions::create_table_if_missing`]).
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        let body = json!({ "TableName": self.table }).to_string();
        let r = self
            .send(
                "CreateTable",
                Method::POST,
                "Tables",
                &[],
                Some(("application/json", body.into_bytes())),
                &[("Prefer", "return-no-content".into())],
            )
            .await?;
        if r.status.is_success() || (r.status == StatusCode::CONFLICT) {
            return Ok(());
        }
        Err(r.fail("CreateTable"))
    }

    /// Bounds a store call by the deadline.
    async fn bounded<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let deadline = self.opts.deadline.max(Duration::from_millis(100));
        tokio::time::timeout(deadline, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "azuretable {op}: timed out after {deadline:?} (the store's deadline)"
                )))
            })
    }

    async fn authorization(
        &self,
        method: &Method,
        url: &url::Url,
        content_type: &str,
        date: &str,
    ) -> Result<String, StoreError> {
        match &self.account {
            Account::SharedKey { name, key, .. } => {
                // Table service SharedKey: VERB, Content-MD5, Content-Type, Date, resource.
                let resource = format!("/{name}{}", url.path());
                let to_sign = format!("{method}\n\n{content_type}\n{date}\n{resource}");
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key)
                    .map_err(|_| StoreError::Failed("azuretable: unusable account key".into()))?;
                mac.update(to_sign.as_bytes());
                Ok(format!(
                    "SharedKey {name}:{}",
                    STANDARD.encode(mac.finalize().into_bytes())
                ))
            }
            Account::ManagedIdentity { .. } => Ok(format!("Bearer {}", self.bearer().await?)),
        }
    }

    /// The managed identity's token for Azure Storage, cached until [`TOKEN_MARGIN`] before it
    /// expires. Any failure to get one is [`StoreError::Unavailable`] (the webhook is not at
    /// fault and a retry may find the identity endpoint back): one line with the HTTP status and
    /// the endpoint's own short reason, never the token or `IDENTITY_HEADER`.
    async fn bearer(&self) -> Result<String, StoreError> {
        let Account::ManagedIdentity {
            identity_endpoint,
            identity_header,
            ..
        } = &self.account
        else {
            return Err(StoreError::Failed("azuretable: no managed identity".into()));
        };
        let mut cached = self.token.lock().await;
        if let Some((t, exp)) = cached.as_ref() {
            if *exp - TOKEN_MARGIN.as_millis() as i64 > now_ms() {
                return Ok(t.clone());
            }
        }
        let unavailable = |what: &str| {
            let what = redact(what, &[identity_header]);
            StoreError::Unavailable(clip(format!(
                "azuretable: managed identity: {}",
                one_line(&what, MAX_REASON)
            )))
        };
        let mut url = url::Url::parse(identity_endpoint)
            .map_err(|_| StoreError::Failed("azuretable: IDENTITY_ENDPOINT is not a URL".into()))?;
        url.query_pairs_mut()
            .append_pair("resource", STORAGE_RESOURCE)
            .append_pair("api-version", IDENTITY_API_VERSION);
        let r = self
            .http
            .get(url)
            .header("X-IDENTITY-HEADER", identity_header)
            .timeout(self.attempt_timeout())
            .send()
            .await
            .map_err(|e| unavailable(&format!("token request failed: {}", transport(&e))))?;
        let status = r.status();
        let body = r
            .bytes()
            .await
            .map_err(|e| unavailable(&format!("token answer unreadable: {}", transport(&e))))?;
        let v: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            // App Service: `{"statusCode":400,"message":"…"}`; IMDS-style: `error_description`.
            let said = v
                .as_ref()
                .and_then(|v| {
                    v["message"]
                        .as_str()
                        .or_else(|| v["error_description"].as_str())
                        .or_else(|| v["error"].as_str())
                })
                .map(|m| format!(": {}", one_line(m, 200)))
                .unwrap_or_default();
            return Err(unavailable(&format!(
                "token request answered HTTP {}{said}",
                status.as_u16()
            )));
        }
        let v = v.ok_or_else(|| unavailable("token answer is not JSON"))?;
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unavailable("no access_token in the token answer"))?
            .to_string();
        let seconds = |k: &str| match &v[k] {
            Value::String(s) => s.trim().parse::<i64>().ok(),
            v => v.as_i64(),
        };
        // `expires_on` (Unix seconds) as 2019-08-01 answers; else `expires_in` from now; else
        // not cached at all.
        let expires_ms = seconds("expires_on")
            .map(|s| s.saturating_mul(1000))
            .or_else(|| {
                seconds("expires_in").map(|s| now_ms().saturating_add(s.saturating_mul(1000)))
            })
            .unwrap_or(0);
        *cached = Some((token.clone(), expires_ms));
        Ok(token)
    }

    /// Forgets the cached token (the table refused it: revoked, or the clock is off).
    async fn drop_token(&self, used: &str) {
        let mut cached = self.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|(t, _)| used.ends_with(t.as_str()))
        {
            *cached = None;
        }
    }

    fn attempt_timeout(&self) -> Duration {
        let deadline = self.opts.deadline.max(Duration::from_millis(100));
        (deadline / 3).max(Duration::from_millis(200)).min(deadline)
    }

    /// One REST call, retried on transient failures: every answer that is not transient (or
    /// the last one) comes back as a [`Reply`]; a transport failure that outlasts the retries
    /// is [`StoreError::Unavailable`].
    async fn send(
        &self,
        op: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, String)],
    ) -> Result<Reply, StoreError> {
        let mut url = url::Url::parse(&format!("{}/{path}", self.account.endpoint()))
            .map_err(|_| StoreError::Failed(format!("azuretable {op}: bad request URL")))?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let deadline = self.opts.deadline.max(Duration::from_millis(100));
        let max_backoff = (deadline / 4).min(Duration::from_secs(1));
        let mut backoff = Duration::from_millis(25);
        let mut attempt = 0;
        let mut token_renewed = false;
        loop {
            attempt += 1;
            let (auth, outcome) = self
                .send_once(&method, &url, body.as_ref(), headers)
                .await?;
            // A managed identity's token the table refuses (revoked, or cached past a clock
            // change): fetched anew, once per call.
            if matches!(&outcome, Ok(r) if r.status == StatusCode::UNAUTHORIZED)
                && matches!(self.account, Account::ManagedIdentity { .. })
                && !token_renewed
            {
                token_renewed = true;
                self.drop_token(&auth).await;
                continue;
            }
            let retry = match &outcome {
                Ok(r) => is_transient(r.status),
                Err(_) => true,
            };
            if !retry || attempt >= 5 {
                return match outcome {
                    Ok(r) => Ok(r),
                    Err(cause) => Err(StoreError::Unavailable(format!("azuretable {op}: {cause}"))),
                };
            }
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 20);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// One attempt of [`Self::send`]: the `Authorization` it carried, and the answer or why
    /// none came (a transport failure, which `send` may retry).
    // The transport failure is text only: `send` puts it into `StoreError::Unavailable`.
    async fn send_once(
        &self,
        method: &Method,
        url: &url::Url,
        body: Option<&(&str, Vec<u8>)>,
        headers: &[(&str, String)],
    ) -> Result<(String, Result<Reply, String>), StoreError> {
        let date = http_date();
        let content_type = body.map_or("", |(ct, _)| *ct);
        let auth = self.authorization(method, url, content_type, &date).await?;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.attempt_timeout())
            .header("x-ms-version", API_VERSION)
            .header("x-ms-date", &date)
            .header("Date", &date)
            .header("Accept", ACCEPT)
            .header("DataServiceVersion", "3.0;NetFx")
            .header("MaxDataServiceVersion", "3.0;NetFx")
            .header("Authorization", &auth);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some((ct, b)) = body {
            req = req.header("Content-Type", *ct).body(b.clone());
        }
        let outcome = match req.send().await {
            Ok(r) => {
                let status = r.status();
                let headers = r.headers().clone();
                match r.bytes().await {
                    Ok(body) => Ok(Reply {
                        status,
                        headers,
                        body,
                    }),
                    Err(e) => Err(transport(&e)),
                }
            }
            Err(e) => Err(transport(&e)),
        };
        Ok((auth, outcome))
    }

    fn entity_path(&self, pk: &str, rk: &str) -> String {
        format!(
            "{}(PartitionKey='{}',RowKey='{}')",
            self.table,
            pk.replace('\'', "''"),
            rk.replace('\'', "''")
        )
    }

    async fn get(&self, pk: &str, rk: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let r = self
            .send(
                "GetEntity",
                Method::GET,
                &self.entity_path(pk, rk),
                &[],
                None,
                &[],
            )
            .await?;
        match r.status {
            StatusCode::OK => match r.json()? {
                Value::Object(m) => Ok(Some(m)),
                _ => Err(StoreError::Failed(
                    "azuretable: entity is not an object".into(),
                )),
            },
            StatusCode::NOT_FOUND if !r.code_is("TableNotFound") => Ok(None),
            _ => Err(r.fail("GetEntity")),
        }
    }

    /// MERGE: insert-or-merge without `if_match`, merge into an existing entity with it
    /// (`*` or an ETag). False when the condition failed (404 / 412).
    async fn merge(
        &self,
        op: &str,
        entity: Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<bool, StoreError> {
        let pk = entity["PartitionKey"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let rk = entity["RowKey"].as_str().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        if let Some(m) = if_match {
            headers.push(("If-Match", m.to_string()));
        }
        let method = Method::from_bytes(b"MERGE").expect("MERGE is a token");
        let r = self
            .send(
                op,
                method,
                &self.entity_path(&pk, &rk),
                &[],
                Some(("application/json", Value::Object(entity).to_string().into())),
                &headers,
            )
            .await?;
        match r.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND if if_match.is_some() && !r.code_is("TableNotFound") => Ok(false),
            StatusCode::PRECONDITION_FAILED => Ok(false),
            _ => Err(r.fail(op)),
        }
    }

    /// DELETE with `If-Match: *`; false when it was not there.
    async fn delete(&self, op: &str, pk: &str, rk: &str) -> Result<bool, StoreError> {
        let r = self
            .send(
                op,
                Method::DELETE,
                &self.entity_path(pk, rk),
                &[],
                None,
                &[("If-Match", "*".into())],
            )
            .await?;
        match r.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND if !r.code_is("TableNotFound") => Ok(false),
            _ => Err(r.fail(op)),
        }
    }

    /// Entities matching `filter` in key order, following continuation tokens until `max`.
    async fn query(
        &self,
        filter: &str,
        max: usize,
        select: Option<&str>,
    ) -> Result<Vec<Map<String, Value>>, StoreError> {
        let mut out = Vec::new();
        let mut next: Option<(String, Option<String>)> = None;
        loop {
            let mut q = vec![
                ("$filter", filter.to_string()),
                ("$top", (max - out.len()).min(1000).to_string()),
            ];
            if let Some(s) = select {
                q.push(("$select", s.to_string()));
            }
            if let Some((pk, rk)) = next.take() {
                q.push(("NextPartitionKey", pk));
                if let Some(rk) = rk {
                    q.push(("NextRowKey", rk));
                }
            }
            let path = format!("{}()", self.table);
            let r = self
                .send("QueryEntities", Method::GET, &path, &q, None, &[])
                .await?;
            if r.status != StatusCode::OK {
                return Err(r.fail("QueryEntities"));
            }
            let v = r.json()?;
            for e in v["value"].as_array().into_iter().flatten() {
                if let Value::Object(m) = e {
                    out.push(m.clone());
                }
            }
            match r.header("x-ms-continuation-NextPartitionKey") {
                Some(pk) if out.len() < max => {
                    next = Some((pk, r.header("x-ms-continuation-NextRowKey")));
                }
                _ => return Ok(out),
            }
        }
    }

    /// One entity-group transaction (every operation in one partition).
    async fn batch(&self, op: &str, ops: Vec<BatchOp>) -> Result<BatchOutcome, StoreError> {
        let batch = format!("batch_{}", uuid::Uuid::new_v4());
        let changeset = format!("changeset_{}", uuid::Uuid::new_v4());
        let base = format!("{}/{}", self.account.endpoint(), self.table);
        let mut body =
            format!("--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n");
        for o in &ops {
            body.push_str(&format!(
                "--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            ));
            match o {
                BatchOp::Insert(e) => body.push_str(&format!(
                    "POST {base} HTTP/1.1\r\nContent-Type: application/json\r\nAccept: {ACCEPT}\r\n\
                     Prefer: return-no-content\r\nDataServiceVersion: 3.0;\r\n\r\n{}\r\n",
                    Value::Object(e.clone())
                )),
                BatchOp::Delete { pk, rk } => body.push_str(&format!(
                    "DELETE {}/{} HTTP/1.1\r\nAccept: {ACCEPT}\r\nIf-Match: *\r\n\
                     DataServiceVersion: 3.0;\r\n\r\n",
                    self.account.endpoint(),
                    self.entity_path(pk, rk)
                )),
                BatchOp::DeleteIfUnchanged { pk, rk, etag } => body.push_str(&format!(
                    "DELETE {}/{} HTTP/1.1\r\nAccept: {ACCEPT}\r\nIf-Match: {etag}\r\n\
                     DataServiceVersion: 3.0;\r\n\r\n",
                    self.account.endpoint(),
                    self.entity_path(pk, rk)
                )),
            }
        }
        body.push_str(&format!("--{changeset}--\r\n--{batch}--\r\n"));
        let r = self
            .send(
                op,
                Method::POST,
                "$batch",
                &[],
                Some((&format!("multipart/mixed; boundary={batch}"), body.into())),
                &[],
            )
            .await?;
        if r.status != StatusCode::ACCEPTED {
            return Err(r.fail(op));
        }
        Ok(batch_outcome(&String::from_utf8_lossy(&r.body)))
    }

    /// Upserts the room's hint unless this process did so within [`HINT_REFRESH`].
    async fn hint(&self, room: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let fresh = self
            .hinted
            .lock()
            .ok()
            .and_then(|h| h.get(room).copied())
            .is_some_and(|t| now - t < HINT_REFRESH_MS && now >= t);
        if fresh {
            return Ok(());
        }
        let mut e = entity(ROOMS, &room_row(room));
        e.insert("room".into(), room.into());
        put_i64(&mut e, "touchedMs", now);
        e.insert("pending".into(), true.into());
        self.merge("MergeEntity", e, None).await?;
        if let Ok(mut h) = self.hinted.lock() {
            if h.len() > 10_000 {
                h.clear();
            }
            h.insert(room.to_string(), now);
        }
        Ok(())
    }

    async fn append_now(&self, m: NewMessage, b: Broadcast) -> Result<Appended, StoreError> {
        let id = m.id();
        let pk = room_pk(&m.room);
        let mut claim = entity(&pk, &claim_row('c', &m.connection_id, &m.ce_id));
        claim.insert("messageId".into(), id.clone().into());
        put_i64(&mut claim, "atMs", now_ms());
        let b = Broadcast {
            kind: BroadcastKind::Message,
            room: m.room.clone(),
            connection_id: m.connection_id.clone(),
            ce_id: m.ce_id.clone(),
            ..b
        };
        self.hint(&m.room).await?;
        let ops = vec![
            BatchOp::Insert(claim),
            BatchOp::Insert(message_entity(&m, &id)),
            BatchOp::Insert(broadcast_entity(&b)),
        ];
        match self.batch("append", ops).await? {
            BatchOutcome::Committed => Ok(Appended {
                message: StoredMessage::from_new(&m),
                inserted: true,
                pending: Some(b),
            }),
            BatchOutcome::Rejected { status: 409, .. } => self.existing(&m).await,
            BatchOutcome::Rejected { status, code } => Err(rejected("append", status, code)),
        }
    }

    /// A delivery stored before: its claim names the message; its broadcast if unsent.
    async fn existing(&self, m: &NewMessage) -> Result<Appended, StoreError> {
        let pk = room_pk(&m.room);
        let claim_rk = claim_row('c', &m.connection_id, &m.ce_id);
        let outbox_rk = outbox_row(BroadcastKind::Message, &m.connection_id, &m.ce_id);
        let (claim, pending) = tokio::join!(self.get(&pk, &claim_rk), self.get(&pk, &outbox_rk));
        let claim = claim?.ok_or_else(|| {
            StoreError::Failed(format!(
                "azuretable: delivery {:?} conflicts, but its claim is not there",
                m.ce_id
            ))
        })?;
        let id = text(&claim, "messageId")?;
        let item = self
            .get(&pk, &message_row(&id))
            .await?
            .ok_or_else(|| StoreError::Failed(format!("message {id} claimed but not found")))?;
        let message = entity_to_message(&item)?;
        if message.connection_id != m.connection_id || text(&item, "ceId")? != m.ce_id {
            return Err(StoreError::Failed(format!(
                "message id {id} collides with another delivery"
            )));
        }
        Ok(Appended {
            message,
            inserted: false,
            pending: pending?.map(|e| entity_to_broadcast(&e)).transpose()?,
        })
    }

    async fn record_notice_now(&self, b: Broadcast) -> Result<Recorded, StoreError> {
        let b = Broadcast {
            kind: BroadcastKind::Notice,
            ..b
        };
        let pk = room_pk(&b.room);
        let mut claim = entity(&pk, &claim_row('n', &b.connection_id, &b.ce_id));
        put_i64(&mut claim, "atMs", now_ms());
        self.hint(&b.room).await?;
        let ops = vec![
            BatchOp::Insert(claim),
            BatchOp::Insert(broadcast_entity(&b)),
        ];
        match self.batch("record_notice", ops).await? {
            BatchOutcome::Committed => Ok(Recorded {
                inserted: true,
                pending: Some(b),
            }),
            BatchOutcome::Rejected { status: 409, .. } => {
                let e = self
                    .get(&pk, &outbox_row(b.kind, &b.connection_id, &b.ce_id))
                    .await?;
                Ok(Recorded {
                    inserted: false,
                    pending: e.map(|e| entity_to_broadcast(&e)).transpose()?,
                })
            }
            BatchOutcome::Rejected { status, code } => Err(rejected("record_notice", status, code)),
        }
    }

    /// Every pending broadcast (up to [`OUTBOX_SCAN_LIMIT`]), clearing stale hints of rooms
    /// that have none.
    async fn pending_all(&self) -> Result<Vec<Broadcast>, StoreError> {
        let hints = self
            .query(
                &format!("PartitionKey eq '{ROOMS}' and pending eq true"),
                OUTBOX_SCAN_LIMIT,
                None,
            )
            .await?;
        let filter =
            |pk: &str| format!("PartitionKey eq '{pk}' and RowKey ge 'o.' and RowKey lt 'o/'");
        let per_room = futures_util::stream::iter(hints)
            .map(|hint| async move {
                let room = text(&hint, "room")?;
                let found = self
                    .query(&filter(&room_pk(&room)), OUTBOX_SCAN_LIMIT, None)
                    .await?;
                if found.is_empty() {
                    self.clear_hint(&hint).await?;
                }
                found
                    .iter()
                    .map(entity_to_broadcast)
                    .collect::<Result<Vec<_>, _>>()
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        let mut all = Vec::new();
        for r in per_room {
            all.extend(r?);
            if all.len() >= OUTBOX_SCAN_LIMIT {
                break;
            }
        }
        Ok(all)
    }

    /// Sets a hint back to not pending if it was not touched within [`HINT_GRACE`] and did not
    /// change since it was read.
    async fn clear_hint(&self, hint: &Map<String, Value>) -> Result<(), StoreError> {
        let touched = int(hint, "touchedMs").unwrap_or(0);
        let Some(etag) = hint.get("odata.etag").and_then(Value::as_str) else {
            return Ok(());
        };
        if now_ms() - touched < HINT_GRACE_MS {
            return Ok(());
        }
        let mut e = entity(ROOMS, text(hint, "RowKey")?.as_str());
        e.insert("pending".into(), false.into());
        // 412: touched meanwhile; keep it.
        self.merge("MergeEntity", e, Some(etag)).await.map(drop)
    }

    async fn history_now(&self, room: &str, page: PageRequest) -> Result<Page, StoreError> {
        let lower = match &page.before {
            Some(b) => format!("RowKey gt '{}'", message_row(b)),
            None => "RowKey ge 'm.'".to_string(),
        };
        let filter = format!(
            "PartitionKey eq '{}' and {lower} and RowKey lt 'm/'",
            room_pk(room)
        );
        let found = self.query(&filter, page.fetch(), None).await?;
        let messages = found
            .iter()
            .map(entity_to_message)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.page(messages))
    }

    async fn purge_now(&self, cutoff_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let rooms = self
            .query(&format!("PartitionKey eq '{ROOMS}'"), 100_000, None)
            .await?;
        // Messages with an event time before the cutoff: ids below `<cutoff>-0…0`.
        let oldest_kept = format!("{:013}-{}", cutoff_ms.max(0), "0".repeat(16));
        let mut deleted = 0u64;
        for hint in rooms {
            if deleted as usize >= limit {
                break;
            }
            let room = text(&hint, "room")?;
            let pk = room_pk(&room);
            let left = limit - deleted as usize;
            let old = self
                .query(
                    &format!(
                        "PartitionKey eq '{pk}' and RowKey gt '{}' and RowKey lt 'm/'",
                        message_row(&oldest_kept)
                    ),
                    left.div_ceil(2).max(1),
                    Some("PartitionKey,RowKey,connectionId,ceId"),
                )
                .await?;
            let mut ops = Vec::new();
            for e in &old {
                ops.push(BatchOp::Delete {
                    pk: pk.clone(),
                    rk: text(e, "RowKey")?,
                });
                ops.push(BatchOp::Delete {
                    pk: pk.clone(),
                    rk: claim_row('c', &text(e, "connectionId")?, &text(e, "ceId")?),
                });
            }
            let old_notices = self
                .query(
                    &format!(
                        "PartitionKey eq '{pk}' and RowKey ge 'n.' and RowKey lt 'n/' and atMs lt {cutoff_ms}L"
                    ),
                    left.saturating_sub(ops.len()).max(1),
                    Some("PartitionKey,RowKey"),
                )
                .await?;
            for e in &old_notices {
                ops.push(BatchOp::Delete {
                    pk: pk.clone(),
                    rk: text(e, "RowKey")?,
                });
            }
            ops.truncate(left.max(2));
            // A message and its claim go in the same changeset (an even split of 100).
            while !ops.is_empty() {
                let rest = ops.split_off(ops.len().min(MAX_BATCH_OPS));
                let n = ops.len() as u64;
                match self.batch("purge", ops).await? {
                    BatchOutcome::Committed => deleted += n,
                    // Deleted meanwhile (another instance's purge): the next run sees the rest.
                    BatchOutcome::Rejected { status: 404, .. } => {}
                    BatchOutcome::Rejected { status, code } => {
                        return Err(rejected("purge", status, code))
                    }
                }
                ops = rest;
            }
        }
        let left = limit.saturating_sub(deleted as usize);
        Ok(deleted + self.purge_presence(now_ms(), left).await?)
    }

    /// Deletes at most `limit` presence entries that expired before `now_ms` (their
    /// `disconnected` never came): `presence` already ignores them, and without this they would
    /// stay in the table for good. One query across the presence partitions, then a changeset
    /// per partition.
    async fn purge_presence(&self, now_ms: i64, limit: usize) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let expired = self
            .query(
                &format!(
                    "PartitionKey ge 'p.' and PartitionKey lt 'p/' and expiresMs lt {now_ms}L"
                ),
                limit,
                // All of an entry (three small properties): a projection may leave out the etag.
                None,
            )
            .await?;
        // Query results come in key order, so a partition's entries are consecutive.
        let mut changesets: Vec<Vec<BatchOp>> = Vec::new();
        let mut partition = String::new();
        for e in &expired {
            let pk = text(e, "PartitionKey")?;
            let op = BatchOp::DeleteIfUnchanged {
                rk: text(e, "RowKey")?,
                etag: text(e, "odata.etag")?,
                pk: pk.clone(),
            };
            match changesets.last_mut() {
                Some(ops) if pk == partition && ops.len() < MAX_BATCH_OPS => ops.push(op),
                _ => {
                    partition = pk;
                    changesets.push(vec![op]);
                }
            }
        }
        let mut deleted = 0;
        for ops in changesets {
            let n = ops.len() as u64;
            match self.batch("purge", ops).await? {
                BatchOutcome::Committed => deleted += n,
                // 404: left meanwhile (its `disconnected`, another instance's purge); 412:
                // renewed meanwhile (a retried `connected`). The next run sees the rest.
                BatchOutcome::Rejected {
                    status: 404 | 412, ..
                } => {}
                BatchOutcome::Rejected { status, code } => {
                    return Err(rejected("purge", status, code))
                }
            }
        }
        Ok(deleted)
    }
}

/// Reads a `$batch` answer: the first non-2xx status of the changeset, if any.
fn batch_outcome(body: &str) -> BatchOutcome {
    let mut lines = body.split("\r\n").flat_map(|l| l.split('\n'));
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("HTTP/1.1 ") else {
            continue;
        };
        let status: u16 = rest
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (200..300).contains(&status) {
            continue;
        }
        let code = lines
            .by_ref()
            .take(40)
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .and_then(|v| v["odata.error"]["code"].as_str().map(str::to_string));
        return BatchOutcome::Rejected { status, code };
    }
    BatchOutcome::Committed
}

fn rejected(op: &str, status: u16, code: Option<String>) -> StoreError {
    let reason = format!(
        "azuretable {op}: changeset rejected with HTTP {status} {}",
        code.as_deref().unwrap_or("")
    );
    if StatusCode::from_u16(status).is_ok_and(is_transient) {
        StoreError::Unavailable(clip(reason.trim_end().to_string()))
    } else {
        StoreError::Failed(clip(reason.trim_end().to_string()))
    }
}

/// `Tue, 02 Dec 2026 14:50:26 GMT`.
fn http_date() -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

/// What went wrong in transport, without the URL reqwest puts in its text.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "request timed out".into();
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return format!("cannot connect: {}", io.kind());
        }
        cur = err.source();
    }
    if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed in transport".into()
    }
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn room_pk(room: &str) -> String {
    format!("r.{}", b64(room))
}

/// Presence lives in a partition of its own per room: history and message purges never meet it
/// (the purge of expired presence entries reads only these partitions).
fn presence_pk(room: &str) -> String {
    format!("p.{}", b64(room))
}

fn room_row(room: &str) -> String {
    room_pk(room)
}

fn claim_row(kind: char, connection_id: &str, ce_id: &str) -> String {
    format!("{kind}.{}.{}", b64(connection_id), b64(ce_id))
}

fn outbox_row(kind: BroadcastKind, connection_id: &str, ce_id: &str) -> String {
    let k = match kind {
        BroadcastKind::Message => 'm',
        BroadcastKind::Notice => 'n',
    };
    format!("o.{k}.{}.{}", b64(connection_id), b64(ce_id))
}

/// `9 - d` for each decimal digit, `f - h` for each hex digit: ascending order of the result is
/// descending order of the ids (the same map inverts back).
pub fn invert(id: &str) -> String {
    let dash = id.find('-').unwrap_or(id.len());
    id.char_indices()
        .map(|(i, c)| match c.to_digit(16) {
            Some(d) if i < dash && d < 10 => char::from_digit(9 - d, 10).unwrap_or(c),
            Some(d) if i > dash => char::from_digit(15 - d, 16).unwrap_or(c),
            _ => c,
        })
        .collect()
}

fn message_row(id: &str) -> String {
    format!("m.{}", invert(id))
}

fn entity(pk: &str, rk: &str) -> Map<String, Value> {
    let mut e = Map::new();
    e.insert("PartitionKey".into(), pk.into());
    e.insert("RowKey".into(), rk.into());
    e
}

fn put_i64(e: &mut Map<String, Value>, k: &str, v: i64) {
    e.insert(k.into(), v.to_string().into());
    e.insert(format!("{k}@odata.type"), "Edm.Int64".into());
}

fn message_entity(m: &NewMessage, id: &str) -> Map<String, Value> {
    let mut e = entity(&room_pk(&m.room), &message_row(id));
    e.insert("id".into(), id.into());
    e.insert("room".into(), m.room.clone().into());
    e.insert("connectionId".into(), m.connection_id.clone().into());
    e.insert("ceId".into(), m.ce_id.clone().into());
    if let Some(u) = &m.user_id {
        e.insert("userId".into(), u.clone().into());
    }
    e.insert("text".into(), m.text.clone().into());
    put_i64(&mut e, "atMs", m.at_ms);
    e
}

fn broadcast_entity(b: &Broadcast) -> Map<String, Value> {
    let mut e = entity(
        &room_pk(&b.room),
        &outbox_row(b.kind, &b.connection_id, &b.ce_id),
    );
    e.insert("id".into(), b.id.clone().into());
    e.insert(
        "kind".into(),
        match b.kind {
            BroadcastKind::Message => "message",
            BroadcastKind::Notice => "notice",
        }
        .into(),
    );
    e.insert("room".into(), b.room.clone().into());
    e.insert("payload".into(), b.payload.clone().into());
    e.insert("connectionId".into(), b.connection_id.clone().into());
    e.insert("ceId".into(), b.ce_id.clone().into());
    put_i64(&mut e, "createdMs", b.created_ms);
    put_i64(&mut e, "dueMs", b.due_ms);
    e.insert("attempts".into(), b.attempts.into());
    e
}

fn text(e: &Map<String, Value>, k: &str) -> Result<String, StoreError> {
    e.get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| StoreError::Failed(format!("azuretable: malformed entity: no string {k}")))
}

fn int(e: &Map<String, Value>, k: &str) -> Option<i64> {
    match e.get(k)? {
        Value::String(s) => s.parse().ok(),
        v => v.as_i64(),
    }
}

fn num(e: &Map<String, Value>, k: &str) -> Result<i64, StoreError> {
    int(e, k)
        .ok_or_else(|| StoreError::Failed(format!("azuretable: malformed entity: no number {k}")))
}

fn entity_to_message(e: &Map<String, Value>) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        id: text(e, "id")?,
        room: text(e, "room")?,
        from: match e.get("userId") {
            None | Some(Value::Null) => None,
            Some(_) => Some(text(e, "userId")?),
        },
        connection_id: text(e, "connectionId")?,
        text: text(e, "text")?,
        at: format_ms(num(e, "atMs")?),
    })
}

fn entity_to_broadcast(e: &Map<String, Value>) -> Result<Broadcast, StoreError> {
    let kind = match text(e, "kind")?.as_str() {
        "message" => BroadcastKind::Message,
        "notice" => BroadcastKind::Notice,
        _ => {
            return Err(StoreError::Failed(
                "azuretable: malformed broadcast kind".into(),
            ))
        }
    };
    Ok(Broadcast {
        id: text(e, "id")?,
        kind,
        room: text(e, "room")?,
        payload: text(e, "payload")?,
        connection_id: text(e, "connectionId")?,
        ce_id: text(e, "ceId")?,
        created_ms: num(e, "createdMs")?,
        due_ms: num(e, "dueMs")?,
        attempts: u32::try_from(num(e, "attempts")?)
            .map_err(|_| StoreError::Failed("azuretable: malformed attempts".into()))?,
    })
}

fn clip(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// `s` with every (non-empty) secret replaced.
fn redact(s: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|x| !x.is_empty())
        .fold(s.to_string(), |s, x| s.replace(x, "…"))
}

fn one_line(s: &str, max: usize) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip_to(line.trim().to_string(), max)
}

fn clip_to(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[async_trait::async_trait]
impl MessageStore for AzureTableStore {
    async fn append(&self, m: NewMessage, b: Broadcast) -> Result<Appended, StoreError> {
        self.bounded("append", self.append_now(m, b)).await
    }

    async fn record_notice(&self, b: Broadcast) -> Result<Recorded, StoreError> {
        self.bounded("record_notice", self.record_notice_now(b))
            .await
    }

    /// Deletes the broadcast's entity (gone already: nothing to do).
    async fn broadcast_sent(&self, b: &Broadcast) -> Result<(), StoreError> {
        let rk = outbox_row(b.kind, &b.connection_id, &b.ce_id);
        let pk = room_pk(&b.room);
        self.bounded("broadcast_sent", self.delete("DeleteEntity", &pk, &rk))
            .await
            .map(drop)
    }

    /// Merges the new due time and `attempts + 1` into the broadcast's entity if it is still
    /// there (no atomic increment in Table storage: the count is the caller's plus one).
    async fn broadcast_failed(&self, b: &Broadcast, retry_at_ms: i64) -> Result<(), StoreError> {
        let mut e = entity(
            &room_pk(&b.room),
            &outbox_row(b.kind, &b.connection_id, &b.ce_id),
        );
        put_i64(&mut e, "dueMs", retry_at_ms);
        e.insert("attempts".into(), (b.attempts.saturating_add(1)).into());
        self.bounded("broadcast_failed", self.merge("MergeEntity", e, Some("*")))
            .await
            .map(drop)
    }

    async fn due_broadcasts(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Broadcast>, StoreError> {
        let all = self.bounded("due_broadcasts", self.pending_all()).await?;
        let mut due: Vec<Broadcast> = all.into_iter().filter(|b| b.due_ms <= now_ms).collect();
        due.sort_by(|a, b| (a.due_ms, &a.id).cmp(&(b.due_ms, &b.id)));
        due.truncate(limit);
        Ok(due)
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let all = self.bounded("backlog", self.pending_all()).await?;
        Ok(Backlog {
            pending: all.len() as u64,
            oldest_ms: all.iter().map(|b| b.created_ms).min(),
        })
    }

    async fn history(
        &self,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Page, StoreError> {
        let page = PageRequest::new(limit, before)?;
        self.bounded("history", self.history_now(room, page)).await
    }

    /// An existing entry keeps its `sinceMs` (a retried `connected` must not reset it): merge
    /// into it first, insert only when there is none.
    async fn presence_online(&self, o: &Online) -> Result<(), StoreError> {
        let mut update = entity(&presence_pk(&o.room), &b64(&o.connection_id));
        update.insert("userId".into(), o.user_id.clone().into());
        put_i64(&mut update, "expiresMs", o.expires_ms);
        let mut insert = update.clone();
        put_i64(&mut insert, "sinceMs", o.since_ms);
        self.bounded("presence_online", async {
            if !self.merge("MergeEntity", update, Some("*")).await? {
                self.merge("InsertOrMergeEntity", insert, None).await?;
            }
            Ok(())
        })
        .await
    }

    async fn presence_offline(&self, room: &str, connection_id: &str) -> Result<(), StoreError> {
        self.bounded(
            "presence_offline",
            self.delete("DeleteEntity", &presence_pk(room), &b64(connection_id)),
        )
        .await
        .map(drop)
    }

    async fn presence(&self, room: &str, now_ms: i64) -> Result<Vec<PresentUser>, StoreError> {
        let filter = format!(
            "PartitionKey eq '{}' and expiresMs gt {now_ms}L",
            presence_pk(room)
        );
        let rows = self
            .bounded(
                "presence",
                self.query(&filter, 10_000, Some("userId,sinceMs,expiresMs")),
            )
            .await?;
        let connections = rows
            .iter()
            .map(|e| Ok((text(e, "userId")?, num(e, "sinceMs")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(PresentUser::group(connections))
    }

    /// A real write: insert-or-merge of the probe entity.
    async fn health(&self) -> Result<(), StoreError> {
        let mut e = entity("health", "probe");
        put_i64(&mut e, "atMs", now_ms());
        self.bounded("health", self.merge("MergeEntity", e, None))
            .await
            .map(drop)
    }

    async fn purge_expired(&self, cutoff_ms: i64, limit: usize) -> Result<u64, StoreError> {
        // A background job: bounded by a longer deadline than a webhook's store call.
        let deadline = self.opts.deadline.max(Duration::from_millis(100)) * 12;
        tokio::time::timeout(deadline, self.purge_now(cutoff_ms, limit))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "azuretable purge: timed out after {deadline:?}"
                )))
            })
    }

    fn describe(&self) -> String {
        format!("azuretable://{}", self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_ids_sort_newest_first() {
        let ids = [
            "1700000000000-0000000000000000",
            "1700000000000-00000000000000ff",
            "1700000000000-a000000000000000",
            "1700000000001-0000000000000000",
            "1800000000000-ffffffffffffffff",
        ];
        let mut rows: Vec<String> = ids.iter().map(|i| invert(i)).collect();
        for (id, row) in ids.iter().zip(&rows) {
            assert_eq!(invert(row), *id);
        }
        rows.sort();
        let back: Vec<String> = rows.iter().map(|r| invert(r)).collect();
        let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        expected.reverse();
        assert_eq!(back, expected);
        assert_eq!(
            invert("1700000000123-0123456789abcdef"),
            "8299999999876-fedcba9876543210"
        );
    }

    #[test]
    fn connection_strings() {
        let dev = Account::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.endpoint(), "http://127.0.0.1:10002/devstoreaccount1");
        assert!(dev.is_local());
        let a = Account::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(a.endpoint(), "https://acct.table.core.windows.net");
        assert!(!a.is_local());
        assert!(!format!("{a:?}").contains("a2V5"));
        let t = Account::from_connection_string(&format!(
            "AccountName=devstoreaccount1;AccountKey={DEV_KEY};TableEndpoint=http://127.0.0.1:1/devstoreaccount1/;"
        ))
        .unwrap();
        assert_eq!(t.endpoint(), "http://127.0.0.1:1/devstoreaccount1");
        for bad in [
            "",
            "AccountName=x",
            "AccountName=x;AccountKey=!!",
            "nonsense",
        ] {
            let e = Account::from_connection_string(bad)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("!!"), "{e}");
        }
        let mi = Account::managed_identity(
            "https://acct.table.core.windows.net/",
            "http://127.0.0.1:4141/msi/token",
            "secret-header",
        )
        .unwrap();
        assert_eq!(mi.endpoint(), "https://acct.table.core.windows.net");
        assert!(!format!("{mi:?}").contains("secret-header"));
    }

    #[test]
    fn batch_answers() {
        let ok = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n\
                  --changesetresponse_2\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\
                  --changesetresponse_2--\r\n--batchresponse_1--\r\n";
        assert!(matches!(batch_outcome(ok), BatchOutcome::Committed));
        let conflict = "--batchresponse_1\r\n--changesetresponse_2\r\nContent-Type: application/http\r\n\r\n\
                        HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n\r\n\
                        {\"odata.error\":{\"code\":\"EntityAlreadyExists\",\"message\":{\"value\":\"0:exists\"}}}\r\n\
                        --changesetresponse_2--\r\n";
        match batch_outcome(conflict) {
            BatchOutcome::Rejected { status, code } => {
                assert_eq!(status, 409);
                assert_eq!(code.as_deref(), Some("EntityAlreadyExists"));
            }
            BatchOutcome::Committed => panic!("not committed"),
        }
    }

    #[test]
    fn keys_carry_no_user_text() {
        for row in [
            room_pk("a/b#c?d\\e'f"),
            claim_row('c', "conn/1", "ce#1"),
            outbox_row(BroadcastKind::Notice, "x'y", "z"),
        ] {
            assert!(
                row.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
                "{row}"
            );
        }
        assert!(http_date().ends_with(" GMT"));
    }
}
