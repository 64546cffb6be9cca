pub mod protocol;
pub mod service;
