//! The agents' exec, attach and port-forward (`tke_tencent::agent_stream`) over real sockets, with
//! a signing client written from the protocol's documentation. Each test takes its own random
//! 127.X.0.0/16 block and a free port, as in `agents.rs`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use tke_cloudsim::{Config, Error, Handle, PORTS_ENV, serve};
use tke_tencent::agent_stream::{self, CLOSE, ERROR, Outcome, STDERR, STDIN, STDOUT, StreamRequest};
use tke_tencent::{Client, Credentials};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// A running instance with one container `web` and `env`: its id and its agent's address.
async fn running(handle: &Handle, client: &Client, port: u16, env: &[(&str, &str)]) -> (String, SocketAddr) {
    let request = request("streams", vec![container("web", env)]);
    common::running(handle, client, port, &request).await
}

/// Opens `path?query` on the agent with the given Authorization (or none); the HTTP status of a
/// refusal.
async fn open(
    addr: SocketAddr,
    path: &str,
    query: &str,
    authorization: Option<String>,
    subprotocol: bool,
) -> Result<WebSocketStream<TcpStream>, u16> {
    let mut request = format!("ws://{addr}{path}?{query}")
        .into_client_request()
        .unwrap();
    if let Some(authorization) = authorization {
        request
            .headers_mut()
            .insert("Authorization", authorization.parse().unwrap());
    }
    if subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            agent_stream::SUBPROTOCOL.parse().unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

async fn signed(
    addr: SocketAddr,
    id: &str,
    path: &str,
    query: &str,
    subprotocol: bool,
) -> WebSocketStream<TcpStream> {
    let authorization = agent_stream::sign(&credentials(), id, "GET", path, query, unix_now());
    open(addr, path, query, Some(authorization), subprotocol)
        .await
        .unwrap()
}

async fn exec(addr: SocketAddr, id: &str, command: &[&str], stdin: bool) -> WebSocketStream<TcpStream> {
    let request = StreamRequest {
        command: command.iter().map(|c| c.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: true,
        tty: false,
    };
    signed(addr, id, &agent_stream::exec_path("web"), &request.query(), true).await
}

/// Reads frames until the WebSocket ends: (stdout, stderr, the status).
async fn collect(socket: &mut WebSocketStream<TcpStream>) -> (String, String, Option<Outcome>) {
    let (mut out, mut err, mut outcome) = (Vec::new(), Vec::new(), None);
    let reading = async {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Binary(data) = message else { continue };
            match data.split_first() {
                Some((&STDOUT, bytes)) => out.extend_from_slice(bytes),
                Some((&STDERR, bytes)) => err.extend_from_slice(bytes),
                Some((&ERROR, bytes)) => outcome = Some(agent_stream::parse_status(bytes)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, reading).await.unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
        outcome,
    )
}

#[tokio::test]
async fn exec_runs_a_real_process_with_the_containers_env_in_the_instances_own_directory() {
    let (handle, client, port, _) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[("GREETING", "hello from the spec")]).await;
    let script = "echo \"$GREETING\"; pwd; echo oops >&2; exit 3";
    let mut socket = exec(addr, &id, &["sh", "-c", script], false).await;
    let (out, err, outcome) = collect(&mut socket).await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello from the spec"));
    let workdir = lines.next().unwrap().to_owned();
    assert!(workdir.contains(&format!("cloudsim-{id}-")), "{workdir}");
    assert_eq!(err, "oops\n");
    assert_eq!(outcome, Some(Outcome::Exited(3)));

    let mut socket = exec(
        addr,
        &id,
        &["sh", "-c", "echo data > f && tar cf - f | tar tf -"],
        false,
    )
    .await;
    assert_eq!(
        collect(&mut socket).await,
        ("f\n".into(), String::new(), Some(Outcome::Exited(0)))
    );

    client.delete_instances(&[id]).await.unwrap();
    assert!(
        !std::path::Path::new(&workdir).exists(),
        "the working directory goes with the instance"
    );
}

#[tokio::test]
async fn a_missing_binary_exits_127_as_a_container_runtime_reports_it() {
    let (handle, client, port, _) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[]).await;
    let mut socket = exec(addr, &id, &["no-such-binary-anywhere"], false).await;
    let (_, err, outcome) = collect(&mut socket).await;
    assert_eq!(outcome, Some(Outcome::Exited(127)));
    assert!(err.contains("no-such-binary-anywhere"), "{err}");
}

#[tokio::test]
async fn stdin_reaches_the_process_until_the_client_closes_it() {
    let (handle, client, port, _) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[]).await;
    let mut socket = exec(addr, &id, &["cat"], true).await;
    socket
        .send(Message::binary(b"\x00typed ".to_vec()))
        .await
        .unwrap();
    socket.send(Message::binary(b"\x00in\n".to_vec())).await.unwrap();
    socket.send(Message::binary(vec![CLOSE, STDIN])).await.unwrap();
    assert_eq!(
        collect(&mut socket).await,
        ("typed in\n".into(), String::new(), Some(Outcome::Exited(0)))
    );
}

#[tokio::test]
async fn closing_the_websocket_kills_the_process() {
    let (handle, client, port, _) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[]).await;
    let mut socket = exec(addr, &id, &["sh", "-c", "echo $$; exec sleep 1000"], false).await;
    let pid = loop {
        let Some(Ok(Message::Binary(data))) = socket.next().await else {
            panic!("the process said nothing")
        };
        if data.first() == Some(&STDOUT) {
            break String::from_utf8(data[1..].to_vec()).unwrap().trim().to_owned();
        }
    };
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc.exists(), "sleep runs as {pid}");
    drop(socket);
    tokio::time::timeout(PATIENCE, async {
        // A killed child that is reaped disappears from /proc; a zombie shows state Z.
        while std::fs::read_to_string(proc.join("stat"))
            .is_ok_and(|stat| stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the process is killed once the client is gone");
}

#[tokio::test]
async fn unsigned_wrongly_signed_stale_or_foreign_requests_are_refused() {
    let (handle, client, port, _) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[]).await;
    let path = agent_stream::exec_path("web");
    let query = StreamRequest {
        command: vec!["true".into()],
        stdout: true,
        ..StreamRequest::default()
    }
    .query();
    assert_eq!(open(addr, &path, &query, None, true).await.err(), Some(401));
    let wrong_key = Credentials::new(credentials().secret_id, "not-the-key");
    let header = agent_stream::sign(&wrong_key, &id, "GET", &path, &query, unix_now());
    assert_eq!(
        open(addr, &path, &query, Some(header), true).await.err(),
        Some(403)
    );
    let stale = agent_stream::sign(&credentials(), &id, "GET", &path, &query, unix_now() - 600);
    assert_eq!(
        open(addr, &path, &query, Some(stale), true).await.err(),
        Some(403)
    );
    let foreign = agent_stream::sign(&credentials(), "eksci-other", "GET", &path, &query, unix_now());
    assert_eq!(
        open(addr, &path, &query, Some(foreign), true).await.err(),
        Some(403)
    );
    let other_command = agent_stream::sign(
        &credentials(),
        &id,
        "GET",
        &path,
        "command=id&output=1",
        unix_now(),
    );
    assert_eq!(
        open(addr, &path, &query, Some(other_command), true).await.err(),
        Some(403),
        "a signature covers the command"
    );
    let good = agent_stream::sign(&credentials(), &id, "GET", &path, &query, unix_now());
    assert!(open(addr, &path, &query, Some(good), true).await.is_ok());
}

#[tokio::test]
async fn a_pending_instance_runs_nothing() {
    let (_handle, client, port, _) = start_with_agents().await;
    let pending = request("pending", vec![container("web", &[])]);
    let (id, addr) = create(&client, port, &pending).await;
    let path = agent_stream::exec_path("web");
    let query = "command=true&output=1";
    let header = agent_stream::sign(&credentials(), &id, "GET", &path, query, unix_now());
    assert_eq!(
        open(addr, &path, query, Some(header), true).await.err(),
        Some(409)
    );
}

#[tokio::test]
async fn port_forward_reaches_the_responder_of_a_declared_port() {
    let (handle, client, port, first) = start_with_agents().await;
    let declared = free_port(first);
    let ports = declared.to_string();
    let (id, addr) = running(&handle, &client, port, &[(PORTS_ENV, &ports)]).await;
    let query = format!("port={declared}");
    let mut socket = signed(addr, &id, agent_stream::PORT_FORWARD_PATH, &query, false).await;
    socket
        .send(Message::binary(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ))
        .await
        .unwrap();
    socket.send(Message::binary(Vec::new())).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Binary(data) = message {
                answer.extend_from_slice(&data);
            }
        }
    })
    .await
    .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(&format!("\r\n\r\ncloudsim {id} web port {declared}\n")),
        "{answer}"
    );
}

#[tokio::test]
async fn port_forward_to_a_port_nothing_listens_on_is_refused_before_the_upgrade() {
    let (handle, client, port, first) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[]).await;
    let query = format!("port={}", free_port(first));
    let header = agent_stream::sign(
        &credentials(),
        &id,
        "GET",
        agent_stream::PORT_FORWARD_PATH,
        &query,
        unix_now(),
    );
    assert_eq!(
        open(addr, agent_stream::PORT_FORWARD_PATH, &query, Some(header), false)
            .await
            .err(),
        Some(502)
    );
}

#[tokio::test]
async fn attach_shows_the_simulated_process_output_and_echoes_stdin() {
    let (handle, client, port, _) = start_with_agents().await;
    let (id, addr) = running(&handle, &client, port, &[]).await;
    let query = StreamRequest {
        stdin: true,
        stdout: true,
        ..StreamRequest::default()
    }
    .query();
    let mut socket = signed(addr, &id, &agent_stream::attach_path("web"), &query, true).await;
    socket
        .send(Message::binary(b"\x00typed\n".to_vec()))
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, async {
        while !(out.contains("typed\n") && out.contains("web log line")) {
            let Some(Ok(Message::Binary(data))) = socket.next().await else {
                panic!("attach ended early: {out}")
            };
            if data.first() == Some(&STDOUT) {
                out.push_str(std::str::from_utf8(&data[1..]).unwrap());
            }
            // The simulated process writes a line a second on the sim clock.
            handle.advance_clock(SECOND);
        }
    })
    .await
    .expect("the echo and new log lines arrive");
}

#[tokio::test]
async fn agents_refuse_to_start_off_loopback() {
    let config = Config {
        agent_port: Some(9100),
        private_cidr: (Ipv4Addr::new(10, 0, 0, 0), 8),
        ..Config::new(credentials())
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert!(matches!(
        serve(config, listener).await,
        Err(Error::AgentsOffLoopback(block)) if block == "10.0.0.0/8"
    ));
}
