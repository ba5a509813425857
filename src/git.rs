//! The git side: finding the repository, reading commits and trees (gix),
//! and the few things gix cannot do for us (writing config, attribute
//! queries over many paths, staging) through the `git` CLI the user runs.
//!
//! Reading trees goes through gix: it is in-process and fast. Writes go
//! through `git` so they behave exactly as the user's git would (config
//! includes, index locking, hooks), and attribute checks through `git
//! check-attr --stdin` so that every `.gitattributes` rule git honours,
//! lode honours the same way.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::id::Id;
use crate::pointer::{self, Pointer};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "not inside a git repository ({path}); run `git init` first, or `lode init` to do both"
    )]
    NotARepo { path: PathBuf },
    #[error("the repository at {path} has no working tree; run lode inside a checkout")]
    Bare { path: PathBuf },
    #[error("cannot resolve {rev:?}: {message}")]
    Rev { rev: String, message: String },
    #[error("reading git object {oid}: {message}")]
    Object { oid: String, message: String },
    #[error("`git {args}` failed: {stderr}")]
    Command { args: String, stderr: String },
    #[error("cannot run git: {0} (is git installed and on PATH?)")]
    Spawn(std::io::Error),
}

pub type Result<T, E = GitError> = std::result::Result<T, E>;

/// A path in a commit that holds a lode pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub path: String,
    pub pointer: Pointer,
}

/// Where a file id is committed.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// The sizes pointers to it claim (more than one means a bad pointer).
    pub sizes: std::collections::BTreeSet<u64>,
    /// (short commit id, path) places.
    pub places: Vec<(String, String)>,
}

pub struct Repo {
    pub repo: gix::Repository,
    pub workdir: PathBuf,
    /// `.git/lode` of the main repository (shared by all worktrees).
    pub lode_dir: PathBuf,
}

impl Repo {
    pub fn discover(start: &Path) -> Result<Repo> {
        let repo = gix::discover(start).map_err(|_| GitError::NotARepo {
            path: start.to_path_buf(),
        })?;
        let workdir = repo
            .workdir()
            .ok_or_else(|| GitError::Bare {
                path: repo.git_dir().to_path_buf(),
            })?
            .to_path_buf();
        let workdir = std::fs::canonicalize(&workdir).unwrap_or(workdir);
        let lode_dir = repo.common_dir().join("lode");
        Ok(Repo {
            repo,
            workdir,
            lode_dir,
        })
    }

    /// Run `git` in the working tree and return its stdout.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        run_git(&self.workdir, args, None)
    }

    /// Run `git` with `input` on stdin.
    pub fn git_with_input(&self, args: &[&str], input: &[u8]) -> Result<String> {
        run_git(&self.workdir, args, Some(input))
    }

    /// For each path (relative to the working tree), whether its `filter`
    /// attribute is `lode`.
    pub fn lode_filtered(&self, paths: &[String]) -> Result<Vec<bool>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut input = Vec::new();
        for p in paths {
            input.extend_from_slice(p.as_bytes());
            input.push(0);
        }
        let out = self.git_with_input(&["check-attr", "-z", "--stdin", "filter"], &input)?;
        // Output: path NUL attr NUL value NUL, in input order.
        let fields: Vec<&str> = out.split('\0').collect();
        let mut filtered: HashMap<&str, bool> = HashMap::new();
        for rec in fields.chunks(3) {
            if let [path, _, value] = rec {
                filtered.insert(path, *value == "lode");
            }
        }
        Ok(paths
            .iter()
            .map(|p| filtered.get(p.as_str()).copied().unwrap_or(false))
            .collect())
    }

    /// `git add` these paths (relative to the working tree), passed on
    /// stdin so any number of them fits.
    pub fn stage<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut spec = Vec::new();
        for p in paths {
            spec.extend_from_slice(p.as_bytes());
            spec.push(0);
        }
        if !spec.is_empty() {
            self.git_with_input(
                &["add", "--pathspec-from-file=-", "--pathspec-file-nul", "--"],
                &spec,
            )?;
        }
        Ok(())
    }

    /// Record the working files at `paths` (already in git's index) in the
    /// index again, through the clean filter, as `git update-index` does:
    /// paths are looked up, not matched as pathspecs, so 20 000 of them
    /// cost no more than 20 000 lookups.
    pub fn restage<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut input = Vec::new();
        for p in paths {
            input.extend_from_slice(p.as_bytes());
            input.push(0);
        }
        if !input.is_empty() {
            self.git_with_input(&["update-index", "-q", "-z", "--stdin"], &input)?;
        }
        Ok(())
    }

    /// The lode pointer staged in git's index for each path that has one.
    pub fn staged_pointers(&self) -> Result<HashMap<String, Pointer>> {
        let out = self.git(&["ls-files", "-s", "-z"])?;
        let mut res = HashMap::new();
        for rec in out.split('\0').filter(|r| !r.is_empty()) {
            // "<mode> <oid> <stage>\t<path>"
            let Some((meta, path)) = rec.split_once('\t') else {
                continue;
            };
            let Some(oid) = meta.split(' ').nth(1) else {
                continue;
            };
            let Ok(oid) = gix::ObjectId::from_hex(oid.as_bytes()) else {
                continue;
            };
            if let Some(p) = self.pointer_blob(oid)? {
                res.insert(path.to_string(), p);
            }
        }
        Ok(res)
    }

    /// Files in git's index (relative paths).
    pub fn index_files(&self) -> Result<Vec<String>> {
        let out = self.git(&["ls-files", "-z", "--cached"])?;
        Ok(out
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The tree of a revision (a commit, tag or tree).
    pub fn resolve_tree(&self, rev: &str) -> Result<gix::Tree<'_>> {
        let rev_err = |message: String| GitError::Rev {
            rev: rev.to_string(),
            message,
        };
        let id = self
            .repo
            .rev_parse_single(rev)
            .map_err(|e| rev_err(e.to_string()))?;
        let object = id.object().map_err(|e| rev_err(e.to_string()))?;
        object.peel_to_tree().map_err(|e| rev_err(e.to_string()))
    }

    /// The lode pointers committed in `rev`'s tree.
    pub fn tracked_at(&self, rev: &str) -> Result<Vec<Tracked>> {
        let tree = self.resolve_tree(rev)?;
        self.pointers_in_tree(&tree)
    }

    fn pointers_in_tree(&self, tree: &gix::Tree<'_>) -> Result<Vec<Tracked>> {
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| GitError::Object {
                oid: tree.id.to_string(),
                message: e.to_string(),
            })?;
        let mut out = Vec::new();
        for entry in recorder.records {
            if !entry.mode.is_blob() {
                continue;
            }
            if let Some(pointer) = self.pointer_blob(entry.oid)? {
                out.push(Tracked {
                    path: entry.filepath.to_string(),
                    pointer,
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The pointer a blob holds, if it holds one (small blobs only are read).
    pub fn pointer_blob(&self, oid: gix::ObjectId) -> Result<Option<Pointer>> {
        let obj_err = |message: String| GitError::Object {
            oid: oid.to_string(),
            message,
        };
        let header = self
            .repo
            .find_header(oid)
            .map_err(|e| obj_err(e.to_string()))?;
        if header.size() as usize > pointer::MAX_LEN {
            return Ok(None);
        }
        let blob = self
            .repo
            .find_object(oid)
            .map_err(|e| obj_err(e.to_string()))?;
        Ok(Pointer::parse(&blob.data).ok())
    }

    /// The pointers in blobs reachable from `include` and not from
    /// `exclude` (revisions or pseudo-options such as `--remotes=origin`),
    /// with a path each was found at: what a push of `include` sends that
    /// the other side does not have, in git's own reckoning (`git rev-list
    /// --objects`).
    pub fn new_pointers(&self, include: &[String], exclude: &[String]) -> Result<Vec<Tracked>> {
        if include.is_empty() {
            return Ok(Vec::new());
        }
        let mut input = String::new();
        for r in include {
            input.push_str(r);
            input.push('\n');
        }
        if !exclude.is_empty() {
            input.push_str("--not\n");
            for r in exclude {
                input.push_str(r);
                input.push('\n');
            }
        }
        let out = self.git_with_input(&["rev-list", "--objects", "--stdin"], input.as_bytes())?;
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for line in out.lines() {
            // Commits come without a path; trees and blobs with one.
            let Some((oid, path)) = line.split_once(' ') else {
                continue;
            };
            let Ok(oid) = gix::ObjectId::from_hex(oid.as_bytes()) else {
                continue;
            };
            if !seen.insert(oid) {
                continue;
            }
            if let Some(pointer) = self.pointer_blob(oid)? {
                found.push(Tracked {
                    path: path.to_string(),
                    pointer,
                });
            }
        }
        Ok(found)
    }

    /// Whether `rev` names an object this repository has.
    pub fn has_object(&self, rev: &str) -> bool {
        gix::ObjectId::from_hex(rev.as_bytes())
            .ok()
            .is_some_and(|oid| self.repo.has_object(oid))
    }

    /// Every file id committed anywhere in history (all refs), with the
    /// sizes its pointers claim and up to `per_id` (commit, path) places.
    pub fn where_in_history(&self, per_id: usize) -> Result<HashMap<Id, Committed>> {
        let mut tips = Vec::new();
        let refs = self.repo.references().map_err(|e| GitError::Rev {
            rev: "refs".into(),
            message: e.to_string(),
        })?;
        let all = refs.all().map_err(|e| GitError::Rev {
            rev: "refs".into(),
            message: e.to_string(),
        })?;
        for r in all.flatten() {
            let mut r = r;
            if let Ok(id) = r.peel_to_id()
                && let Ok(obj) = id.object()
                && obj.kind == gix::object::Kind::Commit
            {
                tips.push(id.detach());
            }
        }
        if let Ok(head) = self.repo.head_id() {
            tips.push(head.detach());
        }
        let mut out: HashMap<Id, Committed> = HashMap::new();
        let mut seen = HashSet::new();
        let walk = self.repo.rev_walk(tips).all().map_err(|e| GitError::Rev {
            rev: "history".into(),
            message: e.to_string(),
        })?;
        for info in walk {
            let info = info.map_err(|e| GitError::Rev {
                rev: "history".into(),
                message: e.to_string(),
            })?;
            let commit = info.id().object().map_err(|e| GitError::Object {
                oid: info.id.to_string(),
                message: e.to_string(),
            })?;
            let tree = commit.peel_to_tree().map_err(|e| GitError::Object {
                oid: info.id.to_string(),
                message: e.to_string(),
            })?;
            let short = info.id.to_hex_with_len(10).to_string();
            self.walk_unseen(tree.id, "", &mut seen, &mut |path, pointer| {
                let c = out.entry(pointer.id).or_default();
                c.sizes.insert(pointer.size);
                if c.places.len() < per_id {
                    c.places.push((short.clone(), path));
                }
            })?;
        }
        Ok(out)
    }

    /// Call `found` for each pointer blob under `tree` not seen before;
    /// trees and blobs already seen (in an earlier commit) are skipped, so
    /// a history walk reads each object once, not once per commit.
    fn walk_unseen(
        &self,
        tree: gix::ObjectId,
        prefix: &str,
        seen: &mut HashSet<gix::ObjectId>,
        found: &mut dyn FnMut(String, Pointer),
    ) -> Result<()> {
        if !seen.insert(tree) {
            return Ok(());
        }
        let obj_err = |message: String| GitError::Object {
            oid: tree.to_string(),
            message,
        };
        let object = self
            .repo
            .find_tree(tree)
            .map_err(|e| obj_err(e.to_string()))?;
        let entries: Vec<(bool, bool, String, gix::ObjectId)> = object
            .decode()
            .map_err(|e| obj_err(e.to_string()))?
            .entries
            .iter()
            .map(|e| {
                (
                    e.mode.is_tree(),
                    e.mode.is_blob(),
                    e.filename.to_string(),
                    e.oid.to_owned(),
                )
            })
            .collect();
        for (is_tree, is_blob, name, oid) in entries {
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if is_tree {
                self.walk_unseen(oid, &path, seen, found)?;
            } else if is_blob
                && seen.insert(oid)
                && let Some(pointer) = self.pointer_blob(oid)?
            {
                found(path, pointer);
            }
        }
        Ok(())
    }
}

pub fn run_git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Result<String> {
    let mut cmd = Command::new("git");
    // Fully buffered output: we read it all at the end, and `check-attr
    // --stdin` otherwise flushes after every path (100 000 paths: 100 000
    // writes and as many reads, a second of system time).
    cmd.env("GIT_FLUSH", "0");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(GitError::Spawn)?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let data = input.to_vec();
        // Write from a thread: git may fill its stdout before reading all
        // of stdin, and both pipes have bounded buffers.
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().map_err(GitError::Spawn)?;
        let _ = writer.join();
        return finish(args, out);
    }
    let out = child.wait_with_output().map_err(GitError::Spawn)?;
    finish(args, out)
}

fn finish(args: &[&str], out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        return Err(GitError::Command {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
