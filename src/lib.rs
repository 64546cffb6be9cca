//! hubhook: an Azure Web PubSub event handler.
//!
//! Web PubSub keeps the WebSocket connections and calls this crate's router with CloudEvents
//! webhooks. A request flows through the modules in this order:
//!
//! * [`protocol`] — the wire format, pure and framework-free: parse a webhook into a typed
//!   [`protocol::Webhook`] after checking `ce-signature` ([`protocol::SignatureVerifier`]), answer the
//!   abuse-protection probe ([`protocol::AllowedOrigins`]), build responses, and (for the emulator and
//!   tests) build signed webhooks.
//! * [`chat`] — the application rules: who connects to which room, what is stored, what is broadcast.
//! * [`store`] — [`store::MessageStore`] and its backends: [`store::sqlite`] (embedded default, group
//!   commit) and [`store::dynamodb`]; appends are idempotent per delivery (connection id + `ce-id`).
//! * [`service`] — connection strings, REST and client JWTs, and the REST client used for broadcasts.
//! * [`auth`] — verifying end-user bearer tokens (OIDC discovery, JWKS cache) for `/negotiate`,
//!   history and presence; knows nothing of Web PubSub or stores.
//! * [`http`] — the one axum router (event handler, `/negotiate`, `/api/messages`, presence, `/healthz`).
//! * [`runtime`] — all process wiring: AWS Lambda, an Azure Functions custom handler or a plain
//!   server, built once per process; `hubhook dev` (the emulator beside the chat function) and
//!   `hubhook emulator`; [`runtime::listener`], the one hardened HTTP listener every socket goes
//!   through.
//! * [`config`] — one validated [`config::Config`] from flags and environment variables; the only
//!   module that reads the environment.
//! * [`emulator`] — a local Web PubSub service (client WebSockets, webhooks, REST API) for
//!   development and tests.
//! * [`tunnel`] — `hubhook tunnel`: a real resource's webhooks over an outbound WebSocket to a
//!   local handler; its frame codec is shared with the emulator's service side.
//! * [`ui`] — `hubhook dev`'s page (chat, live webhook inspector, the emulator's connections),
//!   compiled in, behind a per-run token.

pub mod auth;
pub mod chat;
pub mod config;
pub mod emulator;
pub mod http;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod store;
pub mod tunnel;
pub mod ui;
