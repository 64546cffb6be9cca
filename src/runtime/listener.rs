//! The one place a TCP listener is turned into an HTTP server: `serve`, `dev`, the emulator and the
//! Azure Functions port all go through [`serve`], so none of them can forget a timeout, the
//! connection cap or `TCP_NODELAY`.
//!
//! What [`serve`] guarantees, whatever the clients do:
//!
//! * every accepted socket has `TCP_NODELAY` (an ack frame that follows another small write is not
//!   held back ~40 ms by Nagle + delayed ACK);
//! * a connection must deliver a complete request head within [`Limits::header_read`] of its first
//!   byte (of being accepted, for a new connection), a request body within [`Limits::body_read`]
//!   (else `408`), and a keep-alive connection that sits silent between requests, or a client that
//!   stops reading its response, is closed after [`Limits::idle`];
//! * at most [`Limits::max_connections`] connections are served; beyond that a connection is still
//!   accepted and answered `503` with `Connection: close`, so a flood never turns into unanswered
//!   webhooks or `EMFILE`;
//! * accept errors (`EMFILE`, `ENFILE`, `ENOBUFS`, ...) back off instead of spinning, logged once per
//!   episode;
//! * when `shutdown` resolves, the listener closes, in-flight requests may finish, and after
//!   [`Limits::drain`] every remaining connection (upgraded WebSockets included) is force-closed and
//!   [`serve`] returns.
//!
//! An upgraded connection (axum `WebSocketUpgrade`) leaves the HTTP timeouts behind: it belongs to
//! the WebSocket handler, which owns its own liveness rules (pings, close frames). It still counts
//! against the connection cap and is still force-closed at the end of the drain period.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant, Sleep};
use tower::ServiceExt;

/// Timeouts and limits of one listener. The fields are public so configuration can override any of
/// them; [`Limits::default`] is what every listener should start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time to receive a complete request head (request line + headers). It starts at accept for a
    /// new connection and at the first byte of each later request on a keep-alive connection, and
    /// bounds the total, so a client dribbling one byte a second is closed too.
    /// Default 10 s: a real client sends its head in one packet.
    pub header_read: Duration,
    /// Time to receive a complete request body, counted from the moment the head was read. A body
    /// that has not fully arrived by then answers `408 Request Timeout` (`Connection: close`).
    /// Default 30 s: webhook bodies are small (kilobytes); 30 s is generous even on a bad link.
    pub body_read: Duration,
    /// How long a keep-alive connection may sit silent between requests, and how long a response
    /// may make no write progress (a client that stops reading). Default 60 s: longer than the
    /// header timeout so Web PubSub's and the Functions host's connection reuse is not cut short,
    /// short enough that idle sockets cannot pile up for minutes.
    pub idle: Duration,
    /// Connections served at once (upgraded WebSockets included). Beyond it, new connections are
    /// answered `503` and closed. Default: `RLIMIT_NOFILE` (soft) minus 256 descriptors of headroom
    /// (store files, outbound HTTP, the 503 answers), at most 2,048 and at least 64. With the usual
    /// soft limit of 1,024 that is 768, so the process can never run out of descriptors because of
    /// client connections; where the limit is high, 2,048 keeps memory bounded.
    pub max_connections: usize,
    /// After `shutdown`, how long in-flight requests get to finish before everything left is
    /// force-closed. Default 10 s: well inside the 30 s most supervisors (Docker, Kubernetes,
    /// systemd) wait between SIGTERM and SIGKILL.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            max_connections: default_max_connections(1),
            drain: Duration::from_secs(10),
        }
    }
}

/// Descriptors kept free for everything that is not a client connection.
const FD_HEADROOM: u64 = 256;
const MAX_CONNECTIONS_CEILING: usize = 2048;
const MAX_CONNECTIONS_FLOOR: usize = 64;

/// The default connection cap of each of a process's `listeners`: its descriptor budget
/// (soft `RLIMIT_NOFILE` − [`FD_HEADROOM`]) shared among them, then bounded per listener. Shared
/// before bounding, so `dev`'s emulator keeps the full 2,048 where descriptors allow it (a
/// 1,000-client room) and both listeners together stay under a 1,024 limit where they do not.
pub(crate) fn default_max_connections(listeners: usize) -> usize {
    connection_share(nofile_soft_limit(), listeners)
}

fn connection_share(nofile: Option<u64>, listeners: usize) -> usize {
    match nofile {
        Some(n) => (usize::try_from(n.saturating_sub(FD_HEADROOM)).unwrap_or(usize::MAX)
            / listeners.max(1))
        .clamp(MAX_CONNECTIONS_FLOOR, MAX_CONNECTIONS_CEILING),
        None => MAX_CONNECTIONS_CEILING,
    }
}

#[cfg(unix)]
fn nofile_soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which is valid and exclusively borrowed.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    #[allow(clippy::useless_conversion)] // rlim_t is u64 on Linux, not everywhere
    u64::try_from(lim.rlim_cur).ok()
}

#[cfg(not(unix))]
fn nofile_soft_limit() -> Option<u64> {
    None
}

/// Over-cap connections answered `503` concurrently by a task that also reads (discards) the
/// request, so closing does not reset the connection before the client read the answer. Past this,
/// the `503` is written without waiting and the socket closed at once.
const REJECT_CONCURRENCY: usize = 64;
/// The whole life of one `503` answer.
const REJECT_TIME: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not about one connection (`EMFILE`, `ENOBUFS`, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After the drain period, how long force-closed connections get to actually drop.
const FORCE_CLOSE_GRACE: Duration = Duration::from_millis(250);

const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 50\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
server at its connection limit; retry in a moment\n";

/// Serve `router` on `listener` until `shutdown` resolves, then drain for at most
/// [`Limits::drain`] and return. See the module documentation for what is guaranteed.
///
/// Handlers can extract `ConnectInfo<SocketAddr>` (the peer address), as with axum's
/// `into_make_service_with_connect_info`. Only HTTP/1.1 is spoken (Web PubSub, the Functions host and
/// browsers' WebSocket upgrades all use it).
///
/// Returns `Ok(())` once drained; accept errors are retried, never returned.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_inner(listener, router, limits, shutdown, None).await
}

/// Test hook: called with every accepted (and configured) socket before it is served.
type AcceptHook = Arc<dyn Fn(&TcpStream) + Send + Sync>;

/// Over 80 lines: the accept loop and the drain are one state machine (accepting → draining →
/// force-closing); split, the hand-offs between them would be harder to follow than the whole.
async fn serve_inner(
    listener: TcpListener,
    router: Router,
    mut limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    accept_hook: Option<AcceptHook>,
) -> io::Result<()> {
    // acquire_many takes a u32; the semaphore has its own ceiling too.
    limits.max_connections = limits
        .max_connections
        .clamp(1, (u32::MAX as usize).min(Semaphore::MAX_PERMITS));
    let max = limits.max_connections;
    let conn_slots = Arc::new(Semaphore::new(max));
    let reject_slots = Arc::new(Semaphore::new(REJECT_CONCURRENCY));
    // `graceful`: stop keep-alive, finish what is in flight. `kill`: close now. A connection sees
    // either sender being dropped (serve returned or was dropped) as `kill`.
    let (graceful_tx, graceful_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let ctx = Arc::new(ConnCtx {
        router,
        limits: limits.clone(),
        graceful: graceful_rx,
        kill: kill_rx,
    });

    let mut shutdown = pin!(shutdown);
    let mut accept_errors: u64 = 0;
    let mut rejected: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer went away between SYN and accept: nothing wrong with the listener.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if accept_errors == 0 {
                    tracing::error!(
                        error = %e,
                        "accept failed; retrying every {ACCEPT_BACKOFF:?} (logged once until it recovers)"
                    );
                }
                accept_errors += 1;
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        if accept_errors > 0 {
            tracing::info!(failures = accept_errors, "accept works again");
            accept_errors = 0;
        }
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        if let Some(hook) = &accept_hook {
            hook(&stream);
        }
        match conn_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                if rejected > 0 {
                    tracing::info!(rejected, "below the connection limit again");
                    rejected = 0;
                }
                tokio::spawn(serve_connection(stream, peer, permit, ctx.clone()));
            }
            Err(_) => {
                if rejected == 0 {
                    tracing::warn!(
                        max_connections = max,
                        "connection limit reached; answering 503 to new connections"
                    );
                }
                rejected += 1;
                reject(stream, &reject_slots);
            }
        }
    }

    // Stop accepting: new connections are refused by the kernel from here on.
    drop(listener);
    let _ = graceful_tx.send(true);
    let in_use = max - conn_slots.available_permits();
    if in_use > 0 {
        tracing::info!(
            connections = in_use,
            "shutting down: draining for at most {:?}",
            limits.drain
        );
    }
    // Every connection holds a permit until its socket is dropped, so getting all of them back
    // means everything is closed.
    let all = u32::try_from(max).expect("clamped to u32");
    if timeout(limits.drain, conn_slots.acquire_many(all))
        .await
        .is_err()
    {
        let left = max - conn_slots.available_permits();
        tracing::warn!(
            connections = left,
            "drain period over; force-closing the remaining connections"
        );
        let _ = kill_tx.send(true);
        let _ = timeout(FORCE_CLOSE_GRACE, conn_slots.acquire_many(all)).await;
    }
    Ok(())
}

/// Accept errors that concern one connection only: retry at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answer an over-cap connection `503` and close it; never leaves it unanswered.
fn reject(mut stream: TcpStream, slots: &Arc<Semaphore>) {
    match slots.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                let _permit = permit;
                let _ = timeout(REJECT_TIME, async {
                    stream.write_all(OVER_CAPACITY).await?;
                    stream.shutdown().await?;
                    // Read (and drop) what the client sends until it closes: closing a socket with
                    // unread data sends RST, which can destroy the 503 before the client reads it.
                    let mut buf = [0u8; 4096];
                    while stream.read(&mut buf).await? > 0 {}
                    Ok::<_, io::Error>(())
                })
                .await;
            });
        }
        // Too many answers in progress: a fresh socket's send buffer is empty, so this write
        // almost always goes through whole; then close.
        Err(_) => {
            let _ = stream.try_write(OVER_CAPACITY);
        }
    }
}

/// What every connection task shares.
struct ConnCtx {
    router: Router,
    limits: Limits,
    graceful: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    ctx: Arc<ConnCtx>,
) {
    let state = Arc::new(ConnState::new());
    let io = GuardedIo {
        inner: stream,
        state: state.clone(),
        kill: Some(Box::pin(signalled(ctx.kill.clone()))),
        _permit: permit,
    };
    let service = ConnService {
        router: ctx.router.clone(),
        state: state.clone(),
        peer,
        body_read: ctx.limits.body_read,
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Off on purpose: hyper restarts its header timer as soon as a keep-alive connection goes
        // idle, which would cut every idle keep-alive at `header_read`. The watchdog below keeps
        // the two apart (header timer from the first byte, idle timer in between).
        .header_read_timeout(None)
        .keep_alive(true);
    let mut conn = pin!(builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());

    let mut draining = false;
    let mut graceful = pin!(signalled(ctx.graceful.clone()));
    let mut kill = pin!(signalled(ctx.kill.clone()));
    loop {
        let deadline = state.deadline(&ctx.limits);
        tokio::select! {
            res = conn.as_mut() => {
                // Also how an upgrade ends here: hyper hands the socket to the upgrade's owner.
                if let Err(e) = res {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            () = sleep_until_opt(deadline) => {
                // The phase may have moved on since the deadline was computed.
                if state.deadline(&ctx.limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, phase = state.phase_name(), "closing connection: timed out");
                    return;
                }
            }
            () = graceful.as_mut(), if !draining => {
                draining = true;
                // Closes now if idle, else after the response in flight.
                conn.as_mut().graceful_shutdown();
            }
            () = state.changed.notified() => {}
            () = kill.as_mut() => return,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the flag is set or its sender is gone.
async fn signalled(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

// Where a connection is in its request cycle; decides which timeout applies.
/// Waiting for (the rest of) a request head: `header_read` from `since`.
const HEAD: u8 = 0;
/// Between requests, nothing of the next one read yet: `idle` from `since`.
const IDLE: u8 = 1;
/// The handler runs (and reads the body, which has its own timeout): no connection deadline.
const HANDLER: u8 = 2;
/// The response is being written: `idle` from the last successful read or write.
const RESPONDING: u8 = 3;

struct ConnState {
    base: Instant,
    phase: AtomicU8,
    /// Milliseconds after `base` at which `phase` began.
    since: AtomicU64,
    /// Milliseconds after `base` of the last successful read or write.
    last_io: AtomicU64,
    /// Wakes the watchdog when the phase changes: the new deadline may be earlier.
    changed: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            base: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: u8) {
        let now = self.now_ms();
        self.since.store(now, Ordering::Release);
        self.last_io.fetch_max(now, Ordering::AcqRel);
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Release);
        // The first byte of the next request starts its header timer.
        if self
            .phase
            .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.since.store(now, Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn on_write(&self, n: usize) {
        if n > 0 {
            self.last_io.store(self.now_ms(), Ordering::Release);
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let at = |ms: u64, d: Duration| self.base + Duration::from_millis(ms) + d;
        match self.phase.load(Ordering::Acquire) {
            HEAD => Some(at(self.since.load(Ordering::Acquire), limits.header_read)),
            IDLE => Some(at(self.since.load(Ordering::Acquire), limits.idle)),
            RESPONDING => Some(at(self.last_io.load(Ordering::Acquire), limits.idle)),
            _ => None,
        }
    }

    fn phase_name(&self) -> &'static str {
        match self.phase.load(Ordering::Acquire) {
            HEAD => "request head",
            IDLE => "idle keep-alive",
            HANDLER => "handler",
            _ => "response write",
        }
    }
}

/// The accepted socket as hyper (and, after an upgrade, the WebSocket) sees it: records activity
/// for the watchdog, fails every operation once the server force-closes, and holds the connection
/// slot until it is dropped, wherever it ends up.
struct GuardedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// `None` once it fired; polling a finished future again would panic.
    kill: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _permit: OwnedSemaphorePermit,
}

impl GuardedIo {
    fn check_kill(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match &mut self.kill {
            Some(kill) => {
                if kill.as_mut().poll(cx).is_ready() {
                    self.kill = None;
                    return Err(killed());
                }
                Ok(())
            }
            None => Err(killed()),
        }
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server shut down")
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_kill(cx)?;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.state.on_read(buf.filled().len() - before);
        }
        res
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_kill(cx)?;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.state.on_write(n);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_kill(cx)?;
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.state.on_write(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_kill(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_kill(cx)?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The hyper service of one connection: the router, plus the body timeout and the phase changes.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    peer: SocketAddr,
    body_read: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.state.enter(HANDLER);
        let timed_out = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.body_read;
        let mut req = req.map(|body| {
            Body::new(TimedBody {
                inner: body,
                deadline,
                sleep: None,
                timed_out: timed_out.clone(),
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let router = self.router.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let Ok(mut res) = router.oneshot(req).await;
            if timed_out.load(Ordering::Acquire) {
                // Whatever the handler made of the failed body read (axum says 400), the client
                // was too slow: say so, and do not reuse a connection with half a body on it.
                res = Response::new(Body::from("request body not received in time\n"));
                *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            state.enter(RESPONDING);
            Ok(res.map(|body| TrackedBody {
                inner: body,
                state: Some(state),
            }))
        })
    }
}

/// A request body that must be complete by `deadline`.
///
/// Not tower-http's `RequestBodyTimeoutLayer`: its `TimeoutBody` restarts the timer on every frame
/// (a client dribbling a byte per interval never times out), and its error reaches axum's body
/// extractors as a plain 400. This one bounds the whole body and flags the timeout so the service
/// answers 408.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    /// Created on the first `Pending`, so a body read at once costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within the body-read timeout")]
struct BodyTimeout;

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the connection when it is done (hyper drops it once written), which
/// starts the idle timer.
struct TrackedBody {
    inner: Body,
    state: Option<Arc<ConnState>>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.enter(IDLE);
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
    use axum::routing::{get, post};
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Mutex;
    use tokio::sync::{mpsc, oneshot};
    use tokio::task::JoinHandle;

    /// Upper bound for anything that should happen "soon": generous for a loaded 2-core machine.
    const BOUND: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        fn shutdown(&mut self) {
            let _ = self.stop.take().expect("shut down once").send(());
        }
    }

    fn limits() -> Limits {
        Limits {
            header_read: Duration::from_secs(30),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            max_connections: 64,
            drain: Duration::from_secs(5),
        }
    }

    fn app() -> Router {
        Router::new()
            .route("/", get(|| async { "hello" }))
            .route("/echo", post(|body: Bytes| async move { body }))
            .route(
                "/slow",
                get(|| async {
                    sleep(Duration::from_secs(600)).await;
                    "late"
                }),
            )
            .route(
                "/ws",
                get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(echo_ws) }),
            )
    }

    async fn echo_ws(mut socket: WebSocket) {
        while let Some(Ok(msg)) = socket.recv().await {
            if let Message::Text(_) = msg {
                if socket.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn start_with(router: Router, limits: Limits, hook: Option<AcceptHook>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_inner(
            listener,
            router,
            limits,
            async move {
                let _ = stopped.await;
            },
            hook,
        ));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn start(limits: Limits) -> Server {
        start_with(app(), limits, None).await
    }

    /// Reads until the peer closes (or errors); panics if that takes longer than `BOUND`.
    async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        timeout(BOUND, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the server should have closed the connection");
        out
    }

    /// Reads one response with a `content-length`, leaving the connection usable.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        timeout(BOUND, async {
            loop {
                let n = stream.read(&mut buf).await.expect("read response");
                assert!(n > 0, "closed before a full response: {out:?}");
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if out.len() >= end + 4 + len {
                        return;
                    }
                }
            }
        })
        .await
        .expect("a response in time");
        String::from_utf8(out).unwrap()
    }

    async fn get_on(stream: &mut TcpStream, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        read_response(stream).await
    }

    async fn server_returns(server: Server) -> io::Result<()> {
        timeout(BOUND, server.task)
            .await
            .expect("serve should return within the drain period")
            .expect("serve task")
    }

    #[test]
    fn over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body.lines().count(), 1, "a one-line reason");
    }

    #[test]
    fn defaults_are_sane() {
        let d = Limits::default();
        assert!(d.header_read < d.idle);
        assert!(
            d.drain < Duration::from_secs(30),
            "inside the usual SIGKILL grace"
        );
        assert!((MAX_CONNECTIONS_FLOOR..=MAX_CONNECTIONS_CEILING).contains(&d.max_connections));
        if let Some(n) = nofile_soft_limit() {
            assert!(
                (d.max_connections as u64) + (REJECT_CONCURRENCY as u64) < n
                    || d.max_connections == MAX_CONNECTIONS_FLOOR
            );
        }
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The hook runs on the server's accepted socket, after serve configured it: `nodelay()`
        // is a real getsockopt(TCP_NODELAY) there.
        let hook: AcceptHook = Arc::new(move |s: &TcpStream| {
            let _ = tx.send(s.nodelay().unwrap());
        });
        let mut server = start_with(app(), limits(), Some(hook)).await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        assert!(get_on(&mut c, "/").await.starts_with("HTTP/1.1 200"));
        assert!(timeout(BOUND, rx.recv()).await.unwrap().unwrap());
        server.shutdown();
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn slow_header_client_is_closed_after_header_read() {
        let mut server = start(Limits {
            header_read: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        // Dribble a byte every 50 ms: never idle, but the head never completes.
        let (mut rd, mut wr) = c.split();
        let dribble = async {
            for b in b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: ".iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                sleep(Duration::from_millis(50)).await;
            }
        };
        let closed = async {
            let mut buf = [0u8; 256];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        timeout(BOUND, async {
            tokio::select! {
                () = dribble => {},
                () = closed => {},
            }
        })
        .await
        .expect("a dribbling head must be cut off");
        drop(c);
        server.shutdown();
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn silent_new_connection_is_closed() {
        let mut server = start(Limits {
            header_read: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        assert!(read_until_closed(&mut c).await.is_empty());
        server.shutdown();
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn idle_keep_alive_is_closed_after_idle_not_header_read() {
        let mut server = start(Limits {
            header_read: Duration::from_millis(200),
            idle: Duration::from_secs(20),
            ..limits()
        })
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        assert!(get_on(&mut c, "/").await.starts_with("HTTP/1.1 200"));
        // Longer than header_read: the keep-alive connection must survive it.
        sleep(Duration::from_secs(1)).await;
        assert!(get_on(&mut c, "/").await.starts_with("HTTP/1.1 200"));
        server.shutdown();
        server_returns(server).await.unwrap();

        let mut server = start(Limits {
            idle: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        assert!(get_on(&mut c, "/").await.starts_with("HTTP/1.1 200"));
        assert!(read_until_closed(&mut c).await.is_empty());
        server.shutdown();
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn stalled_body_gets_408() {
        let mut server = start(Limits {
            body_read: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\nonly ten b")
            .await
            .unwrap();
        let answer = String::from_utf8(read_until_closed(&mut c).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"));
        // A body that does arrive in time is fine.
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 4\r\n\r\nping")
            .await
            .unwrap();
        let answer = read_response(&mut c).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ping"));
        server.shutdown();
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn over_the_cap_answers_503_then_recovers() {
        let mut server = start(Limits {
            max_connections: 2,
            ..limits()
        })
        .await;
        // Two keep-alive connections that surely hold their slots (each got an answer).
        let mut a = TcpStream::connect(server.addr).await.unwrap();
        let mut b = TcpStream::connect(server.addr).await.unwrap();
        assert!(get_on(&mut a, "/").await.starts_with("HTTP/1.1 200"));
        assert!(get_on(&mut b, "/").await.starts_with("HTTP/1.1 200"));

        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8(read_until_closed(&mut c).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connection limit"), "{answer}");

        drop((a, b));
        // Slots come back when the server notices the close: retry until then.
        timeout(BOUND, async {
            loop {
                let mut d = TcpStream::connect(server.addr).await.unwrap();
                d.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let answer = String::from_utf8(read_until_closed(&mut d).await).unwrap();
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
                sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a request works again once the others left");
        server.shutdown();
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_is_bounded_by_drain_whatever_clients_do() {
        let mut server = start(Limits {
            drain: Duration::from_millis(500),
            ..limits()
        })
        .await;
        // One request whose handler never finishes, one half-sent head, one idle keep-alive.
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        assert!(get_on(&mut idle, "/").await.starts_with("HTTP/1.1 200"));
        sleep(Duration::from_millis(100)).await;

        server.shutdown();
        let addr = server.addr;
        server_returns(server).await.unwrap();
        read_until_closed(&mut slow).await;
        read_until_closed(&mut half).await;
        read_until_closed(&mut idle).await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn in_flight_request_completes_during_shutdown() {
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let started_tx = Arc::new(Mutex::new(Some(started_tx)));
        let router = Router::new().route(
            "/work",
            get(move || {
                let started = started_tx.lock().unwrap().take();
                async move {
                    if let Some(tx) = started {
                        let _ = tx.send(());
                    }
                    sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        );
        let mut server = start_with(router, limits(), None).await;
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        timeout(BOUND, started_rx).await.unwrap().unwrap();
        server.shutdown();
        let answer = String::from_utf8(read_until_closed(&mut c).await).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        server_returns(server).await.unwrap();
    }

    #[tokio::test]
    async fn websocket_outlives_http_timeouts_and_is_closed_by_drain() {
        let mut server = start(Limits {
            header_read: Duration::from_millis(200),
            idle: Duration::from_millis(200),
            drain: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let url = format!("ws://{}/ws", server.addr);
        let (mut ws, _) = timeout(BOUND, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut echo = async |text: &str| {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                .await
                .unwrap();
            let got = timeout(BOUND, ws.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(got.into_text().unwrap().as_str(), text);
        };
        // Messages flowing for several idle periods...
        for i in 0..8 {
            echo(&format!("m{i}")).await;
            sleep(Duration::from_millis(100)).await;
        }
        // ...and silence longer than both HTTP timeouts: an upgraded connection has neither.
        sleep(Duration::from_secs(1)).await;
        echo("still here").await;

        server.shutdown();
        server_returns(server).await.unwrap();
        let end = timeout(BOUND, ws.next())
            .await
            .expect("closed by the drain");
        assert!(!matches!(end, Some(Ok(m)) if m.is_text()));
    }

    #[test]
    fn listeners_share_the_descriptor_budget_before_it_is_bounded() {
        // A 1,024-descriptor process: both of dev's listeners together stay under it.
        assert_eq!(connection_share(Some(1024), 1), 768);
        assert_eq!(connection_share(Some(1024), 2), 384);
        // Plenty of descriptors: each listener keeps the full bound.
        assert_eq!(connection_share(Some(20_000), 2), MAX_CONNECTIONS_CEILING);
        assert_eq!(connection_share(Some(100), 2), MAX_CONNECTIONS_FLOOR);
        assert_eq!(connection_share(None, 2), MAX_CONNECTIONS_CEILING);
    }
}
