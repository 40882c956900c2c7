//! Starts the Postgres wire and HTTP servers on a tokio runtime of their own,
//! in a background thread, beside the timely workers.

use crate::http::{router, ClientAddr};
use crate::idle::IdleListener;
use crate::pg::startup::PgStartup;
use crate::pg::wire::{self, Peer, WireLimits};
use crate::pg::{PgHandler, PgHandlers};
use crate::{tls, Engine};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The running servers.
pub struct SqlServer {
    /// Where the Postgres wire protocol listens.
    pub pg_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// The audit log (flushed into the lake at the end of a run).
    pub audit: Arc<crate::audit::Audit>,
}

fn bind(addr: &str, what: &str) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} address {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Binds both addresses of `engine.config` (so a busy port is an error here,
/// before anything runs) and serves them from a background thread for the
/// life of the process.
pub fn start(engine: Arc<Engine>) -> std::io::Result<SqlServer> {
    let pg = bind(&engine.config.pg_addr, "--sql-addr")?;
    let http = bind(&engine.config.http_addr, "--http-addr")?;
    let server = SqlServer { pg_addr: pg.local_addr()?, http_addr: http.local_addr()?, audit: engine.audit.clone() };
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    // TLS configurations now, so a bad certificate is a start-up error.
    let tls = match &engine.tls {
        Some(files) => Some((
            tls::server_config(files, &[b"postgresql"]).map_err(invalid)?,
            tls::server_config(files, &[b"http/1.1"]).map_err(invalid)?,
        )),
        None => None,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("treeai-sql").enable_all().build()?;
    std::thread::Builder::new().name("treeai-sql".into()).spawn(move || {
        runtime.block_on(async move {
            let pg = match tokio::net::TcpListener::from_std(pg) {
                Ok(l) => l,
                Err(e) => return tracing::error!("postgres listener: {e}"),
            };
            let http = match tokio::net::TcpListener::from_std(http) {
                Ok(l) => l,
                Err(e) => return tracing::error!("http listener: {e}"),
            };
            // HTTP connections may idle (no request being answered, no byte moving) as long as
            // Postgres sessions; 1 h when that is off.
            let http_idle = engine
                .config
                .idle_timeout
                .unwrap_or(Duration::from_secs(3600))
                .max(engine.config.query_timeout + Duration::from_secs(5));
            let app = router(engine.clone()).into_make_service_with_connect_info::<ClientAddr>();
            let pg_tls = tls.as_ref().map(|(pg, _)| tokio_rustls::TlsAcceptor::from(pg.clone()));
            match tls.map(|(_, http)| http) {
                Some(config) => {
                    let listener = match tls::TlsListener::new(http, config) {
                        Ok(l) => IdleListener::new(l, http_idle),
                        Err(e) => return tracing::error!("https listener: {e}"),
                    };
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::error!("https server stopped: {e}");
                        }
                    });
                }
                None => {
                    let listener = IdleListener::new(http, http_idle);
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::error!("http server stopped: {e}");
                        }
                    });
                }
            }
            let handler = Arc::new(PgHandler::new(engine.clone()));
            let slots = Arc::new(tokio::sync::Semaphore::new(engine.config.max_connections.max(1)));
            let limits = WireLimits {
                max_message: engine.config.max_message_bytes,
                // A running statement sends nothing until it ends: never shorter than its limit.
                idle: engine
                    .config
                    .idle_timeout
                    .map(|idle| idle.max(engine.config.query_timeout + Duration::from_secs(5))),
            };
            let require_tls = pg_tls.is_some();
            loop {
                match pg.accept().await {
                    Ok((socket, peer)) => {
                        // One connection too many is still taken through TLS and its start-up
                        // message, to get Postgres' own refusal (53300) the client can show.
                        let slot = slots.clone().try_acquire_owned().ok();
                        let too_many = slot.is_none();
                        let handler = handler.clone();
                        // One start-up handler per connection: it holds the login exchange.
                        let handlers = move |peer: Peer| {
                            let mut startup = PgStartup::new(handler.clone(), require_tls, peer);
                            if too_many {
                                startup = startup.too_many();
                            }
                            PgHandlers { handler, startup: Arc::new(startup) }
                        };
                        let acceptor = pg_tls.clone();
                        tokio::spawn(async move {
                            if let Err(e) = wire::serve(socket, peer, acceptor, limits, handlers).await {
                                tracing::debug!("postgres connection from {peer}: {e}");
                            }
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait and go on.
                        tracing::warn!("postgres accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    })?;
    Ok(server)
}
