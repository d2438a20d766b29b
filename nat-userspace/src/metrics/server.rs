//! The metrics listener: HTTP/1.1 on a thread of its own with a
//! single-threaded runtime, so a scrape (or a slow or hostile client) costs
//! that thread, never the packet loop. `GET /metrics` answers the latest
//! snapshot; any other path 404, any other method 405.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, oneshot};

use crate::metrics::{CONTENT_TYPE, Published, encode, process::ProcessStats};

/// Scrapes served at once; a connection over this is closed at once
/// (Prometheus scrapes one at a time per target).
const MAX_CONNECTIONS: usize = 16;
/// A connection is closed after this long, answered or not: a client that
/// stalls holds a slot no longer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    /// Where it listens (the port bound when asked for port 0).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` here (so a taken port stops natd's start with nothing
    /// attached yet) and serves it on the metrics thread.
    pub fn start(addr: SocketAddr, published: Published) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("metrics = \"{addr}\": cannot listen there"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("natd-metrics".into())
            .spawn(move || {
                // Made and dropped on this thread: a tokio runtime may not be
                // dropped where natd's own runtime runs.
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(anyhow!("the metrics runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready.send(Err(anyhow!("registering the metrics listener: {e}")));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    tokio::select! {
                        () = accept(listener, published) => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the metrics thread")?;
        match started.recv() {
            Ok(Ok(())) => Ok(Self { addr, stop: Some(stop), thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(anyhow!("the metrics thread ended before it served"))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, published: Published) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                tracing::warn!("metrics: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let published = Arc::clone(&published);
                async move { Ok::<_, Infallible>(respond(&request, &published)) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

fn respond(request: &Request<Incoming>, published: &Published) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: natd serves its metrics at /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let snapshot = Arc::clone(&published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let process = ProcessStats::read().map_err(|e| tracing::warn!("metrics: {e:#}")).ok();
    let mut body = String::with_capacity(16 * 1024);
    if let Err(e) = encode(&mut body, &snapshot, process.as_ref(), Instant::now()) {
        tracing::warn!("metrics: encoding: {e}");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n");
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
