//! Exec, attach, run and port-forward over real TLS on loopback, as the apiserver and kubectl
//! speak them: WebSocket channels, SPDY/3.1 (with a client built on the crate's own codec), and
//! a backend that runs real local processes and connects to real loopback listeners.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tke_kubelet_api::{
    KubeletApi, Reviews, User,
    auth::Attributes,
    spdy::{Codec, Frame},
    tls::ServingCertificate,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode,
};

mod support;

use support::{AbortOnDrop, LocalNode, echo_listener, payload};

const NODE: &str = "eklet-subnet-a";
const UID: &str = "3b0c4a58-0000-4000-8000-000000000001";

/// Token `admin` may do anything on the node; `getter` may only `get` (so it reads logs but
/// must not exec through a WebSocket GET).
struct FakeReviews;

impl Reviews for FakeReviews {
    async fn review_token(&self, token: &str) -> tke_kubelet_api::auth::Result<Option<User>> {
        Ok(["admin", "getter"].contains(&token).then(|| User {
            name: token.to_owned(),
            ..User::default()
        }))
    }

    async fn review_access(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> tke_kubelet_api::auth::Result<bool> {
        Ok(attributes.node == NODE
            && match user.name.as_str() {
                "admin" => true,
                "getter" => attributes.verb == "get",
                _ => false,
            })
    }
}

struct Running {
    port: u16,
    ca_pem: String,
    backend: Arc<LocalNode>,
    _dir: tempfile::TempDir,
    _server: AbortOnDrop,
}

async fn start() -> Result<Running> {
    start_with(tke_kubelet_api::StreamingLimits::default()).await
}

async fn start_with(limits: tke_kubelet_api::StreamingLimits) -> Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("tls.crt"), cert.pem())?;
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem())?;
    std::fs::write(dir.path().join("ca.crt"), &ca_pem)?;
    let tls = tke_kubelet_api::server_config(
        &ServingCertificate::Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        },
        Some(&dir.path().join("ca.crt")),
    )?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": UID},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}]},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "web", "image": "nginx", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-03-01T10:00:01Z"}}},
            {"name": "sidecar", "image": "envoy", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}
    }))?;
    let backend = Arc::new(LocalNode::new(pod));
    let api = KubeletApi::with_limits(vec![NODE.to_owned()], backend.clone(), FakeReviews, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        if let Err(error) = tke_kubelet_api::serve(listener, tls, api).await {
            eprintln!("{error}");
        }
    });
    Ok(Running {
        port,
        ca_pem,
        backend,
        _dir: dir,
        _server: AbortOnDrop(server),
    })
}

impl Running {
    /// A TLS connection to the server speaking HTTP/1.1 (upgrades need it).
    async fn connect(&self) -> Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types_from_pem(&self.ca_pem)? {
            roots.add(cert)?;
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        Ok(connector.connect(name, tcp).await?)
    }

    fn https(&self) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
            .build()?)
    }

    /// Sends an upgrade request; returns the status, the response head and the connection.
    async fn upgrade(
        &self,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String, TlsStream<TcpStream>)> {
        let mut io = self.connect().await?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        io.write_all(request.as_bytes()).await?;
        // Byte by byte, so no byte after the head is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = io.read_u8().await.context("reading the response head")?;
            head.push(byte);
        }
        let head = String::from_utf8(head)?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        Ok((status, head, io))
    }

    async fn websocket(
        &self,
        path: &str,
        token: &str,
        protocol: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>> {
        let mut request = format!("wss://127.0.0.1:{}{path}", self.port).into_client_request()?;
        request.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol)?);
        let (ws, response) = tokio_tungstenite::client_async(request, self.connect().await?).await?;
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol.split(',').next().unwrap_or_default().trim())
        );
        Ok(ws)
    }
}

fn rustls_pki_types_from_pem(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

fn exec_path(script: &str, query: &str) -> String {
    let script: String = script
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect();
    format!("/exec/shop/web-1/web?command=sh&command=-c&command={script}&{query}")
}

const SCRIPT: &str = "read line; echo \"out:$line\"; echo err >&2; exit 3";

/// What a client collected per channel (or stream), and the status.
#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
}

fn exit_code_of(status: &[u8]) -> Result<String> {
    let status: serde_json::Value =
        serde_json::from_slice(status).context("the error channel holds a Status")?;
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode", "{status}");
    Ok(status["details"]["causes"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn websocket_v5_exec_carries_stdin_stdout_stderr_and_the_exit_code() -> Result<()> {
    let node = start().await?;
    let mut ws = node
        .websocket(
            &exec_path(SCRIPT, "input=1&output=1&error=1"),
            "admin",
            "v5.channel.k8s.io, v4.channel.k8s.io",
        )
        .await?;
    ws.send(Message::Binary(Bytes::from_static(b"\x00hello\n")))
        .await?;
    // v5: close stdin (channel 0) with the close signal.
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await?;
    let mut got = Collected::default();
    while let Some(message) = ws.next().await {
        match message? {
            Message::Binary(data) if !data.is_empty() => match data[0] {
                1 => got.stdout.extend_from_slice(&data[1..]),
                2 => got.stderr.extend_from_slice(&data[1..]),
                3 => got.error.extend_from_slice(&data[1..]),
                other => bail!("a message on channel {other}"),
            },
            Message::Close(frame) => {
                // Go's clients end their streams only on a normal closure (1000).
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&got.stdout), "out:hello\n");
    assert_eq!(String::from_utf8_lossy(&got.stderr), "err\n");
    assert_eq!(exit_code_of(&got.error)?, "3");
    Ok(())
}

#[tokio::test]
async fn websocket_base64_exec_encodes_each_channel_as_text() -> Result<()> {
    let node = start().await?;
    let mut ws = node
        .websocket(
            &exec_path("echo hi; exit 0", "output=1"),
            "admin",
            "base64.channel.k8s.io",
        )
        .await?;
    let mut stdout = Vec::new();
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) if text.as_str().starts_with('1') => {
                use base64::Engine as _;
                stdout.extend(base64::engine::general_purpose::STANDARD.decode(&text.as_str()[1..])?);
            }
            Message::Text(text) if text.as_str().starts_with('3') && text.len() > 1 => {
                bail!("a successful command reported {text:?}")
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(stdout, b"hi\n");
    Ok(())
}

/// A SPDY client on the crate's own codec, over TLS or tunnelled in a WebSocket.
struct SpdyClient<IO = TlsStream<TcpStream>> {
    io: IO,
    codec: Codec,
    buffer: BytesMut,
}

impl SpdyClient {
    async fn open(node: &Running, path: &str, protocol: &str) -> Result<SpdyClient> {
        let (status, head, io) = node
            .upgrade(
                path,
                "admin",
                &[("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)],
            )
            .await?;
        assert_eq!(status, 101, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-stream-protocol-version: {protocol}")),
            "{head}"
        );
        Ok(SpdyClient::over(io))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> SpdyClient<IO> {
    fn over(io: IO) -> SpdyClient<IO> {
        SpdyClient {
            io,
            codec: Codec::new(),
            buffer: BytesMut::new(),
        }
    }

    async fn send(&mut self, frame: Frame) -> Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode(&frame, &mut out)?;
        self.io.write_all(&out).await?;
        Ok(())
    }

    async fn open_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> Result<()> {
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .await
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) -> Result<()> {
        self.send(Frame::Data {
            stream_id: id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await
    }

    /// The next frame, or `None` at the end of the connection.
    async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer)? {
                return Ok(Some(frame));
            }
            if self.io.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }
}

async fn spdy_exec(node: &Running, protocol: &str) -> Result<Collected> {
    let mut client = SpdyClient::open(node, &exec_path(SCRIPT, "input=1&output=1&error=1"), protocol).await?;
    client.open_stream(1, &[("streamType", "error")]).await?;
    client.open_stream(3, &[("streamType", "stdin")]).await?;
    client.open_stream(5, &[("streamType", "stdout")]).await?;
    client.open_stream(7, &[("streamType", "stderr")]).await?;
    client.data(3, b"hello\n", true).await?;
    let mut got = Collected::default();
    let mut replies = 0;
    while let Some(frame) = client.next().await? {
        match frame {
            Frame::SynReply { .. } => replies += 1,
            Frame::Data { stream_id, data, .. } => match stream_id {
                1 => got.error.extend_from_slice(&data),
                5 => got.stdout.extend_from_slice(&data),
                7 => got.stderr.extend_from_slice(&data),
                // v1: the server ends its side of stdin at once.
                3 if data.is_empty() && protocol == "channel.k8s.io" => {}
                other => bail!("data on stream {other}"),
            },
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    assert_eq!(replies, 4, "every stream is answered with SYN_REPLY");
    Ok(got)
}

#[tokio::test]
async fn spdy_v4_exec_carries_stdin_stdout_stderr_and_the_exit_code() -> Result<()> {
    let node = start().await?;
    let got = spdy_exec(&node, "v4.channel.k8s.io").await?;
    assert_eq!(String::from_utf8_lossy(&got.stdout), "out:hello\n");
    assert_eq!(String::from_utf8_lossy(&got.stderr), "err\n");
    assert_eq!(exit_code_of(&got.error)?, "3");
    Ok(())
}

#[tokio::test]
async fn spdy_v1_to_v3_exec_reports_a_non_zero_exit_as_text() -> Result<()> {
    let node = start().await?;
    for protocol in ["channel.k8s.io", "v2.channel.k8s.io", "v3.channel.k8s.io"] {
        let got = spdy_exec(&node, protocol).await?;
        assert_eq!(String::from_utf8_lossy(&got.stdout), "out:hello\n", "{protocol}");
        assert_eq!(
            String::from_utf8_lossy(&got.error),
            "command terminated with non-zero exit code: exit status 3",
            "{protocol}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_spdy_stream_the_query_did_not_ask_for_is_reset_and_does_not_count() -> Result<()> {
    let node = start().await?;
    let mut client = SpdyClient::open(&node, &exec_path("echo out", "output=1"), "v4.channel.k8s.io").await?;
    client.open_stream(1, &[("streamType", "error")]).await?;
    client.open_stream(3, &[("streamType", "stderr")]).await?;
    client.open_stream(5, &[("streamType", "stdout")]).await?;
    let (mut stdout, mut reset) = (Vec::new(), None);
    while let Some(frame) = client.next().await? {
        match frame {
            Frame::Data {
                stream_id: 5, data, ..
            } => stdout.extend_from_slice(&data),
            Frame::RstStream { stream_id, .. } => reset = Some(stream_id),
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    assert_eq!(reset, Some(3));
    assert_eq!(stdout, b"out\n");
    Ok(())
}

#[tokio::test]
async fn spdy_negotiation_refuses_unknown_protocols_with_403_naming_ours() -> Result<()> {
    let node = start().await?;
    let (status, head, _) = node
        .upgrade(
            &exec_path("true", "output=1"),
            "admin",
            &[
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
            ],
        )
        .await?;
    assert_eq!(status, 403, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
        "{head}"
    );
    Ok(())
}

#[tokio::test]
async fn spdy_port_forward_round_trips_bytes_over_several_concurrent_connections() -> Result<()> {
    let node = start().await?;
    let (port, _echo) = echo_listener().await?;
    let port = port.to_string();
    let mut client = SpdyClient::open(&node, "/portForward/shop/web-1", "portforward.k8s.io").await?;
    // Three forwarded connections at once, each bigger than a stream's initial window.
    let sent: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 200 * 1024 + usize::from(i))).collect();
    for request in 0..3u32 {
        let id = request.to_string();
        let error = 1 + 4 * request;
        client
            .open_stream(
                error,
                &[("streamType", "error"), ("port", &port), ("requestID", &id)],
            )
            .await?;
        client.data(error, b"", true).await?;
        client
            .open_stream(
                error + 2,
                &[("streamType", "data"), ("port", &port), ("requestID", &id)],
            )
            .await?;
    }
    // Interleave the three uploads in chunks, then half-close each.
    for offset in (0..210 * 1024).step_by(16 * 1024) {
        for (request, bytes) in sent.iter().enumerate() {
            if offset < bytes.len() {
                let end = (offset + 16 * 1024).min(bytes.len());
                client
                    .data(3 + 4 * request as u32, &bytes[offset..end], false)
                    .await?;
            }
        }
    }
    for request in 0..3u32 {
        client.data(3 + 4 * request, b"", true).await?;
    }
    let mut received = vec![Vec::new(); 3];
    let mut finished = 0;
    let mut errors = Vec::new();
    while finished < 3 {
        let Some(frame) = client.next().await? else {
            bail!("the connection ended with {finished} forwards finished")
        };
        if let Frame::Data { stream_id, fin, data } = frame {
            if stream_id % 4 == 1 {
                errors.extend_from_slice(&data);
                continue;
            }
            let request = ((stream_id - 3) / 4) as usize;
            received[request].extend_from_slice(&data);
            if fin {
                finished += 1;
            }
        }
    }
    assert!(errors.is_empty(), "{}", String::from_utf8_lossy(&errors));
    for (request, (got, want)) in received.iter().zip(&sent).enumerate() {
        assert!(
            got == want,
            "request {request}: {} bytes back of {}",
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// Forwards `payload` through one data/error stream pair to `port` and returns what came back.
async fn forward_once<IO: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SpdyClient<IO>,
    port: u16,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let port = port.to_string();
    client
        .open_stream(1, &[("streamType", "error"), ("port", &port), ("requestID", "0")])
        .await?;
    client.data(1, b"", true).await?;
    client
        .open_stream(3, &[("streamType", "data"), ("port", &port), ("requestID", "0")])
        .await?;
    for chunk in payload.chunks(16 * 1024) {
        client.data(3, chunk, false).await?;
    }
    client.data(3, b"", true).await?;
    let mut received = Vec::new();
    loop {
        match client.next().await? {
            Some(Frame::Data {
                stream_id: 3,
                data,
                fin,
            }) => {
                received.extend_from_slice(&data);
                if fin {
                    return Ok(received);
                }
            }
            Some(Frame::Data {
                stream_id: 1, data, ..
            }) if !data.is_empty() => {
                bail!("error stream: {}", String::from_utf8_lossy(&data))
            }
            Some(_) => {}
            None => bail!("the connection ended after {} bytes", received.len()),
        }
    }
}

#[tokio::test]
async fn spdy_tunnelled_in_a_websocket_forwards_a_port_as_the_apiserver_sends_it() -> Result<()> {
    let node = start().await?;
    let (port, _echo) = echo_listener().await?;
    let ws = node
        .websocket("/portForward/shop/web-1", "admin", "SPDY/3.1+portforward.k8s.io")
        .await?;
    // The SPDY bytes ride in binary messages whose boundaries mean nothing.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
    let _down = AbortOnDrop(tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Binary(data) = message
                && to_spdy.write_all(&data).await.is_err()
            {
                break;
            }
        }
    }));
    let _up = AbortOnDrop(tokio::spawn(async move {
        let mut buffer = vec![0u8; 8 * 1024];
        while let Ok(n) = from_spdy.read(&mut buffer).await {
            if n == 0
                || sink
                    .send(Message::Binary(Bytes::copy_from_slice(&buffer[..n])))
                    .await
                    .is_err()
            {
                break;
            }
        }
    }));
    let sent = payload(3, 150 * 1024);
    let received = forward_once(&mut SpdyClient::over(theirs), port, &sent).await?;
    assert!(
        received == sent,
        "{} bytes back of {}",
        received.len(),
        sent.len()
    );
    Ok(())
}

#[tokio::test]
async fn spdy_port_forward_to_a_closed_port_reports_on_the_error_stream() -> Result<()> {
    let node = start().await?;
    // A port nothing listens on: bind, learn the port, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?
        .port()
        .to_string();
    let mut client = SpdyClient::open(&node, "/portForward/shop/web-1", "portforward.k8s.io").await?;
    client
        .open_stream(
            1,
            &[("streamType", "error"), ("port", &closed), ("requestID", "0")],
        )
        .await?;
    client
        .open_stream(
            3,
            &[("streamType", "data"), ("port", &closed), ("requestID", "0")],
        )
        .await?;
    let mut error = Vec::new();
    loop {
        match client.next().await? {
            Some(Frame::Data {
                stream_id: 1,
                data,
                fin,
            }) => {
                error.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    let error = String::from_utf8(error)?;
    assert!(
        error.starts_with(&format!("error forwarding port {closed} to pod web-1, uid {UID}")),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn websocket_port_forward_channel_pairs_round_trip_bytes_after_the_port_prefix() -> Result<()> {
    let node = start().await?;
    let (port, _echo) = echo_listener().await?;
    let mut ws = node
        .websocket(
            &format!("/portForward/shop/web-1?port={port}"),
            "admin",
            "v4.channel.k8s.io",
        )
        .await?;
    let sent = payload(7, 100 * 1024);
    for chunk in sent.chunks(30 * 1024) {
        let mut message = vec![0u8];
        message.extend_from_slice(chunk);
        ws.send(Message::Binary(message.into())).await?;
    }
    let mut prefixes = Vec::new();
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let Some(message) = ws.next().await else {
            bail!("closed after {} bytes", received.len())
        };
        if let Message::Binary(data) = message? {
            match (data.first(), prefixes.len()) {
                (Some(&channel), n) if n < 2 && data.len() == 3 => {
                    prefixes.push((channel, data[1..].to_vec()))
                }
                (Some(0), _) => received.extend_from_slice(&data[1..]),
                (Some(1), _) => bail!("error: {}", String::from_utf8_lossy(&data[1..])),
                _ => {}
            }
        }
    }
    let port_bytes = port.to_le_bytes().to_vec();
    prefixes.sort();
    assert_eq!(prefixes, vec![(0, port_bytes.clone()), (1, port_bytes)]);
    assert!(
        received == sent,
        "{} bytes back of {}",
        received.len(),
        sent.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_vanishes_mid_exec_has_its_process_killed() -> Result<()> {
    let node = start().await?;
    let mut running = node.backend.running.subscribe();
    let ws = node
        .websocket(&exec_path("sleep 600", "output=1"), "admin", "v5.channel.k8s.io")
        .await?;
    running.wait_for(|n| *n == 1).await?;
    drop(ws);
    // The backend's future is dropped (and with it the process): the count returns to 0.
    running.wait_for(|n| *n == 0).await?;
    Ok(())
}

#[tokio::test]
async fn attach_echoes_over_spdy() -> Result<()> {
    let node = start().await?;
    let mut client = SpdyClient::open(
        &node,
        "/attach/shop/web-1/web?input=1&output=1",
        "v4.channel.k8s.io",
    )
    .await?;
    client.open_stream(1, &[("streamType", "error")]).await?;
    client.open_stream(3, &[("streamType", "stdin")]).await?;
    client.open_stream(5, &[("streamType", "stdout")]).await?;
    client.data(3, b"ping\n", true).await?;
    let mut stdout = Vec::new();
    let mut status = Vec::new();
    while let Some(frame) = client.next().await? {
        match frame {
            Frame::Data {
                stream_id: 5, data, ..
            } => stdout.extend_from_slice(&data),
            Frame::Data {
                stream_id: 1, data, ..
            } => status.extend_from_slice(&data),
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    assert_eq!(stdout, b"ping\n");
    let status: serde_json::Value = serde_json::from_slice(&status)?;
    assert_eq!(status["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn run_answers_the_combined_output_of_the_command() -> Result<()> {
    let node = start().await?;
    let response = node
        .https()?
        .post(format!(
            "https://127.0.0.1:{}/run/shop/web-1/{UID}/web",
            node.port
        ))
        .bearer_auth("admin")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("cmd=echo+ran+here")
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body, "ran here\n");
    Ok(())
}

#[tokio::test]
async fn a_tty_exec_receives_the_clients_terminal_size_over_spdy_and_websocket() -> Result<()> {
    let node = start().await?;
    let path = "/exec/shop/web-1/web?command=tty-size&tty=1&output=1&input=1";
    let mut client = SpdyClient::open(&node, path, "v4.channel.k8s.io").await?;
    for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        client.open_stream(id, &[("streamType", kind)]).await?;
    }
    // Split mid-object, as a stream may deliver it.
    client.data(7, br#"{"Width":120,"#, false).await?;
    client.data(7, br#""Height":40}"#, false).await?;
    let mut stdout = Vec::new();
    while let Some(frame) = client.next().await? {
        match frame {
            Frame::Data {
                stream_id: 5, data, ..
            } => stdout.extend_from_slice(&data),
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "120x40\n");

    let mut ws = node.websocket(path, "admin", "v5.channel.k8s.io").await?;
    ws.send(Message::Binary(Bytes::from_static(
        b"\x04{\"Width\":80,\"Height\":24}",
    )))
    .await?;
    let mut stdout = Vec::new();
    while let Some(message) = ws.next().await {
        match message? {
            Message::Binary(data) if data.first() == Some(&1) => stdout.extend_from_slice(&data[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "80x24\n");
    Ok(())
}

#[tokio::test]
async fn a_spdy_client_that_vanishes_mid_exec_has_its_process_killed() -> Result<()> {
    let node = start().await?;
    let mut running = node.backend.running.subscribe();
    let mut client =
        SpdyClient::open(&node, &exec_path("sleep 600", "output=1"), "v4.channel.k8s.io").await?;
    client.open_stream(1, &[("streamType", "error")]).await?;
    client.open_stream(3, &[("streamType", "stdout")]).await?;
    running.wait_for(|n| *n == 1).await?;
    drop(client);
    running.wait_for(|n| *n == 0).await?;
    Ok(())
}

#[tokio::test]
async fn sessions_beyond_the_limit_get_429() -> Result<()> {
    let node = start_with(tke_kubelet_api::StreamingLimits {
        max_sessions: 1,
        ..Default::default()
    })
    .await?;
    let mut running = node.backend.running.subscribe();
    let _first = node
        .websocket(&exec_path("sleep 600", "output=1"), "admin", "v5.channel.k8s.io")
        .await?;
    running.wait_for(|n| *n == 1).await?;
    let (status, head, _) = node
        .upgrade(
            &exec_path("true", "output=1"),
            "admin",
            &[
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ],
        )
        .await?;
    assert_eq!(status, 429, "{head}");
    Ok(())
}

async fn get(node: &Running, path: &str, token: Option<&str>) -> Result<(reqwest::StatusCode, String)> {
    let mut request = node
        .https()?
        .get(format!("https://127.0.0.1:{}{path}", node.port));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    Ok((response.status(), response.text().await?))
}

#[tokio::test]
async fn invalid_stream_combinations_unknown_and_stopped_containers_are_refused() -> Result<()> {
    let node = start().await?;
    let cases = [
        // A tty drops stderr, as the kubelet does: then no stream is left.
        (
            exec_path("ls", "tty=1&error=1"),
            400,
            "at least 1 of stdin, stdout, stderr",
        ),
        (
            exec_path("ls", "tty=true"),
            400,
            "at least 1 of stdin, stdout, stderr",
        ),
        (
            "/exec/shop/web-1/db?command=ls&output=1".to_owned(),
            404,
            "container \"db\" not found",
        ),
        (
            "/exec/shop/web-2/web?command=ls&output=1".to_owned(),
            404,
            "pod \"web-2\"",
        ),
        (
            "/exec/shop/web-1/00000000-0000-4000-8000-000000000000/web?command=ls&output=1".to_owned(),
            404,
            "with UID",
        ),
        (
            "/attach/shop/web-1/sidecar?output=1".to_owned(),
            400,
            "is not running (waiting: ContainerCreating)",
        ),
        ("/portForward/shop/web-2".to_owned(), 404, "pod \"web-2\""),
    ];
    for (path, want, message) in cases {
        let (status, body) = get(&node, &path, Some("admin")).await?;
        assert_eq!(status.as_u16(), want, "{path}: {body}");
        assert!(body.contains(message), "{path}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn exec_needs_create_on_nodes_proxy_even_as_a_get_and_anonymous_gets_401() -> Result<()> {
    let node = start().await?;
    let path = exec_path("id", "output=1");
    let (status, body) = get(&node, &path, Some("getter")).await?;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("verb=create") && body.contains("subresource=proxy"),
        "{body}"
    );
    // The same token may read logs: only the streaming paths are lifted to `create`.
    let (status, body) = get(&node, "/containerLogs/shop/web-1/web", Some("getter")).await?;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    // A WebSocket upgrade (a GET) with that token is refused before any upgrade.
    let refused = node.websocket(&path, "getter", "v5.channel.k8s.io").await;
    assert!(refused.is_err(), "the get-only token upgraded to exec");
    for path in [
        path.as_str(),
        "/portForward/shop/web-1",
        "/attach/shop/web-1/web?output=1",
    ] {
        let (status, body) = get(&node, path, None).await?;
        assert_eq!(
            (status, body.as_str()),
            (reqwest::StatusCode::UNAUTHORIZED, "Unauthorized"),
            "{path}"
        );
    }
    Ok(())
}

/// client-go's own clients (what kubectl and the apiserver run) against this server: exec over
/// SPDY and WebSocket v5 with exit code 3, port-forward over SPDY and over SPDY tunnelled in a
/// WebSocket. Needs Go and network access to the Go module proxy (or a warm module cache) on
/// first build, so it runs only when asked: `cargo test -p tke-kubelet-api --test streaming --
/// --ignored` (set `TKE_INTEROP_BIN` to a prebuilt `go build` of tests/interop to skip the build).
#[tokio::test]
#[ignore = "needs Go and client-go; run with --ignored"]
async fn go_client_go_interop() -> Result<()> {
    let node = start().await?;
    let (echo, _echo) = echo_listener().await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &node.ca_pem)?;
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let mut command = match std::env::var_os("TKE_INTEROP_BIN") {
        Some(binary) => tokio::process::Command::new(binary),
        None => {
            let mut go = tokio::process::Command::new("go");
            go.arg("run").arg(".").current_dir(&interop);
            go
        }
    };
    let output = command
        .arg(format!("https://127.0.0.1:{}", node.port))
        .arg("admin")
        .arg(&ca)
        .arg(echo.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .context("running the Go interop client")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for check in [
        "ok exec over SPDY",
        "ok exec over WebSocket v5",
        "ok exec over WebSocket v4",
        "ok exec over SPDY v4",
        "ok port-forward over SPDY",
        "ok port-forward over SPDY tunnelled in WebSocket",
    ] {
        assert!(
            stdout.lines().any(|line| line == check),
            "{check} missing:\n{stdout}\n{stderr}"
        );
    }
    Ok(())
}
