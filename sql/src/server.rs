//! Starts the Postgres wire and HTTP servers on a tokio runtime of their own,
//! in a background thread, beside the timely workers.

use crate::http::router;
use crate::pg::{PgHandler, PgHandlers};
use crate::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The running servers.
pub struct SqlServer {
    /// Where the Postgres wire protocol listens.
    pub pg_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
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
    let server = SqlServer { pg_addr: pg.local_addr()?, http_addr: http.local_addr()? };
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
            let app = router(engine.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(http, app).await {
                    tracing::error!("http server stopped: {e}");
                }
            });
            let handlers = Arc::new(PgHandlers(Arc::new(PgHandler::new(engine))));
            loop {
                match pg.accept().await {
                    Ok((socket, peer)) => {
                        let handlers = handlers.clone();
                        tokio::spawn(async move {
                            if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                                tracing::debug!("postgres connection from {peer}: {e}");
                            }
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
