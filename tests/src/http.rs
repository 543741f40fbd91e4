//! A plain HTTP/1.1 client: one request per connection, bounded by timeouts.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// `GET /` on 127.0.0.1:`port`; the response's status code.
pub fn get_status(port: u16) -> std::io::Result<u16> {
    get_status_of(port, "/")
}

/// `GET path` on 127.0.0.1:`port`; the response's status code.
pub fn get_status_of(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: why502.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))
}

/// `GET path` over HTTP/1.1 on the unix socket `socket` (the agent's API; one request,
/// `Connection: close`, bounded by timeouts): the status and the body (de-chunked).
pub fn unix_get(socket: &std::path::Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: why502\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    crate::prometheus::parse_response(&response)
}
