//! The WebSocket side of streaming: the channel protocols (`channel.k8s.io` and its `v4.`/`v5.`
//! and `base64.` variants: one message per write, its first byte the channel; in base64 a text
//! message whose first character is the channel digit), the `v5` close signal (channel 255,
//! payload the channel the client closes), port-forward as channel pairs per port, and SPDY
//! tunnelled in binary messages (`SPDY/3.1+portforward.k8s.io`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;

/// Exec and attach subprotocols, newest first.
pub const EXEC_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// SPDY frames in binary messages; the apiserver's port-forward tunnel.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// Port-forward subprotocols: the tunnel first, then channel pairs per port.
pub const PORT_FORWARD_PROTOCOLS: [&str; 5] = [
    SPDY_TUNNEL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
    "channel.k8s.io",
];
/// Channels of exec and attach.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// `v5`: the client closed one of its channels (the payload names it).
pub const CLOSE: u8 = 255;

pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Base64,
}

impl Encoding {
    pub fn of(protocol: &str) -> Encoding {
        if protocol.contains("base64.") {
            Encoding::Base64
        } else {
            Encoding::Binary
        }
    }
}

enum Out {
    Channel(u8, Bytes),
}

/// Our side of one channel.
#[derive(Clone)]
pub struct ChannelWriter {
    channel: u8,
    out: mpsc::Sender<Out>,
}

#[derive(Debug, thiserror::Error)]
#[error("the WebSocket connection is closed")]
pub struct Closed;

impl ChannelWriter {
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        self.out
            .send(Out::Channel(self.channel, data))
            .await
            .map_err(|_| Closed)
    }
}

/// A WebSocket carrying channels: input per channel the caller listed as readable.
pub struct Channels {
    pub inputs: HashMap<u8, mpsc::Receiver<Bytes>>,
    out: mpsc::Sender<Out>,
    closed: CancellationToken,
}

impl Channels {
    pub fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            channel,
            out: self.out.clone(),
        }
    }

    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }
}

/// Close code 1000: Go's clients take only a normal closure as the end of their streams; a close
/// without a code (1005) fails every stream still being read.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// A connection a WebSocket can run over: the upgraded HTTP connection, or a test's pipe.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn websocket<IO: Io>(io: IO) -> WebSocketStream<IO> {
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await
}

/// Starts reading and writing channels over an upgraded connection. `readable` lists the
/// channels the client may write; `close_signal` is `v5`'s channel 255.
pub async fn channels<IO: Io>(
    io: IO,
    encoding: Encoding,
    readable: &[u8],
    close_signal: bool,
    idle_timeout: Duration,
) -> Channels {
    let (sink, stream) = websocket(io).await.split();
    let (out, out_rx) = mpsc::channel(64);
    let closed = CancellationToken::new();
    let activity = Arc::new(Mutex::new(Instant::now()));
    let mut senders = HashMap::new();
    let mut inputs = HashMap::new();
    for &channel in readable {
        let (sender, receiver) = mpsc::channel(16);
        senders.insert(channel, sender);
        inputs.insert(channel, receiver);
    }
    tokio::spawn(write_messages(
        sink,
        out_rx,
        encoding,
        closed.clone(),
        activity.clone(),
    ));
    tokio::spawn(read_messages(
        stream,
        senders,
        encoding,
        close_signal,
        closed.clone(),
        activity,
        idle_timeout,
    ));
    Channels { inputs, out, closed }
}

fn touch(activity: &Mutex<Instant>) {
    *activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
}

async fn write_messages(
    mut sink: futures::stream::SplitSink<WebSocketStream<impl Io>, Message>,
    mut out: mpsc::Receiver<Out>,
    encoding: Encoding,
    closed: CancellationToken,
    activity: Arc<Mutex<Instant>>,
) {
    loop {
        let next = tokio::select! {
            next = out.recv() => next,
            () = closed.cancelled() => break,
        };
        let Some(next) = next else { break };
        let message = match (next, encoding) {
            (Out::Channel(channel, data), Encoding::Binary) => {
                let mut message = BytesMut::with_capacity(1 + data.len());
                message.put_u8(channel);
                message.put_slice(&data);
                Message::Binary(message.freeze())
            }
            (Out::Channel(channel, data), Encoding::Base64) => {
                let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
                text.push(char::from(b'0'.wrapping_add(channel)));
                base64::engine::general_purpose::STANDARD.encode_string(&data, &mut text);
                Message::Text(text.into())
            }
        };
        if let Err(error) = sink.send(message).await {
            tracing::debug!(%error, "WebSocket: the client connection failed on write");
            break;
        }
        touch(&activity);
    }
    let _ = sink.send(normal_close()).await;
    let _ = sink.close().await;
    closed.cancel();
}

async fn read_messages(
    mut stream: futures::stream::SplitStream<WebSocketStream<impl Io>>,
    mut senders: HashMap<u8, mpsc::Sender<Bytes>>,
    encoding: Encoding,
    close_signal: bool,
    closed: CancellationToken,
    activity: Arc<Mutex<Instant>>,
    idle_timeout: Duration,
) {
    let (reason, notable) = loop {
        let deadline = *activity.lock().unwrap_or_else(|e| e.into_inner()) + idle_timeout;
        let message = tokio::select! {
            message = stream.next() => message,
            () = tokio::time::sleep_until(deadline) => {
                let last = *activity.lock().unwrap_or_else(|e| e.into_inner());
                if last + idle_timeout <= Instant::now() {
                    break (format!("idle for {idle_timeout:?}"), true);
                }
                continue;
            }
            () = closed.cancelled() => break ("closed".to_owned(), false),
        };
        let message = match message {
            None => break ("the client closed the connection".to_owned(), false),
            Some(Err(error)) => break (error.to_string(), true),
            Some(Ok(message)) => message,
        };
        touch(&activity);
        let (channel, payload) = match read(message, encoding) {
            Read::Channel(channel, payload) => (channel, payload),
            Read::Nothing => continue,
            Read::Closed => break ("the client closed the WebSocket".to_owned(), false),
            Read::Malformed(why) => break (why.to_owned(), true),
        };
        if close_signal && channel == CLOSE {
            if let Some(&closing) = payload.first() {
                // Dropping the sender ends the channel's input: stdin reaches EOF.
                senders.remove(&closing);
            }
            continue;
        }
        let Some(sender) = senders.get(&channel) else {
            tracing::debug!(channel, "WebSocket: ignoring input on a channel that takes none");
            continue;
        };
        if sender.send(payload).await.is_err() {
            senders.remove(&channel);
        }
    };
    if notable {
        tracing::info!(%reason, "WebSocket connection ends");
    } else {
        tracing::debug!(%reason, "WebSocket connection ends");
    }
    drop(senders);
    closed.cancel();
}

/// What one message from the client carries.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Channel(u8, Bytes),
    /// Pings, empty messages, and the wrong kind of message for the protocol (ignored as upstream
    /// does).
    Nothing,
    Closed,
    Malformed(&'static str),
}

fn read(message: Message, encoding: Encoding) -> Read {
    match (message, encoding) {
        (Message::Binary(mut data), Encoding::Binary) if !data.is_empty() => {
            let payload = data.split_off(1);
            Read::Channel(data[0], payload)
        }
        (Message::Text(text), Encoding::Base64) if !text.is_empty() => {
            let text = text.as_bytes();
            let Some(channel) = text.first().filter(|b| b.is_ascii_digit()).map(|b| b - b'0') else {
                return Read::Malformed("a base64 message without a channel digit");
            };
            match base64::engine::general_purpose::STANDARD.decode(&text[1..]) {
                Ok(payload) => Read::Channel(channel, Bytes::from(payload)),
                Err(_) => Read::Malformed("a base64 message that does not decode"),
            }
        }
        (Message::Close(_), _) => Read::Closed,
        _ => Read::Nothing,
    }
}

/// SPDY tunnelled in binary messages, as a byte stream for [`crate::spdy::session`]: each
/// message's payload is the next bytes of the SPDY connection, whatever its boundaries.
pub async fn tunnel<IO: Io>(io: IO) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut sink, mut stream) = websocket(io).await.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
    // Idleness is the SPDY session's business: it sees every frame both ways.
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) if to_spdy.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match from_spdy.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buffer[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    theirs
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOURS_4: Duration = Duration::from_secs(4 * 60 * 60);

    async fn connect(
        readable: &[u8],
        close_signal: bool,
    ) -> (Channels, WebSocketStream<tokio::io::DuplexStream>) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let channels = channels(server, Encoding::Binary, readable, close_signal, HOURS_4).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (channels, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_idle_for_the_timeout_is_closed_and_activity_postpones_it() {
        let (mut channels, mut client) = connect(&[STDIN], false).await;
        let mut stdin = channels.inputs.remove(&STDIN).unwrap();
        let started = Instant::now();
        tokio::time::sleep(HOURS_4 - Duration::from_secs(60)).await;
        assert!(!channels.closed().is_cancelled());
        client
            .send(Message::Binary(Bytes::from_static(b"\x00typed")))
            .await
            .unwrap();
        assert_eq!(stdin.recv().await, Some(Bytes::from_static(b"typed")));
        channels.closed().cancelled().await;
        assert!(started.elapsed() >= HOURS_4 * 2 - Duration::from_secs(60));
    }

    #[tokio::test]
    async fn the_v5_close_signal_ends_one_channels_input() {
        let (mut channels, mut client) = connect(&[STDIN, RESIZE], true).await;
        let mut stdin = channels.inputs.remove(&STDIN).unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"\x00last")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
            .await
            .unwrap();
        assert_eq!(stdin.recv().await, Some(Bytes::from_static(b"last")));
        assert_eq!(stdin.recv().await, None);
        assert!(!channels.closed().is_cancelled(), "the connection stays up");
    }

    #[test]
    fn binary_messages_carry_their_channel_in_the_first_byte() {
        assert_eq!(
            read(Message::Binary(Bytes::from_static(b"\x01out")), Encoding::Binary),
            Read::Channel(1, Bytes::from_static(b"out"))
        );
        assert_eq!(
            read(Message::Binary(Bytes::new()), Encoding::Binary),
            Read::Nothing
        );
    }

    #[test]
    fn base64_messages_carry_a_channel_digit_and_anything_else_is_malformed() {
        assert_eq!(
            read(Message::Text("0aGk=".into()), Encoding::Base64),
            Read::Channel(0, Bytes::from_static(b"hi"))
        );
        // A multi-byte first character must not be sliced through.
        assert!(matches!(
            read(Message::Text("éaGk=".into()), Encoding::Base64),
            Read::Malformed(_)
        ));
        assert!(matches!(
            read(Message::Text("0!!".into()), Encoding::Base64),
            Read::Malformed(_)
        ));
        assert_eq!(
            read(Message::Text("0aGk=".into()), Encoding::Binary),
            Read::Nothing
        );
    }
}
