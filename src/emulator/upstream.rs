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

/// An `--event-handler` value that is not `[hub=]http(s)-url-template`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an http(s) URL template (e.g. http://127.0.0.1:3000/api/{{event}})")]
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
}

impl Upstream {
    pub fn new(
        key: &str,
        handlers: Vec<HandlerSettings>,
        timeout: Duration,
        origin: String,
        observer: Option<WebhookObserver>,
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
        if let Err(e) = self.validate(&validate_url).await {
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
            let sent = self
                .http
                .post(&url)
                .headers(headers.clone())
                .body(body.clone())
                .timeout(self.timeout)
                .send()
                .await;
            let mut response = None;
            let result = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let h = |n: &str| {
                        resp.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                    };
                    let content_type = h("content-type");
                    let state = h("ce-connectionstate");
                    let resp_headers = request.as_ref().map(|_| resp.headers().clone());
                    match tokio::time::timeout(self.timeout, resp.bytes()).await {
                        Ok(Ok(body)) => {
                            response = resp_headers.map(|headers| WebhookResponse {
                                headers,
                                body: body.clone(),
                            });
                            Ok(UpstreamReply {
                                status,
                                content_type,
                                state,
                                body,
                            })
                        }
                        Ok(Err(e)) => Err(UpstreamError::Unreachable(innermost(&e))),
                        Err(_) => Err(UpstreamError::Timeout(self.timeout)),
                    }
                }
                Err(e) if e.is_timeout() => Err(UpstreamError::Timeout(self.timeout)),
                Err(e) => Err(UpstreamError::Unreachable(innermost(&e))),
            };
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
            hub: ctx.hub.clone(),
            event: ctx.event_name.clone(),
            connection_id: ctx.connection_id.clone(),
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
    async fn validate(&self, url: &str) -> Result<(), UpstreamError> {
        if self.validated.lock().unwrap().contains(url) {
            return Ok(());
        }
        let fail = |reason: String| UpstreamError::Handshake {
            url: url.to_string(),
            reason,
        };
        let resp = self
            .http
            .request(reqwest::Method::OPTIONS, url)
            .header("WebHook-Request-Origin", &self.origin)
            .header("ce-awpsversion", "1.0")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    fail(format!("no answer within {:?}", self.timeout))
                } else {
                    fail(innermost(&e))
                }
            })?;
        if !resp.status().is_success() {
            return Err(fail(format!("status {}", resp.status())));
        }
        let allowed: Vec<String> = resp
            .headers()
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

fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

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
        assert!(HandlerSettings::parse("tunnel:///x").is_err());
        assert_eq!(
            HandlerSettings::parse("not a url").unwrap_err().to_string(),
            "\"not a url\" is not an http(s) URL template (e.g. http://127.0.0.1:3000/api/{event})"
        );
    }

    #[test]
    fn matching_by_hub_and_event_pattern() {
        let mut h = HandlerSettings::all_events("Chat", "http://h/");
        h.user_event_pattern = "message, typing".into();
        h.system_events = vec!["connect".into()];
        let user = Event::User(UserEvent {
            name: "typing".into(),
            data: EventData::Text(String::new()),
        });
        assert!(h.matches("chat", &user, "typing"));
        assert!(!h.matches("chat", &user, "other"));
        assert!(!h.matches("lobby", &user, "typing"));
        assert!(h.matches("CHAT", &Event::Connected, "connect"));
        assert!(!h.matches("chat", &Event::Connected, "connected"));
    }
}
