//! One tunnelled webhook replayed against the upstream. Unlike awps-tunnel: the upstream's path
//! is a prefix and both queries are kept (an Azure Functions `?code=` survives), https works,
//! every call has a timeout, and every failure is answered (502 with the reason).

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::frame::{Headers, HttpRequest, HttpResponse};

/// Headers that describe one hop, not the message: never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// What one forwarded request did: the terminal's one line.
#[derive(Debug, Clone)]
pub struct ForwardLog {
    pub method: String,
    /// The upstream path (the query is left out: it may hold a function key).
    pub path: String,
    pub event: String,
    pub status: u16,
    pub elapsed: Duration,
    pub error: Option<String>,
}

impl fmt::Display for ForwardLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {} {:<12} -> {} in {:.1} ms",
            self.method,
            self.path,
            self.event,
            self.status,
            self.elapsed.as_secs_f64() * 1000.0
        )?;
        if let Some(e) = &self.error {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

/// One forwarded webhook in full, for `hubhook dev`'s inspector: the request as sent to the
/// upstream (hop-by-hop headers left out, as forwarded) and the answer the service got back.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub log: ForwardLog,
    /// The upstream URL called, query included; `None` when the request's URL did not map to one.
    pub url: Option<String>,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Bytes,
    /// The answer the service got: the upstream's, or the tunnel's own 502 / 400 (then
    /// [`ForwardLog::error`] says why).
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Bytes,
}

impl Forwarded {
    /// A request header's first value, by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn forwarded_headers(h: &Headers) -> Vec<(String, String)> {
    h.iter()
        .filter(|(n, _)| !HOP_BY_HOP.iter().any(|hop| n.eq_ignore_ascii_case(hop)))
        .flat_map(|(n, vs)| vs.iter().map(move |v| (n.clone(), v.clone())))
        .collect()
}

/// A request whose `Url` is neither absolute nor a path (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("the request URL {0:?} does not parse")]
struct BadRequestUrl(String);

/// The upstream URL for a request's `Url`: the upstream's path + the request's path, the
/// upstream's query then the request's. A `Url` that is not absolute is taken as a path.
fn upstream_url(upstream: &url::Url, request_url: &str) -> Result<url::Url, BadRequestUrl> {
    let (path, query) = match url::Url::parse(request_url) {
        Ok(u) => (u.path().to_string(), u.query().map(String::from)),
        Err(_) if request_url.starts_with('/') => {
            let (p, q) = request_url
                .split_once('?')
                .map_or((request_url, None), |(p, q)| (p, Some(q.to_string())));
            (p.to_string(), q)
        }
        Err(_) => return Err(BadRequestUrl(request_url.to_string())),
    };
    let mut u = upstream.clone();
    let base = upstream.path().trim_end_matches('/');
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    u.set_path(&format!("{base}{path}"));
    let q = [upstream.query(), query.as_deref()]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect::<Vec<_>>()
        .join("&");
    u.set_query((!q.is_empty()).then_some(q.as_str()));
    Ok(u)
}

/// Replays `req` and answers it: same `AckId`, `LocalRouting`, `ChannelName`; one complete
/// response. Never fails: an error is a 502 (400 for a request that cannot be replayed).
pub async fn forward(
    http: &reqwest::Client,
    upstream: &url::Url,
    timeout: Duration,
    req: HttpRequest,
) -> (HttpResponse, ForwardLog) {
    let (resp, forwarded) = forward_in_full(http, upstream, timeout, req).await;
    (resp, forwarded.log)
}

/// [`forward`], and the whole exchange (for the dev page's inspector).
pub async fn forward_in_full(
    http: &reqwest::Client,
    upstream: &url::Url,
    timeout: Duration,
    req: HttpRequest,
) -> (HttpResponse, Forwarded) {
    let started = Instant::now();
    let event = header(&req.headers, "ce-eventname")
        .or_else(|| (req.http_method.eq_ignore_ascii_case("OPTIONS")).then(|| "validate".into()))
        .unwrap_or_else(|| "-".into());
    let mut log = ForwardLog {
        method: req.http_method.clone(),
        path: String::new(),
        event,
        status: 0,
        elapsed: Duration::ZERO,
        error: None,
    };
    let result = call(http, upstream, timeout, &req, &mut log.path).await;
    let (status, headers, body) = match result {
        Ok(ok) => ok,
        Err((status, reason)) => {
            log.error = Some(reason.clone());
            let headers = vec![(
                "content-type".into(),
                vec!["text/plain; charset=utf-8".into()],
            )];
            (
                status,
                headers,
                Bytes::from(format!("hubhook tunnel: {reason}")),
            )
        }
    };
    log.status = status;
    log.elapsed = started.elapsed();
    let forwarded = Forwarded {
        url: upstream_url(upstream, &req.url).ok().map(String::from),
        request_headers: forwarded_headers(&req.headers),
        request_body: req.body.clone(),
        status,
        response_headers: forwarded_headers(&headers),
        response_body: body.clone(),
        log,
    };
    let resp = HttpResponse {
        ack_id: req.ack_id,
        local_routing: req.local_routing,
        status_code: status,
        channel_name: req.channel_name,
        not_completed: false,
        headers,
        body,
    };
    (resp, forwarded)
}

async fn call(
    http: &reqwest::Client,
    upstream: &url::Url,
    timeout: Duration,
    req: &HttpRequest,
    path: &mut String,
) -> Result<(u16, Headers, Bytes), (u16, String)> {
    let url = upstream_url(upstream, &req.url).map_err(|e| (400, e.to_string()))?;
    path.push_str(url.path());
    let method = reqwest::Method::from_bytes(req.http_method.as_bytes())
        .map_err(|_| (400, format!("invalid method {:?}", req.http_method)))?;
    let mut headers = HeaderMap::new();
    for (name, values) in &req.headers {
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for v in values {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.append(name.clone(), v);
            }
        }
    }
    let sent = http
        .request(method, url.clone())
        .headers(headers)
        .body(req.body.clone())
        .timeout(timeout)
        .send()
        .await;
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            (502, format!("upstream timed out after {timeout:?}"))
        } else {
            (
                502,
                format!(
                    "upstream unreachable: {}",
                    crate::service::network_reason(&e)
                ),
            )
        }
    };
    let resp = sent.map_err(failed)?;
    let status = resp.status().as_u16();
    let mut out: Headers = Vec::new();
    for (name, value) in resp.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.iter_mut().find(|(n, _)| n == name.as_str()) {
            Some((_, vs)) => vs.push(value),
            None => out.push((name.as_str().to_string(), vec![value])),
        }
    }
    let body = resp.bytes().await.map_err(failed)?;
    Ok((status, out, body))
}

fn header(h: &Headers, name: &str) -> Option<String> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_path_prefix_and_both_queries_are_kept() {
        let up = |s: &str| url::Url::parse(s).unwrap();
        let u = |base: &str, req: &str| upstream_url(&up(base), req).unwrap().to_string();
        assert_eq!(
            u(
                "http://h:1/base/path",
                "tunnel:///eventhandler/connect?code=abc&x=1"
            ),
            "http://h:1/base/path/eventhandler/connect?code=abc&x=1"
        );
        assert_eq!(
            u("https://fn.example/api/?code=k", "tunnel:///eventhandler"),
            "https://fn.example/api/eventhandler?code=k"
        );
        assert_eq!(
            u("http://h:1", "http://service.example/eventhandler?a=1"),
            "http://h:1/eventhandler?a=1"
        );
        assert_eq!(u("http://h:1/", "/e?q"), "http://h:1/e?q");
        assert!(upstream_url(&up("http://h"), "not a url").is_err());
    }
}
