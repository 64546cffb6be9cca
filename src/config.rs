//! One typed [`Config`] from flags and `WEBPUBSUB_*` / `HUBHOOK_*` environment variables,
//! validated at start. Every error is one line naming the variable, and never echoes a secret.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use crate::chat::{validate_room, ChatConfig};
use crate::protocol::AllowedOrigins;
use crate::service::{AccessKey, ConnectionString};

/// The public key of local emulators (Microsoft's and ours): never valid on a real resource.
pub const LOCAL_ACCESS_KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// Flags of `hubhook serve` (and the function side of `hubhook dev`). Values stay strings here so
/// that validation can name the environment variable in its message.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Port to listen on.
    #[arg(long, env = "PORT")]
    pub port: Option<String>,
    /// Address to bind (default 0.0.0.0 for serve, 127.0.0.1 for dev).
    #[arg(long, env = "HUBHOOK_BIND")]
    pub bind: Option<String>,
    /// `Endpoint=...;AccessKey=...;Version=1.0;` of the Web PubSub resource.
    #[arg(long, env = "WEBPUBSUB_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// AWS Secrets Manager secret holding the connection string, read once at cold start
    /// (used when WEBPUBSUB_CONNECTION_STRING is not set).
    #[arg(long, env = "WEBPUBSUB_CONNECTION_STRING_SECRET_ARN")]
    pub connection_string_secret_arn: Option<String>,
    /// Hub served by this handler.
    #[arg(long, env = "WEBPUBSUB_HUB")]
    pub hub: Option<String>,
    /// Extra access keys accepted for `ce-signature` (comma-separated), e.g. the secondary key.
    #[arg(long, env = "WEBPUBSUB_ACCESS_KEYS", hide_env_values = true)]
    pub access_keys: Option<String>,
    /// Origins allowed by the abuse-protection handshake: `*` or comma-separated hosts.
    /// Default: the host of the connection string's endpoint.
    #[arg(long, env = "HUBHOOK_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// `sqlite://PATH` (default `sqlite://hubhook.db`) or `dynamodb://TABLE`.
    #[arg(long, env = "HUBHOOK_STORE")]
    pub store: Option<String>,
    /// `open` or `off`. Default: open only when the endpoint is loopback.
    #[arg(long, env = "HUBHOOK_NEGOTIATE")]
    pub negotiate: Option<String>,
    /// Accept connections without a user id (`true`/`false`).
    #[arg(long, env = "HUBHOOK_ALLOW_ANONYMOUS")]
    pub allow_anonymous: Option<String>,
    /// Largest accepted chat message in bytes (default 65536).
    #[arg(long, env = "HUBHOOK_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<String>,
    /// User events besides `message` relayed to the room unstored (comma-separated).
    #[arg(long, env = "HUBHOOK_RELAY_EVENTS")]
    pub relay_events: Option<String>,
    /// Path of the event handler (default `/eventhandler`; `/{event}` is appended for URL templates).
    #[arg(long, env = "HUBHOOK_EVENT_PATH")]
    pub event_path: Option<String>,
    /// Days to keep messages (DynamoDB TTL); default: forever.
    #[arg(long, env = "HUBHOOK_RETENTION_DAYS")]
    pub retention_days: Option<String>,
    /// Encoding of incoming connection state: `express` (default, what hubhook writes) or
    /// `dotnet` (a hub moving over from an ASP.NET Core handler).
    #[arg(long, env = "HUBHOOK_STATE_FORMAT")]
    pub state_format: Option<String>,
    /// `true` turns OFF ce-signature verification. Only for debugging; logged loudly.
    #[arg(long, env = "HUBHOOK_INSECURE_SKIP_SIGNATURE")]
    pub insecure_skip_signature: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Dynamo { table: String },
}

impl StoreSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("sqlite://") {
            if p.is_empty() {
                return Err("sqlite:// needs a path, e.g. sqlite://hubhook.db".into());
            }
            Ok(StoreSpec::Sqlite(PathBuf::from(p)))
        } else if let Some(t) = s.strip_prefix("dynamodb://") {
            let ok = (3..=255).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(format!("{t:?} is not a DynamoDB table name"));
            }
            Ok(StoreSpec::Dynamo {
                table: t.to_string(),
            })
        } else {
            Err(format!("{s:?}: expected sqlite://PATH or dynamodb://TABLE"))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub connection_string: ConnectionString,
    pub hub: String,
    /// Every key accepted for signatures: the connection string's first.
    pub signature_keys: Vec<AccessKey>,
    pub verify_signatures: bool,
    pub allowed_origins: AllowedOrigins,
    pub store: StoreSpec,
    pub negotiate_open: bool,
    pub chat: ChatConfig,
    pub event_path: String,
    pub retention_days: Option<u32>,
    pub dotnet_state: bool,
}

/// Defaults that differ between `serve` and `dev`.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub port: u16,
    pub bind: IpAddr,
    pub connection_string: Option<String>,
}

impl Defaults {
    pub fn serve() -> Self {
        Defaults {
            port: 8080,
            bind: IpAddr::from([0, 0, 0, 0]),
            connection_string: None,
        }
    }
    pub fn dev(emulator_port: u16) -> Self {
        Defaults {
            port: 8081,
            bind: IpAddr::from([127, 0, 0, 1]),
            connection_string: Some(format!("Endpoint=http://localhost;Port={emulator_port};AccessKey={LOCAL_ACCESS_KEY};Version=1.0;")),
        }
    }
}

fn parse_bool(var: &'static str, v: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match v.map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(s) => match s.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(err(var, format!("expected true or false, got {s:?}"))),
        },
    }
}

fn parse_num<T: std::str::FromStr>(
    var: &'static str,
    v: &str,
    what: &str,
) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| err(var, format!("{v:?} is not {what}")))
}

pub fn validate_hub(hub: &str) -> Result<(), String> {
    let mut bytes = hub.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let rest_ok =
        hub.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_`,.[]".contains(&b));
    (first_ok && rest_ok).then_some(()).ok_or_else(|| {
        format!("{hub:?} is not a hub name (a letter, then up to 127 of A-Z a-z 0-9 _ ` , . [ ])")
    })
}

impl Config {
    pub fn from_args(a: &ServeArgs, d: &Defaults) -> Result<Config, ConfigError> {
        let port = match &a.port {
            Some(p) => parse_num("PORT", p, "a port number")?,
            None => d.port,
        };
        let bind = match &a.bind {
            Some(b) => parse_num("HUBHOOK_BIND", b, "an IP address")?,
            None => d.bind,
        };
        let cs_text = a
            .connection_string
            .clone()
            .or_else(|| d.connection_string.clone())
            .ok_or_else(|| err("WEBPUBSUB_CONNECTION_STRING", "is required (Endpoint=https://<name>.webpubsub.azure.com;AccessKey=...;Version=1.0;)"))?;
        let connection_string = ConnectionString::parse(&cs_text)
            .map_err(|e| err("WEBPUBSUB_CONNECTION_STRING", e.to_string()))?;
        let hub = a.hub.clone().unwrap_or_else(|| "chat".into());
        validate_hub(&hub).map_err(|e| err("WEBPUBSUB_HUB", e))?;

        let mut signature_keys = vec![connection_string.access_key.clone()];
        for k in a
            .access_keys
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            signature_keys.push(AccessKey::new(k));
        }
        let verify_signatures = !parse_bool(
            "HUBHOOK_INSECURE_SKIP_SIGNATURE",
            a.insecure_skip_signature.as_deref(),
            false,
        )?;

        let allowed_origins = match &a.allowed_origins {
            Some(s) => AllowedOrigins::parse(s).map_err(|e| err("HUBHOOK_ALLOWED_ORIGINS", e))?,
            None => AllowedOrigins::Hosts(vec![connection_string.host().to_ascii_lowercase()]),
        };
        let store = StoreSpec::parse(a.store.as_deref().unwrap_or("sqlite://hubhook.db"))
            .map_err(|e| err("HUBHOOK_STORE", e))?;
        let negotiate_open = match a.negotiate.as_deref().map(str::trim) {
            None => connection_string.is_loopback(),
            Some("open") => true,
            Some("off") => false,
            Some(other) => {
                return Err(err(
                    "HUBHOOK_NEGOTIATE",
                    format!("expected open or off, got {other:?}"),
                ))
            }
        };
        let max_message_bytes = match &a.max_message_bytes {
            Some(v) => parse_num::<usize>("HUBHOOK_MAX_MESSAGE_BYTES", v, "a byte count")?,
            None => 64 * 1024,
        };
        if max_message_bytes == 0 || max_message_bytes > 1024 * 1024 {
            return Err(err(
                "HUBHOOK_MAX_MESSAGE_BYTES",
                "must be between 1 and 1048576",
            ));
        }
        let relay_events: Vec<String> = a
            .relay_events
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if relay_events.iter().any(|e| e == "message") {
            return Err(err(
                "HUBHOOK_RELAY_EVENTS",
                "\"message\" is the stored chat event and cannot be relayed",
            ));
        }
        let event_path = a
            .event_path
            .clone()
            .unwrap_or_else(|| "/eventhandler".into());
        if !event_path.starts_with('/')
            || event_path.len() < 2
            || event_path.ends_with('/')
            || event_path.contains(['{', '}', '*', ':'])
        {
            return Err(err(
                "HUBHOOK_EVENT_PATH",
                format!("{event_path:?} must look like /eventhandler"),
            ));
        }
        let retention_days = a
            .retention_days
            .as_deref()
            .map(|v| parse_num::<u32>("HUBHOOK_RETENTION_DAYS", v, "a number of days"))
            .transpose()?
            .filter(|d| *d > 0);
        let dotnet_state = match a.state_format.as_deref().map(str::trim) {
            None | Some("express") => false,
            Some("dotnet") => true,
            Some(other) => {
                return Err(err(
                    "HUBHOOK_STATE_FORMAT",
                    format!("expected express or dotnet, got {other:?}"),
                ))
            }
        };
        let default_room = "lobby".to_string();
        validate_room(&default_room).map_err(|e| err("room", e.to_string()))?;
        Ok(Config {
            bind,
            port,
            connection_string,
            hub,
            signature_keys,
            verify_signatures,
            allowed_origins,
            store,
            negotiate_open,
            chat: ChatConfig {
                allow_anonymous: parse_bool(
                    "HUBHOOK_ALLOW_ANONYMOUS",
                    a.allow_anonymous.as_deref(),
                    false,
                )?,
                max_message_bytes,
                default_room,
                relay_events,
            },
            event_path,
            retention_days,
            dotnet_state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cs: &str) -> ServeArgs {
        ServeArgs {
            connection_string: Some(cs.into()),
            ..Default::default()
        }
    }

    const CS: &str =
        "Endpoint=https://contoso.webpubsub.azure.com;AccessKey=secretkey123;Version=1.0;";

    #[test]
    fn defaults() {
        let c = Config::from_args(&args(CS), &Defaults::serve()).unwrap();
        assert_eq!(
            (
                c.port,
                c.hub.as_str(),
                c.negotiate_open,
                c.verify_signatures
            ),
            (8080, "chat", false, true)
        );
        assert_eq!(c.store, StoreSpec::Sqlite("hubhook.db".into()));
        assert_eq!(
            c.allowed_origins,
            AllowedOrigins::Hosts(vec!["contoso.webpubsub.azure.com".into()])
        );
        assert_eq!(c.chat.max_message_bytes, 65536);
        let d = Config::from_args(&ServeArgs::default(), &Defaults::dev(8080)).unwrap();
        assert_eq!(
            (d.port, d.negotiate_open, d.bind),
            (8081, true, IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(d.connection_string.origin(), "http://localhost:8080");
    }

    #[test]
    fn errors_name_the_variable_and_hide_secrets() {
        let e = |a: ServeArgs| {
            Config::from_args(&a, &Defaults::serve())
                .unwrap_err()
                .to_string()
        };
        assert!(e(ServeArgs::default()).starts_with("WEBPUBSUB_CONNECTION_STRING: is required"));
        assert!(e(args("Endpoint=https://x"))
            .starts_with("WEBPUBSUB_CONNECTION_STRING: connection string: no AccessKey"));
        assert!(e(ServeArgs {
            port: Some("http".into()),
            ..args(CS)
        })
        .starts_with("PORT:"));
        assert!(e(ServeArgs {
            hub: Some("1hub".into()),
            ..args(CS)
        })
        .starts_with("WEBPUBSUB_HUB:"));
        assert!(e(ServeArgs {
            store: Some("redis://x".into()),
            ..args(CS)
        })
        .starts_with("HUBHOOK_STORE:"));
        assert!(e(ServeArgs {
            negotiate: Some("maybe".into()),
            ..args(CS)
        })
        .starts_with("HUBHOOK_NEGOTIATE:"));
        assert!(e(ServeArgs {
            allow_anonymous: Some("perhaps".into()),
            ..args(CS)
        })
        .starts_with("HUBHOOK_ALLOW_ANONYMOUS:"));
        assert!(e(ServeArgs {
            max_message_bytes: Some("0".into()),
            ..args(CS)
        })
        .starts_with("HUBHOOK_MAX_MESSAGE_BYTES:"));
        assert!(e(ServeArgs {
            allowed_origins: Some(",".into()),
            ..args(CS)
        })
        .starts_with("HUBHOOK_ALLOWED_ORIGINS:"));
        assert!(e(ServeArgs {
            event_path: Some("x".into()),
            ..args(CS)
        })
        .starts_with("HUBHOOK_EVENT_PATH:"));
        let bad_port = e(args("Endpoint=https://x;AccessKey=secretkey123;Port=abc"));
        assert!(
            !bad_port.contains("secretkey123") && bad_port.contains("Port"),
            "{bad_port}"
        );
    }

    #[test]
    fn options() {
        let a = ServeArgs {
            access_keys: Some("second, third".into()),
            allowed_origins: Some("*".into()),
            store: Some("dynamodb://hubhook-messages".into()),
            negotiate: Some("open".into()),
            relay_events: Some("typing, reaction".into()),
            retention_days: Some("30".into()),
            insecure_skip_signature: Some("true".into()),
            ..args(CS)
        };
        let c = Config::from_args(&a, &Defaults::serve()).unwrap();
        assert_eq!(c.signature_keys.len(), 3);
        assert!(!c.verify_signatures && c.negotiate_open);
        assert_eq!(
            c.store,
            StoreSpec::Dynamo {
                table: "hubhook-messages".into()
            }
        );
        assert_eq!(c.chat.relay_events, vec!["typing", "reaction"]);
        assert_eq!(c.retention_days, Some(30));
        assert_eq!(c.allowed_origins, AllowedOrigins::Any);
    }
}
