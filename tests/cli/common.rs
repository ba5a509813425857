//! Test harness: a temp HOME, a real git repository, the real `lode`
//! binary on PATH (git's filter runs it by name), and models written by the
//! `safetensors` Python package.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const LODE: &str = env!("CARGO_BIN_EXE_lode");

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    /// Variables every command gets (an S3 server's credentials).
    vars: std::cell::RefCell<Vec<(String, String)>>,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let env = Env {
            tmp,
            home,
            vars: Default::default(),
        };
        env.git_in(&env.home, &["config", "--global", "user.name", "Lode Test"]);
        env.git_in(
            &env.home,
            &["config", "--global", "user.email", "test@lode.invalid"],
        );
        env.git_in(
            &env.home,
            &["config", "--global", "init.defaultBranch", "main"],
        );
        env
    }

    /// A new repository with `lode init` done, at `<tmp>/<name>`.
    pub fn repo(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        self.git_in(&dir, &["init", "-q"]);
        self.lode_ok(&dir, &["init"]);
        dir
    }

    /// A new repository (see [`Env::repo`]) tracking `*.safetensors`.
    pub fn tracked_repo(&self, name: &str) -> PathBuf {
        let repo = self.repo(name);
        self.lode_ok(&repo, &["track", "*.safetensors"]);
        repo
    }

    fn path_var(&self) -> String {
        let bin = Path::new(LODE).parent().unwrap();
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn cmd(&self, program: &str, dir: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(dir)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_CACHE_HOME", self.home.join(".cache"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("PATH", self.path_var())
            .env_remove("LODE_SKIP_SMUDGE")
            .env_remove("LODE_TEST_FAIL_REQUEST")
            .env_remove("LODE_TRANSFERS")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE");
        for (k, v) in self.vars.borrow().iter() {
            c.env(k, v);
        }
        c
    }

    /// `lode clone SOURCE DEST` with LODE_SKIP_SMUDGE=1 (pointers only),
    /// from this environment's temp directory; must succeed.
    pub fn pointer_clone(&self, source: &Path, dest: &Path) {
        let out = output(
            self.cmd(LODE, self.tmp.path())
                .arg("clone")
                .arg(source)
                .arg(dest)
                .env("LODE_SKIP_SMUDGE", "1"),
        );
        assert!(out.status.success(), "lode clone: {}", stderr(&out));
    }

    /// Give every later command this environment variable.
    pub fn set_var(&self, key: &str, value: &str) {
        self.vars
            .borrow_mut()
            .push((key.to_string(), value.to_string()));
    }

    pub fn run(&self, program: &str, dir: &Path, args: &[&str]) -> Output {
        output(self.cmd(program, dir).args(args))
    }

    pub fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run("git", dir, args);
        assert!(
            out.status.success(),
            "git {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn lode(&self, dir: &Path, args: &[&str]) -> Output {
        self.run(LODE, dir, args)
    }

    pub fn lode_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.lode(dir, args);
        assert!(
            out.status.success(),
            "lode {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write a safetensors model with the real Python package.
    pub fn model(&self, out: &Path, mib: f64, seed: u64) {
        self.python(&[
            out.to_str().unwrap(),
            "--mib",
            &mib.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
    }

    /// A fine-tune of `base`: every `every`-th tensor redrawn.
    pub fn finetune(&self, base: &Path, out: &Path, every: usize, seed: u64) {
        self.python(&[
            out.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--change-every",
            &every.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
    }

    fn python(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_model.py");
        let out = Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "make_model.py failed (the test command installs numpy and safetensors):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Run a command to completion, but never for more than five minutes: a
/// hung filter or git must fail the test, not stall the whole suite.
pub fn output(cmd: &mut Command) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} ran for more than 5 minutes: hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Bytes of every file under `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    total
}

pub fn sha(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// The single pack file of a store, or the largest one.
pub fn largest_pack(repo: &Path) -> PathBuf {
    let dir = repo.join(".git/lode/packs");
    let mut packs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    packs.pop().expect("a pack")
}

/// Random bytes (xorshift): incompressible, so stored raw and never
/// deduplicated by accident.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
