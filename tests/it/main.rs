//! Every integration test, in one binary (one link, one run): black-box tests that start the
//! app on port 0 or the real binary, the emulator through its public API, the official npm SDKs
//! (Node-backed tests skip with a printed reason when Node.js or `tests/js/node_modules` is
//! missing, and fail instead under `HUBHOOK_REQUIRE_NODE=1`, as `scripts/test.sh` sets).
//!
//! Run one area with `cargo test --test it -- chat::`.

mod support;

mod auth;
mod azuretable;
mod boundary;
mod browser;
mod chaos;
mod chat;
mod compat;
mod crash;
mod emulator;
mod emulator_api;
mod emulator_flood;
mod outbox;
mod presence;
mod runtimes;
mod settings;
mod shutdown;
mod store;
mod tunnel;
