//! TLS for the Postgres wire protocol and HTTP (`--tls-cert`, `--tls-key`).
//!
//! rustls with the ring provider; TLS 1.3 preferred, 1.2 allowed. The
//! certificate chain and the key are PEM files, checked at start-up (a bad
//! pair is a start-up error) and re-read when either file changes (checked at
//! most once a second, on a new connection), so a rotated certificate is
//! served without a restart; a pair that no longer loads is logged and the
//! previous one is kept. With TLS on, the Postgres endpoint refuses clients
//! that do not ask for it (`sslmode=disable`) and HTTP speaks HTTPS only.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The certificate chain and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TlsFiles {
    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("--tls-cert {}: no certificate in it", self.cert.display()));
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| format!("--tls-key {}: {e}", self.key.display()))?;
        let key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("--tls-key {}: {e}", self.key.display()))?;
        let certified = CertifiedKey::new(certs, key);
        certified.keys_match().map_err(|e| {
            format!("--tls-cert {} and --tls-key {} do not match: {e}", self.cert.display(), self.key.display())
        })?;
        Ok(Arc::new(certified))
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Serves the newest loadable certificate of [`TlsFiles`].
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
    checked: Instant,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.checked.elapsed() >= Duration::from_secs(1) {
            cur.checked = Instant::now();
            let stamps = (stamp(&self.files.cert), stamp(&self.files.key));
            if stamps != cur.stamps {
                cur.stamps = stamps;
                match self.files.load() {
                    Ok(key) => {
                        tracing::info!("TLS certificate {} re-read", self.files.cert.display());
                        cur.key = key;
                    }
                    Err(e) => tracing::error!("TLS: {e}; the previous certificate stays in use"),
                }
            }
        }
        Some(cur.key.clone())
    }
}

/// A server configuration over `files`, offering `alpn` (e.g. `postgresql`, `http/1.1`).
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
    let key = files.load()?;
    let resolver = Reloading {
        files: files.clone(),
        current: Mutex::new(Current { key, stamps: (stamp(&files.cert), stamp(&files.key)), checked: Instant::now() }),
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// An axum listener that accepts TLS connections: handshakes run in tasks of their
/// own (at most 10 s each), so a slow or silent client delays no one else.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    addr: std::net::SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` with `config`.
    pub fn new(listener: tokio::net::TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, peer)) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => {
                                    let _ = tx.send((stream, peer)).await;
                                }
                                Ok(Err(e)) => tracing::debug!("https handshake with {peer}: {e}"),
                                Err(_) => tracing::debug!("https handshake with {peer}: timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("https accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (it never does while the listener lives): wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
