//! A client connection the gateway has already read from: bytes it read
//! (a request head it checked) are handed back to Pingora first, then the
//! stream continues. Plain TCP has this built in (`rewind`); a TLS stream
//! is wrapped in [`Rewound`]. Everything else is delegated, so Pingora
//! still sees the TLS digest, the ALPN and the socket.

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN, IO,
};
use pingora_core::protocols::{SocketDigest, TimingDigest};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose already-read bytes can be handed back.
pub trait Transport: IO + Sized + 'static {
    fn unread(&mut self, bytes: &[u8]);

    /// This transport back out of the box Pingora returns after a request.
    fn from_stream(stream: Stream) -> Option<Box<Self>> {
        if !stream.as_any().is::<Self>() {
            return None;
        }
        stream.into_any().downcast::<Self>().ok()
    }
}

impl Transport for TcpStream {
    fn unread(&mut self, bytes: &[u8]) {
        self.rewind(bytes);
    }
}

#[derive(Debug)]
pub struct Rewound<S> {
    pending: Bytes,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(inner: S) -> Self {
        Rewound {
            pending: Bytes::new(),
            inner,
        }
    }
}

impl<S: IO + 'static> Transport for Rewound<S> {
    fn unread(&mut self, bytes: &[u8]) {
        Rewound::unread(self, bytes);
    }
}

impl<S> Rewound<S> {
    /// Hand `bytes` back: they are read again before anything else.
    pub fn unread(&mut self, bytes: &[u8]) {
        if self.pending.is_empty() {
            self.pending = Bytes::copy_from_slice(bytes);
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.pending.len());
            joined.extend_from_slice(bytes);
            joined.extend_from_slice(&self.pending);
            self.pending = joined.into();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            self.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl<S: Shutdown + Send> Shutdown for Rewound<S> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl<S: UniqueID> UniqueID for Rewound<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for Rewound<S> {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for Rewound<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for Rewound<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl<S: GetSocketDigest> GetSocketDigest for Rewound<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl<S: Send> Peek for Rewound<S> {
    /// Peeks only into bytes already handed back (enough for the HTTP/2
    /// preface check, which comes right after a head was read).
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.pending.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&self.pending[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn handed_back_bytes_come_first_then_the_stream() {
        let inner: &[u8] = b" world";
        let mut r = Rewound::new(inner);
        r.unread(b"lo");
        r.unread(b"hel");
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
