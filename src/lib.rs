pub mod chat;
pub mod config;
pub mod http;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod store;
