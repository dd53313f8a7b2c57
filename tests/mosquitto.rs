//! A real Mosquitto broker per test, on a free loopback port (test support for every
//! module that talks MQTT: `sluice simulate` now, the MQTT source and sink next).
//!
//! `Mosquitto::start()` writes a minimal config in a fresh directory, starts the
//! `mosquitto` binary (`$MOSQUITTO`, else `mosquitto` on the PATH, else
//! `/usr/sbin/mosquitto`), and returns once the port accepts connections. The broker is
//! killed when the value drops; `stop` and `restart` (same port) let tests cut the
//! connection under a running client.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::free_port;

pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// More configuration after the plain listener (a TLS listener, say).
    extra: String,
}

impl Mosquitto {
    /// Starts a broker on a free port. A port found free can be taken before the broker
    /// binds it, so a broker that exits at once is retried on another port.
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// Starts a broker whose configuration ends with `extra` (e.g. a second, TLS
    /// listener with its own port).
    pub fn start_with(extra: &str) -> Mosquitto {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("mosquitto-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut m = Mosquitto {
                child: None,
                port,
                dir,
                extra: extra.to_string(),
            };
            match m.launch() {
                Ok(()) => return m,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start mosquitto: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills the broker: connected clients see their connection drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        // The old listener's port is free once the process is gone; a client may be
        // redialling it, so retry rather than fail on the first try.
        let mut last_error = String::new();
        for _ in 0..10 {
            match self.launch() {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "could not restart mosquitto on port {}: {last_error}",
            self.port
        );
    }

    fn launch(&mut self) -> Result<(), String> {
        let config = self.dir.join("mosquitto.conf");
        // Exact-count tests need every message delivered: Mosquitto's default queue of
        // 1,000 messages per subscriber would drop QoS 1 messages behind a busy one.
        // Its default of 20 unacknowledged QoS 1 messages per client would throttle a
        // consumer that acknowledges after processing, as Sluice does.
        std::fs::write(
            &config,
            format!(
                "allow_anonymous true\npersistence false\nmax_queued_messages 0\n\
                 max_inflight_messages 1000\nlistener {} 127.0.0.1\n{}",
                self.port, self.extra
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(self.dir.join("mosquitto.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); install Mosquitto (apt-get install mosquitto) or set MOSQUITTO",
                    binary()
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
                return Err(format!("mosquitto exited ({status}): {log}"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "mosquitto did not listen on {} within 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary() -> String {
    if let Ok(b) = std::env::var("MOSQUITTO") {
        return b;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("mosquitto").is_file()));
    if on_path {
        "mosquitto".into()
    } else {
        "/usr/sbin/mosquitto".into()
    }
}
