//! A scripted fake WAL sender on loopback TCP, for protocol framings no installed server
//! speaks (PostgreSQL 10–14). It accepts one connection without TLS, answers the startup packet
//! with AuthenticationOk, the given ParameterStatus messages, BackendKeyData and
//! ReadyForQuery, then answers each simple Query with the next scripted reply (raw backend
//! bytes, built with [`msg`]) and records the query texts it received.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A fake server waiting for its one client.
pub struct FakeWalSender {
    addr: SocketAddr,
    task: JoinHandle<Result<Vec<String>, String>>,
}

impl FakeWalSender {
    /// Listens on 127.0.0.1 and serves one client: `parameters` at startup, then `replies[i]`
    /// to the i-th query. Must be called inside a tokio runtime.
    pub async fn start(parameters: &[(&str, &str)], replies: Vec<Vec<u8>>) -> FakeWalSender {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let mut hello = msg::auth_ok();
        for (name, value) in parameters {
            hello.extend(msg::parameter_status(name, value));
        }
        hello.extend(msg::backend_key_data(4242, 1));
        hello.extend(msg::ready());
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.map_err(|e| e.to_string())?;
            serve(socket, hello, replies).await
        });
        FakeWalSender { addr, task }
    }

    /// A libpq connection string for this server.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=fake sslmode=disable connect_timeout=10",
            self.addr.port()
        )
    }

    /// Waits until the client has gone (Terminate or EOF) and returns the queries received.
    pub async fn queries(self) -> Vec<String> {
        self.task
            .await
            .expect("fake WAL sender task")
            .unwrap_or_else(|e| panic!("fake WAL sender: {e}"))
    }
}

async fn serve(
    mut socket: TcpStream,
    hello: Vec<u8>,
    replies: Vec<Vec<u8>>,
) -> Result<Vec<String>, String> {
    let io = |e: std::io::Error| e.to_string();
    let len = socket.read_u32().await.map_err(io)?;
    let mut startup = vec![0; (len as usize).saturating_sub(4)];
    socket.read_exact(&mut startup).await.map_err(io)?;
    if startup.get(..4) != Some(&[0, 3, 0, 0][..]) {
        return Err(format!("not a protocol 3.0 startup packet: {startup:?}"));
    }
    if !startup.windows(17).any(|w| w == b"replication\0true\0") {
        return Err("the startup packet does not ask for a physical WAL sender".into());
    }
    socket.write_all(&hello).await.map_err(io)?;
    let mut queries = Vec::new();
    let mut replies = replies.into_iter();
    loop {
        let tag = match socket.read_u8().await {
            Ok(tag) => tag,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(queries),
            Err(e) => return Err(e.to_string()),
        };
        let len = socket.read_u32().await.map_err(io)?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        socket.read_exact(&mut body).await.map_err(io)?;
        match tag {
            b'X' => return Ok(queries),
            b'Q' => {
                let text = body.strip_suffix(b"\0").ok_or("query without NUL")?;
                queries.push(String::from_utf8_lossy(text).into_owned());
                let reply = replies
                    .next()
                    .ok_or_else(|| format!("no reply scripted for query {:?}", queries.last()))?;
                socket.write_all(&reply).await.map_err(io)?;
            }
            other => return Err(format!("unexpected frontend message {:?}", other as char)),
        }
    }
}

/// Encoders of backend messages.
pub mod msg {
    /// One message: tag, length, body.
    pub fn raw(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    pub fn auth_ok() -> Vec<u8> {
        raw(b'R', &0i32.to_be_bytes())
    }

    pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        raw(b'S', format!("{name}\0{value}\0").as_bytes())
    }

    pub fn backend_key_data(pid: i32, key: i32) -> Vec<u8> {
        raw(b'K', &[pid.to_be_bytes(), key.to_be_bytes()].concat())
    }

    pub fn ready() -> Vec<u8> {
        raw(b'Z', b"I")
    }

    /// A RowDescription of text columns (name, type oid).
    pub fn row_description(columns: &[(&str, u32)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&u16::try_from(columns.len()).unwrap().to_be_bytes());
        for (name, type_oid) in columns {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0u32.to_be_bytes()); // table
            b.extend_from_slice(&0u16.to_be_bytes()); // column
            b.extend_from_slice(&type_oid.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes()); // size
            b.extend_from_slice(&0i32.to_be_bytes()); // modifier
            b.extend_from_slice(&0u16.to_be_bytes()); // text format
        }
        raw(b'T', &b)
    }

    pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&u16::try_from(values.len()).unwrap().to_be_bytes());
        for value in values {
            match value {
                Some(v) => {
                    b.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        raw(b'D', &b)
    }

    pub fn command_complete(tag: &str) -> Vec<u8> {
        raw(b'C', format!("{tag}\0").as_bytes())
    }

    /// CopyOutResponse, text format, no columns (what a WAL sender sends).
    pub fn copy_out() -> Vec<u8> {
        raw(b'H', &[0, 0, 0])
    }

    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        raw(b'd', data)
    }

    pub fn copy_done() -> Vec<u8> {
        raw(b'c', b"")
    }

    /// An ErrorResponse or NoticeResponse (`tag` `E` or `N`).
    pub fn report(tag: u8, severity: &str, code: &str, message: &str) -> Vec<u8> {
        raw(
            tag,
            format!("S{severity}\0V{severity}\0C{code}\0M{message}\0\0").as_bytes(),
        )
    }
}
