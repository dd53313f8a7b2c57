//! moto's server (`python3 -m moto.server`, from PyPI) on a free port: the DynamoDB
//! and S3 emulator of tests/dynamodb.rs and tests/archive.rs, and of
//! benches/archive.rs, which includes this file (`#[path]`), so it uses only std.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto (run .ci/install-deps for moto[server])");
        let mut moto = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited ({status}): is moto[server] installed? (.ci/install-deps)");
            }
            assert!(Instant::now() < deadline, "moto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The connection options of a Sluice AWS connector (or S3 archive) for this server.
    pub fn options(&self) -> String {
        format!(
            "endpoint = '{}', region = 'us-east-1', access_key_id = 'test', \
             secret_access_key = 'test'",
            self.endpoint()
        )
    }

    /// Creates an S3 bucket with boto3 (moto's dependency): object_store cannot.
    pub fn create_bucket(&self, bucket: &str) {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], \
                 region_name='us-east-1', aws_access_key_id='test', \
                 aws_secret_access_key='test').create_bucket(Bucket=sys.argv[2])",
                &self.endpoint(),
                bucket,
            ])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "create bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
