//! Real services on loopback for the connector tests: each test starts its own server
//! on a free port, in its own scratch directory, and the server dies with the test
//! (on drop, also when the test panics). Binaries come from `PATH`; a test that needs
//! one that is missing fails, naming it, rather than passing without checking.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A port nobody listens on now (the OS picks it; it could be taken again before the
/// server binds it, which is rare enough on loopback for tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A fresh, empty directory under the system's temp dir, removed by [`Scratch::drop`].
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `program` with `args`, its output in `log` (read when a start fails).
fn spawn(program: &str, args: &[&str], dir: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("create server log");
    let err = out.try_clone().expect("clone log handle");
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (is it installed and on PATH?): {e}"))
}

/// Kills a child and reaps it, so no zombie outlives the test.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `redis-server` of its own: no persistence of its own accord (`--save ""`,
/// `--appendonly no`), but [`RedisServer::stop`] saves, so a [`RedisServer::restart`]
/// on the same port comes back with the same data, like a Redis that went away for a
/// while.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    scratch: Scratch,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            scratch: Scratch::new("redis"),
        };
        server.launch();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// A connection for checking what the sink wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let log = self.scratch.path().join("redis.log");
        let child = spawn(
            "redis-server",
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.scratch.path().display().to_string(),
            ],
            self.scratch.path(),
            &log,
        );
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers_ping() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited ({status}) on port {port}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One raw PING over TCP (no client library: it must work before anything else).
    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Saves the data and stops the server (`SHUTDOWN SAVE`); the port is free after.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN SAVE\r\n");
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    kill(&mut child);
                    panic!("redis-server did not shut down within {START_TIMEOUT:?}");
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        assert!(
            !self.answers_ping(),
            "redis-server still answers after stop"
        );
    }

    /// Starts the server again on the same port, with the data saved by `stop`.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}
