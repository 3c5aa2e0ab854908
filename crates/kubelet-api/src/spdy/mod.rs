//! SPDY/3.1 framing, as Kubernetes streams speak it (`Upgrade: SPDY/3.1`): the 8-byte frame
//! header, the control frames, DATA frames, and name/value header blocks compressed with zlib
//! primed by the SPDY/3 dictionary, one compression context per direction per connection. The
//! codec is pure (bytes in, frames out) so it can be fuzzed; [`session`] runs a connection.
//!
//! Nothing a peer sends may panic the decoder: every length is checked before it is used, a
//! header block is capped (compressed and decompressed), and a malformed frame is an [`Error`]
//! that ends the connection.

pub mod session;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header compression dictionary (SPDY/3 spec §2.6.10.1; 1423 bytes of spec data).
pub const DICTIONARY: &[u8] = include_bytes!("dictionary.bin");

pub const VERSION: u16 = 3;
/// Largest payload a frame header can describe (24 bits).
pub const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// The cap on a header block, compressed or not; Kubernetes streams carry a handful of short
/// headers, so anything near this is abuse.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The largest DATA frame a peer may send us. A SPDY/3.1 peer never exceeds its 64 KiB window,
/// and Go's clients write what one `io.Copy` buffer holds (32 KiB); refusing more up front keeps a
/// client from making us buffer 16 MiB per frame.
pub const MAX_DATA_IN: usize = 1 << 20;
/// The initial flow-control window of a stream (SPDY/3.1 §2.6.8).
pub const INITIAL_WINDOW: u32 = 64 * 1024;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("frame of {0} bytes is longer than allowed")]
    TooLong(usize),
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("{kind} frame of {length} bytes is too short")]
    Short { kind: &'static str, length: usize },
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("header block does not decompress: {0}")]
    Inflate(String),
    #[error("header block cannot be compressed: {0}")]
    Deflate(String),
    #[error("malformed header block: {0}")]
    HeaderBlock(&'static str),
    #[error("stream id 0 on a {0} frame")]
    StreamZero(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Header name/value pairs; names are lower case on the wire. A value with several values
/// joined by NUL is kept as it is.
pub type Headers = Vec<(String, String)>;

/// The first value of `name` (case-insensitive), as Go's `http.Header.Get`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type this codec does not know; SPDY says to ignore it.
    Unknown {
        kind: u16,
    },
}

/// One side's compression state. Encoding and decoding use separate contexts, each living as
/// long as the connection, as SPDY requires.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spdy::Codec")
    }
}

impl Codec {
    pub fn new() -> Codec {
        let mut deflate = Compress::new(Compression::best(), true);
        // Without a dictionary the peer's inflater would never ask for one and headers would
        // still round-trip, but every SPDY/3 peer expects the FDICT header.
        let _ = deflate.set_dictionary(DICTIONARY);
        Codec {
            deflate,
            inflate: Decompress::new(true),
        }
    }

    /// Decodes one frame from the front of `buf`, or `None` if it holds less than a frame.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        let limit = if buf[0] & 0x80 == 0 {
            MAX_DATA_IN
        } else {
            // A SYN_STREAM's fixed fields, then at most a capped header block.
            MAX_HEADER_BLOCK + 10
        };
        if length > limit {
            return Err(Error::TooLong(length));
        }
        if buf.len() < 8 + length {
            buf.reserve(8 + length - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(8 + length).freeze();
        let first = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: frame,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let short = |kind: &'static str| Error::Short { kind, length };
        let fin = flags & FLAG_FIN != 0;
        Ok(Some(match kind {
            TYPE_SYN_STREAM => {
                if length < 10 {
                    return Err(short("SYN_STREAM"));
                }
                let stream_id = frame.get_u32() & 0x7fff_ffff;
                let associated_to = frame.get_u32() & 0x7fff_ffff;
                let priority = frame.get_u8() >> 5;
                frame.advance(1);
                if stream_id == 0 {
                    return Err(Error::StreamZero("SYN_STREAM"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers: self.inflate_headers(&frame)?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if length < 4 {
                    return Err(short("SYN_REPLY/HEADERS"));
                }
                let stream_id = frame.get_u32() & 0x7fff_ffff;
                let headers = self.inflate_headers(&frame)?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if length < 8 {
                    return Err(short("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: frame.get_u32() & 0x7fff_ffff,
                    status: frame.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                if length < 4 {
                    return Err(short("SETTINGS"));
                }
                let count = frame.get_u32() as usize;
                if count.checked_mul(8) != Some(frame.len()) {
                    return Err(short("SETTINGS"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let flags_id = frame.get_u32();
                        ((flags_id >> 24) as u8, flags_id & 0x00ff_ffff, frame.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                if length < 4 {
                    return Err(short("PING"));
                }
                Frame::Ping { id: frame.get_u32() }
            }
            TYPE_GOAWAY => {
                // SPDY/3 GOAWAY has a status; SPDY/2 peers sent 4 bytes.
                if length < 4 {
                    return Err(short("GOAWAY"));
                }
                let last_good_stream_id = frame.get_u32() & 0x7fff_ffff;
                let status = if frame.len() >= 4 { frame.get_u32() } else { 0 };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                if length < 8 {
                    return Err(short("WINDOW_UPDATE"));
                }
                Frame::WindowUpdate {
                    stream_id: frame.get_u32() & 0x7fff_ffff,
                    delta: frame.get_u32() & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        }))
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<()> {
        match frame {
            Frame::Data { stream_id, fin, data } => {
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(Error::TooLong(data.len()));
                }
                out.reserve(8 + data.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                put_flags_length(out, u8::from(*fin), data.len());
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let block = self.deflate_headers(headers)?;
                control(out, TYPE_SYN_STREAM, *flags, 10 + block.len())?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(0);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.deflate_headers(headers)?;
                control(out, kind, u8::from(*fin), 4 + block.len())?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, TYPE_RST_STREAM, 0, 8)?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings { entries } => {
                let length = entries
                    .len()
                    .checked_mul(8)
                    .and_then(|n| n.checked_add(4))
                    .ok_or(Error::TooLong(usize::MAX))?;
                control(out, TYPE_SETTINGS, 0, length)?;
                out.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    out.put_u32(u32::from(*flags) << 24 | (id & 0x00ff_ffff));
                    out.put_u32(*value);
                }
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(out, TYPE_GOAWAY, 0, 8)?;
                out.put_u32(last_good_stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, 8)?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Unknown { kind } => control(out, *kind, 0, 0)?,
        }
        Ok(())
    }

    fn inflate_headers(&mut self, compressed: &[u8]) -> Result<Headers> {
        if compressed.is_empty() {
            return Ok(Headers::new());
        }
        if compressed.len() > MAX_HEADER_BLOCK {
            return Err(Error::HeaderBlockTooLarge);
        }
        let mut plain: Vec<u8> = Vec::with_capacity(compressed.len() * 4);
        let mut input = compressed;
        loop {
            if plain.len() >= MAX_HEADER_BLOCK {
                return Err(Error::HeaderBlockTooLarge);
            }
            if plain.capacity() == plain.len() {
                plain.reserve(plain.len().max(256).min(MAX_HEADER_BLOCK + 1 - plain.len()));
            }
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let result = self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before_in) as usize;
            let produced = self.inflate.total_out() - before_out;
            input = input.get(consumed..).unwrap_or_default();
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && plain.len() < plain.capacity() => break,
                Ok(_) if consumed == 0 && produced == 0 && plain.len() < plain.capacity() => {
                    return Err(Error::Inflate("no progress".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(Error::Inflate(e.to_string())),
            }
        }
        if plain.len() > MAX_HEADER_BLOCK {
            return Err(Error::HeaderBlockTooLarge);
        }
        parse_header_block(&plain)
    }

    fn deflate_headers(&mut self, headers: &Headers) -> Result<Vec<u8>> {
        let plain = header_block(headers)?;
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Deflate(e.to_string()))?;
            let consumed = (self.deflate.total_in() - before) as usize;
            input = input.get(consumed..).unwrap_or_default();
            // A sync flush is complete once the output buffer was not filled.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.len() > MAX_HEADER_BLOCK {
            return Err(Error::HeaderBlockTooLarge);
        }
        Ok(out)
    }
}

fn put_flags_length(out: &mut BytesMut, flags: u8, length: usize) {
    out.put_u8(flags);
    out.put_u8((length >> 16) as u8);
    out.put_u8((length >> 8) as u8);
    out.put_u8(length as u8);
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, length: usize) -> Result<()> {
    if length > MAX_FRAME_LENGTH {
        return Err(Error::TooLong(length));
    }
    out.reserve(8 + length);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    put_flags_length(out, flags, length);
    Ok(())
}

fn header_block(headers: &Headers) -> Result<Vec<u8>> {
    let mut block = Vec::new();
    block.put_u32(headers.len() as u32);
    for (name, value) in headers {
        for part in [name.to_ascii_lowercase().as_str(), value.as_str()] {
            block.put_u32(u32::try_from(part.len()).map_err(|_| Error::HeaderBlockTooLarge)?);
            block.put_slice(part.as_bytes());
        }
        if block.len() > MAX_HEADER_BLOCK {
            return Err(Error::HeaderBlockTooLarge);
        }
    }
    Ok(block)
}

fn parse_header_block(mut block: &[u8]) -> Result<Headers> {
    fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8]> {
        if block.len() < 4 {
            return Err(Error::HeaderBlock("truncated length"));
        }
        let length = block.get_u32() as usize;
        if block.len() < length {
            return Err(Error::HeaderBlock("length beyond the block"));
        }
        let (value, rest) = block.split_at(length);
        *block = rest;
        Ok(value)
    }
    if block.len() < 4 {
        return Err(Error::HeaderBlock("no pair count"));
    }
    let count = block.get_u32() as usize;
    // Each pair needs at least 8 bytes: a count beyond that is a lie, not an allocation.
    if count > block.len() / 8 {
        return Err(Error::HeaderBlock("more pairs than bytes"));
    }
    let mut headers = Headers::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        if name.is_empty() {
            return Err(Error::HeaderBlock("empty name"));
        }
        let name = std::str::from_utf8(name).map_err(|_| Error::HeaderBlock("name is not UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| Error::HeaderBlock("value is not UTF-8"))?;
        headers.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers() -> impl Strategy<Value = Headers> {
        proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..8)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let id = 1u32..0x7fff_ffff;
        prop_oneof![
            (
                id.clone(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..2048)
            )
                .prop_map(|(stream_id, fin, data)| Frame::Data {
                    stream_id,
                    fin,
                    data: data.into()
                }),
            (id.clone(), 0u32..0x7fff_ffff, 0u8..8, 0u8..4, headers()).prop_map(
                |(stream_id, associated_to, priority, flags, headers)| Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers
                }
            ),
            (id.clone(), any::<bool>(), headers()).prop_map(|(stream_id, fin, headers)| Frame::SynReply {
                stream_id,
                fin,
                headers
            }),
            (id.clone(), any::<bool>(), headers()).prop_map(|(stream_id, fin, headers)| Frame::Headers {
                stream_id,
                fin,
                headers
            }),
            (id.clone(), any::<u32>()).prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
            proptest::collection::vec((any::<u8>(), 0u32..0x00ff_ffff, any::<u32>()), 0..5)
                .prop_map(|entries| Frame::Settings { entries }),
            any::<u32>().prop_map(|id| Frame::Ping { id }),
            (0u32..0x7fff_ffff, any::<u32>()).prop_map(|(last_good_stream_id, status)| Frame::GoAway {
                last_good_stream_id,
                status
            }),
            (0u32..0x7fff_ffff, 0u32..0x7fff_ffff)
                .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        ]
    }

    proptest! {
        /// Frames survive encode → decode, through one compression context per direction kept
        /// across frames as on a connection, and whatever way the bytes are split on arrival.
        #[test]
        fn frames_round_trip_through_encode_and_decode(frames in proptest::collection::vec(frame(), 1..12), split in 1usize..64) {
            let mut sender = Codec::new();
            let mut receiver = Codec::new();
            let mut wire = BytesMut::new();
            for frame in &frames {
                sender.encode(frame, &mut wire).unwrap();
            }
            let mut arrived = BytesMut::new();
            let mut decoded = Vec::new();
            for chunk in wire.chunks(split) {
                arrived.extend_from_slice(chunk);
                while let Some(frame) = receiver.decode(&mut arrived).unwrap() {
                    decoded.push(frame);
                }
            }
            prop_assert!(arrived.is_empty());
            prop_assert_eq!(decoded, frames);
        }

        /// Whatever a peer sends, the decoder answers a frame, an error or "more bytes", never a
        /// panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut codec = Codec::new();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        /// Control frames with valid framing but a garbage header block are errors, not panics.
        #[test]
        fn garbage_header_blocks_are_errors(block in proptest::collection::vec(any::<u8>(), 0..2048), stream_id in 1u32..100) {
            let mut wire = BytesMut::new();
            control(&mut wire, TYPE_SYN_STREAM, 0, 10 + block.len()).unwrap();
            wire.put_u32(stream_id);
            wire.put_u32(0);
            wire.put_u16(0);
            wire.put_slice(&block);
            let mut codec = Codec::new();
            let _ = codec.decode(&mut wire);
        }
    }

    #[test]
    fn a_header_block_that_inflates_beyond_the_cap_is_refused() {
        let mut sender = Codec::new();
        let huge: Headers = (0..40).map(|i| (format!("x-{i}"), "a".repeat(30_000))).collect();
        // Encoding refuses first; so craft the block by hand through the deflater.
        assert_eq!(
            sender.encode(
                &Frame::SynReply {
                    stream_id: 1,
                    fin: false,
                    headers: huge.clone()
                },
                &mut BytesMut::new()
            ),
            Err(Error::HeaderBlockTooLarge)
        );
        let mut plain = Vec::new();
        plain.put_u32(1);
        plain.put_u32(4);
        plain.put_slice(b"name");
        plain.put_u32(2 << 20);
        plain.extend(std::iter::repeat_n(b'a', 2 << 20));
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(DICTIONARY).unwrap();
        let mut compressed = Vec::with_capacity(plain.len());
        deflate
            .compress_vec(&plain, &mut compressed, FlushCompress::Sync)
            .unwrap();
        let mut wire = BytesMut::new();
        control(&mut wire, TYPE_SYN_REPLY, 0, 4 + compressed.len()).unwrap();
        wire.put_u32(1);
        wire.put_slice(&compressed);
        assert_eq!(Codec::new().decode(&mut wire), Err(Error::HeaderBlockTooLarge));
    }

    #[test]
    fn a_frame_announcing_more_than_the_cap_is_refused_before_it_is_buffered() {
        let mut data = BytesMut::from(&[0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x00, 0x00][..]);
        assert_eq!(Codec::new().decode(&mut data), Err(Error::TooLong(2 << 20)));
        let mut control = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            Codec::new().decode(&mut control),
            Err(Error::TooLong(MAX_FRAME_LENGTH))
        );
    }

    #[test]
    fn header_lookup_ignores_case_and_takes_the_first_of_several_values() {
        let headers = vec![("streamtype".to_owned(), "stdout\0other".to_owned())];
        assert_eq!(header(&headers, "streamType"), Some("stdout"));
        assert_eq!(header(&headers, "port"), None);
    }
}
