//! The link's frames, pure: encoded into a buffer, decoded from the bytes read so far. Nothing
//! here does I/O.
//!
//! ```text
//! frame   = length:u32 kind:u8 id:u64 body     ; big-endian; length counts kind, id and body
//! REQUEST = kind 1, body: deadline_ms:u32 (0: none) trace_len:u8 trace
//!           count:u8 ( key_len:u8 key value_len:u16 value ){count} line
//! REPLY   = kind 2, body: the reply bytes of the one-line protocol, exactly
//! CANCEL  = kind 3, no body: the caller of request `id` left
//! GOAWAY  = kind 4, id 0, no body: the consumer takes no new request on this link
//! ```
//!
//! `line` is a request line without its `\n`; `trace`, keys and values are UTF-8.

/// Bytes before a frame's body: length, kind and id.
pub(crate) const HEADER: usize = 4 + 1 + 8;

/// Longest trace id a frame carries, in bytes.
pub(crate) const MAX_TRACE_ID: usize = u8::MAX as usize;

const REQUEST: u8 = 1;
const REPLY: u8 = 2;
const CANCEL: u8 = 3;
const GOAWAY: u8 = 4;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A task: producer to consumer.
    Request(RequestFrame),
    /// The reply to request `id`: consumer to producer.
    Reply {
        /// The request's id.
        id: u64,
        /// The reply, as the one-line protocol writes it.
        bytes: Vec<u8>,
    },
    /// The caller of request `id` left: producer to consumer.
    Cancel {
        /// The request's id.
        id: u64,
    },
    /// The consumer is shutting down: it answers what it has, and takes nothing new.
    GoAway,
}

/// A task and the context that travels with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RequestFrame {
    /// Matches the reply to the request.
    pub(crate) id: u64,
    /// What is left of the caller's deadline, in milliseconds (at least 1), when it has one.
    pub(crate) deadline_ms: Option<u32>,
    /// The trace id, at most [`MAX_TRACE_ID`] bytes.
    pub(crate) trace_id: Option<String>,
    /// Metadata entries (at most 255; each key at most 255 bytes, each value at most 65535).
    pub(crate) metadata: Vec<(String, String)>,
    /// The request line, without its `\n`.
    pub(crate) line: Vec<u8>,
}

/// Why bytes are not a frame. Any of these ends the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    /// The frame announces more bytes than the limit.
    #[error("link frame of {length} bytes is over the limit of {limit}")]
    TooLarge { length: usize, limit: usize },
    /// The frame is of no known kind.
    #[error("link frame of unknown kind {0}")]
    UnknownKind(u8),
    /// The frame's fields do not add up.
    #[error("malformed link frame: {0}")]
    Malformed(&'static str),
}

impl Frame {
    /// Appends the frame's bytes to `out`.
    ///
    /// # Panics
    /// Never for frames built within the documented bounds; fields past them are cut (a trace
    /// id longer than [`MAX_TRACE_ID`], metadata past 255 entries) so the frame stays well
    /// formed.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Request(r) => {
                out.push(REQUEST);
                out.extend_from_slice(&r.id.to_be_bytes());
                out.extend_from_slice(&r.deadline_ms.map_or(0, |ms| ms.max(1)).to_be_bytes());
                let trace = r.trace_id.as_deref().map_or(&b""[..], str::as_bytes);
                let trace = &trace[..trace.len().min(MAX_TRACE_ID)];
                out.push(trace.len() as u8);
                out.extend_from_slice(trace);
                let entries: Vec<_> = r
                    .metadata
                    .iter()
                    .filter(|(k, v)| k.len() <= usize::from(u8::MAX) && v.len() <= usize::from(u16::MAX))
                    .take(usize::from(u8::MAX))
                    .collect();
                out.push(entries.len() as u8);
                for (k, v) in entries {
                    out.push(k.len() as u8);
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
                    out.extend_from_slice(v.as_bytes());
                }
                out.extend_from_slice(&r.line);
            }
            Frame::Reply { id, bytes } => {
                out.push(REPLY);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Cancel { id } => {
                out.push(CANCEL);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway => {
                out.push(GOAWAY);
                out.extend_from_slice(&0u64.to_be_bytes());
            }
        }
        let length = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// The frame's bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Looks for one complete frame at the start of `buf`, whose length field may announce at most
/// `max_frame` bytes. Returns the frame and how many bytes of `buf` it took, or `None` when
/// more bytes are needed.
///
/// # Errors
/// [`CodecError`] as soon as the header is there and says the frame cannot be one (too large,
/// unknown kind, too short), or once the whole frame is there and its fields do not add up.
pub(crate) fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if length > max_frame {
        return Err(CodecError::TooLarge { length, limit: max_frame });
    }
    let kind = buf[4];
    if !(REQUEST..=GOAWAY).contains(&kind) {
        return Err(CodecError::UnknownKind(kind));
    }
    if length < HEADER - 4 {
        return Err(CodecError::Malformed("shorter than its header"));
    }
    let total = 4 + length;
    if buf.len() < total {
        return Ok(None);
    }
    let id = u64::from_be_bytes(buf[5..13].try_into().map_err(|_| CodecError::Malformed("id"))?);
    let body = &buf[HEADER..total];
    let frame = match kind {
        REQUEST => Frame::Request(decode_request(id, body)?),
        REPLY => Frame::Reply { id, bytes: body.to_vec() },
        CANCEL if body.is_empty() => Frame::Cancel { id },
        GOAWAY if body.is_empty() && id == 0 => Frame::GoAway,
        _ => return Err(CodecError::Malformed("control frame with a body")),
    };
    Ok(Some((frame, total)))
}

/// Reads the fields of a request body in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn text(&mut self, n: usize, what: &'static str) -> Result<String, CodecError> {
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| CodecError::Malformed(what))
    }
}

fn decode_request(id: u64, body: &[u8]) -> Result<RequestFrame, CodecError> {
    let mut f = Fields(body);
    let deadline = f.take(4, "deadline")?;
    let deadline_ms = u32::from_be_bytes([deadline[0], deadline[1], deadline[2], deadline[3]]);
    let trace_len = usize::from(f.take(1, "trace id length")?[0]);
    let trace_id = if trace_len == 0 { None } else { Some(f.text(trace_len, "trace id")?) };
    let count = f.take(1, "metadata count")?[0];
    let mut metadata = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let key_len = usize::from(f.take(1, "metadata key length")?[0]);
        let key = f.text(key_len, "metadata key")?;
        let value_len = f.take(2, "metadata value length")?;
        let value = f.text(usize::from(u16::from_be_bytes([value_len[0], value_len[1]])), "metadata value")?;
        metadata.push((key, value));
    }
    Ok(RequestFrame {
        id,
        deadline_ms: (deadline_ms != 0).then_some(deadline_ms),
        trace_id,
        metadata,
        line: f.0.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn request() -> impl Strategy<Value = Frame> {
        (
            any::<u64>(),
            proptest::option::of(1u32..),
            proptest::option::of("[a-z0-9-]{1,64}"),
            proptest::collection::vec(("[a-z0-9._-]{1,20}", "\\PC{0,40}"), 0..5),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(id, deadline_ms, trace_id, metadata, line)| {
                Frame::Request(RequestFrame { id, deadline_ms, trace_id, metadata, line })
            })
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            request(),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(id, bytes)| Frame::Reply { id, bytes }),
            any::<u64>().prop_map(|id| Frame::Cancel { id }),
            Just(Frame::GoAway),
        ]
    }

    proptest! {
        /// Frames written back to back and read back in arbitrary pieces come out the same, in
        /// order, and each piece short of a frame asks for more rather than failing.
        #[test]
        fn frames_round_trip_through_any_split(frames in proptest::collection::vec(frame(), 1..8), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut wire = Vec::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let mut ends: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            ends.push(wire.len());
            ends.sort_unstable();
            let (mut got, mut start) = (Vec::new(), 0);
            for end in ends {
                while let Some((f, used)) = decode(&wire[start..end], 1 << 20).unwrap() {
                    got.push(f);
                    start += used;
                }
            }
            prop_assert_eq!(start, wire.len());
            prop_assert_eq!(got, frames);
        }

        /// Any bytes decode to a frame, ask for more, or fail: never a panic, and never a frame
        /// longer than the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((_, used))) = decode(&bytes, 32) {
                prop_assert!(used <= 4 + 32);
            }
        }
    }

    #[test]
    fn a_frame_over_the_limit_fails_from_its_header_alone() {
        let header = [0xff, 0xff, 0xff, 0xff, REQUEST];
        assert_eq!(decode(&header, 1024), Err(CodecError::TooLarge { length: u32::MAX as usize, limit: 1024 }));
        assert_eq!(decode(&[0, 0, 0, 9, 9], 1024), Err(CodecError::UnknownKind(9)));
        assert_eq!(decode(&[0, 0, 0, 2, REPLY], 1024), Err(CodecError::Malformed("shorter than its header")));
        assert_eq!(decode(&[0, 0, 0, 9], 1024), Ok(None));
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let frame = Frame::Request(RequestFrame {
            id: 7,
            deadline_ms: Some(1500),
            trace_id: Some("t".into()),
            metadata: vec![("k".into(), "v".into())],
            line: b"a b".to_vec(),
        });
        let bytes = frame.to_bytes();
        assert_eq!(
            bytes,
            [&[0, 0, 0, 24, 1][..], &7u64.to_be_bytes(), &1500u32.to_be_bytes(), &[1, b't', 1, 1, b'k', 0, 1, b'v'], b"a b"]
                .concat()
        );
        assert_eq!(Frame::Cancel { id: 1 }.to_bytes(), [&[0, 0, 0, 9, 3][..], &1u64.to_be_bytes()].concat());
        // A passed deadline still travels as a deadline (1 ms), never as "none".
        let passed = Frame::Request(RequestFrame { deadline_ms: Some(0), ..RequestFrame::default() });
        let Some((Frame::Request(back), _)) = decode(&passed.to_bytes(), 64).unwrap() else { panic!() };
        assert_eq!(back.deadline_ms, Some(1));
    }
}
