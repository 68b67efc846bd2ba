//! Links: persistent, pipelined connections from the Producer to this project's Consumers.
//!
//! The Producer opens a connection to a Consumer and sends the reserved request `_rpc link 1`.
//! A Consumer that takes links answers one success line, `{"link":1,"max_frame":N}`, and from
//! then on both sides exchange length-prefixed [frames](codec): many tasks in flight at once,
//! each matched to its reply by id, each carrying what is left of its deadline, its metadata
//! and its trace id. A server that answers anything else (a Consumer of an older version
//! answers `ERROR unknown_method`) is used with the one-request-per-connection protocol, as
//! before. External clients never see links. `docs/PROTOCOL.md` has the whole story.
//!
//! - [`codec`]: the frames, pure.
//! - [`client`]: the Producer's side.
//! - [`serve`]: the Consumer's side.

pub(crate) mod client;
pub(crate) mod codec;
pub(crate) mod serve;

use std::time::Duration;

use rpc_core::context::MAX_METADATA_TOTAL;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::config::Limits;
use crate::frame::{self, RequestLine};
use crate::system::SERVICE;

/// The reserved method that asks for a link.
pub(crate) const METHOD: &str = "link";

/// The version of the link protocol this crate speaks.
pub(crate) const VERSION: u64 = 1;

/// Bytes read from a link's socket per call.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// Room in a request frame for everything but the line: header, deadline, trace id and
/// metadata (bounded by `rpc_core`'s metadata limits, plus their length fields).
const REQUEST_OVERHEAD: usize = MAX_METADATA_TOTAL + 4 * 1024;

/// The request that asks a server to turn the connection into a link.
pub(crate) fn hello_request() -> Vec<u8> {
    format!("{SERVICE} {METHOD} {VERSION}\n").into_bytes()
}

/// Whether `line` asks for a link (any version).
pub(crate) fn is_link_request(line: &RequestLine) -> bool {
    line.service == SERVICE && line.method == METHOD
}

/// The Consumer's answer when it accepts a link whose request frames may be `max_frame` bytes.
pub(crate) fn hello_answer(max_frame: usize) -> Vec<u8> {
    frame::encode_value(&json!({ "link": VERSION, "max_frame": max_frame }))
}

/// When `line` (an answer's first line, without its `\n`) accepts a link of this version: the
/// largest request frame the Consumer takes (its `max_frame`; unbounded when it names none).
pub(crate) fn parse_hello(line: &[u8]) -> Option<usize> {
    let hello = serde_json::from_slice::<Value>(line).ok()?;
    if hello.get("link").and_then(Value::as_u64) != Some(VERSION) {
        return None;
    }
    let max_frame = hello.get("max_frame").and_then(Value::as_u64);
    Some(max_frame.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)))
}

/// The largest request frame a Consumer with `limits` takes: a request line at its limit plus
/// the largest context.
pub(crate) fn max_request_frame(limits: &Limits) -> usize {
    limits.max_line.saturating_add(REQUEST_OVERHEAD)
}

/// Frames waiting to be written: the Producer's side queues without bound (its tasks are
/// bounded by its clients), the Consumer's side within its in-flight bound.
pub(crate) trait Queue {
    async fn recv(&mut self) -> Option<Vec<u8>>;
    fn try_recv(&mut self) -> Option<Vec<u8>>;
}

impl Queue for mpsc::UnboundedReceiver<Vec<u8>> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        mpsc::UnboundedReceiver::recv(self).await
    }

    fn try_recv(&mut self) -> Option<Vec<u8>> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

impl Queue for mpsc::Receiver<Vec<u8>> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        mpsc::Receiver::recv(self).await
    }

    fn try_recv(&mut self) -> Option<Vec<u8>> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

/// Most bytes of queued frames one write carries.
const MAX_BATCH: usize = 256 * 1024;

/// Writes the frames queued on `queued`, those that queued up meanwhile in the same write, until
/// the queue closes; then closes the sending side.
///
/// # Errors
/// Why writing failed: the socket's error, or no progress within `write_timeout`.
pub(crate) async fn write_frames(
    write: &mut OwnedWriteHalf,
    queued: &mut impl Queue,
    write_timeout: Duration,
) -> Result<(), String> {
    let mut batch = Vec::with_capacity(16 * 1024);
    while let Some(first) = queued.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Some(more) => batch.extend_from_slice(&more),
                None => break,
            }
        }
        match tokio::time::timeout(write_timeout, write.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("writing to the link failed: {e}")),
            Err(_) => return Err("writing to the link timed out".to_owned()),
        }
    }
    let _ = tokio::time::timeout(write_timeout, write.shutdown()).await;
    Ok(())
}
