//! The client side of the Web PubSub tunnel (`hubhook tunnel`, and `hubhook dev` against a real
//! resource): dial the service's `/server/tunnel`, replay each webhook it sends against a local
//! upstream, answer on the same connection. `frame` is the codec both sides share (the emulator's
//! service side is `emulator::tunnel`).

pub mod frame;
