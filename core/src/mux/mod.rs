//! Many independent byte streams over one reliable, ordered byte pipe.
//!
//! The pipe may be TCP, TLS, a WebSocket, a relay hop or a simulated link; the multiplexer only
//! needs bytes in order. [`Session`] is the sans-IO state machine (quinn-proto style):
//!
//! - inputs: [`Session::handle_input`] (bytes from the pipe), [`Session::handle_eof`],
//!   [`Session::handle_timeout`], and the stream operations ([`Session::open`],
//!   [`Session::write`], [`Session::read`], [`Session::finish`], [`Session::reset`],
//!   [`Session::detach`], [`Session::go_away`]);
//! - outputs: [`Session::poll_transmit`] (bytes for the pipe), [`Session::poll_event`] and
//!   [`Session::poll_timeout`].
//!
//! Invariant for drivers: after any input, drain `poll_event` and `poll_transmit` until both are
//! empty, then sleep until `poll_timeout` or the next input.
//!
//! Design points, each answering a failure found in other multiplexers (see
//! `docs/architecture.md` §"Multiplexer"):
//! - 0-RTT open: a stream's first DATA frame carries SYN and may carry data at once.
//! - Credit per stream and per connection. Connection credit bounds bytes in flight and is
//!   returned as frames are processed; stream credit bounds a stream's unread bytes and is
//!   returned as the application reads. Stream windows grow toward the bandwidth-delay product
//!   (doubling when a window update follows the previous one within 2 RTT), bounded by
//!   `max_stream_window` and by a session-wide `receive_budget`. Received data is always within
//!   credit, so the reader never stops reading the pipe, and a slow reader holds back only its
//!   own stream: other streams' data and all control frames keep flowing.
//! - Stream count by credit (MAX_STREAMS); a stream over the local limit is refused with a RESET,
//!   the connection lives; the peer can always keep `max_incoming_streams` open.
//! - O(1) per operation: streams in a hash map keyed by id, FIFO queues for scheduling; an idle
//!   stream owns no buffer (about 60 bytes of state). (A received GOAWAY visits the live
//!   streams once.)
//! - Round-robin send scheduling with a byte quantum per turn; control frames first.
//! - Keep-alive and dead-link detection from `poll_timeout`, independent of application polling.

pub mod adapter;
mod session;
pub mod testing;

pub use crate::wire::mux::{reset_code, ErrorCode, StreamId};
pub use session::{
    Config, Event, OpenError, Role, Session, Stats, StreamError, INITIAL_CONNECTION_WINDOW,
    INITIAL_MAX_STREAMS, INITIAL_STREAM_WINDOW,
};
