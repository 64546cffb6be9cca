//! The REST data-plane API (2024-12-01) as the `service::ServiceClient` and `@azure/web-pubsub`
//! call it: JWT auth (audience = the request URL), sends, groups, users, closes, permissions,
//! `:generateToken`, health.
//!
//! Routed by hand: axum 0.8 reserves a leading `:` in path segments, and the API's action
//! segments (`:send`, `:closeConnections`, …) start with one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::auth::verify_rest_token;
use super::conn::{Conn, Origin};
use super::filter::Filter;
use super::Shared;
use crate::protocol::EventData;
use crate::service::{client_token, ClientTokenOptions, ConnectionString};

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response();
    if let Ok(v) = code.parse() {
        r.headers_mut().insert("x-ms-error-code", v);
    }
    r
}

fn status(s: StatusCode) -> Response {
    s.into_response()
}

#[allow(clippy::result_large_err)] // the Err is the ready HTTP response, built once per request
pub async fn api(
    State(s): State<Arc<Shared>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    // The service's health probe needs no token.
    if path.trim_end_matches('/') == "/api/health" {
        return status(StatusCode::OK);
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(reason) = verify_rest_token(&s.key, authorization, path) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized", &reason);
    }
    if !query.iter().any(|(k, _)| k == "api-version") {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "api-version is required",
        );
    }
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let qs = |k: &str| {
        query
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = method.as_str();

    let ["api", "hubs", hub, rest @ ..] = segs.as_slice() else {
        return error(StatusCode::NOT_FOUND, "NotFound", "no such operation");
    };
    let hub = *hub;
    let filter = match q("filter").map(|f| Filter::parse(&f)).transpose() {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("invalid filter: {e}"),
            )
        }
    };
    let excluded = qs("excluded");
    let reason = q("reason").unwrap_or_else(|| "Closed by the server.".into());
    let data = || -> Result<EventData, Response> {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        match ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "text/plain" => Ok(EventData::Text(String::from_utf8_lossy(&body).into_owned())),
            "application/json" => serde_json::from_slice(&body)
                .map(EventData::Json)
                .map_err(|e| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid JSON: {e}"),
                    )
                }),
            "application/octet-stream" => Ok(EventData::Binary(body.clone())),
            other => Err(error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("unsupported content type {other:?}"),
            )),
        }
    };
    let pick = |conns: Vec<Arc<Conn>>| -> Vec<Arc<Conn>> {
        conns
            .into_iter()
            .filter(|c| !excluded.contains(&c.id))
            .filter(|c| filter.as_ref().is_none_or(|f| s.matches(f, c)))
            .collect()
    };

    match (m, rest) {
        ("POST", [":send"]) => send(
            &s,
            data(),
            pick(s.registry.with(hub, |h| h.all())),
            &Origin::Server,
        ),
        ("POST", ["groups", g, ":send"]) => {
            let origin = Origin::Group {
                group: g.to_string(),
                from_user: None,
            };
            send(
                &s,
                data(),
                pick(s.registry.with(hub, |h| h.members(g))),
                &origin,
            )
        }
        ("POST", ["users", u, ":send"]) => send(
            &s,
            data(),
            pick(s.registry.with(hub, |h| h.of_user(u))),
            &Origin::Server,
        ),
        ("POST", ["connections", c, ":send"]) => {
            let conns = s
                .registry
                .with(hub, |h| h.conns.get(*c).cloned())
                .into_iter()
                .collect();
            send(&s, data(), conns, &Origin::Server)
        }
        ("HEAD", ["connections", c]) => exists(s.registry.with(hub, |h| h.conns.contains_key(*c))),
        ("HEAD", ["groups", g]) => exists(s.registry.with(hub, |h| h.groups.contains_key(*g))),
        ("HEAD", ["users", u]) => exists(!s.registry.with(hub, |h| h.of_user(u)).is_empty()),
        ("DELETE", ["connections", c]) => {
            if let Some(conn) = s.registry.with(hub, |h| h.conns.get(*c).cloned()) {
                s.close(&conn, &reason);
            }
            status(StatusCode::NO_CONTENT)
        }
        ("POST", [":closeConnections"]) => {
            close_all(&s, pick(s.registry.with(hub, |h| h.all())), &reason)
        }
        ("POST", ["groups", g, ":closeConnections"]) => {
            close_all(&s, pick(s.registry.with(hub, |h| h.members(g))), &reason)
        }
        ("POST", ["users", u, ":closeConnections"]) => {
            close_all(&s, pick(s.registry.with(hub, |h| h.of_user(u))), &reason)
        }
        ("PUT", ["groups", g, "connections", c]) => {
            let found = s.registry.with(hub, |h| {
                let found = h.conns.contains_key(*c);
                if found {
                    h.join(g, c);
                }
                found
            });
            if found {
                status(StatusCode::OK)
            } else {
                error(StatusCode::NOT_FOUND, "NotFound", "no such connection")
            }
        }
        ("DELETE", ["groups", g, "connections", c]) => {
            s.registry.with(hub, |h| h.leave(g, c));
            status(StatusCode::NO_CONTENT)
        }
        ("DELETE", ["connections", c, "groups"]) => {
            s.registry.with(hub, |h| h.leave_all(c));
            status(StatusCode::NO_CONTENT)
        }
        ("PUT", ["users", u, "groups", g]) => {
            // Only the user's current connections (Azure/azure-webpubsub#325).
            s.registry.with(hub, |h| {
                for c in h.of_user(u) {
                    h.join(g, &c.id);
                }
            });
            status(StatusCode::OK)
        }
        ("DELETE", ["users", u, "groups", g]) => {
            s.registry.with(hub, |h| {
                for c in h.of_user(u) {
                    h.leave(g, &c.id);
                }
            });
            status(StatusCode::NO_CONTENT)
        }
        ("DELETE", ["users", u, "groups"]) => {
            s.registry.with(hub, |h| {
                for c in h.of_user(u) {
                    h.leave_all(&c.id);
                }
            });
            status(StatusCode::NO_CONTENT)
        }
        ("POST", [action @ (":addToGroups" | ":removeFromGroups")]) => {
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "body must be {\"groups\":[...],\"filter\":\"...\"}",
                );
            };
            let groups: Vec<String> = req["groups"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let f = match req["filter"].as_str().map(Filter::parse).transpose() {
                Ok(f) => f,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid filter: {e}"),
                    )
                }
            };
            let targets: Vec<Arc<Conn>> = s.registry.with(hub, |h| h.all());
            let targets: Vec<Arc<Conn>> = targets
                .into_iter()
                .filter(|c| f.as_ref().is_none_or(|f| s.matches(f, c)))
                .collect();
            s.registry.with(hub, |h| {
                for c in &targets {
                    for g in &groups {
                        if *action == ":addToGroups" {
                            h.join(g, &c.id)
                        } else {
                            h.leave(g, &c.id)
                        }
                    }
                }
            });
            status(StatusCode::OK)
        }
        ("GET", ["groups", g, "connections"]) => {
            // Sorted by id; the continuation token is the last id returned, so connections
            // coming and going between pages neither repeat nor shift the rest.
            let mut members: Vec<(String, Option<String>)> = s
                .registry
                .with(hub, |h| h.members(g))
                .iter()
                .map(|c| (c.id.clone(), c.user_id.clone()))
                .collect();
            members.sort();
            let page = q("maxpagesize")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(200)
                .clamp(1, 200);
            let top = q("top").and_then(|v| v.parse::<usize>().ok());
            let after = q("continuationToken").unwrap_or_default();
            let rest: Vec<&(String, Option<String>)> = members
                .iter()
                .filter(|(c, _)| after.is_empty() || c.as_str() > after.as_str())
                .take(top.unwrap_or(usize::MAX))
                .collect();
            let slice: Vec<Value> = rest
                .iter()
                .take(page)
                .map(|(c, u)| json!({"connectionId": c, "userId": u}))
                .collect();
            let mut body = json!({"value": slice});
            if rest.len() > page {
                let host = headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("localhost");
                let last = &rest[page - 1].0;
                let mut next = url::Url::parse(&format!("http://{host}{}", uri.path()))
                    .expect("host and path form a URL");
                {
                    let mut qp = next.query_pairs_mut();
                    qp.append_pair("api-version", &q("api-version").unwrap_or_default());
                    qp.append_pair("maxpagesize", &page.to_string());
                    if let Some(t) = top {
                        qp.append_pair("top", &(t.saturating_sub(page)).to_string());
                    }
                    qp.append_pair("continuationToken", last);
                }
                body["nextLink"] = next.to_string().into();
            }
            axum::Json(body).into_response()
        }
        (
            verb @ ("PUT" | "DELETE" | "HEAD"),
            ["permissions", p @ ("sendToGroup" | "joinLeaveGroup"), "connections", c],
        ) => {
            let Some(conn) = s.registry.with(hub, |h| h.conns.get(*c).cloned()) else {
                return if verb == "HEAD" {
                    status(StatusCode::NOT_FOUND)
                } else {
                    error(StatusCode::NOT_FOUND, "NotFound", "no such connection")
                };
            };
            let role = match q("targetName") {
                Some(t) => format!("webpubsub.{p}.{t}"),
                None => format!("webpubsub.{p}"),
            };
            let mut roles = conn.roles.lock().unwrap();
            match verb {
                "PUT" => {
                    roles.insert(role);
                    status(StatusCode::OK)
                }
                "DELETE" => {
                    roles.remove(&role);
                    status(StatusCode::NO_CONTENT)
                }
                _ => exists(roles.contains(&role) || roles.contains(&format!("webpubsub.{p}"))),
            }
        }
        ("POST", [":generateToken"]) => {
            let minutes = q("minutesToExpire")
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(60)
                .max(1);
            let cs = ConnectionString::new(
                &format!(
                    "http://{}",
                    headers
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("localhost")
                ),
                s.key.clone(),
                None,
            );
            let Ok(cs) = cs else {
                return error(StatusCode::BAD_REQUEST, "BadRequest", "bad Host header");
            };
            let opts = ClientTokenOptions {
                user_id: q("userId"),
                roles: qs("role"),
                groups: qs("group"),
                expires_in: Some(Duration::from_secs(minutes * 60)),
            };
            axum::Json(json!({"token": client_token(&cs, hub, &opts, crate::service::unix_now())}))
                .into_response()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no operation {m} {path}"),
        ),
    }
}

fn exists(yes: bool) -> Response {
    status(if yes {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

fn send(
    s: &Arc<Shared>,
    data: Result<EventData, Response>,
    conns: Vec<Arc<Conn>>,
    origin: &Origin,
) -> Response {
    match data {
        Ok(d) => {
            s.deliver(conns, origin, &d, &[]);
            status(StatusCode::ACCEPTED)
        }
        Err(r) => r,
    }
}

fn close_all(s: &Arc<Shared>, conns: Vec<Arc<Conn>>, reason: &str) -> Response {
    for c in conns {
        s.close(&c, reason);
    }
    status(StatusCode::NO_CONTENT)
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
