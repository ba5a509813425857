//! `lode mount` through a real FUSE mount: bytes, safetensors' mmap reads,
//! lazy fetches from a real S3 server, damage, a server that goes away, and
//! a killed daemon. Skipped where FUSE is unavailable, unless
//! `LODE_REQUIRE_FUSE=1` (CI), where that is a failure.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Env, LODE, noise, sha, stderr};
use crate::s3::Garage;

/// Whether this machine can mount FUSE filesystems (root and /dev/fuse).
fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && rustix_is_root();
    if !ok {
        assert!(
            std::env::var("LODE_REQUIRE_FUSE").as_deref() != Ok("1"),
            "LODE_REQUIRE_FUSE=1 but FUSE is not usable here (needs root and /dev/fuse)"
        );
        eprintln!("skipping: FUSE is not usable here (needs root and /dev/fuse)");
    }
    ok
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A mount that is unmounted when the test ends, whatever happens.
struct Mounted<'a> {
    env: &'a Env,
    dir: PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self
            .env
            .cmd(LODE, self.env.tmp.path())
            .args(["umount", "--lazy"])
            .arg(&self.dir)
            .output();
    }
}

fn mount<'a>(env: &'a Env, repo: &Path, rev: &str, name: &str, cache: &Path) -> Mounted<'a> {
    let dir = env.tmp.path().join(name);
    // (It may exist as a dead mount, which `lode mount` clears.)
    let _ = std::fs::create_dir(&dir);
    env.lode_ok(
        repo,
        &[
            "mount",
            "--cache",
            cache.to_str().unwrap(),
            rev,
            dir.to_str().unwrap(),
        ],
    );
    Mounted { env, dir }
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_mount_shows_each_commit_as_checkout_does_and_refuses_writes() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    std::fs::create_dir_all(repo.join("models/base")).unwrap();
    env.model(&repo.join("models/base/model.safetensors"), 12.0, 1);
    std::fs::write(repo.join("train.py"), "print('train')\n").unwrap();
    std::fs::write(repo.join("models/notes.txt"), "v1 notes\n").unwrap();
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-q", "-m", "v1"]);
    let v1 = std::fs::read(repo.join("models/base/model.safetensors")).unwrap();
    env.finetune(
        &repo.join("models/base/model.safetensors"),
        &repo.join("v2.safetensors"),
        3,
        2,
    );
    std::fs::rename(
        repo.join("v2.safetensors"),
        repo.join("models/base/model.safetensors"),
    )
    .unwrap();
    env.git_in(&repo, &["commit", "-q", "-am", "v2"]);

    let cache = env.tmp.path().join("cache");
    let head = mount(&env, &repo, "HEAD", "head", &cache);
    let old = mount(&env, &repo, "HEAD~1", "old", &cache);
    let model = "models/base/model.safetensors";
    assert_eq!(sha(&head.dir.join(model)), sha(&repo.join(model)));
    assert_eq!(std::fs::read(old.dir.join(model)).unwrap(), v1);
    assert_eq!(
        std::fs::metadata(head.dir.join(model)).unwrap().len(),
        std::fs::metadata(repo.join(model)).unwrap().len(),
        "lode files show their real size"
    );
    assert_eq!(
        std::fs::read_to_string(head.dir.join("train.py")).unwrap(),
        "print('train')\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(head.dir.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["base", "notes.txt"]);
    assert_eq!(errno_of(std::fs::metadata(head.dir.join("nope"))), Some(2)); // ENOENT

    // Read-only: no new files, no writes, no removals.
    assert_eq!(
        errno_of(std::fs::write(head.dir.join("new.txt"), "x")),
        Some(30)
    ); // EROFS
    let w = std::fs::OpenOptions::new()
        .append(true)
        .open(head.dir.join(model));
    assert_eq!(errno_of(w), Some(30));
    assert_eq!(
        errno_of(std::fs::remove_file(head.dir.join("train.py"))),
        Some(30)
    );
    assert_eq!(sha(&head.dir.join(model)), sha(&repo.join(model)));

    // Random reads at odd offsets agree with the file.
    let f = std::fs::File::open(head.dir.join(model)).unwrap();
    let plain = std::fs::read(repo.join(model)).unwrap();
    for (at, len) in [
        (0u64, 7usize),
        (123_457, 300_001),
        (plain.len() as u64 - 5, 5),
        (65_535, 2),
    ] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at).unwrap();
        assert_eq!(buf, plain[at as usize..at as usize + len], "at {at}");
    }

    let dir = head.dir.clone();
    drop(head);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "still mounted");

    // Prometheus metrics on loopback count what was served.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mdir = env.tmp.path().join("metered");
    std::fs::create_dir_all(&mdir).unwrap();
    env.lode_ok(
        &repo,
        &[
            "mount",
            "--metrics",
            &addr,
            "--cache",
            cache.to_str().unwrap(),
            mdir.to_str().unwrap(),
        ],
    );
    let metered = Mounted {
        env: &env,
        dir: mdir,
    };
    assert_eq!(sha(&metered.dir.join(model)), sha(&repo.join(model)));
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let served: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("lode_mount_bytes_served_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(served >= plain.len() as u64, "{text}");
}

#[test]
fn safetensors_safe_open_reads_every_tensor_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 16.0, 7);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-q", "-m", "m"]);
    let m = mount(&env, &repo, "HEAD", "mnt", &env.tmp.path().join("cache"));
    // safe_open maps the file (mmap) and reads each tensor where it lies.
    let script = r#"
import sys, hashlib
from safetensors import safe_open
def digests(path):
    out = {}
    with safe_open(path, framework="numpy") as f:
        for k in f.keys():
            out[k] = hashlib.sha256(f.get_tensor(k).tobytes()).hexdigest()
    return out
a, b = digests(sys.argv[1]), digests(sys.argv[2])
assert a == b, "tensors differ"
print(len(a))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(m.dir.join("model.safetensors"))
        .arg(repo.join("model.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(n > 10, "only {n} tensors");
}

#[test]
fn a_dataless_clone_mounts_and_fetches_lazily_from_s3_and_survives_the_server_going_away() {
    if !fuse_available() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let a = Env::new();
    garage.configure(&a);
    let repo = a.repo("a");
    a.lode_ok(&repo, &["remote", "set", &garage.url("models")]);
    std::fs::create_dir_all(repo.join("data")).unwrap();
    let data = noise(24 << 20, 3);
    std::fs::write(repo.join("data/shard.bin"), &data).unwrap();
    a.lode_ok(&repo, &["add", "data"]);
    a.git_in(&repo, &["add", ".lodeconfig"]);
    a.git_in(&repo, &["commit", "-q", "-m", "data"]);
    a.lode_ok(&repo, &["push"]);

    let b = Env::new();
    garage.configure(&b);
    let clone = b.tmp.path().join("b");
    b.pointer_clone(&repo, &clone);
    assert!(
        std::fs::metadata(clone.join("data/shard.bin"))
            .unwrap()
            .len()
            < 200,
        "not a pointer"
    );
    let cache = b.tmp.path().join("cache");
    let m = mount(&b, &clone, "HEAD", "mnt", &cache);
    let path = m.dir.join("data/shard.bin");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);

    // A small read fetches a little, not the file.
    let f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 100_000];
    f.read_exact_at(&mut buf, 5 << 20).unwrap();
    assert_eq!(buf, data[5 << 20..(5 << 20) + 100_000]);
    let cached = crate::common::du(&cache);
    assert!(cached < 4 << 20, "a 100 kB read fetched {cached} bytes");

    // The server goes away: reads of what is not cached fail, promptly.
    garage.stop();
    let started = Instant::now();
    let mut tail = vec![0u8; 100_000];
    let r = f.read_exact_at(&mut tail, data.len() as u64 - 200_000);
    assert_eq!(
        errno_of(r),
        Some(5),
        "EIO expected while the server is down"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // It comes back: the same read works.
    garage.spawn();
    f.read_exact_at(&mut tail, data.len() as u64 - 200_000)
        .unwrap();
    assert_eq!(tail, data[data.len() - 200_000..data.len() - 100_000]);
    // And the whole file reads right.
    let mut all = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == data, "bytes differ");
}

#[test]
fn a_corrupted_chunk_is_eio_for_its_bytes_and_right_elsewhere() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let repo = env.repo("repo");
    let data = noise(4 << 20, 11);
    std::fs::write(repo.join("blob.bin"), &data).unwrap();
    env.lode_ok(&repo, &["add", "blob.bin"]);
    env.git_in(&repo, &["commit", "-q", "-m", "b"]);
    // Flip one byte in the middle of the pack (a raw record: noise does not
    // compress).
    let pack = crate::common::largest_pack(&repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();

    let m = mount(&env, &repo, "HEAD", "mnt", &env.tmp.path().join("cache"));
    let mut f = std::fs::File::open(m.dir.join("blob.bin")).unwrap();
    let block = 64 << 10;
    let mut bad = Vec::new();
    for k in 0..data.len() / block {
        let mut buf = vec![0u8; block];
        f.seek(SeekFrom::Start((k * block) as u64)).unwrap();
        match f.read_exact(&mut buf) {
            Ok(()) => assert!(
                buf == data[k * block..(k + 1) * block],
                "block {k}: wrong bytes"
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(5), "block {k}: {e}");
                bad.push(k);
            }
        }
    }
    assert!(!bad.is_empty(), "the damage went unnoticed");
    // One chunk is at most 256 KiB: it spoils at most 5 blocks of 64 KiB.
    assert!(
        bad.len() <= 5 && bad[bad.len() - 1] - bad[0] < 5,
        "bad blocks: {bad:?}"
    );
}

#[test]
fn killing_the_daemon_leaves_nothing_corrupt_and_the_directory_mounts_again() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let repo = env.repo("repo");
    let data = noise(3 << 20, 5);
    std::fs::write(repo.join("blob.bin"), &data).unwrap();
    env.lode_ok(&repo, &["add", "blob.bin"]);
    env.git_in(&repo, &["commit", "-q", "-m", "b"]);
    let dir = env.tmp.path().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let cache = env.tmp.path().join("cache");
    let mut daemon = env
        .cmd(LODE, &repo)
        .args(["mount", "--foreground", "--cache", cache.to_str().unwrap()])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(dir.join("blob.bin")).is_err() {
        assert!(Instant::now() < deadline, "never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut head = vec![0u8; 1000];
    std::fs::File::open(dir.join("blob.bin"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // The mount is dead: what reaches it fails (ENOTCONN), nothing hangs.
    assert_eq!(
        errno_of(std::fs::File::open(dir.join("blob.bin"))),
        Some(107)
    );

    let m = mount(&env, &repo, "HEAD", "mnt", &cache);
    assert!(std::fs::read(m.dir.join("blob.bin")).unwrap() == data);
    let fsck = env.lode(&repo, &["fsck", "--read-data"]);
    assert!(fsck.status.success(), "{}", stderr(&fsck));
}

#[test]
fn mount_refuses_a_busy_or_missing_directory_with_a_clear_error() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let repo = env.repo("repo");
    std::fs::write(repo.join("f.txt"), "x").unwrap();
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-q", "-m", "f"]);
    let out = env.lode(&repo, &["mount", "/nonexistent/lode-mnt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    let full = env.tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), "mine").unwrap();
    let out = env.lode(&repo, &["mount", full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(full.join("keep")).unwrap(), "mine");
    let empty = env.tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = env.lode(&repo, &["mount", "no-such-rev", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no-such-rev"), "{}", stderr(&out));
}
