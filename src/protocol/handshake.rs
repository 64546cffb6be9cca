//! Abuse protection: the service's `OPTIONS` probe before it sends any event.
//!
//! Unlike `@azure/web-pubsub-express`, which lists its allowed hosts and lets the service decide,
//! hubhook refuses an origin that is not allowed (403), so a stranger's Web PubSub resource cannot
//! enlist this endpoint as its event handler.

use super::ProtocolError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginsError {
    #[error("{0:?} is not a host name")]
    NotAHost(String),
    #[error("empty list (use * to allow any origin)")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: any Web PubSub resource may send events (signatures are still checked).
    Any,
    /// Host names (no scheme), compared case-insensitively.
    Hosts(Vec<String>),
}

impl AllowedOrigins {
    /// Parses `*` or a comma-separated list of hosts or URLs (`https://x.webpubsub.azure.com` is
    /// reduced to its host, as the service sends only the host).
    pub fn parse(spec: &str) -> Result<Self, OriginsError> {
        let mut hosts = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return Ok(AllowedOrigins::Any);
            }
            let host = match url::Url::parse(item) {
                Ok(u) if u.host_str().is_some() => u.host_str().unwrap_or_default().to_string(),
                _ => item.trim_end_matches('/').to_string(),
            };
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(OriginsError::NotAHost(item.to_string()));
            }
            hosts.push(host.to_ascii_lowercase());
        }
        if hosts.is_empty() {
            return Err(OriginsError::Empty);
        }
        Ok(AllowedOrigins::Hosts(hosts))
    }

    /// The `WebHook-Allowed-Origin` value to answer with, given the probe's `WebHook-Request-Origin`.
    pub fn check(&self, request_origin: Option<&str>) -> Result<String, ProtocolError> {
        let origin = request_origin
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(ProtocolError::MissingOrigin)?;
        match self {
            AllowedOrigins::Any => Ok("*".to_string()),
            AllowedOrigins::Hosts(hosts) => {
                if hosts.iter().any(|h| h.eq_ignore_ascii_case(origin)) {
                    Ok(origin.to_string())
                } else {
                    Err(ProtocolError::OriginNotAllowed(
                        origin.chars().take(256).collect(),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_listed_hosts_case_insensitively() {
        let a =
            AllowedOrigins::parse("https://Contoso.webpubsub.azure.com/, other.example").unwrap();
        assert_eq!(
            a.check(Some("contoso.webpubsub.azure.com")).unwrap(),
            "contoso.webpubsub.azure.com"
        );
        assert_eq!(a.check(Some("OTHER.example")).unwrap(), "OTHER.example");
        assert_eq!(
            a.check(Some("evil.webpubsub.azure.com"))
                .unwrap_err()
                .status()
                .as_u16(),
            403
        );
        assert_eq!(a.check(None), Err(ProtocolError::MissingOrigin));
        assert_eq!(a.check(Some("  ")), Err(ProtocolError::MissingOrigin));
    }

    #[test]
    fn star_allows_any() {
        let a = AllowedOrigins::parse("*").unwrap();
        assert_eq!(a.check(Some("x.webpubsub.azure.com")).unwrap(), "*");
        assert!(AllowedOrigins::parse(" , ").is_err());
        assert!(AllowedOrigins::parse("a b").is_err());
    }
}
