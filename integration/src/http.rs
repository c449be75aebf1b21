//! Clients for the tests: HTTP/1.1 over a raw socket (the request goes out byte for byte as
//! written, so tests can send duplicate headers and request targets a URL library would
//! normalise), and HTTP/2 with prior knowledge through hyper.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single exchange may take before the test fails with a clear error instead of
/// hanging.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target exactly as sent (`/function/env/a?x=1`).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    pub fn new(method: &str, target: &str) -> Self {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header; calling it twice with one name sends the header twice.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl Request {
    /// The request as bytes on the wire. A body is sent with `Content-Length`, unless the
    /// request carries `Transfer-Encoding: chunked`: then in chunks of 64 bytes, with no length.
    pub fn wire(&self, host: &str) -> Vec<u8> {
        let mut wire = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            wire.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        }
        for (name, value) in &self.headers {
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        let chunked = self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if !chunked
            && (!self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH"))
        {
            wire.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        wire.extend_from_slice(b"Connection: close\r\n\r\n");
        if chunked {
            for chunk in self.body.chunks(64) {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        } else {
            wire.extend_from_slice(&self.body);
        }
        wire
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body in the message when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends one HTTP/1.1 request on a new connection (`Connection: close`) and reads the response.
pub async fn send(addr: SocketAddr, request: &Request) -> io::Result<Response> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, send_inner(addr, request))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?
}

async fn send_inner(addr: SocketAddr, request: &Request) -> io::Result<Response> {
    let wire = request.wire(&addr.to_string());
    let stream = TcpStream::connect(addr).await?;
    exchange(stream, &wire, request.method == "HEAD").await
}

/// Sends bytes exactly as given (a request no well-behaved client would write) and reads the
/// response.
pub async fn send_raw(addr: SocketAddr, wire: &[u8]) -> io::Result<Response> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        exchange(stream, wire, false).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?
}

/// Writes a request and reads its response on any byte stream (plain TCP or TLS).
pub(crate) async fn exchange<S>(mut stream: S, wire: &[u8], head_only: bool) -> io::Result<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(wire).await?;
    // Read until the response is complete by its own framing, not until the server closes: after
    // a local reply Envoy may wait (delayed close) for the client to hang up first.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(response) = parse_response(&raw, head_only, n == 0)? {
            return Ok(response);
        }
    }
}

/// A hyper header map as (name, value) pairs, values read lossily as UTF-8.
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Parses an HTTP/1.1 response once it is complete; `None` while more bytes are needed.
/// `eof`: the server closed the connection (then an incomplete response is an error).
fn parse_response(raw: &[u8], head_only: bool, eof: bool) -> io::Result<Option<Response>> {
    let incomplete = || {
        if eof {
            Err(bad(format!(
                "connection closed mid-response ({} bytes)",
                raw.len()
            )))
        } else {
            Ok(None)
        }
    };
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return incomplete();
    };
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().map_err(|_| bad("bad content-length")))
        .transpose()?;
    let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None => return incomplete(),
        }
    } else if let Some(len) = length {
        match rest.get(..len) {
            Some(body) => body.to_vec(),
            None => return incomplete(),
        }
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        headers,
        body,
    }))
}

/// The body of a chunked message; `None` while it is incomplete.
fn dechunk(mut rest: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        let (Some(chunk), Some(after)) = (rest.get(..size), rest.get(size + 2..)) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        rest = after;
    }
}

/// Sends requests over one HTTP/2 connection with prior knowledge (no upgrade), as a gRPC-style
/// or mesh-internal client does, and returns the responses in order.
pub async fn send_h2(addr: SocketAddr, requests: &[Request]) -> io::Result<Vec<Response>> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, send_h2_inner(addr, requests))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?
}

/// Sends one request over HTTP/2 with its body as separate data frames of `chunk` bytes and no
/// length (as a streaming client or the OpenFaaS gateway does), then `trailers` if given.
pub async fn send_h2_frames(
    addr: SocketAddr,
    request: &Request,
    chunk: usize,
    trailers: Option<hyper::HeaderMap>,
) -> io::Result<Response> {
    let body = |r: &Request| Frames {
        chunks: r
            .body
            .chunks(chunk.max(1))
            .map(Bytes::copy_from_slice)
            .collect(),
        trailers: trailers.clone(),
    };
    let exchange = send_h2_with(addr, std::slice::from_ref(request), body);
    let mut responses = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))??;
    responses
        .pop()
        .ok_or_else(|| io::Error::other("no response"))
}

async fn send_h2_inner(addr: SocketAddr, requests: &[Request]) -> io::Result<Vec<Response>> {
    send_h2_with(addr, requests, |r| Full::new(Bytes::from(r.body.clone()))).await
}

/// Sends requests over one HTTP/2 connection with prior knowledge, each body made by `body`.
async fn send_h2_with<B>(
    addr: SocketAddr,
    requests: &[Request],
    body: impl Fn(&Request) -> B,
) -> io::Result<Vec<Response>>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(io::Error::other)?;
    let driver = tokio::spawn(connection);
    let mut out = Vec::new();
    for request in requests {
        let uri = format!("http://{addr}{}", request.target);
        let mut builder = hyper::Request::builder()
            .method(request.method.as_str())
            .uri(uri);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let req = builder.body(body(request)).map_err(io::Error::other)?;
        let response = sender.send_request(req).await.map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let headers = header_pairs(response.headers());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes()
            .to_vec();
        out.push(Response {
            status,
            headers,
            body,
        });
    }
    drop(sender);
    driver.abort();
    Ok(out)
}

/// A request body sent as separate data frames with no size known up front (so no
/// `content-length`), optionally ending in trailers: what chunked HTTP/1.1 and HTTP/2 streams
/// look like to the sidecar.
pub struct Frames {
    pub chunks: Vec<Bytes>,
    pub trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use hyper::body::Frame;
        use std::task::Poll;
        if !self.chunks.is_empty() {
            let chunk = self.chunks.remove(0);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_sized_bodies_once_complete() {
        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(chunked, false, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        assert_eq!(r.header("x-a"), Some("1"));
        assert!(parse_response(&chunked[..chunked.len() - 7], false, false)
            .unwrap()
            .is_none());

        let sized: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let r = parse_response(sized, false, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        assert!(parse_response(&sized[..sized.len() - 1], false, false)
            .unwrap()
            .is_none());
        assert!(parse_response(&sized[..sized.len() - 1], false, true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false, true).is_err());
    }
}
