//! Reading the core's stream formats (`wire::stream`, `wire::control`) off a quinn stream:
//! the fixed prefix first, then exactly the length it announced (bounded by the decoder before
//! anything is allocated). Shared by the daemon and the simulator's node, so both speak the
//! protocol through the same code.

use quinn::RecvStream;
use svcnet_core::wire::control::{ControlMessage, CONTROL_PREFIX_LEN};
use svcnet_core::wire::stream::{DialReply, StreamHeader, HEADER_PREFIX_LEN, REPLY_PREFIX_LEN};

/// Reads the header that opens a stream.
pub async fn read_header(recv: &mut RecvStream) -> Result<StreamHeader, String> {
    let mut prefix = [0u8; HEADER_PREFIX_LEN];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let (kind, len) = StreamHeader::decode_prefix(&prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    StreamHeader::decode_body(kind, &body).map_err(|e| e.to_string())
}

/// Reads the serving node's dial reply.
pub async fn read_reply(recv: &mut RecvStream) -> Result<DialReply, String> {
    let mut prefix = [0u8; REPLY_PREFIX_LEN];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| format!("no dial reply: {e}"))?;
    let (status, len) = DialReply::decode_prefix(&prefix).map_err(|e| e.to_string())?;
    let mut message = vec![0u8; len];
    recv.read_exact(&mut message)
        .await
        .map_err(|e| e.to_string())?;
    DialReply::from_parts(status, &message).map_err(|e| e.to_string())
}

/// Reads one control frame as (type, body), length-checked but not decoded (the caller decodes
/// with `ControlMessage::decode_body` and decides what a malformed body costs). `None` when the
/// stream ended cleanly between frames.
pub async fn read_control_frame(recv: &mut RecvStream) -> Result<Option<(u8, Vec<u8>)>, String> {
    let mut prefix = [0u8; CONTROL_PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let (kind, len) = ControlMessage::decode_prefix(&prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some((kind, body)))
}
