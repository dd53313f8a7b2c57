//! The dashboard in a real browser: `sluice serve` on a free loopback port, then
//! `tests/browser/dashboard.mjs` drives Debian's chromium through playwright-core —
//! submit an application, see its rows and chart arrive, see a positioned SQL error,
//! an unreachable broker as retrying with the reason, a query's bad records —
//! and saves a screenshot to `target/tmp/dashboard.png`.
//!
//! It needs node, `/usr/bin/chromium` and `tests/browser/node_modules`, which
//! `.ci/install-deps` installs. Without them the test fails (it never passes silently):
//! a dashboard nobody opened is not tested.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The server starts in well under a second; this bounds a hung start.
const STARTUP: Duration = Duration::from_secs(30);
/// dashboard.mjs bounds itself at 120 s; this is the last resort if node hangs.
const BROWSER_RUN: Duration = Duration::from_secs(150);

/// A child process killed when the test ends, panics included.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dashboard_in_chromium() {
    let started = Instant::now();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    check_prerequisites(&browser_dir);

    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let data_dir = tmp.join(format!("browser-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let screenshot = tmp.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let server_log = tmp.join("browser-server.log");

    let addr = free_port();
    let log = File::create(&server_log).expect("create the server log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        // The dashboard submits an MQTT stream whose broker does not exist, to show
        // an outage; SQL from the browser may name it only once it is allowed.
        .arg("--allow-mqtt")
        .arg("127.0.0.1:1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log);
    // The flags have environment fallbacks: keep the caller's settings (a token, a
    // queries directory) out of this server.
    for var in [
        "SLUICE_API_TOKEN",
        "SLUICE_QUERIES",
        "SLUICE_LISTEN",
        "SLUICE_DATA_DIR",
        "SLUICE_ALLOW_ENDPOINT",
        "SLUICE_ALLOW_REDIS",
        "SLUICE_ALLOW_MQTT",
    ] {
        cmd.env_remove(var);
    }
    let mut server = KillOnDrop(cmd.spawn().expect("start sluice serve"));
    wait_healthy(&mut server, addr, &server_log);
    let ready = started.elapsed();

    let out_path = tmp.join("browser-node.out");
    let out = File::create(&out_path).expect("create the node output file");
    let mut node = KillOnDrop(
        Command::new("node")
            .arg("dashboard.mjs")
            .arg(format!("http://{addr}"))
            .arg(&screenshot)
            .current_dir(&browser_dir)
            .env("CHROMIUM", CHROMIUM)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the output handle"))
            .stderr(out)
            .spawn()
            .expect("start node"),
    );
    let deadline = Instant::now() + BROWSER_RUN;
    let status = loop {
        if let Some(status) = node.0.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let explain = || {
        format!(
            "--- dashboard.mjs output:\n{output}\n--- server log ({}):\n{}",
            server_log.display(),
            tail(&server_log, 40)
        )
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the browser test failed ({s})\n{}", explain()),
        None => panic!("the browser test ran over {BROWSER_RUN:?}\n{}", explain()),
    }

    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}\n{}",
            screenshot.display(),
            explain()
        )
    });
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        screenshot.display()
    );
    assert!(
        png.len() > 20_000,
        "the screenshot {} is only {} bytes: the page looks empty",
        screenshot.display(),
        png.len()
    );
    println!(
        "dashboard test passed in {:.1} s (server ready in {:.1} s); screenshot: {}",
        started.elapsed().as_secs_f64(),
        ready.as_secs_f64(),
        screenshot.display()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Fails, naming the fix, when a tool the test needs is missing.
fn check_prerequisites(browser_dir: &Path) {
    let fix = "run .ci/install-deps (installs chromium and tests/browser's npm packages)";
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is not installed or does not run ({:?}): {fix}",
        node.err()
    );
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {fix}");
    let playwright = browser_dir.join("node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: {fix}",
        playwright.display()
    );
}

/// A port nobody listens on now. Another process could take it before the server
/// binds; on a test machine's loopback that is rare enough.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// Polls `GET /healthz` until it answers 200, the server exits, or [`STARTUP`] passes.
fn wait_healthy(server: &mut KillOnDrop, addr: SocketAddr, log: &Path) {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = server.0.try_wait().expect("poll the server") {
            panic!(
                "sluice serve exited ({status}) before it was healthy:\n{}",
                tail(log, 40)
            );
        }
        if healthz(addr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sluice serve did not answer /healthz within {STARTUP:?}:\n{}",
            tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One plain HTTP/1.1 request; true on a 200.
fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
