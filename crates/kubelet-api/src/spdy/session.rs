//! One SPDY connection on the server side: a reader task that decodes the client's frames and
//! hands each new stream (SYN_STREAM, answered with SYN_REPLY at once) to the caller, and a
//! writer task that owns the outgoing compression context. They are two tasks so that a stream
//! whose consumer is slow (stdin into a busy process) blocks only further reading, never the
//! output the process needs written to make progress.
//!
//! Flow control: we grant the client window (WINDOW_UPDATE) as its data enters a stream's small
//! bounded queue, so memory per stream stays bounded. We do not hold our own sends to the
//! client's window: Go's spdystream, which every Kubernetes client and the apiserver use, never
//! sends WINDOW_UPDATE, and a server that waited for one would stall after 64 KiB. TCP
//! backpressure bounds what we queue instead.
//!
//! The connection ends on the client's GOAWAY, on end of input, on a malformed frame, when it
//! has been idle (no frame either way) for the idle timeout, or when the caller closes it; then
//! every stream's incoming side ends and [`Connection::closed`] fires, so handlers can cancel
//! the work they run for the client.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
    time::Instant,
};
use tokio_util::{
    codec::{Decoder, FramedRead},
    sync::CancellationToken,
};

use super::{Codec, Frame, Headers, INITIAL_WINDOW, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM};

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub idle_timeout: Duration,
    /// Streams open at once on one connection; more are refused (RST_STREAM REFUSED_STREAM).
    pub max_streams: usize,
}

/// Data chunks queued per stream before the reader waits for the stream's consumer.
const STREAM_QUEUE: usize = 16;
/// Largest DATA frame we send: large writes are split so one stream cannot hog the writer.
const MAX_DATA_FRAME: usize = 32 * 1024;

/// A frame for the writer, or the order to say GOAWAY and close.
enum Out {
    Frame(Frame),
    Close,
}

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data; ends on its FIN or RST_STREAM, or when the connection ends.
    pub incoming: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

/// Our side of one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

/// The connection is gone; nothing more can be written.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY connection is closed")]
pub struct Closed;

impl StreamWriter {
    pub async fn write(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME));
            self.send(Frame::Data {
                stream_id: self.id,
                fin: false,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes our side (an empty DATA frame with FIN).
    pub async fn finish(&self) -> Result<(), Closed> {
        self.send(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    pub async fn reset(&self, status: u32) -> Result<(), Closed> {
        self.send(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.out.send(Out::Frame(frame)).await.map_err(|_| Closed)
    }
}

/// A running connection: new streams arrive on `streams`.
pub struct Connection {
    pub streams: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Out>,
    closed: CancellationToken,
}

impl Connection {
    /// Starts the reader and writer tasks over `io`.
    pub fn start<IO>(io: IO, settings: Settings) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(64);
        let (streams_tx, streams) = mpsc::channel(16);
        let closed = CancellationToken::new();
        let activity = Arc::new(Mutex::new(Instant::now()));
        let last_stream_id = Arc::new(AtomicU32::new(0));
        tokio::spawn(write_frames(
            write,
            out_rx,
            closed.clone(),
            activity.clone(),
            last_stream_id.clone(),
        ));
        tokio::spawn(read_frames(
            read,
            out.clone(),
            streams_tx,
            closed.clone(),
            activity,
            last_stream_id,
            settings,
        ));
        Connection { streams, out, closed }
    }

    /// Fires when the connection has ended, for whatever reason.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Says GOAWAY after everything queued, and closes the connection.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }
}

fn touch(activity: &Mutex<Instant>) {
    *activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
}

async fn write_frames<W: AsyncWrite>(
    write: W,
    mut out: mpsc::Receiver<Out>,
    closed: CancellationToken,
    activity: Arc<Mutex<Instant>>,
    last_stream_id: Arc<AtomicU32>,
) {
    let mut write = std::pin::pin!(write);
    let mut codec = Codec::new();
    let mut buffer = BytesMut::new();
    loop {
        let next = tokio::select! {
            next = out.recv() => next,
            () = closed.cancelled() => break,
        };
        let Some(next) = next else { break };
        let close = match next {
            Out::Frame(frame) => {
                if let Err(error) = codec.encode(&frame, &mut buffer) {
                    tracing::warn!(%error, "SPDY: dropping a frame that cannot be encoded");
                }
                false
            }
            Out::Close => {
                let _ = codec.encode(
                    &Frame::GoAway {
                        last_good_stream_id: last_stream_id.load(Ordering::Relaxed),
                        status: 0,
                    },
                    &mut buffer,
                );
                true
            }
        };
        // Batch what is already queued into one write.
        if !close && buffer.len() < 64 * 1024 && !out.is_empty() {
            continue;
        }
        if let Err(error) = write_all(&mut write, &mut buffer).await {
            tracing::debug!(%error, "SPDY: the client connection failed on write");
            break;
        }
        touch(&activity);
        if close {
            break;
        }
    }
    let _ = write.shutdown().await;
    closed.cancel();
}

async fn write_all<W: AsyncWrite>(
    write: &mut std::pin::Pin<&mut W>,
    buffer: &mut BytesMut,
) -> std::io::Result<()> {
    write.write_all(buffer).await?;
    buffer.clear();
    write.flush().await
}

/// `Codec` as a tokio decoder, for the reading half.
struct Decode(Codec);

impl Decoder for Decode {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        Ok(self.0.decode(src)?)
    }
}

#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error(transparent)]
    Frame(#[from] super::Error),
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
}

struct Incoming {
    data: mpsc::Sender<Bytes>,
    /// Bytes received since we last granted window.
    unacknowledged: u32,
}

async fn read_frames<R: AsyncRead + Unpin>(
    read: R,
    out: mpsc::Sender<Out>,
    new_streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
    activity: Arc<Mutex<Instant>>,
    last_good_stream_id: Arc<AtomicU32>,
    settings: Settings,
) {
    let mut frames = FramedRead::new(read, Decode(Codec::new()));
    let mut streams: HashMap<u32, Incoming> = HashMap::new();
    let mut last_stream_id = 0u32;
    // Why the connection ended, and whether that is worth more than a debug line.
    let (reason, notable) = loop {
        let deadline = *activity.lock().unwrap_or_else(|e| e.into_inner()) + settings.idle_timeout;
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = tokio::time::sleep_until(deadline) => {
                let last = *activity.lock().unwrap_or_else(|e| e.into_inner());
                if last + settings.idle_timeout <= Instant::now() {
                    break (format!("idle for {:?}", settings.idle_timeout), true);
                }
                continue;
            }
            () = closed.cancelled() => break ("closed".to_owned(), false),
        };
        let frame = match frame {
            None => break ("the client closed the connection".to_owned(), false),
            Some(Err(error)) => break (format!("{error}"), true),
            Some(Ok(frame)) => frame,
        };
        touch(&activity);
        let reply = |frame: Frame| out.send(Out::Frame(frame));
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                // Client streams are odd and increase (SPDY/3 §2.3.2).
                if stream_id % 2 == 0 || stream_id <= last_stream_id {
                    let _ = reply(Frame::RstStream {
                        stream_id,
                        status: RST_PROTOCOL_ERROR,
                    })
                    .await;
                    continue;
                }
                last_stream_id = stream_id;
                streams.retain(|_, incoming| !incoming.data.is_closed());
                if streams.len() >= settings.max_streams {
                    tracing::info!(
                        stream_id,
                        max = settings.max_streams,
                        "SPDY: refusing a stream beyond the per-connection limit"
                    );
                    let _ = reply(Frame::RstStream {
                        stream_id,
                        status: RST_REFUSED_STREAM,
                    })
                    .await;
                    continue;
                }
                last_good_stream_id.store(stream_id, Ordering::Relaxed);
                let (data, incoming) = mpsc::channel(STREAM_QUEUE);
                if flags & super::FLAG_FIN == 0 {
                    streams.insert(
                        stream_id,
                        Incoming {
                            data,
                            unacknowledged: 0,
                        },
                    );
                }
                if reply(Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Headers::new(),
                })
                .await
                .is_err()
                {
                    break ("the writer stopped".to_owned(), false);
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    incoming,
                    writer: StreamWriter {
                        id: stream_id,
                        out: out.clone(),
                    },
                };
                if new_streams.send(stream).await.is_err() {
                    // Nobody takes new streams any more; the handler ended.
                    break ("the handler is done".to_owned(), false);
                }
            }
            Frame::Data { stream_id, fin, data } => {
                let Some(incoming) = streams.get_mut(&stream_id) else {
                    continue;
                };
                let length = data.len() as u32;
                if !data.is_empty() && incoming.data.send(data).await.is_err() {
                    // The consumer no longer wants it: drop silently, as upstream does.
                    streams.remove(&stream_id);
                    continue;
                }
                incoming.unacknowledged = incoming.unacknowledged.saturating_add(length);
                if fin {
                    streams.remove(&stream_id);
                } else if incoming.unacknowledged >= INITIAL_WINDOW / 2 {
                    let delta = std::mem::take(&mut incoming.unacknowledged);
                    let _ = reply(Frame::WindowUpdate { stream_id, delta }).await;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                streams.remove(&stream_id);
            }
            Frame::Ping { id } => {
                // Echo the client's pings (odd ids); ours would be even and we send none.
                if id % 2 == 1 {
                    let _ = reply(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => break ("the client said GOAWAY".to_owned(), false),
            Frame::Headers { stream_id, fin, .. } => {
                if fin {
                    streams.remove(&stream_id);
                }
            }
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    };
    if notable {
        tracing::info!(%reason, "SPDY connection ends");
    } else {
        tracing::debug!(%reason, "SPDY connection ends");
    }
    drop(streams);
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    const HOURS_4: Duration = Duration::from_secs(4 * 60 * 60);

    fn settings() -> Settings {
        Settings {
            idle_timeout: HOURS_4,
            max_streams: 2,
        }
    }

    struct Client {
        io: DuplexStream,
        codec: Codec,
        buffer: BytesMut,
    }

    impl Client {
        async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            self.codec.encode(&frame, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }

        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buffer).unwrap() {
                    return Some(frame);
                }
                if self.io.read_buf(&mut self.buffer).await.unwrap() == 0 {
                    return None;
                }
            }
        }
    }

    fn connect() -> (Connection, Client) {
        let (server, client) = tokio::io::duplex(1 << 20);
        let connection = Connection::start(server, settings());
        let client = Client {
            io: client,
            codec: Codec::new(),
            buffer: BytesMut::new(),
        };
        (connection, client)
    }

    fn syn(stream_id: u32) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), "stdout".into())],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_the_timeout_is_closed_and_activity_postpones_it() {
        let (connection, mut client) = connect();
        let started = Instant::now();
        tokio::time::sleep(HOURS_4 - Duration::from_secs(60)).await;
        assert!(!connection.closed().is_cancelled());
        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(client.next().await, Some(Frame::Ping { id: 1 }));
        connection.closed().cancelled().await;
        // Closed a full timeout after the ping, not after the start.
        assert!(started.elapsed() >= HOURS_4 * 2 - Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_connection_without_a_panic() {
        let (connection, mut client) = connect();
        // A control frame of SPDY version 2.
        client
            .io
            .write_all(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0])
            .await
            .unwrap();
        connection.closed().cancelled().await;
    }

    #[tokio::test]
    async fn streams_are_answered_and_delivered_and_those_beyond_the_cap_refused() {
        let (mut connection, mut client) = connect();
        for id in [1, 3, 5] {
            client.send(syn(id)).await;
        }
        client
            .send(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"in"),
            })
            .await;
        let mut first = connection.streams.recv().await.unwrap();
        let _second = connection.streams.recv().await.unwrap();
        assert_eq!(first.id, 1);
        assert_eq!(super::super::header(&first.headers, "streamType"), Some("stdout"));
        assert_eq!(first.incoming.recv().await, Some(Bytes::from_static(b"in")));
        assert_eq!(first.incoming.recv().await, None, "FIN ends the stream's input");
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(client.next().await.unwrap());
        }
        assert!(seen.contains(&Frame::RstStream {
            stream_id: 5,
            status: RST_REFUSED_STREAM
        }));
        assert_eq!(
            seen.iter()
                .filter(|f| matches!(f, Frame::SynReply { .. }))
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn stream_ids_must_be_odd_and_increasing() {
        let (_connection, mut client) = connect();
        client.send(syn(3)).await;
        client.send(syn(1)).await;
        client.send(syn(4)).await;
        let mut resets = Vec::new();
        while resets.len() < 2 {
            if let Some(Frame::RstStream { stream_id, status }) = client.next().await {
                assert_eq!(status, RST_PROTOCOL_ERROR);
                resets.push(stream_id);
            }
        }
        assert_eq!(resets, vec![1, 4]);
    }

    #[tokio::test]
    async fn the_client_is_granted_window_as_its_data_is_taken() {
        let (mut connection, mut client) = connect();
        client.send(syn(1)).await;
        let mut stream = connection.streams.recv().await.unwrap();
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        for _ in 0..2 {
            client
                .send(Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: chunk.clone(),
                })
                .await;
        }
        for _ in 0..2 {
            assert_eq!(stream.incoming.recv().await.map(|b| b.len()), Some(16 * 1024));
        }
        loop {
            match client.next().await {
                Some(Frame::WindowUpdate { stream_id, delta }) => {
                    assert_eq!((stream_id, delta), (1, 32 * 1024));
                    break;
                }
                Some(_) => {}
                None => panic!("no WINDOW_UPDATE"),
            }
        }
    }

    #[tokio::test]
    async fn closing_says_goaway_after_what_was_queued() {
        let (mut connection, mut client) = connect();
        client.send(syn(1)).await;
        let stream = connection.streams.recv().await.unwrap();
        stream.writer.write(Bytes::from_static(b"out")).await.unwrap();
        stream.writer.finish().await.unwrap();
        connection.close().await;
        let mut frames = Vec::new();
        while let Some(frame) = client.next().await {
            frames.push(frame);
        }
        assert_eq!(
            frames[1..],
            [
                Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::from_static(b"out")
                },
                Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::GoAway {
                    last_good_stream_id: 1,
                    status: 0
                },
            ]
        );
        assert!(matches!(frames[0], Frame::SynReply { stream_id: 1, .. }));
    }
}
