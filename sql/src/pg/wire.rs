//! The bytes of a Postgres wire connection, before pgwire sees them: TLS
//! negotiation and the limits pgwire does not have.
//!
//! pgwire 0.41 buffers a whole message before it decodes it and takes a
//! `Query`, `Parse` or `Bind` of up to 1 GiB; it closes no idle session; and
//! a client that stops reading blocks the writer of its connection for good.
//! So each connection is read here first, and handed to pgwire over a local
//! socket pair (`process_socket_unix`):
//!
//! - **TLS**: an `SSLRequest` is answered `S` (with `--tls-cert`) or `N`, a
//!   `GSSENCRequest` `N`; a direct TLS hello (libpq 17 `sslnegotiation=direct`)
//!   is accepted with TLS configured. The start-up handler learns whether the
//!   connection is secure and the client's address from here ([`Peer`]).
//! - **Message size**: a message longer than `--sql-max-message-bytes` ends the
//!   connection with `FATAL 54000` when its length arrives, before its body is
//!   read (start-up packets: 10,000 bytes, as pgwire).
//! - **Message layout**: a message whose fields do not fit its body ends the
//!   connection with `FATAL 08P01` (pgwire would panic decoding it).
//! - **Idle sessions**: no byte either way for `--sql-idle-timeout-ms` ends the
//!   connection with `FATAL 57P05` (Postgres' `idle_session_timeout`). A
//!   running statement sends nothing until its end, so the limit is never
//!   shorter than the statement timeout plus 5 s.
//! - **Clients that stop reading**: their statement ends at its time limit (the
//!   rows' producer stops then, [`super::stream`]) and frees its snapshot; the
//!   bytes already encoded wait in socket buffers until the idle limit closes
//!   the connection.
//!
//! The cost is one more local socket hop per byte (a few microseconds per
//! round trip), paid only by Postgres wire clients.

use pgwire::api::PgWireServerHandlers;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

/// `SSLRequest`'s code.
const SSL_REQUEST: i32 = 80877103;
/// `GSSENCRequest`'s code.
const GSSENC_REQUEST: i32 = 80877104;
/// Longest start-up packet (pgwire's limit too).
const MAX_STARTUP: usize = 10_000;
/// Time for TLS and the start-up packet (pgwire's start-up timeout).
const STARTUP_TIME: Duration = Duration::from_secs(60);

/// Limits of one connection's bytes.
#[derive(Clone, Copy, Debug)]
pub struct WireLimits {
    /// Longest message after start-up, bytes (its type and length excluded).
    pub max_message: usize,
    /// No byte either way for this long closes the session (`None`: never).
    pub idle: Option<Duration>,
}

/// What the start-up handler learns of a connection from here.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub secure: bool,
}

/// Why a connection ended here rather than by either side closing it.
enum End {
    /// The client closed its side, or pgwire closed the session.
    Closed,
    /// A limit: the error the client gets before the connection closes.
    Fatal(&'static str, String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads one start-up packet (length included) from `io`.
async fn startup_packet<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Vec<u8>> {
    let len = io.read_i32().await?;
    if !(8..=MAX_STARTUP as i32).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("start-up packet of {len} bytes")));
    }
    let mut packet = vec![0; len as usize];
    packet[..4].copy_from_slice(&len.to_be_bytes());
    io.read_exact(&mut packet[4..]).await?;
    Ok(packet)
}

fn code(packet: &[u8]) -> i32 {
    i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

/// An `ErrorResponse` with severity FATAL.
fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Negotiates TLS and reads the start-up packet: the stream to go on with,
/// whether it is TLS, and the packet.
async fn negotiate(
    mut tcp: TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
) -> std::io::Result<(Box<dyn Io>, bool, Vec<u8>)> {
    // A direct TLS hello (a handshake record) instead of a start-up packet.
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] == 0x16 {
        if let Some(acceptor) = tls {
            let mut stream = acceptor.accept(tcp).await?;
            // As Postgres: direct TLS only with the `postgresql` ALPN (no cross-protocol use).
            if stream.get_ref().1.alpn_protocol() != Some(b"postgresql".as_slice()) {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "direct TLS without ALPN postgresql"));
            }
            let packet = startup_packet(&mut stream).await?;
            return Ok((Box::new(stream), true, packet));
        }
    }
    let mut asked_ssl = false;
    loop {
        let packet = startup_packet(&mut tcp).await?;
        match code(&packet) {
            GSSENC_REQUEST if packet.len() == 8 => tcp.write_all(b"N").await?,
            SSL_REQUEST if packet.len() == 8 && !asked_ssl => {
                asked_ssl = true;
                match tls {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await?;
                        let mut stream = acceptor.accept(tcp).await?;
                        let packet = startup_packet(&mut stream).await?;
                        return Ok((Box::new(stream), true, packet));
                    }
                    None => tcp.write_all(b"N").await?,
                }
            }
            _ => return Ok((Box::new(tcp), false, packet)),
        }
    }
}

/// When a byte last moved on a connection (either way), for the idle timeout.
struct ActivityClock {
    origin: Instant,
    /// Milliseconds since `origin` of the last move.
    last_ms: AtomicU64,
}

impl ActivityClock {
    fn new() -> Self {
        ActivityClock { origin: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Bytes moved now.
    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since bytes last moved.
    fn quiet_ms(&self) -> u64 {
        self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Client to pgwire: messages checked for size, passed on as they come. Ends with `Closed`
/// when the client closes its side (pgwire's side is then shut down, so it answers what came
/// before and closes) or when pgwire's side is gone (its last bytes are still going out).
async fn upstream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut BufReader<R>,
    server: &mut BufWriter<W>,
    limits: WireLimits,
    clock: &ActivityClock,
) -> std::io::Result<End> {
    match pass_messages(client, server, limits, clock).await {
        Ok(Pass::Fatal(code, message)) => Ok(End::Fatal(code, message)),
        Ok(Pass::ClientClosed) => {
            // Best effort: pgwire may be gone already.
            let _ = server.flush().await;
            let _ = server.get_mut().shutdown().await;
            Ok(End::Closed)
        }
        Err(Side::Client(e)) => Err(e),
        Err(Side::Server) => Ok(End::Closed),
    }
}

/// How [`pass_messages`] ended.
enum Pass {
    ClientClosed,
    Fatal(&'static str, String),
}

/// Which side an I/O error came from.
enum Side {
    Client(std::io::Error),
    Server,
}

async fn pass_messages<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut BufReader<R>,
    server: &mut BufWriter<W>,
    limits: WireLimits,
    clock: &ActivityClock,
) -> Result<Pass, Side> {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut body = Vec::new();
    loop {
        // Everything received is passed on before waiting for more; many small messages
        // (Parse, Bind, Execute, Sync) go out as one write.
        if client.buffer().is_empty() {
            server.flush().await.map_err(|_| Side::Server)?;
        }
        let mut header = [0u8; 5];
        match client.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Pass::ClientClosed),
            Err(e) => return Err(Side::Client(e)),
        }
        clock.touch();
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            return Ok(Pass::Fatal("08P01", format!("invalid message length {len}")));
        }
        let mut rest = len as usize - 4;
        if rest > limits.max_message {
            return Ok(Pass::Fatal(
                "54000",
                format!(
                    "message of {rest} bytes is longer than the server takes ({} bytes, --sql-max-message-bytes)",
                    limits.max_message
                ),
            ));
        }
        // The whole body (at most --sql-max-message-bytes), to check its layout first.
        body.clear();
        while rest > 0 {
            let want = rest.min(chunk.len());
            let n = client.read(&mut chunk[..want]).await.map_err(Side::Client)?;
            if n == 0 {
                // Closed in the middle of a message: pgwire never sees it.
                return Ok(Pass::ClientClosed);
            }
            body.extend_from_slice(&chunk[..n]);
            rest -= n;
            clock.touch();
        }
        if !well_formed(header[0], &body) {
            return Ok(Pass::Fatal(
                "08P01",
                format!("invalid message format (type {:?}, {} bytes)", header[0] as char, body.len()),
            ));
        }
        server.write_all(&header).await.map_err(|_| Side::Server)?;
        server.write_all(&body).await.map_err(|_| Side::Server)?;
    }
}

/// Reads the fields of a message body, never past its end.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take(&mut self, n: usize) -> bool {
        match self.0.get(n..) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }
    fn i16(&mut self) -> Option<i16> {
        let v = i16::from_be_bytes(self.0.get(..2)?.try_into().ok()?);
        self.take(2).then_some(v)
    }
    fn i32(&mut self) -> Option<i32> {
        let v = i32::from_be_bytes(self.0.get(..4)?.try_into().ok()?);
        self.take(4).then_some(v)
    }
    fn cstr(&mut self) -> bool {
        match self.0.iter().position(|b| *b == 0) {
            Some(end) => self.take(end + 1),
            None => false,
        }
    }
    /// An i16 count `n` >= 0, then `n` items of `width` bytes.
    fn array(&mut self, width: usize) -> bool {
        self.i16().is_some_and(|n| n >= 0 && self.take(n as usize * width))
    }
    /// An i16 count of values, each an i32 length (-1: null) and its bytes.
    fn values(&mut self) -> bool {
        let Some(n) = self.i16().filter(|n| *n >= 0) else { return false };
        (0..n).all(|_| match self.i32() {
            Some(-1) => true,
            Some(len) if len >= 0 => self.take(len as usize),
            _ => false,
        })
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a frontend message's body has its type's layout. pgwire 0.41 decodes some fields
/// without checking the body's length and panics on a short one (found by `tests/src/fuzz.rs`);
/// such a message ends the connection here with 08P01, as Postgres' "invalid message format".
/// Bodies of raw bytes (CopyData, password and SASL messages) and unknown types pass (pgwire
/// answers an unknown type itself).
fn well_formed(kind: u8, body: &[u8]) -> bool {
    let mut f = Fields(body);
    match kind {
        // Query, CopyFail: one string.
        b'Q' | b'f' => f.cstr() && f.done(),
        // Parse: name, query, parameter type OIDs.
        b'P' => f.cstr() && f.cstr() && f.array(4) && f.done(),
        // Bind: portal, statement, parameter formats, values, result formats.
        b'B' => f.cstr() && f.cstr() && f.array(2) && f.values() && f.array(2) && f.done(),
        // Execute: portal, row limit.
        b'E' => f.cstr() && f.i32().is_some() && f.done(),
        // Describe, Close: 'S' or 'P', a name.
        b'D' | b'C' => f.take(1) && f.cstr() && f.done(),
        // Sync, Flush, Terminate, CopyDone: empty.
        b'S' | b'H' | b'X' | b'c' => f.done(),
        // FunctionCall: OID, argument formats, arguments, result format.
        b'F' => f.i32().is_some() && f.array(2) && f.values() && f.i16().is_some() && f.done(),
        _ => true,
    }
}

/// pgwire to client: bytes as they come; the activity clock moves only when the client takes
/// them. `boundary` says whether everything written so far ends at a message's end (an error
/// of our own may only go there).
async fn downstream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    server: &mut R,
    client: &mut W,
    clock: &ActivityClock,
    boundary: &AtomicBool,
) -> std::io::Result<End> {
    let mut buf = vec![0u8; 64 * 1024];
    // The backend message being passed: header bytes seen (of 5), then body bytes left.
    let (mut header, mut seen, mut body) = ([0u8; 5], 0usize, 0usize);
    loop {
        let n = server.read(&mut buf).await?;
        if n == 0 {
            client.flush().await?;
            return Ok(End::Closed);
        }
        let mut at = 0;
        while at < n {
            if body > 0 {
                let take = body.min(n - at);
                body -= take;
                at += take;
            } else {
                header[seen] = buf[at];
                seen += 1;
                at += 1;
                if seen == 5 {
                    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    body = (len.max(4) - 4) as usize;
                    seen = 0;
                }
            }
        }
        boundary.store(false, Ordering::Relaxed);
        client.write_all(&buf[..n]).await?;
        client.flush().await?;
        boundary.store(seen == 0 && body == 0, Ordering::Relaxed);
        clock.touch();
    }
}

/// Resolves once no byte moved for `idle`.
async fn idle_for(idle: Option<Duration>, clock: &ActivityClock) -> End {
    let Some(idle) = idle else { return std::future::pending().await };
    let limit = idle.as_millis() as u64;
    loop {
        let quiet = clock.quiet_ms();
        if quiet >= limit {
            return End::Fatal("57P05", format!("terminating connection due to idle-session timeout ({} ms)", limit));
        }
        tokio::time::sleep(Duration::from_millis(limit - quiet)).await;
    }
}

/// Serves one Postgres wire connection: negotiates TLS, hands the session to
/// pgwire (`handlers` get the [`Peer`] through `peer`) and moves its bytes
/// under `limits`.
pub async fn serve<H, F>(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: WireLimits,
    handlers: F,
) -> std::io::Result<()>
where
    H: PgWireServerHandlers + Send + Sync + 'static,
    F: FnOnce(Peer) -> H,
{
    let _ = tcp.set_nodelay(true);
    let (io, secure, startup) = match tokio::time::timeout(STARTUP_TIME, negotiate(tcp, tls.as_ref())).await {
        Ok(negotiated) => negotiated?,
        Err(_) => return Ok(()),
    };
    let (ours, theirs) = tokio::net::UnixStream::pair()?;
    let session = tokio::spawn(pgwire::tokio::process_socket_unix(theirs, handlers(Peer { addr, secure })));
    let (client_read, mut client_write) = tokio::io::split(io);
    let mut client_read = BufReader::with_capacity(16 * 1024, client_read);
    let (server_read, server_write) = ours.into_split();
    let mut server_read = server_read;
    let mut server_write = BufWriter::with_capacity(16 * 1024, server_write);
    server_write.write_all(&startup).await?;
    server_write.flush().await?;
    let clock = ActivityClock::new();
    let boundary = AtomicBool::new(true);
    let end = {
        let up = upstream(&mut client_read, &mut server_write, limits, &clock);
        let down = downstream(&mut server_read, &mut client_write, &clock, &boundary);
        let idle = idle_for(limits.idle, &clock);
        tokio::pin!(up, down, idle);
        tokio::select! {
            end = &mut up => match end {
                Ok(End::Closed) => tokio::select! { end = &mut down => end, end = &mut idle => Ok(end) },
                end => end,
            },
            end = &mut down => end,
            end = &mut idle => Ok(end),
        }
    };
    if let Ok(End::Fatal(code, message)) = &end {
        tracing::debug!("postgres connection from {addr}: {code} {message}");
        // Only between two messages; in the middle of one the connection just closes.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if !boundary.load(Ordering::Relaxed) {
                return Ok(());
            }
            client_write.write_all(&fatal(code, message)).await?;
            client_write.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client_write.shutdown()).await;
    // What the client still sends (the rest of a refused message) is read and dropped for a
    // moment: closing with unread bytes would reset the connection before the client reads
    // the error.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut sink = vec![0u8; 16 * 1024];
        while client_read.read(&mut sink).await.unwrap_or(0) > 0 {}
    })
    .await;
    drop((server_read, server_write));
    // pgwire's task ends on the closed socket; its own errors are the client's business.
    let _ = session.await;
    end.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fatal_error_response_is_well_formed() {
        let msg = fatal("57P05", "bye");
        assert_eq!(msg[0], b'E');
        let len = i32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize;
        assert_eq!(len + 1, msg.len());
        assert_eq!(&msg[5..], b"SFATAL\0VFATAL\0C57P05\0Mbye\0\0");
    }

    #[test]
    fn messages_whose_fields_do_not_fit_are_refused() {
        // Bind: portal "", statement "s", 1 format (text), 1 value of 3 bytes, 0 result formats.
        let bind = b"\0s\0\0\x01\0\0\0\x01\0\0\0\x03abc\0\0";
        assert!(well_formed(b'B', bind));
        for cut in 0..bind.len() {
            assert!(!well_formed(b'B', &bind[..cut]), "a Bind cut at {cut} passed");
        }
        assert!(!well_formed(b'B', &[bind.as_slice(), b"x"].concat()), "trailing bytes");
        assert!(well_formed(b'P', b"\0select $1\0\0\x01\0\0\0\x17"));
        assert!(!well_formed(b'P', b"\0select $1\0\0\x02\0\0\0\x17"));
        assert!(well_formed(b'E', b"\0\0\0\0\0"));
        assert!(!well_formed(b'E', b"\0\0"));
        assert!(well_formed(b'Q', b"select 1\0"));
        assert!(!well_formed(b'Q', b"select 1"));
        assert!(!well_formed(b'S', b"x"));
        assert!(!well_formed(b'B', b"\0\0\0\0\xff\xff\0\0"), "a negative count");
    }
}
