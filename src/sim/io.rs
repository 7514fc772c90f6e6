//! The simulated backend's connections: plain TCP or TLS over it. Both
//! read and write the same way; a reset always reaches the TCP socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use pingora_rustls::ServerTlsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) enum SimIo {
    Plain(TcpStream),
    Tls(Box<ServerTlsStream<TcpStream>>),
}

impl SimIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            SimIo::Plain(s) => s,
            SimIo::Tls(s) => s.get_ref().0,
        }
    }

    /// Make the close abortive: the client sees a reset.
    pub fn set_zero_linger(&self) -> std::io::Result<()> {
        self.tcp().set_zero_linger()
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SimIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SimIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SimIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SimIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SimIo::Plain(s) => Pin::new(s).poll_flush(cx),
            SimIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SimIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SimIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
