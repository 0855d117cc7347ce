//! Kafka framing: a 4-byte big-endian length prefix, then a request or response header,
//! then the body. This module reads and writes frames and parses headers; it never looks
//! into bodies.
//!
//! Invariants:
//! - A frame longer than the configured maximum, or with a negative length, is an error
//!   before any of it is buffered: a client cannot make kshift allocate more than the limit.
//! - Bodies stay `Bytes` slices of the frame they arrived in (zero-copy).
//! - [`read_frame`] is not cancel-safe; callers own one reader per socket and never race it.

pub mod batch;
pub mod scan;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the client connection writes back for one request.
#[derive(Debug)]
pub enum Reply {
    /// A whole response frame: its length prefix and header, then its body.
    Frame { head: FrameHead, body: Bytes },
    /// Nothing: an `acks=0` produce.
    None,
    /// Close the connection once earlier replies are written (a broker's answer to a
    /// request it cannot parse or does not support).
    Close(String),
}

/// Why a frame or header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge { length: usize, limit: usize },
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one length-prefixed frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, FrameError> {
    match read_frame_length(reader, limit).await? {
        Some(length) => read_frame_body(reader, length).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's 4-byte length prefix and checks it against `limit`. `Ok(None)` is a
/// clean end of stream between frames. The body follows ([`read_frame_body`]).
pub async fn read_frame_length<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<usize>, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let length = i32::from_be_bytes(prefix);
    if length < 0 {
        return Err(FrameError::NegativeLength(length));
    }
    let length = length as usize;
    if length > limit {
        return Err(FrameError::TooLarge { length, limit });
    }
    Ok(Some(length))
}

/// Reads the `length` bytes of a frame's body (after [`read_frame_length`]).
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: usize,
) -> Result<Bytes, FrameError> {
    // Read into the frame's uninitialised capacity: zeroing it first cost as much as a copy
    // of every byte a client produced. One allocation of exactly the frame's size, so what
    // outlives the request (a mirrored batch) holds no one else's bytes.
    let mut frame = BytesMut::with_capacity(length);
    while frame.len() < length {
        let remaining = length - frame.len();
        if reader.read_buf(&mut (&mut frame).limit(remaining)).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(frame.freeze())
}

/// The fixed start of every request header: enough to answer or reject a request even
/// when the rest of it cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestPrefix {
    pub fn parse(frame: &[u8]) -> Result<RequestPrefix, FrameError> {
        match frame {
            [k0, k1, v0, v1, c0, c1, c2, c3, ..] => Ok(RequestPrefix {
                api_key: i16::from_be_bytes([*k0, *k1]),
                api_version: i16::from_be_bytes([*v0, *v1]),
                correlation_id: i32::from_be_bytes([*c0, *c1, *c2, *c3]),
            }),
            _ => Err(FrameError::TooShort(frame.len())),
        }
    }
}

/// A client request split into its parsed header and its undecoded body.
#[derive(Debug, Clone)]
pub struct Request {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    /// The client's `client.id` ("" when absent), used for routing by client.
    pub client_id: StrBytes,
    /// The request body, a slice of the frame it arrived in.
    pub body: Bytes,
}

impl Request {
    /// Parses the header of a request frame whose api key kshift knows. Read field by
    /// field (`RequestHeader`'s decoder cost ~450 instructions per request, callgrind);
    /// a unit test checks it against kafka-protocol's for every api key and version.
    pub fn parse(frame: Bytes) -> Result<Request, FrameError> {
        let prefix = RequestPrefix::parse(&frame)?;
        let api_key = ApiKey::try_from(prefix.api_key)
            .map_err(|_| FrameError::UnknownApiKey(prefix.api_key))?;
        let header_version = api_key.request_header_version(prefix.api_version);
        // After api key, version and correlation id: v1+ a nullable client id (an i16
        // length even in v2), v2+ tagged fields (none of which kshift reads).
        let mut header = scan::Cursor::new(&frame[8..], header_version >= 2, "request header");
        let malformed = |reason: String| FrameError::Malformed {
            what: "request header",
            reason,
        };
        let mut client_id = StrBytes::default();
        if header_version >= 1 {
            let length = header.i16()?;
            if length >= 0 {
                let start = frame.len() - header.remaining();
                header.take(length as usize)?;
                client_id = StrBytes::try_from(frame.slice(start..start + length as usize))
                    .map_err(|e| malformed(format!("client id: {e}")))?;
            } else if length != -1 {
                return Err(malformed(format!("client id length {length}")));
            }
        }
        header.skip_tagged_fields()?;
        let body_start = frame.len() - header.remaining();
        Ok(Request {
            api_key,
            api_version: prefix.api_version,
            correlation_id: prefix.correlation_id,
            client_id,
            body: frame.slice(body_start..),
        })
    }

    /// `body`, encoded at this request's version, as the response to it.
    pub fn reply_raw(&self, body: Bytes) -> Reply {
        match response_frame_head(
            self.api_key,
            self.api_version,
            self.correlation_id,
            body.len(),
        ) {
            Ok(head) => Reply::Frame { head, body },
            Err(error) => Reply::Close(format!("cannot encode response: {error}")),
        }
    }

    /// `message`, encoded at this request's version, as the response to it.
    pub fn reply<M: Encodable>(&self, message: &M) -> Reply {
        match encode_body(message, self.api_version) {
            Ok(body) => self.reply_raw(body),
            Err(error) => Reply::Close(format!("cannot encode response: {error}")),
        }
    }

    /// Decodes the body as message `M` at the request's version.
    pub fn decode<M: Decodable>(&self) -> Result<M, FrameError> {
        decode_body(self.body.clone(), self.api_version, "request body")
    }
}

/// Decodes `body` as `M`. Bytes after the message are ignored, as Kafka brokers do:
/// librdkafka 2.12, for one, sends an all-topics Metadata v12 with three extra zero bytes.
pub fn decode_body<M: Decodable>(
    mut body: Bytes,
    version: i16,
    what: &'static str,
) -> Result<M, FrameError> {
    M::decode(&mut body, version).map_err(|e| FrameError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Encodes a message body at `version`.
pub fn encode_body<M: Encodable>(message: &M, version: i16) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf, version)
        .map_err(|e| FrameError::Malformed {
            what: "message to encode",
            reason: e.to_string(),
        })?;
    Ok(buf.freeze())
}

/// Builds the request frame prefix (length + header) for a body of `body_len` bytes.
///
/// Written field by field (the header's layout is fixed per header version) rather than
/// through `RequestHeader`'s encoder, which cost ~800 instructions per request (callgrind);
/// the unit tests check the bytes against kafka-protocol's encoding of every version.
pub fn request_frame_head(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    body_len: usize,
) -> Result<Bytes, FrameError> {
    let header_version = api_key.request_header_version(api_version);
    let client_id = client_id.as_bytes();
    let client_id_len = i16::try_from(client_id.len())
        .map_err(|_| head_error(format!("client id of {} bytes", client_id.len())))?;
    // api key, version, correlation id; v1+: nullable client id; v2+: no tagged fields.
    let header_len =
        8 + if header_version >= 1 {
            2 + client_id.len()
        } else {
            0
        } + usize::from(header_version >= 2);
    let mut buf = Vec::with_capacity(4 + header_len);
    buf.extend_from_slice(&frame_length(header_len, body_len)?.to_be_bytes());
    buf.extend_from_slice(&(api_key as i16).to_be_bytes());
    buf.extend_from_slice(&api_version.to_be_bytes());
    buf.extend_from_slice(&correlation_id.to_be_bytes());
    if header_version >= 1 {
        buf.extend_from_slice(&client_id_len.to_be_bytes());
        buf.extend_from_slice(client_id);
    }
    if header_version >= 2 {
        buf.push(0);
    }
    Ok(Bytes::from(buf))
}

/// A response frame's length prefix and header (correlation id, and in header v1 an empty
/// set of tagged fields): at most 9 bytes, kept inline rather than in an allocation of its
/// own.
#[derive(Debug, Clone, Copy)]
pub struct FrameHead {
    bytes: [u8; 9],
    len: u8,
}

impl std::ops::Deref for FrameHead {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Builds the response frame prefix (length + header) for a body of `body_len` bytes.
pub fn response_frame_head(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body_len: usize,
) -> Result<FrameHead, FrameError> {
    let flexible = api_key.response_header_version(api_version) >= 1;
    let header_len = 4 + usize::from(flexible);
    let mut bytes = [0; 9];
    bytes[..4].copy_from_slice(&frame_length(header_len, body_len)?.to_be_bytes());
    bytes[4..8].copy_from_slice(&correlation_id.to_be_bytes());
    // bytes[8] is already 0: no tagged fields.
    Ok(FrameHead {
        bytes,
        len: 4 + header_len as u8,
    })
}

/// A frame's length prefix: its header and body, which must fit an i32.
fn frame_length(header_len: usize, body_len: usize) -> Result<i32, FrameError> {
    i32::try_from(header_len + body_len)
        .map_err(|_| head_error(format!("frame of {} bytes", header_len + body_len)))
}

fn head_error(reason: String) -> FrameError {
    FrameError::Malformed {
        what: "header to encode",
        reason,
    }
}

/// Splits a response frame into its correlation id and the body after the header.
pub fn split_response(mut frame: Bytes, header_version: i16) -> Result<(i32, Bytes), FrameError> {
    let header =
        ResponseHeader::decode(&mut frame, header_version).map_err(|e| FrameError::Malformed {
            what: "response header",
            reason: e.to_string(),
        })?;
    Ok((header.correlation_id, frame))
}

/// The correlation id of a response frame (its first four bytes).
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    match frame {
        [a, b, c, d, ..] => Some(i32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::RequestHeader;

    /// Every api key kafka-protocol knows, at each of its versions.
    fn every_version() -> impl Iterator<Item = (ApiKey, i16)> {
        ApiKey::iter().flat_map(|api_key| {
            let versions = api_key.valid_versions();
            (versions.min..=versions.max).map(move |version| (api_key, version))
        })
    }

    async fn read(bytes: &[u8], limit: usize) -> Result<Option<Bytes>, FrameError> {
        let mut reader = bytes;
        read_frame(&mut reader, limit).await
    }

    #[tokio::test]
    async fn frame_at_limit_is_read_and_one_over_is_refused() {
        let mut at_limit = 8i32.to_be_bytes().to_vec();
        at_limit.extend_from_slice(&[7; 8]);
        assert_eq!(read(&at_limit, 8).await.unwrap().unwrap().len(), 8);
        match read(&at_limit, 7).await {
            Err(FrameError::TooLarge {
                length: 8,
                limit: 7,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn negative_and_truncated_frames_are_errors() {
        assert!(matches!(
            read(&(-1i32).to_be_bytes(), 100).await,
            Err(FrameError::NegativeLength(-1))
        ));
        let mut truncated = 10i32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read(&truncated, 100).await,
            Err(FrameError::Truncated)
        ));
        assert!(read(&[], 100).await.unwrap().is_none());
    }

    #[test]
    fn request_header_is_parsed_and_body_kept() {
        // Metadata v1: api key 3, version 1, correlation id 42, client id "ab", body [9, 9].
        let frame = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 42, 0, 2, b'a', b'b', 9, 9]);
        let request = Request::parse(frame).unwrap();
        assert_eq!(request.api_key, ApiKey::Metadata);
        assert_eq!(request.api_version, 1);
        assert_eq!(request.correlation_id, 42);
        assert_eq!(&*request.client_id, "ab");
        assert_eq!(&request.body[..], &[9, 9]);
    }

    #[test]
    fn unknown_api_key_and_short_header_are_refused() {
        let unknown = Bytes::from_static(&[0x7f, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff]);
        assert!(matches!(
            Request::parse(unknown),
            Err(FrameError::UnknownApiKey(0x7f00))
        ));
        let short = Bytes::from_static(&[0, 3, 0]);
        assert!(matches!(
            Request::parse(short),
            Err(FrameError::TooShort(3))
        ));
        // Client id claims 100 bytes but only 1 follows.
        let lying = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 100, b'a']);
        assert!(matches!(
            Request::parse(lying),
            Err(FrameError::Malformed { .. })
        ));
    }

    /// The hand-written parse reads what kafka-protocol's `RequestHeader` decoder reads, for
    /// every api key and version: null, empty and long client ids, unknown tagged fields.
    #[test]
    fn request_headers_parse_as_kafka_protocol_decodes_them() {
        for (api_key, version) in every_version() {
            let header_version = api_key.request_header_version(version);
            let long = "é".repeat(200);
            for client_id in [None, Some(""), Some("producer-1"), Some(long.as_str())] {
                let mut header = RequestHeader::default()
                    .with_request_api_key(api_key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(-5)
                    .with_client_id(client_id.map(|id| StrBytes::from_string(id.into())));
                header
                    .unknown_tagged_fields
                    .insert(9, Bytes::from_static(b"tag"));
                let mut frame = BytesMut::new();
                header.encode(&mut frame, header_version).unwrap();
                frame.put_slice(b"body");
                let frame = frame.freeze();
                let expected = RequestHeader::decode(&mut frame.clone(), header_version).unwrap();
                let request = Request::parse(frame).unwrap();
                let what = format!("{api_key:?} v{version} {client_id:?}");
                assert_eq!(request.correlation_id, -5, "{what}");
                assert_eq!(
                    request.client_id,
                    expected.client_id.unwrap_or_default(),
                    "{what}"
                );
                assert_eq!(&request.body[..], b"body", "{what}");
            }
        }
        // A tagged field that claims more bytes than the frame holds, and a client id that is
        // not UTF-8 (Produce v9: header v2; v3: header v1).
        let overlong = Bytes::from_static(&[0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 1, 5, 100, 1]);
        assert!(matches!(
            Request::parse(overlong),
            Err(FrameError::Malformed { .. })
        ));
        let not_utf8 = Bytes::from_static(&[0, 0, 0, 3, 0, 0, 0, 1, 0, 1, 0xff]);
        assert!(matches!(
            Request::parse(not_utf8),
            Err(FrameError::Malformed { .. })
        ));
    }

    /// The hand-written heads are kafka-protocol's encoding of the header, for every api
    /// key and version it knows (header versions 0, 1 and 2; client ids of several lengths).
    #[test]
    fn frame_heads_match_kafka_protocols_headers() {
        for (api_key, version) in every_version() {
            for client_id in ["", "producer-1", &"x".repeat(300)] {
                let id = StrBytes::from_string(client_id.to_string());
                let header_version = api_key.request_header_version(version);
                let mut expected = BytesMut::new();
                let header = RequestHeader::default()
                    .with_request_api_key(api_key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(-5)
                    .with_client_id(Some(id.clone()));
                let header_len = header.compute_size(header_version).unwrap();
                expected.put_i32((header_len + 11) as i32);
                header.encode(&mut expected, header_version).unwrap();
                let head = request_frame_head(api_key, version, -5, &id, 11).unwrap();
                assert_eq!(&head[..], &expected[..], "{api_key:?} v{version}");
            }
            let header_version = api_key.response_header_version(version);
            let header = ResponseHeader::default().with_correlation_id(77);
            let mut expected = BytesMut::new();
            expected.put_i32((header.compute_size(header_version).unwrap() + 2) as i32);
            header.encode(&mut expected, header_version).unwrap();
            let head = response_frame_head(api_key, version, 77, 2).unwrap();
            assert_eq!(&head[..], &expected[..], "{api_key:?} v{version} response");
        }
        let too_long = StrBytes::from_string("x".repeat(40_000));
        assert!(request_frame_head(ApiKey::Produce, 9, 1, &too_long, 0).is_err());
    }

    #[test]
    fn response_head_round_trips() {
        let head = response_frame_head(ApiKey::Fetch, 12, 7, 3).unwrap();
        // Fetch v12 is flexible: header v1 = correlation id + empty tagged fields.
        assert_eq!(&head[..], &[0, 0, 0, 8, 0, 0, 0, 7, 0]);
        let (correlation_id, body) =
            split_response(Bytes::from_static(&[0, 0, 0, 7, 0, 1, 2, 3]), 1).unwrap();
        assert_eq!(correlation_id, 7);
        assert_eq!(&body[..], &[1, 2, 3]);
    }
}
