//! One typed [`Config`] from flags and `WEBPUBSUB_*` / `HUBHOOK_*` environment variables,
//! validated at start. Every error is one line naming the variable, and never echoes a secret.
//!
//! This module is the only place that reads the process environment: the command line (with each
//! flag's variable), and the variables platforms set ([`Platform::detect`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::auth::OidcConfig;
use crate::chat::{
    validate_room, ChatConfig, MessageRate, OutboxConfig, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PRESENCE_TTL, DEFAULT_ROOM,
};
use crate::protocol::{validate_hub, AllowedOrigins};
use crate::runtime::listener::Limits;
use crate::service::{AccessKey, ConnectionString, ACCESS_KEY_CHARS};
use crate::store::{OpenOptions, StoreSpec};

/// The public key of local emulators (Microsoft's and ours): never valid on a real resource.
pub const LOCAL_ACCESS_KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

fn err(var: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError {
        var,
        reason: reason.to_string(),
    }
}

/// The subcommands; `hubhook` with none serves, configured by the environment (how Lambda and
/// Azure Functions start it).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the event handler (the default; also what Lambda and Azure Functions start).
    Serve(ServeArgs),
    /// The local Web PubSub emulator alone (client WebSockets, webhooks, REST API), loopback only.
    Emulator(EmulatorArgs),
    /// Local development: the emulator and the chat function in one process, loopback only.
    Dev(DevArgs),
    /// Tunnel a real Web PubSub resource's webhooks to a local handler (no public URL): set the
    /// hub's event handler to `tunnel:///eventhandler`.
    Tunnel(TunnelArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct TunnelArgs {
    /// Hub whose webhooks are tunnelled.
    #[arg(long, env = "WEBPUBSUB_HUB")]
    pub hub: Option<String>,
    /// Where webhooks are replayed: its path is a prefix and its query is kept (default
    /// http://127.0.0.1:8080, what `hubhook serve` listens on; no scheme means http).
    #[arg(long, env = "HUBHOOK_TUNNEL_UPSTREAM")]
    pub upstream: Option<String>,
    /// Longest wait for the upstream's answer (default 20s); past it the service gets 502.
    #[arg(long, env = "HUBHOOK_TUNNEL_UPSTREAM_TIMEOUT")]
    pub upstream_timeout: Option<String>,
    /// Longest wait per connect attempt, until the service's ConnectionConnected (default 10s).
    #[arg(long, env = "HUBHOOK_TUNNEL_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// File holding the connection string (trimmed). Otherwise WEBPUBSUB_CONNECTION_STRING;
    /// deliberately no flag for the string itself (a command line is visible through `ps`).
    #[arg(long, env = "WEBPUBSUB_CONNECTION_STRING_FILE")]
    pub connection_string_file: Option<String>,
    /// Set by code (`hubhook dev` against a real resource); never a flag.
    #[arg(skip)]
    pub connection_string: Option<String>,
}

impl TunnelArgs {
    /// The validated tunnel settings; the connection string from the environment or its file.
    pub fn config(&self) -> Result<crate::tunnel::TunnelConfig, ConfigError> {
        let mut serve = ServeArgs {
            connection_string: self.connection_string.clone(),
            connection_string_file: self.connection_string_file.clone(),
            ..Default::default()
        };
        serve.read_connection_string()?;
        let connection_string = connection_string(&serve, &Defaults::serve())?;
        let hub = self.hub.clone().unwrap_or_else(|| "chat".into());
        validate_hub(&hub).map_err(|e| err("WEBPUBSUB_HUB", e))?;
        let upstream = tunnel_upstream(self.upstream.as_deref())?;
        const HOUR: Duration = Duration::from_secs(3600);
        let d = |var, v: &Option<String>, default| {
            v.as_deref()
                .map_or(Ok(default), |v| parse_duration(var, v, HOUR))
        };
        use crate::tunnel::TunnelConfig as T;
        Ok(T {
            connection_string,
            hub,
            upstream,
            upstream_timeout: d(
                "HUBHOOK_TUNNEL_UPSTREAM_TIMEOUT",
                &self.upstream_timeout,
                T::DEFAULT_UPSTREAM_TIMEOUT,
            )?,
            connect_timeout: d(
                "HUBHOOK_TUNNEL_CONNECT_TIMEOUT",
                &self.connect_timeout,
                T::DEFAULT_CONNECT_TIMEOUT,
            )?,
        })
    }
}

/// `HUBHOOK_TUNNEL_UPSTREAM`: an http(s) URL; a bare `host:port` gets `http://`.
fn tunnel_upstream(v: Option<&str>) -> Result<url::Url, ConfigError> {
    const VAR: &str = "HUBHOOK_TUNNEL_UPSTREAM";
    let v = v.map(str::trim).unwrap_or("http://127.0.0.1:8080");
    let with_scheme = if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    };
    match url::Url::parse(&with_scheme) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
                return Err(err(VAR, "must not carry a user, password or fragment"));
            }
            Ok(u)
        }
        _ => Err(err(
            VAR,
            format!("{v:?} is not an http(s) URL (e.g. http://127.0.0.1:8080)"),
        )),
    }
}

#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Port of the emulator (0 picks a free one).
    #[arg(long, env = "HUBHOOK_EMULATOR_PORT", default_value = "8080")]
    pub port: String,
    #[arg(long, env = "HUBHOOK_EMULATOR_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Allow a non-loopback bind address (the access key is public!).
    #[arg(long)]
    pub allow_public: bool,
    /// Event handler `[hub=]url-template` ({hub}, {event} are replaced; no hub: every hub);
    /// gets connect, connected, disconnected and every user event. Repeatable.
    #[arg(long, env = "HUBHOOK_EVENT_HANDLER", value_delimiter = ' ')]
    pub event_handler: Vec<String>,
    #[command(flatten)]
    pub listener: ListenerArgs,
}

impl EmulatorArgs {
    /// `HUBHOOK_EMULATOR_BIND` and `HUBHOOK_EMULATOR_PORT`, each error naming its variable.
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        let ip = parse_num("HUBHOOK_EMULATOR_BIND", &self.bind, "an IP address")?;
        Ok(SocketAddr::new(ip, emulator_port(&self.port)?))
    }

    /// The emulator's listener: the same variables as `serve`'s, the only listener of the process.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        limits(&self.listener, 1)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Port of the local Web PubSub emulator (the service endpoint; 0 picks a free one).
    #[arg(long, env = "HUBHOOK_EMULATOR_PORT", default_value = "8080")]
    pub emulator_port: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl DevArgs {
    /// `HUBHOOK_EMULATOR_PORT`.
    pub fn emulator_port(&self) -> Result<u16, ConfigError> {
        emulator_port(&self.emulator_port)
    }
}

fn emulator_port(v: &str) -> Result<u16, ConfigError> {
    parse_num("HUBHOOK_EMULATOR_PORT", v, "a port number (0-65535)")
}

/// Flags of every binary (`hubhook` and `hubhook-lambda` flatten it into their command line).
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log format: `pretty` or `json` (default: json under Lambda / Azure Functions, pretty
    /// elsewhere).
    #[arg(long, env = "HUBHOOK_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

/// How logs are written: `pretty` for a person, `json` for a log stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    /// `HUBHOOK_LOG_FORMAT`; unset: JSON under Lambda / Azure Functions, pretty elsewhere.
    pub fn parse(v: Option<&str>, platform: Platform) -> Result<LogFormat, ConfigError> {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") if platform == Platform::Server => Ok(LogFormat::Pretty),
            None | Some("") => Ok(LogFormat::Json),
            Some("json") => Ok(LogFormat::Json),
            Some("pretty") => Ok(LogFormat::Pretty),
            Some(other) => Err(err(
                "HUBHOOK_LOG_FORMAT",
                format!("expected pretty or json, got {other:?}"),
            )),
        }
    }
}

/// Which platform started the process, from the variables the platforms set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// `AWS_LAMBDA_RUNTIME_API` is set.
    Lambda,
    /// `FUNCTIONS_CUSTOMHANDLER_PORT` is set: serve on that port, loopback only.
    AzureFunctions(u16),
    Server,
}

impl Platform {
    pub fn detect() -> Result<Platform, ConfigError> {
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            return Ok(Platform::Lambda);
        }
        match env_var("FUNCTIONS_CUSTOMHANDLER_PORT")? {
            Some(p) => Ok(Platform::AzureFunctions(parse_num(
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                &p,
                "a port number",
            )?)),
            None => Ok(Platform::Server),
        }
    }
}

/// `RUST_LOG`, if set: the log filter directives (validated where the logger is built).
pub fn log_filter() -> Result<Option<String>, ConfigError> {
    Ok(env_var("RUST_LOG")?.filter(|v| !v.trim().is_empty()))
}

/// Every variable hubhook reads: the flags' (clap reads those, and would answer a value that is
/// not UTF-8 with a generic error naming no variable) and the ones read here directly.
pub const VARIABLES: &[&str] = &[
    "PORT",
    "HUBHOOK_BIND",
    "WEBPUBSUB_CONNECTION_STRING",
    "WEBPUBSUB_CONNECTION_STRING_FILE",
    "WEBPUBSUB_CONNECTION_STRING_SECRET_ARN",
    "WEBPUBSUB_HUB",
    "WEBPUBSUB_ACCESS_KEYS",
    "WEBPUBSUB_ACCESS_KEYS_FILE",
    "HUBHOOK_ALLOWED_ORIGINS",
    "HUBHOOK_STORE",
    "HUBHOOK_NEGOTIATE",
    "HUBHOOK_AUTH",
    "HUBHOOK_NEGOTIATE_INSECURE_OPEN",
    "HUBHOOK_AUTH_ISSUER",
    "HUBHOOK_AUTH_AUDIENCE",
    "HUBHOOK_AUTH_USER_CLAIM",
    "HUBHOOK_AUTH_ROOMS_CLAIM",
    "HUBHOOK_AUTH_LEEWAY",
    "HUBHOOK_CORS_ORIGINS",
    "HUBHOOK_MESSAGE_RATE",
    "HUBHOOK_PRESENCE_TTL",
    "HUBHOOK_ALLOW_ANONYMOUS",
    "HUBHOOK_MAX_MESSAGE_BYTES",
    "HUBHOOK_RELAY_EVENTS",
    "HUBHOOK_EVENT_PATH",
    "HUBHOOK_RETENTION_DAYS",
    "HUBHOOK_STATE_FORMAT",
    "HUBHOOK_INSECURE_SKIP_SIGNATURE",
    "HUBHOOK_HEADER_TIMEOUT",
    "HUBHOOK_BODY_TIMEOUT",
    "HUBHOOK_IDLE_TIMEOUT",
    "HUBHOOK_DRAIN_TIMEOUT",
    "HUBHOOK_MAX_CONNECTIONS",
    "HUBHOOK_OUTBOX_GIVE_UP",
    "HUBHOOK_OUTBOX_BEHIND",
    "HUBHOOK_OUTBOX_GRACE",
    "HUBHOOK_OUTBOX_SWEEP_EVERY",
    "HUBHOOK_CREATE_TABLE",
    "HUBHOOK_EMULATOR_PORT",
    "HUBHOOK_EMULATOR_BIND",
    "HUBHOOK_EVENT_HANDLER",
    "HUBHOOK_LOG_FORMAT",
    "HUBHOOK_TUNNEL_UPSTREAM",
    "HUBHOOK_TUNNEL_UPSTREAM_TIMEOUT",
    "HUBHOOK_TUNNEL_CONNECT_TIMEOUT",
    "RUST_LOG",
    "FUNCTIONS_CUSTOMHANDLER_PORT",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_URL",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
];

/// Run before the command line is parsed: a variable whose value is not UTF-8 fails with one line
/// naming it (the value is never printed: it may be a secret).
pub fn check_environment() -> Result<(), ConfigError> {
    VARIABLES.iter().try_for_each(|var| env_var(var).map(drop))
}

/// One variable, with a clear error for a value that is not UTF-8.
fn env_var(var: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(var) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(err(var, "is not valid UTF-8")),
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
    /// `Endpoint=...;AccessKey=...;Version=1.0;` of the Web PubSub resource. Deliberately no
    /// flag (a command line is readable by every user through `ps`): it comes from
    /// `WEBPUBSUB_CONNECTION_STRING`, a file, or a secret ([`ServeArgs::read_connection_string`]),
    /// or from code that builds these arguments.
    #[arg(skip)]
    pub connection_string: Option<String>,
    /// The variable `connection_string` came from, for its errors (`None`: the environment or
    /// code, reported as `WEBPUBSUB_CONNECTION_STRING`).
    #[arg(skip)]
    pub connection_string_from: Option<&'static str>,
    /// File holding the connection string (trimmed), e.g. a mounted secret.
    #[arg(long, env = "WEBPUBSUB_CONNECTION_STRING_FILE")]
    pub connection_string_file: Option<String>,
    /// AWS Secrets Manager secret holding the connection string, read once at cold start
    /// (used when neither WEBPUBSUB_CONNECTION_STRING nor its _FILE is set).
    #[arg(long, env = "WEBPUBSUB_CONNECTION_STRING_SECRET_ARN")]
    pub connection_string_secret_arn: Option<String>,
    /// Hub served by this handler.
    #[arg(long, env = "WEBPUBSUB_HUB")]
    pub hub: Option<String>,
    /// Extra access keys accepted for `ce-signature` (comma-separated), e.g. the secondary key.
    /// Deliberately no flag, as for the connection string: from `WEBPUBSUB_ACCESS_KEYS`, its
    /// file, or code that builds these arguments (which wins).
    #[arg(skip)]
    pub access_keys: Option<String>,
    /// File holding the extra access keys (comma-separated, trimmed), e.g. a mounted secret.
    #[arg(long, env = "WEBPUBSUB_ACCESS_KEYS_FILE")]
    pub access_keys_file: Option<String>,
    /// Origins allowed by the abuse-protection handshake: `*` or comma-separated hosts.
    /// Default: the host of the connection string's endpoint.
    #[arg(long, env = "HUBHOOK_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// `sqlite://PATH` (default `sqlite://hubhook.db`) or `dynamodb://TABLE`.
    #[arg(long, env = "HUBHOOK_STORE")]
    pub store: Option<String>,
    /// Older name of `HUBHOOK_AUTH`, still read: `open` or `off` (set one of the two).
    #[arg(long, env = "HUBHOOK_NEGOTIATE")]
    pub negotiate: Option<String>,
    /// Who may call `/negotiate`, history and presence: `open` (anyone, naming any user;
    /// loopback endpoint only), `oidc` (a bearer token from HUBHOOK_AUTH_ISSUER) or `off`.
    /// Default: open when the endpoint is loopback, else off.
    #[arg(long, env = "HUBHOOK_AUTH")]
    pub auth: Option<String>,
    /// `true` allows `open` on a non-loopback endpoint (anyone can impersonate anyone).
    #[arg(long, env = "HUBHOOK_NEGOTIATE_INSECURE_OPEN")]
    pub negotiate_insecure_open: Option<String>,
    /// The OpenID Connect issuer (the tokens' `iss`), e.g.
    /// `https://login.microsoftonline.com/<tenant>/v2.0`.
    #[arg(long, env = "HUBHOOK_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// The `aud` tokens must carry (usually the app's client id).
    #[arg(long, env = "HUBHOOK_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// The claim holding the user id (default `sub`).
    #[arg(long, env = "HUBHOOK_AUTH_USER_CLAIM")]
    pub auth_user_claim: Option<String>,
    /// A claim listing the rooms a user may enter (default: every room).
    #[arg(long, env = "HUBHOOK_AUTH_ROOMS_CLAIM")]
    pub auth_rooms_claim: Option<String>,
    /// Clock skew allowed on a token's `exp`/`nbf` (default `30s`, at most `5m`; `0` for none).
    #[arg(long, env = "HUBHOOK_AUTH_LEEWAY")]
    pub auth_leeway: Option<String>,
    /// Browser origins allowed to call negotiate, history and presence (comma-separated exact
    /// origins such as `https://chat.example.com`); unset: no CORS headers.
    #[arg(long, env = "HUBHOOK_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Messages per user per instance, e.g. `10/s`, `600/m`, `10/s,burst=30`; unset: no limit.
    #[arg(long, env = "HUBHOOK_MESSAGE_RATE")]
    pub message_rate: Option<String>,
    /// How long a connection counts as present without its `disconnected` (default `24h`).
    #[arg(long, env = "HUBHOOK_PRESENCE_TTL")]
    pub presence_ttl: Option<String>,
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
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// How long the outbox keeps trying to send a broadcast before it gives up (e.g. `24h`).
    #[arg(long, env = "HUBHOOK_OUTBOX_GIVE_UP")]
    pub outbox_give_up: Option<String>,
    /// `/healthz` fails once the oldest unsent broadcast is this old (e.g. `60s`).
    #[arg(long, env = "HUBHOOK_OUTBOX_BEHIND")]
    pub outbox_behind: Option<String>,
    /// How long the sweeper leaves a new broadcast to the webhook sending it (default `15s`).
    #[arg(long, env = "HUBHOOK_OUTBOX_GRACE")]
    pub outbox_grace: Option<String>,
    /// Pause between two sweeps of the outbox (default `1s`).
    #[arg(long, env = "HUBHOOK_OUTBOX_SWEEP_EVERY")]
    pub outbox_sweep_every: Option<String>,
    /// Create a missing DynamoDB table at start (`true`/`false`). Default: true only when
    /// `AWS_ENDPOINT_URL_DYNAMODB` points at a local DynamoDB-compatible server.
    #[arg(long, env = "HUBHOOK_CREATE_TABLE")]
    pub create_table: Option<String>,
}

/// Timeouts and connection cap of a listener: `serve`'s, `dev`'s two, the emulator's.
#[derive(Debug, Clone, Default, Args)]
pub struct ListenerArgs {
    /// Longest wait for a request's head (e.g. `10s`, `500ms`; a bare number is seconds).
    #[arg(long, env = "HUBHOOK_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Longest wait for a request's body once its head arrived (answers 408).
    #[arg(long, env = "HUBHOOK_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// How long a keep-alive connection may sit silent.
    #[arg(long, env = "HUBHOOK_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// After SIGTERM, how long in-flight requests get before every connection is closed.
    #[arg(long, env = "HUBHOOK_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Connections served at once per listener; more are answered 503 (default: file-descriptor
    /// limit − 256 shared by the process's listeners, then 64–2048 per listener).
    #[arg(long, env = "HUBHOOK_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
}

impl ServeArgs {
    /// `hubhook` with no subcommand (how Lambda and Functions start it): serve, configured by
    /// the environment alone.
    pub fn from_env() -> ServeArgs {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        <Only as clap::Parser>::parse_from(["hubhook"]).serve
    }

    /// Fills `connection_string` (unless code set it) from `WEBPUBSUB_CONNECTION_STRING` or the
    /// file `WEBPUBSUB_CONNECTION_STRING_FILE` names (setting both is an error). Left unset, the
    /// secret ARN (resolved at start by the runtime) or the `dev` default applies.
    pub fn read_connection_string(&mut self) -> Result<(), ConfigError> {
        if self.connection_string.is_some() {
            return Ok(());
        }
        if let Some((text, var)) = secret_from_env_or_file(
            "WEBPUBSUB_CONNECTION_STRING",
            "WEBPUBSUB_CONNECTION_STRING_FILE",
            self.connection_string_file.as_deref(),
        )? {
            self.connection_string = Some(text);
            self.connection_string_from = Some(var);
        }
        Ok(())
    }
}

/// A secret with no flag: the variable `var`, or the file `file_var` names (trimmed; setting both
/// is an error). Returns the text and the variable it came from, for its errors.
fn secret_from_env_or_file(
    var: &'static str,
    file_var: &'static str,
    file: Option<&str>,
) -> Result<Option<(String, &'static str)>, ConfigError> {
    let from_env = env_var(var)?.filter(|v| !v.trim().is_empty());
    match (from_env, file.filter(|f| !f.is_empty())) {
        (Some(_), Some(_)) => Err(err(
            file_var,
            format!("set either {var} or {file_var}, not both"),
        )),
        (Some(v), None) => Ok(Some((v, var))),
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .map_err(|e| err(file_var, format!("cannot read {path:?}: {}", e.kind())))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| err(file_var, format!("{path:?} is not valid UTF-8")))?;
            let text = text.trim();
            if text.is_empty() {
                return Err(err(file_var, format!("{path:?} is empty")));
            }
            Ok(Some((text.to_string(), file_var)))
        }
        (None, None) => Ok(None),
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
    pub store_options: OpenOptions,
    /// Who may call `/negotiate`, history and presence.
    pub auth: AuthMode,
    /// Exact origins allowed by CORS on those routes; empty: no CORS headers.
    pub cors_origins: Vec<String>,
    pub chat: ChatConfig,
    pub event_path: String,
    pub dotnet_state: bool,
    pub limits: Limits,
}

/// Defaults that differ between `serve` and `dev`.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub port: u16,
    pub bind: IpAddr,
    pub connection_string: Option<String>,
    /// Listeners in the process: the default connection cap (sized to the descriptor limit) is
    /// shared evenly by them, so that together they cannot exhaust it.
    pub listeners: usize,
}

impl Defaults {
    pub fn serve() -> Self {
        Defaults {
            port: 8080,
            bind: IpAddr::from([0, 0, 0, 0]),
            connection_string: None,
            listeners: 1,
        }
    }
    /// The function and the emulator in one process: two listeners.
    pub fn dev(emulator_port: u16) -> Self {
        Defaults {
            port: 8081,
            bind: IpAddr::from([127, 0, 0, 1]),
            connection_string: Some(
                ConnectionString::local(emulator_port, LOCAL_ACCESS_KEY).to_secret_string(),
            ),
            listeners: 2,
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

/// A comma-separated list, trimmed, empty items dropped.
fn list(v: Option<&str>) -> impl Iterator<Item = &str> {
    v.into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl Config {
    pub fn from_args(a: &ServeArgs, d: &Defaults) -> Result<Config, ConfigError> {
        let connection_string = connection_string(a, d)?;
        let hub = a.hub.clone().unwrap_or_else(|| "chat".into());
        validate_hub(&hub).map_err(|e| err("WEBPUBSUB_HUB", e))?;
        let mut signature_keys = vec![connection_string.access_key.clone()];
        signature_keys.extend(access_keys(a)?);
        let auth = auth_mode(a, &connection_string)?;
        let mut chat = chat_config(a)?;
        chat.room_must_be_granted = matches!(&auth, AuthMode::Oidc(o) if o.rooms_claim.is_some());
        Ok(Config {
            bind: match &a.bind {
                Some(b) => parse_num("HUBHOOK_BIND", b, "an IP address")?,
                None => d.bind,
            },
            port: match &a.port {
                Some(p) => parse_num("PORT", p, "a port number")?,
                None => d.port,
            },
            hub,
            signature_keys,
            verify_signatures: !parse_bool(
                "HUBHOOK_INSECURE_SKIP_SIGNATURE",
                a.insecure_skip_signature.as_deref(),
                false,
            )?,
            allowed_origins: match &a.allowed_origins {
                Some(s) => {
                    AllowedOrigins::parse(s).map_err(|e| err("HUBHOOK_ALLOWED_ORIGINS", e))?
                }
                None => AllowedOrigins::Hosts(vec![connection_string.host().to_ascii_lowercase()]),
            },
            store: StoreSpec::parse(a.store.as_deref().unwrap_or("sqlite://hubhook.db"))
                .map_err(|e| err("HUBHOOK_STORE", e))?,
            store_options: store_options(a, a.store.as_deref())?,
            auth,
            cors_origins: cors_origins(a.cors_origins.as_deref())?,
            chat,
            event_path: event_path(a)?,
            dotnet_state: dotnet_state(a)?,
            limits: limits(&a.listener, d.listeners)?,
            connection_string,
        })
    }

    /// Under Azure Functions the host tells the port, and only it may call us.
    pub fn for_platform(mut self, platform: Platform) -> Config {
        if let Platform::AzureFunctions(port) = platform {
            self.port = port;
            self.bind = IpAddr::from([127, 0, 0, 1]);
        }
        self
    }
}

fn connection_string(a: &ServeArgs, d: &Defaults) -> Result<ConnectionString, ConfigError> {
    let var = a
        .connection_string_from
        .unwrap_or("WEBPUBSUB_CONNECTION_STRING");
    let text = a
        .connection_string
        .clone()
        .or_else(|| d.connection_string.clone())
        .ok_or_else(|| {
            err(
                var,
                "is required (Endpoint=https://<name>.webpubsub.azure.com;AccessKey=...;Version=1.0;)",
            )
        })?;
    let cs = ConnectionString::parse(&text).map_err(|e| err(var, e))?;
    if !AccessKey::has_service_form(cs.access_key.expose()) {
        return Err(not_an_access_key(var, "connection string: AccessKey"));
    }
    Ok(cs)
}

/// The one refusal of a key without the service's form ([`AccessKey::has_service_form`]);
/// `what` says which key, never its value.
fn not_an_access_key(var: &'static str, what: &str) -> ConfigError {
    err(
        var,
        format!(
            "{what} is not an access key ({ACCESS_KEY_CHARS} base64 characters, as the portal shows it)"
        ),
    )
}

/// `WEBPUBSUB_ACCESS_KEYS` (or its file): each must have the form of a service key, so that a
/// typo such as `1` cannot become a key anyone can sign webhooks with. Errors give the key's
/// position only.
fn access_keys(a: &ServeArgs) -> Result<Vec<AccessKey>, ConfigError> {
    const VAR: &str = "WEBPUBSUB_ACCESS_KEYS";
    let (text, var) = match &a.access_keys {
        Some(keys) => (Some(keys.clone()), VAR),
        None => match secret_from_env_or_file(
            VAR,
            "WEBPUBSUB_ACCESS_KEYS_FILE",
            a.access_keys_file.as_deref(),
        )? {
            Some((text, var)) => (Some(text), var),
            None => (None, VAR),
        },
    };
    list(text.as_deref())
        .enumerate()
        .map(|(i, key)| {
            if AccessKey::has_service_form(key) {
                Ok(AccessKey::new(key))
            } else {
                Err(not_an_access_key(var, &format!("key {}", i + 1)))
            }
        })
        .collect()
}

/// The storage account of an `azuretable://` store: a connection string (shared key), or the
/// account URL with the managed identity of the Functions host. Read only for that store.
fn azure_account() -> Result<crate::store::azuretable::Account, ConfigError> {
    use crate::store::azuretable::Account;
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    if let Some(cs) = set(env_var("AZURE_STORAGE_CONNECTION_STRING")?) {
        return Account::from_connection_string(&cs)
            .map_err(|e| err("AZURE_STORAGE_CONNECTION_STRING", e));
    }
    let Some(url) = set(env_var("AZURE_STORAGE_ACCOUNT_URL")?) else {
        return Err(err(
            "AZURE_STORAGE_CONNECTION_STRING",
            "is required by HUBHOOK_STORE=azuretable://… (or AZURE_STORAGE_ACCOUNT_URL with a managed identity)",
        ));
    };
    let endpoint = set(env_var("IDENTITY_ENDPOINT")?).ok_or_else(|| {
        err(
            "IDENTITY_ENDPOINT",
            "is not set: AZURE_STORAGE_ACCOUNT_URL needs the managed identity of an Azure Functions / App Service host",
        )
    })?;
    let header = set(env_var("IDENTITY_HEADER")?)
        .ok_or_else(|| err("IDENTITY_HEADER", "is not set (see IDENTITY_ENDPOINT)"))?;
    Account::managed_identity(&url, &endpoint, &header)
        .map_err(|e| err("AZURE_STORAGE_ACCOUNT_URL", e))
}

fn store_options(a: &ServeArgs, store: Option<&str>) -> Result<OpenOptions, ConfigError> {
    let local_dynamo = env_var("AWS_ENDPOINT_URL_DYNAMODB")?.is_some_and(|v| !v.is_empty());
    let azure_account = store
        .is_some_and(|s| s.starts_with("azuretable://"))
        .then(azure_account)
        .transpose()?;
    // Azurite starts empty; a table in Azure comes from the template.
    let local_azure = azure_account.as_ref().is_some_and(|a| a.is_local());
    Ok(OpenOptions {
        azure_account,
        retention_days: a
            .retention_days
            .as_deref()
            .map(|v| parse_num::<u32>("HUBHOOK_RETENTION_DAYS", v, "a number of days"))
            .transpose()?
            .filter(|d| *d > 0),
        create_table_if_missing: parse_bool(
            "HUBHOOK_CREATE_TABLE",
            a.create_table.as_deref(),
            local_dynamo || local_azure,
        )?,
    })
}

/// Who may call the browser-facing routes (`HUBHOOK_AUTH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone, naming any user (what `HUBHOOK_NEGOTIATE=open` always did).
    Open,
    Off,
    Oidc(OidcConfig),
}

const OIDC_VARS: [&str; 5] = [
    "HUBHOOK_AUTH_ISSUER",
    "HUBHOOK_AUTH_AUDIENCE",
    "HUBHOOK_AUTH_USER_CLAIM",
    "HUBHOOK_AUTH_ROOMS_CLAIM",
    "HUBHOOK_AUTH_LEEWAY",
];

/// `HUBHOOK_AUTH` (or its older name `HUBHOOK_NEGOTIATE`, `open`/`off` only). `open` trusts the
/// caller's `userId` and serves every room's history: refused on a non-loopback endpoint unless
/// `HUBHOOK_NEGOTIATE_INSECURE_OPEN=true`.
fn auth_mode(a: &ServeArgs, cs: &ConnectionString) -> Result<AuthMode, ConfigError> {
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let (var, mode) = match (set(&a.auth), set(&a.negotiate)) {
        (Some(_), Some(_)) => {
            return Err(err(
                "HUBHOOK_NEGOTIATE",
                "replaced by HUBHOOK_AUTH: set only HUBHOOK_AUTH",
            ))
        }
        (Some(m), None) => ("HUBHOOK_AUTH", Some(m.to_ascii_lowercase())),
        (None, Some(m)) => match m.to_ascii_lowercase().as_str() {
            m @ ("open" | "off") => ("HUBHOOK_NEGOTIATE", Some(m.to_string())),
            _ => {
                return Err(err(
                    "HUBHOOK_NEGOTIATE",
                    format!(
                    "expected open or off, got {m:?} (HUBHOOK_AUTH replaces it: open, oidc or off)"
                ),
                ))
            }
        },
        (None, None) => ("HUBHOOK_AUTH", None),
    };
    let mode = match mode.as_deref() {
        None if cs.is_loopback() => AuthMode::Open,
        None | Some("off") => AuthMode::Off,
        Some("open") => AuthMode::Open,
        Some("oidc") => AuthMode::Oidc(oidc_config(a)?),
        Some(other) => {
            return Err(err(
                var,
                format!("expected open, oidc or off, got {other:?}"),
            ))
        }
    };
    let insecure = parse_bool(
        "HUBHOOK_NEGOTIATE_INSECURE_OPEN",
        a.negotiate_insecure_open.as_deref(),
        false,
    )?;
    if mode == AuthMode::Open && !cs.is_loopback() && !insecure {
        return Err(err(
            var,
            "open (anyone names any user and reads every room) needs a loopback endpoint; use oidc, or set HUBHOOK_NEGOTIATE_INSECURE_OPEN=true",
        ));
    }
    if !matches!(mode, AuthMode::Oidc(_)) {
        let given = [
            &a.auth_issuer,
            &a.auth_audience,
            &a.auth_user_claim,
            &a.auth_rooms_claim,
            &a.auth_leeway,
        ];
        if let Some((var, _)) = OIDC_VARS.iter().zip(given).find(|(_, v)| set(v).is_some()) {
            return Err(err(var, "is set, but HUBHOOK_AUTH is not oidc"));
        }
    }
    Ok(mode)
}

fn oidc_config(a: &ServeArgs) -> Result<OidcConfig, ConfigError> {
    let required = |var: &'static str, v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .ok_or_else(|| err(var, "is required with HUBHOOK_AUTH=oidc"))
    };
    let issuer = required("HUBHOOK_AUTH_ISSUER", &a.auth_issuer)?;
    let url = url::Url::parse(&issuer)
        .map_err(|_| err("HUBHOOK_AUTH_ISSUER", format!("{issuer:?} is not a URL")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !(url.scheme() == "https" || url.scheme() == "http" && loopback)
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(err(
            "HUBHOOK_AUTH_ISSUER",
            format!("{issuer:?} must be an https:// URL without query (http:// only on loopback)"),
        ));
    }
    let mut c = OidcConfig::new(
        &issuer,
        &required("HUBHOOK_AUTH_AUDIENCE", &a.auth_audience)?,
    );
    if let Some(claim) = a
        .auth_user_claim
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        c.user_claim = claim.to_string();
    }
    c.rooms_claim = a
        .auth_rooms_claim
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from);
    if let Some(v) = a.auth_leeway.as_deref().map(str::trim) {
        c.leeway = match v {
            "0" | "0s" => Duration::ZERO,
            v => parse_duration("HUBHOOK_AUTH_LEEWAY", v, Duration::from_secs(300))?,
        };
    }
    Ok(c)
}

/// `HUBHOOK_CORS_ORIGINS`: exact origins (`scheme://host[:port]`); `*` is refused (a wildcard
/// would let any site read history with a user's token once one leaks into a page).
fn cors_origins(v: Option<&str>) -> Result<Vec<String>, ConfigError> {
    const VAR: &str = "HUBHOOK_CORS_ORIGINS";
    list(v)
        .map(|o| {
            if o == "*" {
                return Err(err(
                    VAR,
                    "* is refused: list the exact origins (https://chat.example.com)",
                ));
            }
            let exact = url::Url::parse(o).ok().and_then(|u| {
                let origin = u.origin().ascii_serialization();
                let ok = matches!(u.scheme(), "http" | "https")
                    && (o == origin || o == format!("{origin}/"));
                ok.then_some(origin)
            });
            exact.ok_or_else(|| {
                err(
                    VAR,
                    format!("{o:?} is not an origin (scheme://host[:port], no path)"),
                )
            })
        })
        .collect()
}

fn chat_config(a: &ServeArgs) -> Result<ChatConfig, ConfigError> {
    let max_message_bytes = match &a.max_message_bytes {
        Some(v) => parse_num::<usize>("HUBHOOK_MAX_MESSAGE_BYTES", v, "a byte count")?,
        None => DEFAULT_MAX_MESSAGE_BYTES,
    };
    if max_message_bytes == 0 || max_message_bytes > 1024 * 1024 {
        return Err(err(
            "HUBHOOK_MAX_MESSAGE_BYTES",
            "must be between 1 and 1048576",
        ));
    }
    let relay_events: Vec<String> = list(a.relay_events.as_deref()).map(String::from).collect();
    if relay_events.iter().any(|e| e == "message") {
        return Err(err(
            "HUBHOOK_RELAY_EVENTS",
            "\"message\" is the stored chat event and cannot be relayed",
        ));
    }
    debug_assert!(validate_room(DEFAULT_ROOM).is_ok());
    Ok(ChatConfig {
        allow_anonymous: parse_bool(
            "HUBHOOK_ALLOW_ANONYMOUS",
            a.allow_anonymous.as_deref(),
            false,
        )?,
        max_message_bytes,
        default_room: DEFAULT_ROOM.to_string(),
        relay_events,
        outbox: outbox_config(a)?,
        message_rate: a
            .message_rate
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| MessageRate::parse(v).map_err(|e| err("HUBHOOK_MESSAGE_RATE", e)))
            .transpose()?,
        room_must_be_granted: false,
        presence_ttl: match &a.presence_ttl {
            Some(v) => parse_duration(
                "HUBHOOK_PRESENCE_TTL",
                v,
                Duration::from_secs(7 * 24 * 3600),
            )?,
            None => DEFAULT_PRESENCE_TTL,
        },
    })
}

fn outbox_config(a: &ServeArgs) -> Result<OutboxConfig, ConfigError> {
    let mut c = OutboxConfig::default();
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    if let Some(v) = &a.outbox_give_up {
        c.give_up_after = parse_duration("HUBHOOK_OUTBOX_GIVE_UP", v, WEEK)?;
    }
    if let Some(v) = &a.outbox_behind {
        c.behind_after = parse_duration("HUBHOOK_OUTBOX_BEHIND", v, WEEK)?;
    }
    if let Some(v) = &a.outbox_grace {
        c.grace = parse_duration("HUBHOOK_OUTBOX_GRACE", v, WEEK)?;
    }
    if let Some(v) = &a.outbox_sweep_every {
        c.sweep_every = parse_duration("HUBHOOK_OUTBOX_SWEEP_EVERY", v, WEEK)?;
    }
    Ok(c)
}

fn event_path(a: &ServeArgs) -> Result<String, ConfigError> {
    let path = a
        .event_path
        .clone()
        .unwrap_or_else(|| "/eventhandler".into());
    let segment_ok = |b: u8| b.is_ascii_alphanumeric() || b"-._~/".contains(&b);
    if !path.starts_with('/')
        || path.len() < 2
        || path.ends_with('/')
        || path.contains("//")
        || !path.bytes().all(segment_ok)
    {
        return Err(err(
            "HUBHOOK_EVENT_PATH",
            format!("{path:?} must look like /eventhandler (letters, digits, - . _ ~ and /)"),
        ));
    }
    Ok(path)
}

/// `listeners`: how many listeners the process has, sharing the default connection cap.
fn limits(a: &ListenerArgs, listeners: usize) -> Result<Limits, ConfigError> {
    let mut l = Limits {
        max_connections: crate::runtime::listener::default_max_connections(listeners),
        ..Limits::default()
    };
    const HOUR: Duration = Duration::from_secs(3600);
    let d = |var, v: &Option<String>, default| {
        v.as_deref()
            .map_or(Ok(default), |v| parse_duration(var, v, HOUR))
    };
    l.header_read = d("HUBHOOK_HEADER_TIMEOUT", &a.header_timeout, l.header_read)?;
    l.body_read = d("HUBHOOK_BODY_TIMEOUT", &a.body_timeout, l.body_read)?;
    l.idle = d("HUBHOOK_IDLE_TIMEOUT", &a.idle_timeout, l.idle)?;
    l.drain = d("HUBHOOK_DRAIN_TIMEOUT", &a.drain_timeout, l.drain)?;
    if let Some(v) = &a.max_connections {
        l.max_connections = parse_num("HUBHOOK_MAX_CONNECTIONS", v, "a connection count")?;
        if l.max_connections == 0 {
            return Err(err("HUBHOOK_MAX_CONNECTIONS", "must be at least 1"));
        }
    }
    Ok(l)
}

/// `500ms`, `10s`, `2m`, `24h`, or a bare number of seconds; more than zero, at most `max`.
fn parse_duration(var: &'static str, v: &str, max: Duration) -> Result<Duration, ConfigError> {
    let t = v.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        err(
            var,
            format!("{t:?} is not a duration (e.g. 500ms, 10s, 2m, 24h)"),
        )
    })?;
    let d = Duration::from_millis(n.saturating_mul(unit_ms));
    if d.is_zero() || d > max {
        return Err(err(
            var,
            format!("must be more than 0 and at most {}s", max.as_secs()),
        ));
    }
    Ok(d)
}

fn dotnet_state(a: &ServeArgs) -> Result<bool, ConfigError> {
    match a.state_format.as_deref().map(str::trim) {
        None | Some("express") => Ok(false),
        Some("dotnet") => Ok(true),
        Some(other) => Err(err(
            "HUBHOOK_STATE_FORMAT",
            format!("expected express or dotnet, got {other:?}"),
        )),
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

    /// A key of the service's form that must never be echoed (`secretkey123` inside it).
    const SECRET_KEY: &str = "secretkey123secretkey123secretkey123secretk=";
    const CS: &str = "Endpoint=https://contoso.webpubsub.azure.com;AccessKey=secretkey123secretkey123secretkey123secretk=;Version=1.0;";

    #[test]
    fn defaults() {
        let c = Config::from_args(&args(CS), &Defaults::serve()).unwrap();
        assert_eq!(
            (
                c.port,
                c.hub.as_str(),
                c.auth == AuthMode::Off,
                c.verify_signatures
            ),
            (8080, "chat", true, true)
        );
        assert_eq!(c.store, StoreSpec::Sqlite("hubhook.db".into()));
        assert_eq!(
            c.allowed_origins,
            AllowedOrigins::Hosts(vec!["contoso.webpubsub.azure.com".into()])
        );
        assert_eq!(c.chat.max_message_bytes, 65536);
        let d = Config::from_args(&ServeArgs::default(), &Defaults::dev(8080)).unwrap();
        assert_eq!(
            (d.port, d.auth == AuthMode::Open, d.bind),
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
        for bad in ["x", "/a b", "/a/", "/{event}", "/a//b"] {
            assert!(e(ServeArgs {
                event_path: Some(bad.into()),
                ..args(CS)
            })
            .starts_with("HUBHOOK_EVENT_PATH:"));
        }
        let bad_port = e(args(&format!(
            "Endpoint=https://x;AccessKey={SECRET_KEY};Port=abc"
        )));
        assert!(
            !bad_port.contains("secretkey123") && bad_port.contains("Port"),
            "{bad_port}"
        );
    }

    #[test]
    fn the_connection_strings_key_has_the_service_form_and_is_never_echoed() {
        for bad in [
            "1",
            "secretkey123",
            "secretkey123secretkey123secretkey123secret=", // 43 chars
            "secretkey123secretkey123secretkey123secre!k=", // not base64
        ] {
            let e = Config::from_args(
                &args(&format!(
                    "Endpoint=https://contoso.webpubsub.azure.com;AccessKey={bad};Version=1.0;"
                )),
                &Defaults::serve(),
            )
            .unwrap_err();
            assert_eq!(e.var, "WEBPUBSUB_CONNECTION_STRING");
            assert!(e.reason.contains("AccessKey is not an access key"), "{e}");
            assert!(!e.reason.contains(&format!("={bad}")), "{e}");
            assert!(!e.reason.contains(&format!("\"{bad}\"")), "{e}");
        }
        // The local emulators' public key is one.
        assert!(Config::from_args(&ServeArgs::default(), &Defaults::dev(8080)).is_ok());
    }

    #[test]
    fn listener_limits() {
        let c = Config::from_args(
            &ServeArgs {
                listener: ListenerArgs {
                    header_timeout: Some("500ms".into()),
                    body_timeout: Some("7".into()),
                    idle_timeout: Some("2m".into()),
                    max_connections: Some("100".into()),
                    ..Default::default()
                },
                ..args(CS)
            },
            &Defaults::serve(),
        )
        .unwrap();
        assert_eq!(c.limits.header_read, Duration::from_millis(500));
        assert_eq!(c.limits.body_read, Duration::from_secs(7));
        assert_eq!(c.limits.idle, Duration::from_secs(120));
        assert_eq!(c.limits.max_connections, 100);
        // `dev`'s two listeners share the default cap, which is sized to the descriptor limit;
        // a value that is set applies to each.
        let default = crate::runtime::listener::default_max_connections(2);
        let dev = |listener| {
            Config::from_args(
                &ServeArgs {
                    listener,
                    ..Default::default()
                },
                &Defaults::dev(8080),
            )
            .unwrap()
            .limits
        };
        assert_eq!(dev(ListenerArgs::default()).max_connections, default);
        let set = ListenerArgs {
            max_connections: Some("100".into()),
            ..Default::default()
        };
        assert_eq!(dev(set).max_connections, 100);
        let emu = EmulatorArgs {
            port: "0".into(),
            bind: "127.0.0.1".into(),
            allow_public: false,
            event_handler: vec![],
            listener: ListenerArgs {
                header_timeout: Some("300ms".into()),
                ..Default::default()
            },
        };
        let l = emu.limits().unwrap();
        assert_eq!(
            (l.header_read, l.max_connections),
            (Duration::from_millis(300), default)
        );
        let bad = EmulatorArgs {
            listener: ListenerArgs {
                max_connections: Some("0".into()),
                ..Default::default()
            },
            ..emu
        };
        assert_eq!(bad.limits().unwrap_err().var, "HUBHOOK_MAX_CONNECTIONS");
        for (var, bad) in [
            ("HUBHOOK_DRAIN_TIMEOUT", "soon"),
            ("HUBHOOK_DRAIN_TIMEOUT", "0s"),
        ] {
            let e = Config::from_args(
                &ServeArgs {
                    listener: ListenerArgs {
                        drain_timeout: Some(bad.into()),
                        ..Default::default()
                    },
                    ..args(CS)
                },
                &Defaults::serve(),
            )
            .unwrap_err();
            assert_eq!(e.var, var);
        }
    }

    #[test]
    fn log_format_and_platform() {
        assert_eq!(
            LogFormat::parse(None, Platform::Server).unwrap(),
            LogFormat::Pretty
        );
        assert_eq!(
            LogFormat::parse(None, Platform::Lambda).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            LogFormat::parse(Some("JSON"), Platform::Server).unwrap(),
            LogFormat::Json
        );
        let e = LogFormat::parse(Some("xml"), Platform::Server).unwrap_err();
        assert!(e.to_string().starts_with("HUBHOOK_LOG_FORMAT:"), "{e}");
        let c = Config::from_args(&args(CS), &Defaults::serve())
            .unwrap()
            .for_platform(Platform::AzureFunctions(7071));
        assert_eq!((c.port, c.bind), (7071, IpAddr::from([127, 0, 0, 1])));
    }

    /// A key as the portal shows it (32 bytes, base64) and the reference's sample secondary key.
    const SECOND: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    const THIRD: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";

    #[test]
    fn access_keys_have_the_service_form_and_are_never_echoed() {
        for bad in [
            "1",
            "secretkey123",
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJ==", // 44 chars, bad padding
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=x", // 45 chars
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWe!A=", // not base64
        ] {
            let e = Config::from_args(
                &ServeArgs {
                    access_keys: Some(format!("{SECOND},{bad}")),
                    ..args(CS)
                },
                &Defaults::serve(),
            )
            .unwrap_err();
            assert_eq!(e.var, "WEBPUBSUB_ACCESS_KEYS");
            assert!(e.reason.starts_with("key 2 "), "{e}");
            assert!(!e.to_string().contains(bad), "{e}");
        }
        let c = Config::from_args(
            &ServeArgs {
                access_keys: Some(format!(" {SECOND} ,{LOCAL_ACCESS_KEY},")),
                ..args(CS)
            },
            &Defaults::serve(),
        )
        .unwrap();
        assert_eq!(c.signature_keys.len(), 3);
        assert_eq!(c.signature_keys[1].expose(), SECOND);
    }

    #[test]
    fn access_keys_from_a_file_name_the_file_variable() {
        // The test process has no WEBPUBSUB_ACCESS_KEYS (scripts/test.sh sets none).
        if std::env::var_os("WEBPUBSUB_ACCESS_KEYS").is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let from_file = |content: &str| {
            std::fs::write(&path, content).unwrap();
            Config::from_args(
                &ServeArgs {
                    access_keys_file: Some(path.display().to_string()),
                    ..args(CS)
                },
                &Defaults::serve(),
            )
        };
        let c = from_file(&format!("\n {SECOND},{THIRD}\n")).unwrap();
        assert_eq!(c.signature_keys.len(), 3);
        assert_eq!(c.signature_keys[2].expose(), THIRD);
        let e = from_file(&format!("{SECOND},secretkey123")).unwrap_err();
        assert_eq!(e.var, "WEBPUBSUB_ACCESS_KEYS_FILE");
        assert!(e.reason.starts_with("key 2 "), "{e}");
        assert!(!e.to_string().contains("secretkey123"), "{e}");
        assert_eq!(
            from_file("  ").unwrap_err().var,
            "WEBPUBSUB_ACCESS_KEYS_FILE"
        );
        // Keys set by code win and the file is not read.
        let c = Config::from_args(
            &ServeArgs {
                access_keys: Some(SECOND.into()),
                access_keys_file: Some(dir.path().join("missing").display().to_string()),
                ..args(CS)
            },
            &Defaults::serve(),
        )
        .unwrap();
        assert_eq!(c.signature_keys.len(), 2);
    }

    #[test]
    fn every_variable_a_flag_reads_is_checked_for_utf8() {
        let cli = <Command as clap::Subcommand>::augment_subcommands(clap::Command::new("t"));
        let global = <LogArgs as clap::Args>::augment_args(clap::Command::new("g"));
        let mut seen = 0;
        for sub in cli.get_subcommands().chain([&global]) {
            for arg in sub.get_arguments() {
                if let Some(var) = arg.get_env() {
                    seen += 1;
                    let var = var.to_str().unwrap();
                    assert!(VARIABLES.contains(&var), "{var} is not in VARIABLES");
                }
            }
        }
        assert!(seen > 20);
    }

    #[test]
    fn emulator_settings_name_their_variable() {
        let emu = |port: &str, bind: &str| EmulatorArgs {
            port: port.into(),
            bind: bind.into(),
            allow_public: false,
            event_handler: vec![],
            listener: ListenerArgs::default(),
        };
        assert_eq!(
            emu("0", "127.0.0.1").addr().unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 0))
        );
        assert_eq!(
            emu("70000", "127.0.0.1").addr().unwrap_err().var,
            "HUBHOOK_EMULATOR_PORT"
        );
        assert_eq!(
            emu("8080", "localhost").addr().unwrap_err().var,
            "HUBHOOK_EMULATOR_BIND"
        );
        let dev = DevArgs {
            emulator_port: "http".into(),
            serve: ServeArgs::default(),
        };
        assert_eq!(
            dev.emulator_port().unwrap_err().var,
            "HUBHOOK_EMULATOR_PORT"
        );
    }

    #[test]
    fn connection_string_from_a_file_names_the_file_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cs");
        std::fs::write(&path, format!("\n  {CS}\n")).unwrap();
        let mut a = ServeArgs {
            connection_string_file: Some(path.display().to_string()),
            ..Default::default()
        };
        // The test process has no WEBPUBSUB_CONNECTION_STRING (scripts/test.sh sets none).
        if std::env::var_os("WEBPUBSUB_CONNECTION_STRING").is_some() {
            return;
        }
        a.read_connection_string().unwrap();
        assert_eq!(a.connection_string.as_deref(), Some(CS));
        let c = Config::from_args(&a, &Defaults::serve()).unwrap();
        assert_eq!(
            c.connection_string.origin(),
            "https://contoso.webpubsub.azure.com"
        );

        std::fs::write(
            &path,
            format!("Endpoint=https://x;AccessKey={SECRET_KEY};Port=secretkey123"),
        )
        .unwrap();
        let mut a = ServeArgs {
            connection_string_file: Some(path.display().to_string()),
            ..Default::default()
        };
        a.read_connection_string().unwrap();
        let e = Config::from_args(&a, &Defaults::serve()).unwrap_err();
        assert_eq!(e.var, "WEBPUBSUB_CONNECTION_STRING_FILE");
        assert!(!e.to_string().contains("secretkey123"), "{e}");

        for content in [&b""[..], b"  \n", b"\xff\xfe"] {
            std::fs::write(&path, content).unwrap();
            let mut a = ServeArgs {
                connection_string_file: Some(path.display().to_string()),
                ..Default::default()
            };
            let e = a.read_connection_string().unwrap_err();
            assert_eq!(e.var, "WEBPUBSUB_CONNECTION_STRING_FILE");
        }
        let mut a = ServeArgs {
            connection_string_file: Some(dir.path().join("missing").display().to_string()),
            ..Default::default()
        };
        assert!(a
            .read_connection_string()
            .unwrap_err()
            .to_string()
            .starts_with("WEBPUBSUB_CONNECTION_STRING_FILE: cannot read"));
        // A value set by code wins and the file is not read.
        let mut a = ServeArgs {
            connection_string_file: Some(dir.path().join("missing").display().to_string()),
            ..args(CS)
        };
        a.read_connection_string().unwrap();
    }

    #[test]
    fn tunnel_settings_name_their_variable() {
        let t = |f: fn(&mut TunnelArgs)| {
            let mut a = TunnelArgs {
                connection_string: Some(CS.into()),
                hub: Some("myHub1".into()),
                ..Default::default()
            };
            f(&mut a);
            a.config()
        };
        let c = t(|a| a.upstream = Some("localhost:7071/api?code=x".into())).unwrap();
        assert_eq!(c.upstream.as_str(), "http://localhost:7071/api?code=x");
        assert_eq!(c.hub, "myHub1");
        assert_eq!(
            c.upstream_timeout,
            crate::tunnel::TunnelConfig::DEFAULT_UPSTREAM_TIMEOUT
        );
        assert_eq!(
            t(|_| {}).unwrap().upstream.as_str(),
            "http://127.0.0.1:8080/"
        );
        for (f, var) in [
            (
                (|a: &mut TunnelArgs| a.upstream = Some("ftp://x".into())) as fn(&mut TunnelArgs),
                "HUBHOOK_TUNNEL_UPSTREAM",
            ),
            (
                |a| a.upstream_timeout = Some("soon".into()),
                "HUBHOOK_TUNNEL_UPSTREAM_TIMEOUT",
            ),
            (
                |a| a.connect_timeout = Some("0".into()),
                "HUBHOOK_TUNNEL_CONNECT_TIMEOUT",
            ),
            (|a| a.hub = Some("1x".into()), "WEBPUBSUB_HUB"),
            (
                |a| a.connection_string = Some("Endpoint=https://x".into()),
                "WEBPUBSUB_CONNECTION_STRING",
            ),
        ] {
            assert_eq!(t(f).unwrap_err().var, var);
        }
    }

    #[test]
    fn options() {
        let a = ServeArgs {
            access_keys: Some(format!("{SECOND}, {THIRD}")),
            allowed_origins: Some("*".into()),
            store: Some("dynamodb://hubhook-messages".into()),
            negotiate: Some("open".into()),
            negotiate_insecure_open: Some("true".into()),
            relay_events: Some("typing, reaction".into()),
            retention_days: Some("30".into()),
            insecure_skip_signature: Some("true".into()),
            ..args(CS)
        };
        let c = Config::from_args(&a, &Defaults::serve()).unwrap();
        assert_eq!(c.signature_keys.len(), 3);
        assert!(!c.verify_signatures && c.auth == AuthMode::Open);
        assert_eq!(
            c.store,
            StoreSpec::Dynamo {
                table: "hubhook-messages".into()
            }
        );
        assert_eq!(c.chat.relay_events, vec!["typing", "reaction"]);
        assert_eq!(c.store_options.retention_days, Some(30));
        assert_eq!(c.allowed_origins, AllowedOrigins::Any);
    }

    // One table of HUBHOOK_AUTH cases read top to bottom: the mode, its alias and every refusal
    // side by side, so a change to one rule shows next to the others.
    #[test]
    fn auth_modes() {
        const LOCAL: &str = "Endpoint=http://localhost:8080;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1.0;";
        let c = |a: ServeArgs| Config::from_args(&a, &Defaults::serve());
        let e = |a: ServeArgs| c(a).unwrap_err();
        assert_eq!(c(args(LOCAL)).unwrap().auth, AuthMode::Open);
        assert_eq!(c(args(CS)).unwrap().auth, AuthMode::Off);
        // open on a public endpoint: refused unless explicitly insecure.
        for a in [
            ServeArgs {
                auth: Some("open".into()),
                ..args(CS)
            },
            ServeArgs {
                negotiate: Some("open".into()),
                ..args(CS)
            },
        ] {
            let insecure = ServeArgs {
                negotiate_insecure_open: Some("true".into()),
                ..a.clone()
            };
            assert!(e(a).reason.contains("HUBHOOK_NEGOTIATE_INSECURE_OPEN=true"));
            assert_eq!(c(insecure).unwrap().auth, AuthMode::Open);
        }
        assert_eq!(
            e(ServeArgs {
                auth: Some("off".into()),
                negotiate: Some("off".into()),
                ..args(CS)
            })
            .var,
            "HUBHOOK_NEGOTIATE"
        );
        assert_eq!(
            e(ServeArgs {
                negotiate: Some("oidc".into()),
                ..args(CS)
            })
            .var,
            "HUBHOOK_NEGOTIATE"
        );
        assert_eq!(
            e(ServeArgs {
                auth: Some("maybe".into()),
                ..args(CS)
            })
            .var,
            "HUBHOOK_AUTH"
        );
        let oidc = ServeArgs {
            auth: Some("oidc".into()),
            auth_issuer: Some("https://login.example.com/t/v2.0".into()),
            auth_audience: Some("api://chat".into()),
            auth_rooms_claim: Some("rooms".into()),
            auth_leeway: Some("0".into()),
            ..args(CS)
        };
        let with_rooms = c(oidc.clone()).unwrap();
        assert!(with_rooms.chat.room_must_be_granted);
        let AuthMode::Oidc(o) = with_rooms.auth else {
            panic!("oidc")
        };
        assert_eq!(
            (o.user_claim.as_str(), o.rooms_claim.as_deref(), o.leeway),
            ("sub", Some("rooms"), Duration::ZERO)
        );
        assert_eq!(
            e(ServeArgs {
                auth_audience: None,
                ..oidc.clone()
            })
            .var,
            "HUBHOOK_AUTH_AUDIENCE"
        );
        for bad in [
            "login.example.com",
            "http://login.example.com",
            "https://x/?a=b",
        ] {
            assert_eq!(
                e(ServeArgs {
                    auth_issuer: Some(bad.into()),
                    ..oidc.clone()
                })
                .var,
                "HUBHOOK_AUTH_ISSUER",
                "{bad}"
            );
        }
        assert!(c(ServeArgs {
            auth_issuer: Some("http://127.0.0.1:9/".into()),
            ..oidc.clone()
        })
        .is_ok());
        assert_eq!(
            e(ServeArgs {
                auth_leeway: Some("1h".into()),
                ..oidc.clone()
            })
            .var,
            "HUBHOOK_AUTH_LEEWAY"
        );
        assert_eq!(
            e(ServeArgs { auth: None, ..oidc }).var,
            "HUBHOOK_AUTH_ISSUER"
        );
    }

    #[test]
    fn cors_rate_and_presence_settings() {
        let c = |a: ServeArgs| Config::from_args(&a, &Defaults::serve());
        let ok = c(ServeArgs {
            cors_origins: Some("https://chat.example.com, http://localhost:3000/".into()),
            message_rate: Some("10/s,burst=20".into()),
            presence_ttl: Some("2h".into()),
            ..args(CS)
        })
        .unwrap();
        assert_eq!(
            ok.cors_origins,
            ["https://chat.example.com", "http://localhost:3000"]
        );
        assert_eq!(ok.chat.message_rate.unwrap().burst, 20);
        assert_eq!(ok.chat.presence_ttl, Duration::from_secs(7200));
        for bad in [
            "*",
            "chat.example.com",
            "https://chat.example.com/app",
            "ftp://x",
        ] {
            let e = c(ServeArgs {
                cors_origins: Some(bad.into()),
                ..args(CS)
            })
            .unwrap_err();
            assert_eq!(e.var, "HUBHOOK_CORS_ORIGINS", "{bad}");
        }
        let e = c(ServeArgs {
            message_rate: Some("fast".into()),
            ..args(CS)
        })
        .unwrap_err();
        assert_eq!(e.var, "HUBHOOK_MESSAGE_RATE");
        let e = c(ServeArgs {
            presence_ttl: Some("0".into()),
            ..args(CS)
        })
        .unwrap_err();
        assert_eq!(e.var, "HUBHOOK_PRESENCE_TTL");
    }
}
