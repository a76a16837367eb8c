//! The admin HTTP API (default 127.0.0.1:9644), for jobs:
//!   GET /v1/jobs            every job's status
//!   POST /v1/jobs           submit a job definition (JSON body)
//!   GET /v1/jobs/{name}     one job's status: state, per-partition offsets and lag,
//!                           watermark, records in/out, late records, last commit
//!   DELETE /v1/jobs/{name}  stop a job (after a last commit) and forget its definition
//! Plain HTTP/1.1, one request per connection, JSON in and out; errors are
//! `{"error": "..."}` with a 4xx/5xx status. Requests are bounded (16 KiB of headers, 1 MiB
//! of body, 10 s to arrive, 10 s to send the answer, 64 connections at once).

use std::sync::Arc;
use std::time::Duration;

use sluice_processing::{HostError, JobHost};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted (each may hold a 1 MiB body).
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, host: Arc<JobHost>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permit else { return };
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let host = host.clone();
                tokio::spawn(async move {
                    if let Err(error) = handle(stream, host).await {
                        tracing::debug!(%error, "admin connection ended");
                    }
                    drop(permit);
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn handle(mut stream: TcpStream, host: Arc<JobHost>) -> std::io::Result<()> {
    let request = match tokio::time::timeout(REQUEST_DEADLINE, read_request(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(message)) => return respond(&mut stream, 400, &error_body(&message)).await,
        Err(_) => return respond(&mut stream, 408, &error_body("the request did not arrive in time")).await,
    };
    let (status, body) = tokio::task::spawn_blocking(move || route(&host, request))
        .await
        .unwrap_or_else(|_| (500, error_body("the request failed inside the broker")));
    respond(&mut stream, status, &body).await
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, String> {
    let mut buffer = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(format!("request headers are over {MAX_HEAD_BYTES} bytes"));
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the connection closed mid-request".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| "request headers are not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(path)) = (request_line.next(), request_line.next()) else {
        return Err("malformed request line".into());
    };
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad Content-Length".to_string())?;
            }
        }
    }
    if length > MAX_BODY_BYTES {
        return Err(format!("request body is over {MAX_BODY_BYTES} bytes"));
    }
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the connection closed mid-body".into());
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Ok(Request { method: method.to_string(), path: path.to_string(), body })
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

fn json<T: serde::Serialize>(status: u16, value: &T) -> (u16, Vec<u8>) {
    (status, serde_json::to_vec_pretty(value).unwrap_or_default())
}

fn failure(error: HostError) -> (u16, Vec<u8>) {
    (error.status, error_body(&error.message))
}

/// Blocking: submitting and stopping jobs create topics and fsync.
fn route(host: &JobHost, request: Request) -> (u16, Vec<u8>) {
    let path = request.path.split('?').next().unwrap_or_default().trim_end_matches('/');
    let name = path.strip_prefix("/v1/jobs/").filter(|n| !n.is_empty() && !n.contains('/'));
    match (request.method.as_str(), path, name) {
        ("GET", "/v1/jobs", _) => json(200, &host.list()),
        ("POST", "/v1/jobs", _) => match host.submit(&request.body) {
            Ok(status) => json(201, &status),
            Err(error) => failure(error),
        },
        ("GET", _, Some(name)) => match host.status(name) {
            Some(status) => json(200, &status),
            None => (404, error_body(&format!("no job named \"{name}\""))),
        },
        ("DELETE", _, Some(name)) => match host.stop(name) {
            Ok(status) => json(200, &status),
            Err(error) => failure(error),
        },
        (_, "/v1/jobs", _) | (_, _, Some(_)) => (405, error_body(&format!("{} is not allowed here", request.method))),
        _ => (404, error_body(&format!("no such endpoint: {}", request.path))),
    }
}

async fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(REQUEST_DEADLINE, write_response(stream, status, body)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not take the answer")),
    }
}

async fn write_response(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
