//! `stdio_mux_v1`: the framed protocol of the session attach bridge
//! (`banger vm session attach`, `docs/api.md`). One codec for both sides:
//! the daemon's bridge and every client (the CLI, or any program).
//!
//! A frame is a 1-byte stream id, a 4-byte big-endian payload length and
//! the payload (at most [`MAX_FRAME_PAYLOAD`] bytes). Stream ids:
//!
//! | id | stream | direction | payload |
//! |---|---|---|---|
//! | 0 | control | both | one JSON [`ClientControl`] / [`ServerControl`] |
//! | 1 | stdin | client → daemon | bytes for the session's stdin |
//! | 2 | stdout | daemon → client | bytes of the session's stdout |
//! | 3 | stderr | daemon → client | bytes of the session's stderr |
//!
//! The client's first frame is a [`ClientControl::Hello`] naming the
//! protocol; the daemon answers [`ServerControl::Welcome`] or
//! [`ServerControl::Error`] and closes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::guest::SessionStatus;

/// The protocol name a [`ClientControl::Hello`] must carry.
pub const PROTOCOL: &str = "stdio_mux_v1";
/// Largest payload of one frame; a longer announced length is a protocol
/// error (the peer is disconnected).
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Bytes before the payload: stream id and length.
pub const HEADER_LEN: usize = 5;
/// File name of the bridge socket, next to the API socket.
pub const SOCKET_NAME: &str = "attach.sock";

/// The stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamId {
    Control,
    Stdin,
    Stdout,
    Stderr,
}

impl StreamId {
    /// The id byte on the wire.
    pub const fn to_byte(self) -> u8 {
        match self {
            StreamId::Control => 0,
            StreamId::Stdin => 1,
            StreamId::Stdout => 2,
            StreamId::Stderr => 3,
        }
    }

    /// The stream of an id byte, if it is one.
    pub const fn from_byte(b: u8) -> Option<StreamId> {
        match b {
            0 => Some(StreamId::Control),
            1 => Some(StreamId::Stdin),
            2 => Some(StreamId::Stdout),
            3 => Some(StreamId::Stderr),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: StreamId,
    pub payload: Bytes,
}

impl Frame {
    /// A control frame carrying `msg` as JSON.
    pub fn control<T: Serialize>(msg: &T) -> Frame {
        Frame {
            stream: StreamId::Control,
            payload: Bytes::from(serde_json::to_vec(msg).expect("control message serializes")),
        }
    }

    /// A data frame.
    pub fn data(stream: StreamId, payload: impl Into<Bytes>) -> Frame {
        Frame {
            stream,
            payload: payload.into(),
        }
    }
}

/// What is wrong with a byte stream or a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unknown stream id {0} (stdio_mux_v1 knows 0-3)")]
    UnknownStream(u8),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("the connection ended inside a frame")]
    Truncated,
    #[error("bad control message: {0}")]
    Control(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The `stdio_mux_v1` codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioMux;

impl Decoder for StdioMux {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            // Reject a bad stream id as soon as it arrives.
            if let Some(&b) = src.first() {
                StreamId::from_byte(b).ok_or(FrameError::UnknownStream(b))?;
            }
            return Ok(None);
        }
        let stream = StreamId::from_byte(src[0]).ok_or(FrameError::UnknownStream(src[0]))?;
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::Oversize {
                len,
                max: MAX_FRAME_PAYLOAD,
            });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        Ok(Some(Frame { stream, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<Frame> for StdioMux {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.payload.len();
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::Oversize {
                len,
                max: MAX_FRAME_PAYLOAD,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u8(frame.stream.to_byte());
        dst.put_u32(len as u32);
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

/// Control messages from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientControl {
    /// The first frame: which session, and where output should start.
    Hello {
        /// Must be [`PROTOCOL`].
        protocol: String,
        vm: String,
        session: String,
        /// Byte offset in the session's stdout log to send from; `None`:
        /// the current end (only new output). A client that reconnects
        /// passes the welcome's offset plus the bytes it received, and
        /// misses nothing.
        #[serde(default)]
        stdout_offset: Option<u64>,
        #[serde(default)]
        stderr_offset: Option<u64>,
    },
    /// Leave the session running and end this attach.
    Detach {},
}

/// Control messages from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerControl {
    /// The attach is on; output frames follow from these log offsets.
    Welcome {
        protocol: String,
        session_id: String,
        pid: Option<u32>,
        stdout_offset: u64,
        stderr_offset: u64,
    },
    /// The session ended and all its output was sent; the daemon closes.
    Exit { status: SessionStatus },
    /// The answer to [`ClientControl::Detach`]; the daemon closes.
    Detached {},
    /// The attach was refused or broke; the daemon closes.
    Error { message: String },
}

impl ClientControl {
    /// Parse a control frame's payload.
    pub fn parse(payload: &[u8]) -> Result<ClientControl, FrameError> {
        serde_json::from_slice(payload).map_err(|e| FrameError::Control(e.to_string()))
    }
}

impl ServerControl {
    /// Parse a control frame's payload.
    pub fn parse(payload: &[u8]) -> Result<ServerControl, FrameError> {
        serde_json::from_slice(payload).map_err(|e| FrameError::Control(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = StdioMux.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip_and_split_reads_wait_for_the_rest() {
        let mut buf = BytesMut::new();
        let frames = [
            Frame::control(&ClientControl::Detach {}),
            Frame::data(StreamId::Stdin, &b"hello\n"[..]),
            Frame::data(StreamId::Stdout, Bytes::new()),
        ];
        for f in frames.clone() {
            StdioMux.encode(f, &mut buf).unwrap();
        }
        // {"type":"detach"} is 17 bytes.
        assert_eq!(&buf[..5], &[0, 0, 0, 0, 17]);
        // Byte by byte: nothing is returned before a frame is complete.
        let mut partial = BytesMut::new();
        let mut got = Vec::new();
        for &b in buf.iter() {
            partial.put_u8(b);
            if let Some(f) = StdioMux.decode(&mut partial).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn unknown_stream_and_oversize_are_errors_before_the_payload() {
        assert!(matches!(
            decode_all(&[9]),
            Err(FrameError::UnknownStream(9))
        ));
        let mut big = vec![1u8];
        big.extend_from_slice(&((MAX_FRAME_PAYLOAD as u32) + 1).to_be_bytes());
        assert!(matches!(
            decode_all(&big),
            Err(FrameError::Oversize { len, .. }) if len == MAX_FRAME_PAYLOAD + 1
        ));
        let mut at_max = vec![1u8];
        at_max.extend_from_slice(&(MAX_FRAME_PAYLOAD as u32).to_be_bytes());
        at_max.resize(HEADER_LEN + MAX_FRAME_PAYLOAD, 7);
        assert_eq!(
            decode_all(&at_max).unwrap()[0].payload.len(),
            MAX_FRAME_PAYLOAD
        );
        assert!(matches!(
            StdioMux.encode(
                Frame::data(StreamId::Stdout, vec![0u8; MAX_FRAME_PAYLOAD + 1]),
                &mut BytesMut::new()
            ),
            Err(FrameError::Oversize { .. })
        ));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        assert!(matches!(
            decode_all(&[2, 0, 0, 0, 4, b'a']),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(decode_all(&[2, 0]), Err(FrameError::Truncated)));
        assert!(decode_all(&[]).unwrap().is_empty());
    }

    #[test]
    fn control_messages_have_a_fixed_shape() {
        let hello = ClientControl::parse(
            br#"{"type":"hello","protocol":"stdio_mux_v1","vm":"dev","session":"web"}"#,
        )
        .unwrap();
        assert_eq!(
            hello,
            ClientControl::Hello {
                protocol: PROTOCOL.into(),
                vm: "dev".into(),
                session: "web".into(),
                stdout_offset: None,
                stderr_offset: None,
            }
        );
        assert!(ClientControl::parse(br#"{"type":"detach","x":1}"#).is_err());
        assert!(ClientControl::parse(b"\xff").is_err());
        let exit = ServerControl::Exit {
            status: SessionStatus::Signaled { signal: 9 },
        };
        let json = serde_json::to_string(&exit).unwrap();
        assert_eq!(
            json,
            r#"{"type":"exit","status":{"state":"signaled","signal":9}}"#
        );
        assert_eq!(ServerControl::parse(json.as_bytes()).unwrap(), exit);
    }

    proptest! {
        // Garbage never panics, and the frames it decodes to are exactly
        // the bytes they were read from.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut reencoded = BytesMut::new();
            while let Ok(Some(f)) = StdioMux.decode(&mut buf) {
                StdioMux.encode(f, &mut reencoded).unwrap();
            }
            prop_assert!(bytes.starts_with(&reencoded));
        }

        #[test]
        fn any_frame_sequence_round_trips(
            frames in proptest::collection::vec((0u8..4, proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
            cut in 0usize..2000,
        ) {
            let frames: Vec<Frame> = frames
                .into_iter()
                .map(|(s, p)| Frame::data(StreamId::from_byte(s).unwrap(), p))
                .collect();
            let mut wire = BytesMut::new();
            for f in frames.clone() {
                StdioMux.encode(f, &mut wire).unwrap();
            }
            // Delivered in two reads cut anywhere.
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = StdioMux.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = StdioMux.decode_eof(&mut buf).unwrap() {
                got.push(f);
            }
            prop_assert_eq!(got, frames);
        }
    }
}
