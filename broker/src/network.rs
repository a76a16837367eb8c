//! Connections: Kafka framing (a 4-byte size, then the request), checked against
//! `socket.request.max.bytes` before any buffer is allocated. Each connection is one task
//! that handles its requests one at a time, so responses go back in request order, as the
//! protocol requires (Kafka itself mutes a connection while a request is in flight).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::dispatch;
use crate::response::Outcome;

/// Accepts connections on the listener named `name` until `shutdown` turns true.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, name: Arc<str>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (broker, name, shutdown) = (broker.clone(), name.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        if let Err(err) = handle_connection(broker, stream, peer, name, shutdown).await {
                            tracing::debug!(%peer, %err, "connection closed with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Responses a connection may owe at once (requests read ahead of their answers): as many
/// as a producer pipelines (librdkafka's `max.in.flight` is 5), and a bound on what a client
/// can make the broker hold for it.
const MAX_IN_FLIGHT: usize = 16;

async fn handle_connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut state = ConnectionState { peer: Some(peer), listener, ..ConnectionState::default() };
    let max = broker.config.socket_request_max_bytes;
    // Requests are handled in order here; their responses go to the writer in that order,
    // which waits for a late one (acks=all) before writing those after it.
    let (outcomes, queue) = tokio::sync::mpsc::channel::<Outcome>(MAX_IN_FLIGHT);
    let writing = tokio::spawn(write_responses(writer, queue, peer));
    loop {
        let size = tokio::select! {
            size = reader.read_i32() => match size {
                Ok(size) => size,
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(err) => {
                    drop(outcomes);
                    writing.await.ok();
                    return Err(err);
                }
            },
            _ = shutdown.changed() => break,
        };
        if size < 0 || size as usize > max {
            tracing::warn!(%peer, size, max, "closing connection: request size outside [0, socket.request.max.bytes]");
            break;
        }
        let mut frame = BytesMut::zeroed(size as usize);
        reader.read_exact(&mut frame).await?;
        let outcome = dispatch::handle(&broker, &mut state, frame.freeze()).await;
        if let Outcome::Close(reason) = &outcome {
            tracing::warn!(%peer, client = state.client_software.as_deref().unwrap_or("unknown"), reason, "closing connection");
        }
        let closing = matches!(outcome, Outcome::Close(_));
        if outcomes.send(outcome).await.is_err() || closing {
            break;
        }
    }
    drop(outcomes);
    writing.await.ok();
    Ok(())
}

/// Writes each response as it becomes ready, in request order; stops at a close.
async fn write_responses(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queue: tokio::sync::mpsc::Receiver<Outcome>,
    peer: SocketAddr,
) {
    while let Some(mut outcome) = queue.recv().await {
        if let Outcome::Later(response) = outcome {
            outcome = response.await;
        }
        match outcome {
            Outcome::Respond(response) => {
                for chunk in response {
                    if let Err(err) = writer.write_all(&chunk).await {
                        tracing::debug!(%peer, %err, "writing a response failed");
                        return;
                    }
                }
            }
            Outcome::NoResponse | Outcome::Later(_) => {}
            Outcome::Close(_) => return,
        }
    }
}
