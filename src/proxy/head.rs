//! The start of every HTTP/1 request, read by the gateway before Pingora
//! parses it: the first byte within the idle deadline, the whole head
//! within `header_timeout`, never more than the size limit buffered while
//! it arrives, and parsed strictly. A malformed head gets its status (400,
//! 414, 431) instead of being repaired or dropped with a bare close. On a
//! fresh plaintext connection the HTTP/2 prior-knowledge preface is told
//! apart under the same deadline.

use crate::error::GatewayError;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most header lines a request may carry (Pingora's own bound).
const MAX_HEADERS: usize = 256;

/// Bytes asked for per read; the buffer never grows past the limit plus one read.
const READ_SIZE: usize = 8 * 1024;

/// Bytes asked for by the first read, which may wait as long as a
/// kept-alive connection idles: the buffer is held all that time. Most
/// heads fit (an OpenAI SDK's is under 1 KiB); a longer one takes more reads.
const FIRST_READ: usize = 2 * 1024;

/// What the start of a connection (or of its next request) turned out to be.
#[derive(Debug)]
pub enum Head {
    /// A complete, well-formed HTTP/1 head, and any bytes read after it.
    Http1(BytesMut),
    /// The HTTP/2 preface, and any bytes read after it.
    Http2(BytesMut),
    /// Closed, or idle past the deadline, before a byte: close quietly.
    Idle,
    /// Answer with this error, then close. The instant is when the head
    /// began (its first byte on a kept-alive connection, the start of
    /// reading on a fresh one): the refusal's duration counts from there.
    Refuse(GatewayError, Instant),
}

/// The deadlines and sizes one head is read under.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// The first byte must arrive by then.
    pub first_byte_by: Instant,
    /// The whole head must arrive this long after its first byte, and on a
    /// fresh connection also by `first_byte_by` (the timer starts at accept).
    pub header_timeout: Duration,
    pub fresh: bool,
    /// Largest head accepted (`limits.max_header_bytes` plus the request
    /// line's fixed parts).
    pub max_bytes: usize,
    /// Look for the HTTP/2 preface (fresh plaintext connections with h2c).
    pub h2c: bool,
}

/// Read one head from `io`. `stop` resolving before the first byte has
/// come closes the connection quietly (`Head::Idle`: a drain closing idle
/// connections); once a byte is in, the head is read whole.
pub async fn read<R, S>(io: &mut R, limits: &HeadLimits, stop: S) -> Head
where
    R: AsyncRead + Unpin,
    S: std::future::Future<Output = ()>,
{
    let mut buf = BytesMut::new();
    let mut deadline = limits.first_byte_by;
    let mut scanned = 0;
    let mut began = Instant::now();
    tokio::pin!(stop);
    loop {
        let before = buf.len();
        let want = if before == 0 { FIRST_READ } else { READ_SIZE };
        buf.reserve(want);
        // One read takes a whole head of up to FIRST_READ bytes (a
        // kept-alive connection's next request costs one read, not a byte
        // then the rest). Reads are cancel-safe: a stop before the first
        // byte loses nothing.
        let mut limited = (&mut *io).take(want as u64);
        let read = tokio::time::timeout_at(deadline, limited.read_buf(&mut buf));
        let read = if before == 0 {
            tokio::select! {
                read = read => read,
                _ = &mut stop => return Head::Idle,
            }
        } else {
            read.await
        };
        match read {
            // Closed, before a byte or mid-head: nobody to answer.
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Idle,
            Ok(Ok(_)) => {}
            Err(_) if before == 0 => return Head::Idle,
            // A part of the HTTP/2 preface: an HTTP/1 answer would mean
            // nothing to that client.
            Err(_) if limits.h2c && H2_PREFACE.starts_with(&buf) => return Head::Idle,
            Err(_) => {
                return Head::Refuse(
                    GatewayError::new(
                        408,
                        "request_timeout",
                        "the request head did not arrive in time",
                    ),
                    began,
                )
            }
        }
        if before == 0 && !limits.fresh {
            began = Instant::now();
            deadline = began + limits.header_timeout;
        }
        if limits.h2c && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
            if buf.len() >= H2_PREFACE.len() {
                return Head::Http2(buf);
            }
            continue;
        }
        if let Some(end) = head_end(&buf, scanned) {
            return match check(&buf[..end]) {
                Ok(()) => Head::Http1(buf),
                Err(e) => Head::Refuse(e, began),
            };
        }
        scanned = buf.len();
        if buf.len() > limits.max_bytes {
            let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            let err = if line > limits.max_bytes {
                GatewayError::uri_too_long(limits.max_bytes as u64)
            } else {
                GatewayError::headers_too_large(limits.max_bytes as u64)
            };
            return Head::Refuse(err, began);
        }
    }
}

/// End of the head (just past its blank line), searching from `from`
/// (less the 2 bytes a terminator may straddle). Bare LF line ends count,
/// as they do for Pingora's parser.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    buf[start..].windows(2).enumerate().find_map(|(i, w)| {
        let at = start + i;
        match w {
            b"\n\n" => Some(at + 2),
            b"\n\r" if buf.get(at + 2) == Some(&b'\n') => Some(at + 3),
            _ => None,
        }
    })
}

/// Parse the head strictly: what `httparse` refuses is refused, never
/// escaped and passed on.
fn check(head: &[u8]) -> Result<(), GatewayError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(GatewayError::bad_request(
            "malformed request head: it ends early",
        )),
        Err(httparse::Error::TooManyHeaders) => Err(GatewayError::new(
            431,
            "headers_too_large",
            format!("a request may carry at most {MAX_HEADERS} header lines"),
        )),
        Err(e) => Err(GatewayError::bad_request(format!(
            "malformed request head: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(fresh: bool) -> HeadLimits {
        HeadLimits {
            first_byte_by: Instant::now() + Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            fresh,
            max_bytes: 1024,
            h2c: fresh,
        }
    }

    /// A kept-alive connection's: it may idle a minute, then has
    /// `header_timeout` for the head.
    fn kept_alive(header_timeout: Duration) -> HeadLimits {
        HeadLimits {
            first_byte_by: Instant::now() + Duration::from_secs(60),
            header_timeout,
            ..limits(false)
        }
    }

    async fn read_all(bytes: &[u8], limits: &HeadLimits) -> Head {
        let mut io = tokio_test_io(bytes);
        read(&mut io, limits, std::future::pending()).await
    }

    /// The bytes, then end of stream.
    fn tokio_test_io(bytes: &[u8]) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(bytes.to_vec())
    }

    fn status(head: Head) -> u16 {
        match head {
            Head::Refuse(e, _) => e.status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_whole_head_is_handed_on_with_what_follows() {
        let wire = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        match read_all(wire, &limits(true)).await {
            Head::Http1(buf) => assert_eq!(&buf[..], wire),
            other => panic!("{other:?}"),
        }
        // Bare LF line ends, as Pingora accepts them.
        assert!(matches!(
            read_all(b"GET / HTTP/1.1\nHost: a\n\n", &limits(true)).await,
            Head::Http1(_)
        ));
    }

    #[tokio::test]
    async fn a_head_longer_than_the_first_read_is_read_whole() {
        let mut wire = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        while wire.len() < 3 * FIRST_READ {
            wire.extend_from_slice(b"x-stainless-header: some value\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let mut l = limits(false);
        l.max_bytes = 16 * 1024;
        match read_all(&wire, &l).await {
            Head::Http1(buf) => assert_eq!(&buf[..], &wire[..]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_h2_preface_is_recognised_only_whole() {
        let mut wire = H2_PREFACE.to_vec();
        wire.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        match read_all(&wire, &limits(true)).await {
            Head::Http2(buf) => assert_eq!(&buf[..], &wire[..]),
            other => panic!("{other:?}"),
        }
        // A part of the preface, then nothing: closed quietly, not parsed as HTTP/1.
        assert!(matches!(
            read_all(&H2_PREFACE[..10], &limits(true)).await,
            Head::Idle
        ));
        // Without h2c the preface is just a malformed HTTP/1 request.
        assert_eq!(status(read_all(&wire, &limits(false)).await), 400);
    }

    #[tokio::test]
    async fn malformed_heads_get_their_status() {
        for (wire, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n"[..],
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\nx: \x01\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", 400),
            (b"GET\r\n\r\n", 400),
        ] {
            assert_eq!(
                status(read_all(wire, &limits(false)).await),
                want,
                "{}",
                wire.escape_ascii()
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("x{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut l = limits(false);
        l.max_bytes = 1 << 20;
        assert_eq!(status(read_all(&many, &l).await), 431);
    }

    #[tokio::test]
    async fn the_size_limit_holds_while_the_head_arrives() {
        // A long request line is 414, long headers 431, neither waits for
        // the blank line.
        let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(4096));
        assert_eq!(status(read_all(line.as_bytes(), &limits(false)).await), 414);
        let headers = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(4096));
        assert_eq!(
            status(read_all(headers.as_bytes(), &limits(false)).await),
            431
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_from_accept_and_from_the_first_byte() {
        use tokio::io::AsyncWriteExt;
        // Nothing at all: a quiet close.
        let (client, mut server) = tokio::io::duplex(64);
        let l = limits(true);
        assert!(matches!(
            read(&mut server, &l, std::future::pending()).await,
            Head::Idle
        ));

        // A part of the HTTP/2 preface, then silence: a quiet close too.
        let (mut h2_client, mut h2_server) = tokio::io::duplex(64);
        h2_client.write_all(&H2_PREFACE[..12]).await.unwrap();
        assert!(matches!(
            read(&mut h2_server, &l, std::future::pending()).await,
            Head::Idle
        ));

        // A fresh connection's head must be whole by its deadline: 408.
        let l = limits(true);
        let (mut client2, mut server2) = tokio::io::duplex(64);
        client2.write_all(b"GET / HT").await.unwrap();
        assert_eq!(
            status(read(&mut server2, &l, std::future::pending()).await),
            408
        );

        // A kept-alive connection may idle until first_byte_by, then has
        // header_timeout for the rest.
        let (mut client3, mut server3) = tokio::io::duplex(64);
        let l = kept_alive(Duration::from_secs(2));
        let idle_from = Instant::now();
        let reader =
            tokio::spawn(async move { read(&mut server3, &l, std::future::pending()).await });
        tokio::time::sleep(Duration::from_secs(30)).await;
        client3.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        match reader.await.unwrap() {
            // The refusal's duration counts from the head's first byte,
            // not from the idle time before it.
            Head::Refuse(e, began) => {
                assert_eq!(e.status, 408);
                assert_eq!(began - idle_from, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_closes_an_idle_connection_but_not_a_head_under_way() {
        use tokio::io::AsyncWriteExt;
        let l = kept_alive(Duration::from_secs(5));
        // Nothing has come: the stop closes it at once, quietly.
        let (_client, mut server) = tokio::io::duplex(64);
        let stop = tokio::time::sleep(Duration::from_secs(1));
        let started = Instant::now();
        assert!(matches!(read(&mut server, &l, stop).await, Head::Idle));
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        // A head has begun: the stop does not cut it, and it is read whole.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let stop = tokio::time::sleep(Duration::from_millis(10));
        let reader = tokio::spawn(async move { read(&mut server, &l, stop).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        match reader.await.unwrap() {
            Head::Http1(buf) => assert_eq!(&buf[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            other => panic!("{other:?}"),
        }
    }
}
