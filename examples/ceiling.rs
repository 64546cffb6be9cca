//! The machine's ceiling for `bench/`: a bare axum server that reads the request body and answers
//! `200` with an empty body on every path. Nothing a real handler does can be faster than this on
//! the same machine with the same load generator.
//!
//! Env: `PORT` (8080), `HUBHOOK_BIND` (127.0.0.1).

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    let bind: IpAddr = std::env::var("HUBHOOK_BIND")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()?;
    let router = Router::new().fallback(|_body: Bytes| async { StatusCode::OK });
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, port)).await?;
    eprintln!(
        "ceiling example listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, router).await?;
    Ok(())
}
