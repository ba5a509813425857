//! `lode mount`, `lode umount`, `lode prefetch`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use super::{Ctx, Outcome, human};
use crate::git::Repo;
use crate::mount::{self, NodeCache, OpenRemote, Sources, Tree};
use crate::store::Store;

/// Where the node cache lives and how large it may grow.
#[derive(Args, Clone)]
pub struct CacheArgs {
    /// The node cache, shared by every mount and prefetch on this machine
    /// (default: $XDG_CACHE_HOME/lode, else ~/.cache/lode).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Its size limit; least recently used chunks are evicted beyond it
    /// (bytes, or with a K, M, G or T suffix).
    #[arg(long, value_name = "SIZE", default_value = "20G", value_parser = parse_size)]
    cache_size: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (examples: 500M, 20G)"))
}

impl CacheArgs {
    fn dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| {
            mount::default_cache_dir(
                std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
                std::env::var_os("HOME").map(PathBuf::from),
            )
        })
    }
}

/// The chunk sources of this repository: node cache, local store, remote.
fn sources(repo: &Repo, store: Store, cache: &CacheArgs) -> Result<Sources> {
    let dir = cache.dir();
    let node_cache = NodeCache::open(&dir, cache.cache_size)
        .with_context(|| format!("opening the node cache {}", dir.display()))?;
    let workdir = repo.workdir.clone();
    let open_remote: Option<OpenRemote> = crate::config::remote_url(repo)?.map(|_| {
        Box::new(move || {
            Repo::discover(&workdir)
                .map_err(anyhow::Error::from)
                .and_then(|r| super::transfer::open_remote(&r))
                .map_err(|e| format!("{e:#}"))
        }) as OpenRemote
    });
    Ok(Sources::new(
        store,
        repo.lode_dir.clone(),
        node_cache,
        open_remote,
    ))
}

/// Show a commit's files in a read-only directory, their bytes fetched as
/// they are read.
///
/// Tracked files appear at their real size; their chunks come from the
/// node cache, the local store, or the remote (ranged parallel reads), each
/// verified before it is returned: a damaged or unreachable chunk is an I/O
/// error (EIO) for the bytes it holds, never wrong bytes. Ordinary git
/// files appear as committed. A reader going forward gets a growing
/// read-ahead window; random readers (safetensors' mmap) fetch only what
/// they touch. The kernel keeps its page cache across opens (the tree never
/// changes).
///
/// Returns once the mount is ready; the serving process runs on in the
/// background (`--foreground` keeps it attached) until `lode umount DIR`.
/// Works on a clone made with LODE_SKIP_SMUDGE=1 (pointers only).
#[derive(Args)]
pub struct MountArgs {
    /// [REV] DIR: the commit (default HEAD) and an empty directory.
    #[arg(num_args = 1..=2, required = true, value_name = "[REV] DIR")]
    args: Vec<String>,
    /// Stay attached and serve until unmounted (logs go to stderr).
    #[arg(long)]
    foreground: bool,
    /// Threads serving requests.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Let other users read the mount (needs user_allow_other in
    /// /etc/fuse.conf unless root; permissions are then checked).
    #[arg(long)]
    allow_other: bool,
    /// Serve Prometheus metrics (bytes served, cache hits, fetch latency,
    /// errors) at this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn mount(ctx: &Ctx, args: MountArgs) -> Result<Outcome> {
    let (rev, dir) = match &args.args[..] {
        [dir] => ("HEAD".to_string(), PathBuf::from(dir)),
        [rev, dir] => (rev.clone(), PathBuf::from(dir)),
        _ => unreachable!("clap takes one or two"),
    };
    let dir = ctx.cwd.join(dir);
    let (repo, store) = ctx.open()?;
    // A mount left by a killed daemon answers "transport endpoint is not
    // connected": clear it so the directory can be used again.
    if dead_mount(&dir) {
        unmount(&dir, true)
            .with_context(|| format!("clearing the dead mount at {}", dir.display()))?;
    }
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory; create it first", dir.display());
    }
    let dir = std::fs::canonicalize(&dir)?;
    if is_mounted(&dir) {
        anyhow::bail!(
            "{} is already a mount point; `lode umount {}` first",
            dir.display(),
            dir.display()
        );
    }
    if std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty; mount on an empty directory",
            dir.display()
        );
    }
    if !args.foreground {
        return detach(ctx, &repo, &rev, &dir, &args);
    }
    let sources = Arc::new(sources(&repo, store, &args.cache)?);
    let tree = Tree::load(&repo, &rev, sources.clone()).map_err(anyhow::Error::msg)?;
    if let Some(addr) = &args.metrics {
        let at = mount::serve_metrics(addr, sources.clone())
            .with_context(|| format!("serving metrics on {addr}"))?;
        eprintln!("lode: metrics at http://{at}/metrics");
    }
    let opts = lode_fuse::fuse::Options {
        fsname: format!("lode:{rev}"),
        threads: args.threads,
        allow_other: args.allow_other,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        mtime: commit_time(&repo, &rev),
    };
    eprintln!("lode: serving {rev} at {}", dir.display());
    lode_fuse::fuse::serve(tree, &dir, &opts)
        .with_context(|| format!("mounting at {}", dir.display()))?;
    Ok(Outcome::Ok)
}

/// When `rev` was committed (the time every node of the mount shows).
fn commit_time(repo: &Repo, rev: &str) -> std::time::SystemTime {
    repo.git(&["log", "-1", "--format=%ct", rev])
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|t| std::time::UNIX_EPOCH + Duration::from_secs(t))
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// Start `lode mount --foreground` in the background and wait until the
/// mount is there (or the child has failed, whose log is then shown).
fn detach(ctx: &Ctx, repo: &Repo, rev: &str, dir: &Path, args: &MountArgs) -> Result<Outcome> {
    let exe = std::env::current_exe().context("finding the lode executable")?;
    let log_path = repo.lode_dir.join("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("-C")
        .arg(&repo.workdir)
        .args([
            "mount",
            "--foreground",
            "--threads",
            &args.threads.to_string(),
        ])
        .arg("--cache")
        .arg(args.cache.dir())
        .arg("--cache-size")
        .arg(args.cache.cache_size.to_string());
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if let Some(m) = &args.metrics {
        cmd.arg("--metrics").arg(m);
    }
    cmd.arg(rev).arg(dir);
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().context("starting the mount process")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(dir) {
            ctx.note(format!(
                "mounted {rev} at {} (read-only; `lode umount {}` to unmount; log: {})",
                dir.display(),
                dir.display(),
                log_path.display()
            ));
            return Ok(Outcome::Ok);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let tail =
                String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..]).into_owned();
            anyhow::bail!("the mount process failed ({status}):\n{}", tail.trim_end());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!(
                "the mount at {} was not ready after 60 s; see {}",
                dir.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `dir` is a FUSE mount whose process is gone (killed): every
/// request that reaches it fails with ENOTCONN. (A `stat` may still be
/// answered from the kernel's attribute cache; opening the directory is
/// not.)
fn dead_mount(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()))
}

/// Whether `dir` (canonical) is a lode mount point, from /proc/self/mountinfo.
fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = escape_mountinfo(&dir.to_string_lossy());
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        fields.get(4) == Some(&want.as_str()) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

fn escape_mountinfo(p: &str) -> String {
    p.replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

/// Unmount `dir`: directly as root, else through fusermount3/fusermount.
fn unmount(dir: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    match rustix::mount::unmount(dir, flags) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::PERM) => {}
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("unmounting {}", dir.display()));
        }
    }
    for tool in ["fusermount3", "fusermount"] {
        let mut cmd = std::process::Command::new(tool);
        cmd.arg(if lazy { "-uz" } else { "-u" }).arg(dir);
        if let Ok(out) = cmd.output() {
            if out.status.success() {
                return Ok(());
            }
            anyhow::bail!(
                "{tool} -u {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    anyhow::bail!(
        "cannot unmount {}: not root and no fusermount3 on PATH",
        dir.display()
    )
}

/// Unmount a directory `lode mount` serves; its process then exits.
#[derive(Args)]
pub struct UmountArgs {
    dir: PathBuf,
    /// Detach now even if files are open (they keep working until closed).
    #[arg(long)]
    lazy: bool,
}

pub fn umount(ctx: &Ctx, args: UmountArgs) -> Result<Outcome> {
    let dir = ctx.cwd.join(&args.dir);
    let dead = dead_mount(&dir);
    let canonical = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    if !dead && !is_mounted(&canonical) {
        anyhow::bail!("{} is not mounted", dir.display());
    }
    unmount(&canonical, args.lazy || dead).map_err(|e| {
        e.context(format!(
            "{} is busy? close the files open under it, or `lode umount --lazy`",
            dir.display()
        ))
    })?;
    ctx.note(format!("unmounted {}", canonical.display()));
    Ok(Outcome::Ok)
}

/// Fill the node cache with a commit's files ahead of a job, so that a
/// later `lode mount` reads them at local speed.
///
/// Fetches from the remote, in parallel and verified, every chunk of the
/// chosen files that is neither in the node cache nor in the local store.
#[derive(Args)]
pub struct PrefetchArgs {
    /// The commit.
    rev: String,
    /// Limit to these paths (files or directories, from the top of the
    /// repository).
    paths: Vec<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn prefetch(ctx: &Ctx, args: PrefetchArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let sources = Arc::new(sources(&repo, store, &args.cache)?);
    let tree = Tree::load(&repo, &args.rev, sources.clone()).map_err(anyhow::Error::msg)?;
    let files: Vec<_> = tree
        .lode_files()
        .into_iter()
        .filter(|(path, _)| {
            args.paths.is_empty()
                || args.paths.iter().any(|p| {
                    let p = p.trim_end_matches('/');
                    path == p || path.starts_with(&format!("{p}/"))
                })
        })
        .collect();
    let total: u64 = files.iter().map(|(_, p)| p.size).sum();
    let bar = ctx.progress(total, "prefetching");
    let mut fetched = 0u64;
    for (path, pointer) in &files {
        let r = sources
            .recipe(&pointer.id)
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        // Batches of 1024 chunks (64 MiB), each many ranged requests in
        // flight (decoded on all cores).
        for batch in r.0.chunks.chunks(1024) {
            fetched += sources
                .warm(batch)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            if let Some(b) = &bar {
                b.inc(batch.iter().map(|c| c.1 as u64).sum());
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    ctx.note(format!(
        "{} file(s), {}: {} fetched into the node cache {}",
        files.len(),
        human(total),
        human(fetched),
        sources.cache().dir().display()
    ));
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn mountinfo_escapes_spaces() {
        assert_eq!(escape_mountinfo("/mnt/a b"), "/mnt/a\\040b");
    }
}
