//! Socket helpers shared by the servers.

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

/// Accepted connections with Nagle's algorithm off, for
/// `serve_with_incoming*`. tonic's own `tcp_nodelay` applies only to listeners
/// it binds itself; without this a small response can wait ~40 ms for a
/// delayed ACK.
pub fn no_delay(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}
