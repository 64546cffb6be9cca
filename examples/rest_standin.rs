//! A fast loopback stand-in for the Web PubSub REST API, for `bench/`: every request (any method,
//! any path) has its body read and is answered `202 Accepted` with an empty body, and is counted.
//! It checks nothing (no JWT, no path rules): the tests pin those; here it must only be fast
//! enough never to be the bottleneck, and count broadcasts so a run can check them.
//!
//! `GET /__standin/stats` answers `{"calls":N,"posts":N}` (not counted itself).
//!
//! Env: `PORT` (8080), `HUBHOOK_BIND` (127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    posts: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    let bind: IpAddr = std::env::var("HUBHOOK_BIND")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()?;
    let counters = Arc::new(Counters::default());
    let router = Router::new().fallback(move |method: Method, uri: Uri, _body: Bytes| {
        let c = counters.clone();
        async move {
            if method == Method::GET && uri.path() == "/__standin/stats" {
                let body = format!(
                    "{{\"calls\":{},\"posts\":{}}}",
                    c.calls.load(Ordering::Relaxed),
                    c.posts.load(Ordering::Relaxed)
                );
                return ([("content-type", "application/json")], body).into_response();
            }
            c.calls.fetch_add(1, Ordering::Relaxed);
            if method == Method::POST {
                c.posts.fetch_add(1, Ordering::Relaxed);
            }
            StatusCode::ACCEPTED.into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, port)).await?;
    eprintln!(
        "REST stand-in listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, router).await?;
    Ok(())
}
