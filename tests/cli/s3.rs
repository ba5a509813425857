//! A real S3-compatible server for tests: Garage, one node on loopback,
//! started per test on free ports and stopped when dropped. `tests/run.sh`
//! installs the `garage` binary; without it these tests skip, unless
//! `LODE_REQUIRE_S3=1` (CI), where a missing server is a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Env;

pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub bucket: String,
}

const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn garage_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LODE_GARAGE") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::split_paths(&path)
        .chain(home_bin)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

impl Garage {
    /// A running server with an empty bucket, or `None` (test skipped)
    /// when Garage is not installed and S3 is not required.
    pub fn start() -> Option<Garage> {
        let Some(bin) = garage_bin() else {
            if std::env::var("LODE_REQUIRE_S3").is_ok_and(|v| v == "1") {
                panic!("LODE_REQUIRE_S3=1 but no `garage` binary (tests/run.sh installs it)");
            }
            eprintln!("skipping: no `garage` binary (tests/run.sh installs it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"
"#,
            d = dir.path().display(),
            rpc = free_port(),
            secret = SECRET,
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let mut g = Garage {
            child: None,
            dir,
            bin,
            port,
            bucket: "lode-test".into(),
        };
        g.spawn();
        let node = g.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", &g.bucket.clone()]);
        g.cli(&["key", "import", KEY_ID, SECRET, "-n", "lode", "--yes"]);
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &g.bucket.clone(),
            "--key",
            KEY_ID,
        ]);
        Some(g)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    /// Start the server process and wait until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config())
            .arg("server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(&self.bin)
                .arg("-c")
                .arg(self.config())
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the server (kill -9): the endpoint becomes unreachable.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config())
            .args(args)
            .output()
            .expect("garage cli");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The lode remote URL of a prefix in the test bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Point `env`'s commands at this server, as any S3 tool is pointed.
    pub fn configure(&self, env: &Env) {
        env.set_var("AWS_ACCESS_KEY_ID", KEY_ID);
        env.set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        env.set_var("AWS_REGION", "garage");
        env.set_var(
            "AWS_ENDPOINT_URL",
            &format!("http://127.0.0.1:{}", self.port),
        );
        env.set_var("AWS_ALLOW_HTTP", "true");
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
