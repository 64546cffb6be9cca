pub mod protocol;
pub mod service;
pub mod store;
