//! The REST data-plane API (2024-12-01) as the `service::ServiceClient` and `@azure/web-pubsub`
//! call it: JWT auth (audience = the request URL), sends, groups, users, closes, permissions,
//! `:generateToken`, health.
//!
//! Routed by hand: axum 0.8 reserves a leading `:` in path segments, and the API's action
//! segments (`:send`, `:closeConnections`, …) start with one. `route` turns a request into a
//! [`RestOp`]; `RestOp::run` does it, one small function per kind of operation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{verify_rest_token, TokenError};
use super::conn::{Conn, Origin};
use super::filter::{Filter, FilterError};
use super::hub::HubState;
use super::lenient;
use super::Shared;
use crate::protocol::EventData;
use crate::service::{client_token, ClientTokenOptions, ConnectionString};

/// Why a REST call is refused: a status, its `x-ms-error-code` and a `{"code","message"}` body.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error(transparent)]
    Unauthorized(#[from] TokenError),
    #[error("api-version is required")]
    NoApiVersion,
    #[error("invalid filter: {0}")]
    Filter(#[from] FilterError),
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("unsupported content type {0:?}")]
    ContentType(String),
    #[error("body must be {{\"groups\":[...],\"filter\":\"...\"}}")]
    GroupsBody,
    #[error("bad Host header")]
    BadHost,
    /// Not under `/api/hubs/{hub}/`.
    #[error("no such operation")]
    NotHubScoped,
    #[error("no operation {method} {path}")]
    NoOperation { method: Method, path: String },
    #[error("no such connection")]
    NoConnection,
}

impl RestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RestError::NoApiVersion
            | RestError::Filter(_)
            | RestError::Json(_)
            | RestError::ContentType(_)
            | RestError::GroupsBody
            | RestError::BadHost => StatusCode::BAD_REQUEST,
            RestError::NotHubScoped | RestError::NoOperation { .. } | RestError::NoConnection => {
                StatusCode::NOT_FOUND
            }
        }
    }

    fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::BAD_REQUEST => "BadRequest",
            _ => "NotFound",
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let code = self.code();
        let body = json!({"code": code, "message": self.to_string()});
        let mut r = (self.status(), axum::Json(body)).into_response();
        r.headers_mut()
            .insert("x-ms-error-code", http::HeaderValue::from_static(code));
        r
    }
}

/// The decoded query string; names may repeat (`excluded`, `role`, `group`).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    fn first(&self, k: &str) -> Option<String> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Which of the targeted connections an operation reaches: `filter` (OData) and `excluded` ids.
#[derive(Debug)]
struct Selection {
    filter: Option<Filter>,
    excluded: Vec<String>,
}

impl Selection {
    fn pick(&self, s: &Shared, conns: Vec<Arc<Conn>>) -> Vec<Arc<Conn>> {
        conns
            .into_iter()
            .filter(|c| !self.excluded.contains(&c.id))
            .filter(|c| self.filter.as_ref().is_none_or(|f| s.matches(f, c)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Permission {
    SendToGroup,
    JoinLeaveGroup,
}

impl Permission {
    fn parse(p: &str) -> Option<Permission> {
        match p {
            "sendToGroup" => Some(Permission::SendToGroup),
            "joinLeaveGroup" => Some(Permission::JoinLeaveGroup),
            _ => None,
        }
    }

    /// The role for `target` (a group), or for every group.
    fn role(self, target: Option<&str>) -> String {
        let p = match self {
            Permission::SendToGroup => "sendToGroup",
            Permission::JoinLeaveGroup => "joinLeaveGroup",
        };
        match target {
            Some(t) => format!("webpubsub.{p}.{t}"),
            None => format!("webpubsub.{p}"),
        }
    }
}

/// A permission of one connection, for one group (`targetName`) or all.
#[derive(Debug)]
struct Grant {
    permission: Permission,
    connection: String,
    target: Option<String>,
}

/// `GET groups/{group}/connections` paging: sorted by id, the continuation token is the last id
/// returned, so connections coming and going between pages neither repeat nor shift the rest.
#[derive(Debug)]
struct Page {
    size: usize,
    top: Option<usize>,
    after: String,
    api_version: String,
}

/// One REST operation on a hub, with its parameters from the path and query.
#[derive(Debug)]
enum RestOp {
    SendToAll(Selection),
    SendToGroup {
        group: String,
        sel: Selection,
    },
    SendToUser {
        user: String,
        sel: Selection,
    },
    SendToConnection {
        connection: String,
    },
    ConnectionExists {
        connection: String,
    },
    GroupExists {
        group: String,
    },
    UserExists {
        user: String,
    },
    CloseConnection {
        connection: String,
        reason: String,
    },
    CloseAllConnections {
        sel: Selection,
        reason: String,
    },
    CloseGroupConnections {
        group: String,
        sel: Selection,
        reason: String,
    },
    CloseUserConnections {
        user: String,
        sel: Selection,
        reason: String,
    },
    AddConnectionToGroup {
        group: String,
        connection: String,
    },
    RemoveConnectionFromGroup {
        group: String,
        connection: String,
    },
    RemoveConnectionFromAllGroups {
        connection: String,
    },
    AddUserToGroup {
        user: String,
        group: String,
    },
    RemoveUserFromGroup {
        user: String,
        group: String,
    },
    RemoveUserFromAllGroups {
        user: String,
    },
    /// `:addToGroups` / `:removeFromGroups`: groups and filter come in the body.
    AddConnectionsToGroups,
    RemoveConnectionsFromGroups,
    ListConnectionsInGroup {
        group: String,
        page: Page,
    },
    GrantPermission(Grant),
    RevokePermission(Grant),
    CheckPermission(Grant),
    GenerateClientToken(ClientTokenOptions),
}

/// What the operations read from the request besides path and query.
struct Request<'a> {
    headers: &'a HeaderMap,
    body: &'a Bytes,
    /// The raw request path (for `nextLink`).
    path: &'a str,
}

impl Request<'_> {
    fn host(&self) -> &str {
        self.headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
    }

    /// The body as message data, by its content type (default binary).
    fn data(&self) -> Result<EventData, RestError> {
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        match crate::protocol::media_type(ct).as_str() {
            "text/plain" => Ok(EventData::Text(String::from_utf8_lossy(self.body).into())),
            "application/json" => serde_json::from_slice(self.body)
                .map(EventData::Json)
                .map_err(RestError::Json),
            "application/octet-stream" => Ok(EventData::Binary(self.body.clone())),
            other => Err(RestError::ContentType(other.to_string())),
        }
    }
}

pub async fn api(
    State(s): State<Arc<Shared>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, RestError> {
    let path = uri.path();
    // The service's health probe needs no token.
    if path.trim_end_matches('/') == "/api/health" {
        return Ok(StatusCode::OK.into_response());
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    verify_rest_token(&s.key, authorization, path)?;
    let query = Query::parse(uri.query());
    if query.first("api-version").is_none() {
        return Err(RestError::NoApiVersion);
    }
    let (hub, op) = route(&method, path, &query)?;
    let req = Request {
        headers: &headers,
        body: &body,
        path,
    };
    op.run(&s, &hub, &req)
}

/// The hub and the operation a request names.
// Over 80 lines: one arm per operation keeps the API's whole routing table in one place.
fn route(method: &Method, path: &str, q: &Query) -> Result<(String, RestOp), RestError> {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let ["api", "hubs", hub, rest @ ..] = segs.as_slice() else {
        return Err(RestError::NotHubScoped);
    };
    // Parsed for every operation: a bad filter is a 400 even where it would be ignored.
    let filter = q.first("filter").map(|f| Filter::parse(&f)).transpose()?;
    let sel = Selection {
        filter,
        excluded: q.all("excluded"),
    };
    let reason = q
        .first("reason")
        .unwrap_or_else(|| "Closed by the server.".into());
    let s = |x: &&str| x.to_string();
    let op = match (method.as_str(), rest) {
        ("POST", [":send"]) => RestOp::SendToAll(sel),
        ("POST", ["groups", g, ":send"]) => RestOp::SendToGroup { group: s(g), sel },
        ("POST", ["users", u, ":send"]) => RestOp::SendToUser { user: s(u), sel },
        ("POST", ["connections", c, ":send"]) => RestOp::SendToConnection { connection: s(c) },
        ("HEAD", ["connections", c]) => RestOp::ConnectionExists { connection: s(c) },
        ("HEAD", ["groups", g]) => RestOp::GroupExists { group: s(g) },
        ("HEAD", ["users", u]) => RestOp::UserExists { user: s(u) },
        ("DELETE", ["connections", c]) => RestOp::CloseConnection {
            connection: s(c),
            reason,
        },
        ("POST", [":closeConnections"]) => RestOp::CloseAllConnections { sel, reason },
        ("POST", ["groups", g, ":closeConnections"]) => RestOp::CloseGroupConnections {
            group: s(g),
            sel,
            reason,
        },
        ("POST", ["users", u, ":closeConnections"]) => RestOp::CloseUserConnections {
            user: s(u),
            sel,
            reason,
        },
        ("PUT", ["groups", g, "connections", c]) => RestOp::AddConnectionToGroup {
            group: s(g),
            connection: s(c),
        },
        ("DELETE", ["groups", g, "connections", c]) => RestOp::RemoveConnectionFromGroup {
            group: s(g),
            connection: s(c),
        },
        ("DELETE", ["connections", c, "groups"]) => {
            RestOp::RemoveConnectionFromAllGroups { connection: s(c) }
        }
        ("PUT", ["users", u, "groups", g]) => RestOp::AddUserToGroup {
            user: s(u),
            group: s(g),
        },
        ("DELETE", ["users", u, "groups", g]) => RestOp::RemoveUserFromGroup {
            user: s(u),
            group: s(g),
        },
        ("DELETE", ["users", u, "groups"]) => RestOp::RemoveUserFromAllGroups { user: s(u) },
        ("POST", [":addToGroups"]) => RestOp::AddConnectionsToGroups,
        ("POST", [":removeFromGroups"]) => RestOp::RemoveConnectionsFromGroups,
        ("GET", ["groups", g, "connections"]) => RestOp::ListConnectionsInGroup {
            group: s(g),
            page: page(q),
        },
        (verb, ["permissions", p, "connections", c]) => {
            let grant = |permission| Grant {
                permission,
                connection: s(c),
                target: q.first("targetName"),
            };
            match (verb, Permission::parse(p)) {
                ("PUT", Some(p)) => RestOp::GrantPermission(grant(p)),
                ("DELETE", Some(p)) => RestOp::RevokePermission(grant(p)),
                ("HEAD", Some(p)) => RestOp::CheckPermission(grant(p)),
                _ => return Err(no_operation(method, path)),
            }
        }
        ("POST", [":generateToken"]) => RestOp::GenerateClientToken(token_options(q)),
        _ => return Err(no_operation(method, path)),
    };
    Ok((hub.to_string(), op))
}

fn no_operation(method: &Method, path: &str) -> RestError {
    RestError::NoOperation {
        method: method.clone(),
        path: path.to_string(),
    }
}

fn page(q: &Query) -> Page {
    Page {
        size: q
            .first("maxpagesize")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(200)
            .clamp(1, 200),
        top: q.first("top").and_then(|v| v.parse::<usize>().ok()),
        after: q.first("continuationToken").unwrap_or_default(),
        api_version: q.first("api-version").unwrap_or_default(),
    }
}

/// A year: `minutesToExpire` beyond it would overflow the token's `exp`.
const MAX_TOKEN_MINUTES: u64 = 365 * 24 * 60;

fn token_options(q: &Query) -> ClientTokenOptions {
    let minutes = q
        .first("minutesToExpire")
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(60)
        .clamp(1, MAX_TOKEN_MINUTES);
    ClientTokenOptions {
        user_id: q.first("userId"),
        roles: q.all("role"),
        groups: q.all("group"),
        expires_in: Some(Duration::from_secs(minutes * 60)),
    }
}

impl RestOp {
    // Over 80 lines: one short arm per operation, the longer ones call a function of their own.
    fn run(self, s: &Arc<Shared>, hub: &str, req: &Request) -> Result<Response, RestError> {
        let reg = &s.registry;
        match self {
            RestOp::SendToAll(sel) => {
                let conns = sel.pick(s, reg.with(hub, |h| h.all()));
                send(s, req, conns, Origin::Server)
            }
            RestOp::SendToGroup { group, sel } => {
                let conns = sel.pick(s, reg.with(hub, |h| h.members(&group)));
                let origin = Origin::Group {
                    group,
                    from_user: None,
                };
                send(s, req, conns, origin)
            }
            RestOp::SendToUser { user, sel } => {
                let conns = sel.pick(s, reg.with(hub, |h| h.of_user(&user)));
                send(s, req, conns, Origin::Server)
            }
            RestOp::SendToConnection { connection } => {
                let conns = reg.with(hub, |h| h.get(&connection)).into_iter().collect();
                send(s, req, conns, Origin::Server)
            }
            RestOp::ConnectionExists { connection } => {
                Ok(exists(reg.with(hub, |h| h.conns.contains_key(&connection))))
            }
            RestOp::GroupExists { group } => {
                Ok(exists(reg.with(hub, |h| h.groups.contains_key(&group))))
            }
            RestOp::UserExists { user } => {
                Ok(exists(!reg.with(hub, |h| h.of_user(&user)).is_empty()))
            }
            RestOp::CloseConnection { connection, reason } => {
                let conn = reg.with(hub, |h| h.get(&connection));
                close_all(s, conn.into_iter().collect(), &reason)
            }
            RestOp::CloseAllConnections { sel, reason } => {
                close_all(s, sel.pick(s, reg.with(hub, |h| h.all())), &reason)
            }
            RestOp::CloseGroupConnections { group, sel, reason } => close_all(
                s,
                sel.pick(s, reg.with(hub, |h| h.members(&group))),
                &reason,
            ),
            RestOp::CloseUserConnections { user, sel, reason } => {
                close_all(s, sel.pick(s, reg.with(hub, |h| h.of_user(&user))), &reason)
            }
            RestOp::AddConnectionToGroup { group, connection } => {
                add_connection_to_group(s, hub, &group, &connection)
            }
            RestOp::RemoveConnectionFromGroup { group, connection } => {
                reg.with(hub, |h| h.leave(&group, &connection));
                Ok(status(StatusCode::NO_CONTENT))
            }
            RestOp::RemoveConnectionFromAllGroups { connection } => {
                reg.with(hub, |h| h.leave_all(&connection));
                Ok(status(StatusCode::NO_CONTENT))
            }
            // Only the user's current connections (Azure/azure-webpubsub#325).
            RestOp::AddUserToGroup { user, group } => {
                for_user(s, hub, &user, |h, c| h.join(&group, c));
                Ok(status(StatusCode::OK))
            }
            RestOp::RemoveUserFromGroup { user, group } => {
                for_user(s, hub, &user, |h, c| h.leave(&group, c));
                Ok(status(StatusCode::NO_CONTENT))
            }
            RestOp::RemoveUserFromAllGroups { user } => {
                for_user(s, hub, &user, |h, c| h.leave_all(c));
                Ok(status(StatusCode::NO_CONTENT))
            }
            RestOp::AddConnectionsToGroups => change_groups(s, hub, req, true),
            RestOp::RemoveConnectionsFromGroups => change_groups(s, hub, req, false),
            RestOp::ListConnectionsInGroup { group, page } => {
                Ok(list_connections(s, hub, &group, &page, req))
            }
            RestOp::GrantPermission(g) => {
                let conn = connection(s, hub, &g.connection)?;
                conn.roles.lock().unwrap().insert(g.role());
                Ok(status(StatusCode::OK))
            }
            RestOp::RevokePermission(g) => {
                let conn = connection(s, hub, &g.connection)?;
                conn.roles.lock().unwrap().remove(&g.role());
                Ok(status(StatusCode::NO_CONTENT))
            }
            RestOp::CheckPermission(g) => Ok(check_permission(s, hub, &g)),
            RestOp::GenerateClientToken(opts) => generate_token(s, hub, req, &opts),
        }
    }
}

impl Grant {
    fn role(&self) -> String {
        self.permission.role(self.target.as_deref())
    }
}

fn status(s: StatusCode) -> Response {
    s.into_response()
}

fn exists(yes: bool) -> Response {
    status(if yes {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

fn connection(s: &Shared, hub: &str, id: &str) -> Result<Arc<Conn>, RestError> {
    s.registry
        .with(hub, |h| h.get(id))
        .ok_or(RestError::NoConnection)
}

fn send(
    s: &Arc<Shared>,
    req: &Request,
    conns: Vec<Arc<Conn>>,
    origin: Origin,
) -> Result<Response, RestError> {
    let data = req.data()?;
    s.deliver(conns, &origin, &data, &[]);
    Ok(status(StatusCode::ACCEPTED))
}

fn close_all(s: &Arc<Shared>, conns: Vec<Arc<Conn>>, reason: &str) -> Result<Response, RestError> {
    for c in conns {
        s.close(&c, reason);
    }
    Ok(status(StatusCode::NO_CONTENT))
}

fn for_user(s: &Shared, hub: &str, user: &str, f: impl Fn(&mut HubState, &str)) {
    s.registry.with(hub, |h| {
        for c in h.of_user(user) {
            f(h, &c.id);
        }
    });
}

fn add_connection_to_group(
    s: &Shared,
    hub: &str,
    group: &str,
    connection: &str,
) -> Result<Response, RestError> {
    let found = s.registry.with(hub, |h| {
        let found = h.conns.contains_key(connection);
        if found {
            h.join(group, connection);
        }
        found
    });
    if !found {
        return Err(RestError::NoConnection);
    }
    Ok(status(StatusCode::OK))
}

/// The body of `:addToGroups` / `:removeFromGroups`; mistyped fields read as absent.
#[derive(Debug, Default, Deserialize)]
struct GroupsBody {
    #[serde(default, deserialize_with = "lenient::strings")]
    groups: Vec<String>,
    #[serde(default, deserialize_with = "lenient::string")]
    filter: Option<String>,
}

impl GroupsBody {
    fn parse(body: &[u8]) -> Result<GroupsBody, RestError> {
        let v: Value = serde_json::from_slice(body).map_err(|_| RestError::GroupsBody)?;
        // Any JSON but an object names no groups; with lenient fields an object always reads.
        Ok(match v {
            Value::Object(_) => serde_json::from_value(v).unwrap_or_default(),
            _ => GroupsBody::default(),
        })
    }
}

fn change_groups(s: &Shared, hub: &str, req: &Request, add: bool) -> Result<Response, RestError> {
    let body = GroupsBody::parse(req.body)?;
    let filter = body.filter.as_deref().map(Filter::parse).transpose()?;
    let targets: Vec<Arc<Conn>> = s
        .registry
        .with(hub, |h| h.all())
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| s.matches(f, c)))
        .collect();
    s.registry.with(hub, |h| {
        for c in &targets {
            for g in &body.groups {
                if add {
                    h.join(g, &c.id)
                } else {
                    h.leave(g, &c.id)
                }
            }
        }
    });
    Ok(status(StatusCode::OK))
}

fn list_connections(s: &Shared, hub: &str, group: &str, page: &Page, req: &Request) -> Response {
    let mut members: Vec<(String, Option<String>)> = s
        .registry
        .with(hub, |h| h.members(group))
        .iter()
        .map(|c| (c.id.clone(), c.user_id.clone()))
        .collect();
    members.sort();
    let rest: Vec<&(String, Option<String>)> = members
        .iter()
        .filter(|(c, _)| page.after.is_empty() || c.as_str() > page.after.as_str())
        .take(page.top.unwrap_or(usize::MAX))
        .collect();
    let slice: Vec<Value> = rest
        .iter()
        .take(page.size)
        .map(|(c, u)| json!({"connectionId": c, "userId": u}))
        .collect();
    let mut body = json!({"value": slice});
    if rest.len() > page.size {
        let last = &rest[page.size - 1].0;
        body["nextLink"] = next_link(page, req, last).into();
    }
    axum::Json(body).into_response()
}

fn next_link(page: &Page, req: &Request, last: &str) -> String {
    let mut next = url::Url::parse(&format!("http://{}{}", req.host(), req.path))
        .expect("host and path form a URL");
    {
        let mut qp = next.query_pairs_mut();
        qp.append_pair("api-version", &page.api_version);
        qp.append_pair("maxpagesize", &page.size.to_string());
        if let Some(t) = page.top {
            qp.append_pair("top", &(t.saturating_sub(page.size)).to_string());
        }
        qp.append_pair("continuationToken", last);
    }
    next.to_string()
}

/// HEAD: a missing connection is a bare 404, as a missing permission.
fn check_permission(s: &Shared, hub: &str, g: &Grant) -> Response {
    let Some(conn) = s.registry.with(hub, |h| h.get(&g.connection)) else {
        return status(StatusCode::NOT_FOUND);
    };
    let roles = conn.roles.lock().unwrap();
    exists(roles.contains(&g.role()) || roles.contains(&g.permission.role(None)))
}

fn generate_token(
    s: &Shared,
    hub: &str,
    req: &Request,
    opts: &ClientTokenOptions,
) -> Result<Response, RestError> {
    let cs = ConnectionString::new(&format!("http://{}", req.host()), s.key.clone(), None)
        .map_err(|_| RestError::BadHost)?;
    let token = client_token(&cs, hub, opts, crate::service::unix_now());
    Ok(axum::Json(json!({"token": token})).into_response())
}

impl Shared {
    pub(crate) fn matches(&self, f: &Filter, c: &Conn) -> bool {
        let groups = self.registry.with(&c.hub, |h| h.groups_of(&c.id));
        let mut vars = HashMap::new();
        vars.insert("connectionid", Value::from(c.id.clone()));
        vars.insert(
            "userid",
            c.user_id.clone().map(Value::from).unwrap_or(Value::Null),
        );
        vars.insert("groups", Value::from(groups));
        f.eval(&vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_are_clamped_to_a_year() {
        let q = |m: &str| Query(vec![("minutesToExpire".to_string(), m.to_string())]);
        let minutes = |m: &str| token_options(&q(m)).expires_in.unwrap().as_secs() / 60;
        assert_eq!(minutes("18446744073709551615"), MAX_TOKEN_MINUTES);
        assert_eq!(minutes("0"), 1);
        assert_eq!(minutes("5"), 5);
        assert_eq!(minutes("soon"), 60);
    }

    #[tokio::test]
    async fn errors_are_one_json_line_with_the_code_header() {
        let r = RestError::NoConnection.into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["x-ms-error-code"], "NotFound");
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"code": "NotFound", "message": "no such connection"})
        );
        assert_eq!(
            RestError::GroupsBody.to_string(),
            r#"body must be {"groups":[...],"filter":"..."}"#
        );
    }

    #[test]
    fn routes_action_segments_and_refuses_the_rest() {
        let q = Query::parse(Some("api-version=1&excluded=a&excluded=b&reason=bye"));
        let (hub, op) = route(
            &Method::POST,
            "/api/hubs/chat/groups/a%20b/:closeConnections",
            &q,
        )
        .unwrap();
        assert_eq!(hub, "chat");
        let RestOp::CloseGroupConnections { group, sel, reason } = op else {
            panic!("{op:?}");
        };
        assert_eq!((group.as_str(), reason.as_str()), ("a b", "bye"));
        assert_eq!(sel.excluded, ["a", "b"]);
        let err = route(&Method::GET, "/api/hubs/chat/:send", &q).unwrap_err();
        assert_eq!(err.to_string(), "no operation GET /api/hubs/chat/:send");
        let bad = Query::parse(Some("filter=userId%20eq"));
        let err = route(&Method::POST, "/api/hubs/chat/bogus", &bad).unwrap_err();
        assert_eq!(err.to_string(), "invalid filter: unexpected None");
        assert!(matches!(
            route(&Method::POST, "/api/other", &q),
            Err(RestError::NotHubScoped)
        ));
    }
}
