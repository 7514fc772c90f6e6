//! A raw-TCP HTTP/1.1 client for the sim tests.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::SimServer;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(s: &SimServer) -> Client {
        let stream = TcpStream::connect(s.addr()).await.unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, method: &str, path: &str, extra: &str, body: &str) {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nhost: sim\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(raw.as_bytes()).await.unwrap();
    }

    pub async fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 8192];
        match self.stream.read(&mut tmp).await? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
        }
    }

    pub async fn head(&mut self) -> std::io::Result<Resp> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let resp = Resp {
                    status: r.code.unwrap(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
                        .collect(),
                    body: Vec::new(),
                };
                self.buf.drain(..n);
                return Ok(resp);
            }
            self.fill().await?;
        }
    }

    pub async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One chunk's data; `None` for the last chunk.
    pub async fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let line_end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let size_line = self.exact(line_end + 2).await?;
        let text = String::from_utf8_lossy(&size_line[..line_end]).to_string();
        let size = usize::from_str_radix(text.trim(), 16).unwrap();
        let data = self.exact(size + 2).await?;
        Ok((size > 0).then(|| data[..size].to_vec()))
    }

    pub async fn response(&mut self) -> std::io::Result<Resp> {
        let mut resp = self.head().await?;
        if resp.header("transfer-encoding") == Some("chunked") {
            while let Some(data) = self.chunk().await? {
                resp.body.extend(data);
            }
        } else {
            let len = resp.header("content-length").unwrap().parse().unwrap();
            resp.body = self.exact(len).await?;
        }
        Ok(resp)
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, "", "").await;
        self.response().await.unwrap()
    }

    pub async fn post(&mut self, path: &str, body: &str) -> Resp {
        self.send("POST", path, "", body).await;
        self.response().await.unwrap()
    }

    /// True if the server closed or reset the connection.
    pub async fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 1024];
        let r = timeout(Duration::from_secs(5), self.stream.read(&mut tmp)).await;
        matches!(r, Ok(Ok(0)) | Ok(Err(_)))
    }
}
