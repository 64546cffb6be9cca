//! W3's ceiling for `bench/`: a bare tokio-tungstenite broadcast server. Every text or binary
//! frame a client sends is sent, unchanged, to every connected client (the sender included).
//! No protocol, no JSON, no auth: nothing a Web PubSub service does to fan a message out can be
//! cheaper than this on the same machine with the same load client (`examples/wsload.rs`).
//!
//! The first subprotocol a client asks for is accepted (the load client asks for
//! `json.webpubsub.azure.v1`, and tungstenite's client refuses an answer without one). Each
//! client's frames go through an unbounded queue to a writer task that writes what is waiting
//! and flushes once per batch.
//!
//! Env: `PORT` (8080), `HUBHOOK_BIND` (127.0.0.1).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Clients = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    let bind: IpAddr = std::env::var("HUBHOOK_BIND")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, port)).await?;
    eprintln!("ws_ceiling listening on ws://{}", listener.local_addr()?);
    let clients: Clients = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (clients, id) = (clients.clone(), ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            if let Err(e) = serve(tcp, id, &clients).await {
                eprintln!("client {id}: {e}");
            }
            clients.lock().unwrap().remove(&id);
        });
    }
}

/// The handshake callback: accepts the first subprotocol the client asks for. Its error type
/// (an HTTP response) is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
fn pick_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let first = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_string());
    if let Some(p) = first.and_then(|p| p.parse().ok()) {
        resp.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

async fn serve(tcp: tokio::net::TcpStream, id: u64, clients: &Clients) -> anyhow::Result<()> {
    let ws = tokio_tungstenite::accept_hdr_async(tcp, pick_subprotocol).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    clients.lock().unwrap().insert(id, tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            sink.feed(m).await?;
            while let Ok(m) = rx.try_recv() {
                sink.feed(m).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    });
    while let Some(m) = stream.next().await {
        match m? {
            m @ (Message::Text(_) | Message::Binary(_)) => {
                for tx in clients.lock().unwrap().values() {
                    let _ = tx.send(m.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    clients.lock().unwrap().remove(&id);
    writer.abort();
    Ok(())
}
