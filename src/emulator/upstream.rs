//! Calling the hubs' event handlers the way the service does: the abuse-protection probe before a
//! URL's first use, then signed CloudEvents requests built by the shared `protocol` module, with
//! a timeout per attempt and (for system events) bounded retries.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use reqwest::StatusCode;

use super::tunnel::Tunnels;
use crate::protocol::{build_webhook, Event, EventContext};

/// One entry of a hub's event-handler settings (ARM model: urlTemplate, userEventPattern,
/// systemEvents). `{hub}` and `{event}` in the template are replaced per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSettings {
    /// The hub this entry serves (case-insensitive), or `*` for every hub.
    pub hub: String,
    pub url_template: String,
    /// `*` or a comma-separated list of user event names.
    pub user_event_pattern: String,
    /// Any of `connect`, `connected`, `disconnected`.
    pub system_events: Vec<String>,
}

/// An `--event-handler` value that is not `[hub=]http(s)-url-template` or `[hub=]tunnel:///path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an http(s) URL template (e.g. http://127.0.0.1:3000/api/{{event}}) or tunnel:///<path>")]
pub struct InvalidHandlerSpec(pub String);

impl HandlerSettings {
    /// Everything to `url_template`: connect, connected, disconnected and every user event.
    pub fn all_events(hub: &str, url_template: &str) -> HandlerSettings {
        HandlerSettings {
            hub: hub.to_string(),
            url_template: url_template.to_string(),
            user_event_pattern: "*".into(),
            system_events: vec!["connect".into(), "connected".into(), "disconnected".into()],
        }
    }

    /// `[hub=]url-template` as `hubhook emulator --event-handler` takes it (no hub: every hub).
    pub fn parse(spec: &str) -> Result<HandlerSettings, InvalidHandlerSpec> {
        let (hub, url) = match spec.split_once('=') {
            Some((hub, url)) if !hub.contains([':', '/', '?']) => (hub.trim(), url.trim()),
            _ => ("*", spec.trim()),
        };
        let probe = url.replace("{hub}", "hub").replace("{event}", "event");
        match url::Url::parse(&probe) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                Ok(HandlerSettings::all_events(hub, url))
            }
            Ok(_) if url.starts_with(TUNNEL_SCHEME) => Ok(HandlerSettings::all_events(hub, url)),
            _ => Err(InvalidHandlerSpec(spec.to_string())),
        }
    }

    fn serves_hub(&self, hub: &str) -> bool {
        self.hub == "*" || self.hub.eq_ignore_ascii_case(hub)
    }

    fn matches(&self, hub: &str, event: &Event, name: &str) -> bool {
        if !self.serves_hub(hub) {
            return false;
        }
        match event {
            Event::User(_) => {
                let p = self.user_event_pattern.trim();
                p == "*" || p.split(',').any(|n| n.trim().eq_ignore_ascii_case(name))
            }
            _ => self
                .system_events
                .iter()
                .any(|e| e.eq_ignore_ascii_case(name)),
        }
    }
}

/// What one webhook call did, for `hubhook dev`'s one line per webhook.
#[derive(Debug, Clone)]
pub struct WebhookLog {
    pub hub: String,
    pub event: String,
    pub connection_id: String,
    /// None when no HTTP answer came (timeout, unreachable, refused handshake).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub elapsed: Duration,
    pub attempt: u32,
    /// The request as sent (shared by the retries); `None` when the abuse-protection handshake
    /// failed before any request was built.
    pub request: Option<Arc<WebhookRequest>>,
    /// The handler's answer, when one came (its status is [`WebhookLog::status`]).
    pub response: Option<WebhookResponse>,
}

/// One webhook request exactly as the emulator sent it (the dev page's inspector shows it).
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The event handler's answer to one webhook attempt.
#[derive(Debug, Clone)]
pub struct WebhookResponse {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl fmt::Display for WebhookLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match (self.status, &self.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => format!("failed ({e})"),
            (None, None) => "failed".into(),
        };
        write!(
            f,
            "webhook {:<12} conn={} -> {} in {:.1} ms",
            self.event,
            self.connection_id,
            outcome,
            self.elapsed.as_secs_f64() * 1000.0
        )?;
        if self.attempt > 1 {
            write!(f, " (attempt {})", self.attempt)?;
        }
        Ok(())
    }
}

/// Called once per webhook attempt.
pub type WebhookObserver = Arc<dyn Fn(&WebhookLog) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    /// `ce-connectionState` of the answer, verbatim.
    pub state: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no event handler is configured for {0}")]
    NoHandler(String),
    #[error("abuse-protection handshake with {url} failed: {reason}")]
    Handshake { url: String, reason: String },
    #[error("event handler timed out after {0:?}")]
    Timeout(Duration),
    #[error("event handler unreachable: {0}")]
    Unreachable(String),
}

pub struct Upstream {
    http: reqwest::Client,
    key: String,
    handlers: Vec<HandlerSettings>,
    validated: Mutex<HashSet<String>>,
    timeout: Duration,
    origin: String,
    observer: Option<WebhookObserver>,
    tunnels: Arc<Tunnels>,
}

impl Upstream {
    pub fn new(
        key: &str,
        handlers: Vec<HandlerSettings>,
        timeout: Duration,
        origin: String,
        observer: Option<WebhookObserver>,
        tunnels: Arc<Tunnels>,
    ) -> Upstream {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        Upstream {
            http,
            key: key.to_string(),
            handlers,
            validated: Mutex::new(HashSet::new()),
            timeout,
            origin,
            observer,
            tunnels,
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn handles_system(&self, hub: &str, name: &str) -> bool {
        self.handlers
            .iter()
            .any(|h| h.serves_hub(hub) && h.system_events.iter().any(|e| e == name))
    }

    pub fn handles(&self, hub: &str, event: &Event, name: &str) -> bool {
        self.handlers.iter().any(|h| h.matches(hub, event, name))
    }

    /// Sends one event (the first matching handler wins) with `state` as `ce-connectionState`;
    /// `attempts` > 1 retries network failures and 5xx (system events only).
    pub async fn call(
        &self,
        ctx: &EventContext,
        event: &Event,
        state: Option<&str>,
        attempts: u32,
    ) -> Result<UpstreamReply, UpstreamError> {
        let name = ctx.event_name.as_str();
        let handler = self
            .handlers
            .iter()
            .find(|h| h.matches(&ctx.hub, event, name))
            .ok_or_else(|| UpstreamError::NoHandler(name.to_string()))?;
        let url = handler
            .url_template
            .replace("{hub}", &ctx.hub)
            .replace("{event}", name);
        let validate_url = handler
            .url_template
            .replace("{hub}", &ctx.hub)
            .replace("{event}", "validate");
        let started = Instant::now();
        if let Err(e) = self.validate(&ctx.hub, &validate_url).await {
            self.observe(ctx, None, Some(e.to_string()), started, 1, None, None);
            return Err(e);
        }
        let (mut headers, body) = build_webhook(ctx, event, &[&self.key])
            .map_err(|e| UpstreamError::Unreachable(format!("cannot build the request: {e}")))?;
        if let Some(v) = state.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert("ce-connectionstate", v);
        }
        let request = self.observer.as_ref().map(|_| {
            Arc::new(WebhookRequest {
                url: url.clone(),
                headers: headers.clone(),
                body: body.clone(),
            })
        });
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let (result, response) = self
                .post(&ctx.hub, &url, &headers, &body, request.is_some())
                .await;
            let status = result.as_ref().ok().map(|r| r.status.as_u16());
            let error = result.as_ref().err().map(|e| e.to_string());
            self.observe(
                ctx,
                status,
                error,
                started,
                attempt,
                request.clone(),
                response,
            );
            let retry = attempt < attempts && status.is_none_or(|s| s >= 500 || s == 408);
            if !retry {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            attempt += 1;
        }
    }

    /// One `POST` of the webhook; the upstream's answer in full too when `keep` (for the
    /// observer).
    async fn post(
        &self,
        hub: &str,
        url: &str,
        headers: &HeaderMap,
        body: &Bytes,
        keep: bool,
    ) -> (
        Result<UpstreamReply, UpstreamError>,
        Option<WebhookResponse>,
    ) {
        let mut response = None;
        let result = self
            .exchange(
                hub,
                reqwest::Method::POST,
                url,
                headers.clone(),
                body.clone(),
            )
            .await
            .map(|(status, h, body)| {
                if keep {
                    response = Some(WebhookResponse {
                        headers: h.clone(),
                        body: body.clone(),
                    });
                }
                let h = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(String::from);
                UpstreamReply {
                    status,
                    content_type: h("content-type"),
                    state: h("ce-connectionstate"),
                    body,
                }
            });
        (result, response)
    }

    #[allow(clippy::too_many_arguments)]
    fn observe(
        &self,
        ctx: &EventContext,
        status: Option<u16>,
        error: Option<String>,
        started: Instant,
        attempt: u32,
        request: Option<Arc<WebhookRequest>>,
        response: Option<WebhookResponse>,
    ) {
        let log = WebhookLog {
            hub: ctx.hub.to_string(),
            event: ctx.event_name.to_string(),
            connection_id: ctx.connection_id.to_string(),
            status,
            error,
            elapsed: started.elapsed(),
            attempt,
            request,
            response,
        };
        tracing::debug!(target: "hubhook::emulator", "{log}");
        if let Some(o) = &self.observer {
            o(&log);
        }
    }

    /// The abuse-protection handshake, once per URL (a failure is retried on the next event).
    async fn validate(&self, hub: &str, url: &str) -> Result<(), UpstreamError> {
        if self.validated.lock().unwrap().contains(url) {
            return Ok(());
        }
        let fail = |reason: String| UpstreamError::Handshake {
            url: url.to_string(),
            reason,
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "webhook-request-origin",
            HeaderValue::from_str(&self.origin).map_err(|_| fail("invalid origin".into()))?,
        );
        headers.insert("ce-awpsversion", HeaderValue::from_static("1.0"));
        let (status, resp_headers, _) = self
            .exchange(hub, reqwest::Method::OPTIONS, url, headers, Bytes::new())
            .await
            .map_err(|e| match e {
                UpstreamError::Timeout(_) => fail(format!("no answer within {:?}", self.timeout)),
                UpstreamError::Unreachable(r) => fail(r),
                other => fail(other.to_string()),
            })?;
        if !status.is_success() {
            return Err(fail(format!("status {status}")));
        }
        let allowed: Vec<String> = resp_headers
            .get_all("webhook-allowed-origin")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect();
        if !allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(&self.origin))
        {
            return Err(fail(format!(
                "WebHook-Allowed-Origin {allowed:?} does not allow {}",
                self.origin
            )));
        }
        self.validated.lock().unwrap().insert(url.to_string());
        Ok(())
    }
}

impl Upstream {
    /// One exchange with an event handler: an HTTP request, or (for a `tunnel:///` template) the
    /// same request through one of the hub's tunnel connections. Status, headers, whole body.
    async fn exchange(
        &self,
        hub: &str,
        method: reqwest::Method,
        url: &str,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), UpstreamError> {
        if url.starts_with(TUNNEL_SCHEME) {
            let r = self
                .tunnels
                .call(hub, method.as_str(), url, &headers, body, self.timeout)
                .await?;
            let status = StatusCode::from_u16(r.status_code).map_err(|_| {
                UpstreamError::Unreachable(format!("tunnel answered status {}", r.status_code))
            })?;
            // The answer is complete: hop-by-hop headers (Node's `transfer-encoding: chunked`,
            // `connection`) describe the tunnel client's own hop and are dropped.
            let mut h = http::HeaderMap::new();
            for (name, values) in &r.headers {
                let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                if HOP_BY_HOP.contains(&name.as_str()) {
                    continue;
                }
                for v in values {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.append(name.clone(), v);
                    }
                }
            }
            return Ok((status, h, r.body));
        }
        let sent = self
            .http
            .request(method, url)
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                let h = resp.headers().clone();
                match tokio::time::timeout(self.timeout, resp.bytes()).await {
                    Ok(Ok(body)) => Ok((status, h, body)),
                    Ok(Err(e)) => Err(UpstreamError::Unreachable(crate::service::network_reason(
                        &e,
                    ))),
                    Err(_) => Err(UpstreamError::Timeout(self.timeout)),
                }
            }
            Err(e) if e.is_timeout() => Err(UpstreamError::Timeout(self.timeout)),
            Err(e) => Err(UpstreamError::Unreachable(crate::service::network_reason(
                &e,
            ))),
        }
    }
}

/// Event-handler templates delivered through the tunnel (`tunnel:///eventhandler`).
pub const TUNNEL_SCHEME: &str = "tunnel:///";

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventData, UserEvent};

    #[test]
    fn handler_specs_with_and_without_hub() {
        let h = HandlerSettings::parse("http://127.0.0.1:3000/api/{event}?x=1").unwrap();
        assert_eq!(h.hub, "*");
        assert_eq!(h.url_template, "http://127.0.0.1:3000/api/{event}?x=1");
        let h = HandlerSettings::parse("chat=http://h/{hub}/{event}").unwrap();
        assert_eq!(h.hub, "chat");
        let t = HandlerSettings::parse("chat=tunnel:///eventhandler/{event}").unwrap();
        assert_eq!(
            (t.hub.as_str(), t.url_template.as_str()),
            ("chat", "tunnel:///eventhandler/{event}")
        );
        assert!(HandlerSettings::parse("tunnel://host/x").is_err());
        assert_eq!(
            HandlerSettings::parse("not a url").unwrap_err().to_string(),
            "\"not a url\" is not an http(s) URL template (e.g. http://127.0.0.1:3000/api/{event}) or tunnel:///<path>"
        );
    }

    #[test]
    fn matching_by_hub_and_event_pattern() {
        let mut h = HandlerSettings::all_events("Chat", "http://h/");
        h.user_event_pattern = "message, typing".into();
        h.system_events = vec!["connect".into()];
        let user = Event::User(UserEvent {
            name: "typing".into(),
            data: EventData::Text(Default::default()),
        });
        assert!(h.matches("chat", &user, "typing"));
        assert!(!h.matches("chat", &user, "other"));
        assert!(!h.matches("lobby", &user, "typing"));
        assert!(h.matches("CHAT", &Event::Connected, "connect"));
        assert!(!h.matches("chat", &Event::Connected, "connected"));
    }
}
