//! Gate notes (`refs/notes/lode`) and the audit trail (`refs/lode/audit`).
//!
//! Both live in git and travel with pushes. Everything here goes through
//! the `git` CLI, so it works the same in a working tree, a bare server
//! repository, and a pre-receive hook's quarantine.
//!
//! The audit trail is a chain of commits, one per event; each commit's tree
//! holds one file, `record.json`. git's hash chain makes a rewritten entry
//! evident: the rewritten chain no longer extends the copy others have.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::gates::Outcome;
use crate::git::{GitError, run_git};

pub const NOTES_REF: &str = "refs/notes/lode";
pub const AUDIT_REF: &str = "refs/lode/audit";

/// A GPU as NVML describes it, with the energy it used during the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub driver: String,
    pub memory_bytes: u64,
    /// Millijoules used while the gates ran (when NVML reports energy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
}

/// The note lode keeps on a commit: every gate result recorded for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Note {
    pub version: u32,
    /// BLAKE3 of the gates file the results were made under.
    pub gates_digest: String,
    pub host: String,
    /// Unix seconds.
    pub when: u64,
    pub duration_ms: u64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    pub results: Vec<Outcome>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The lode note on `commit`, if any.
pub fn read_note(dir: &Path, commit: &str) -> Option<Note> {
    let text = run_git(dir, &["notes", "--ref", NOTES_REF, "show", commit], None).ok()?;
    serde_json::from_str(&text).ok()
}

/// Record `new` results on `commit`, merged with what its note holds (a
/// result for the same gate, path and file replaces the old one).
pub fn add_results(dir: &Path, commit: &str, mut new: Note) -> Result<(), GitError> {
    if let Some(old) = read_note(dir, commit) {
        let mut results = old.results;
        results.retain(|r| {
            !new.results
                .iter()
                .any(|n| n.gate == r.gate && n.path == r.path && n.file_id == r.file_id)
        });
        results.append(&mut new.results);
        new.results = results;
        if new.gpus.is_empty() {
            new.gpus = old.gpus;
        }
    }
    let json = serde_json::to_string_pretty(&new).expect("note serializes");
    run_git(
        dir,
        &["notes", "--ref", NOTES_REF, "add", "-f", "-F", "-", commit],
        Some(json.as_bytes()),
    )?;
    Ok(())
}

/// Every lode note in the repository, with the commit it is on.
pub fn all_notes(dir: &Path) -> Vec<(String, Note)> {
    let Ok(list) = run_git(dir, &["notes", "--ref", NOTES_REF, "list"], None) else {
        return Vec::new();
    };
    let pairs: Vec<(&str, &str)> = list.lines().filter_map(|l| l.split_once(' ')).collect();
    let blobs: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let texts = cat_blobs(dir, &blobs);
    pairs
        .iter()
        .zip(texts)
        .filter_map(|((_, commit), text)| {
            Some((commit.to_string(), serde_json::from_str(&text?).ok()?))
        })
        .collect()
}

/// The contents of objects named by `revs` (`<oid>` or `<rev>:<path>`),
/// through one `git cat-file --batch`.
pub fn cat_blobs(dir: &Path, revs: &[&str]) -> Vec<Option<String>> {
    if revs.is_empty() {
        return Vec::new();
    }
    let input = revs.join("\n") + "\n";
    let Ok(out) = run_git(dir, &["cat-file", "--batch"], Some(input.as_bytes())) else {
        return vec![None; revs.len()];
    };
    let bytes = out.as_bytes();
    let mut at = 0;
    let mut result = Vec::new();
    for _ in revs {
        let Some(nl) = bytes[at..].iter().position(|&b| b == b'\n') else {
            result.push(None);
            continue;
        };
        let header = &out[at..at + nl];
        at += nl + 1;
        let fields: Vec<&str> = header.split(' ').collect();
        if fields.len() == 3
            && let Ok(size) = fields[2].parse::<usize>()
        {
            let end = (at + size).min(bytes.len());
            result.push(Some(String::from_utf8_lossy(&bytes[at..end]).into_owned()));
            at = end + 1;
        } else {
            result.push(None); // "<rev> missing"
        }
    }
    result
}

/// One audit event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub version: u32,
    /// push, gate-pass, gate-fail, override, promote, rollback.
    pub action: String,
    /// `Name <email>` of the user (git's committer identity).
    pub who: String,
    /// Unix seconds.
    pub when: u64,
    pub host: String,
    #[serde(default)]
    pub refs: Vec<RefMove>,
    /// File ids the event concerns.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub gates: Vec<GateSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefMove {
    pub name: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateSummary {
    pub gate: String,
    pub path: String,
    pub file_id: String,
    pub passed: bool,
    pub metrics: BTreeMap<String, f64>,
}

impl Record {
    pub fn new(dir: &Path, action: &str) -> Record {
        let ident = run_git(dir, &["var", "GIT_COMMITTER_IDENT"], None).unwrap_or_default();
        // "Name <email> 1700000000 +0000": keep the name and address.
        let who = ident
            .rfind('>')
            .map(|i| ident[..=i].to_string())
            .unwrap_or_else(|| "unknown".into());
        Record {
            version: 1,
            action: action.to_string(),
            who,
            when: now(),
            host: host(),
            refs: Vec::new(),
            files: Vec::new(),
            gates: Vec::new(),
            message: None,
        }
    }
}

/// Append `record` to the audit trail; returns the new entry's commit.
pub fn append(dir: &Path, record: &Record) -> Result<String, GitError> {
    let json = serde_json::to_string_pretty(record).expect("record serializes");
    let blob = run_git(
        dir,
        &["hash-object", "-w", "--stdin"],
        Some(json.as_bytes()),
    )?;
    let tree_line = format!("100644 blob {}\trecord.json\n", blob.trim());
    let tree = run_git(dir, &["mktree"], Some(tree_line.as_bytes()))?;
    // Compare-and-swap on the ref: two writers never lose an entry.
    for _ in 0..5 {
        let prev = run_git(dir, &["rev-parse", "-q", "--verify", AUDIT_REF], None)
            .ok()
            .map(|s| s.trim().to_string());
        let mut args = vec!["commit-tree", tree.trim()];
        if let Some(p) = &prev {
            args.extend(["-p", p]);
        }
        let subject = format!("lode audit: {}", record.action);
        args.extend(["-m", &subject]);
        let commit = run_git(dir, &args, None)?.trim().to_string();
        let old = prev.clone().unwrap_or_default();
        if run_git(dir, &["update-ref", AUDIT_REF, &commit, &old], None).is_ok() {
            return Ok(commit);
        }
    }
    Err(GitError::Command {
        args: format!("update-ref {AUDIT_REF}"),
        stderr: "the audit ref kept changing under us".into(),
    })
}

/// The commit `remote` has at `name`, if any.
fn remote_tip(dir: &Path, remote: &str, name: &str) -> Result<Option<String>, GitError> {
    let out = run_git(dir, &["ls-remote", remote, name], None)?;
    Ok(out.split_whitespace().next().map(str::to_string))
}

fn local_tip(dir: &Path, name: &str) -> Option<String> {
    run_git(dir, &["rev-parse", "-q", "--verify", name], None)
        .ok()
        .map(|s| s.trim().to_string())
}

fn contains(dir: &Path, ours: Option<&str>, theirs: &str) -> bool {
    ours.is_some_and(|o| run_git(dir, &["merge-base", "--is-ancestor", theirs, o], None).is_ok())
}

/// Bring the local notes and audit trail up to date with `remote`'s before
/// they are pushed, so that pushes from several people fast-forward:
/// notes are merged (where both annotated the same commit, ours wins: a
/// note is about the gates run here); audit entries made here since the
/// remote's tip are appended again on top of it. The remote's entries are
/// never rewritten.
pub fn catch_up(dir: &Path, remote: &str) -> Result<(), GitError> {
    const THEIRS: &str = "refs/lode/remote-tmp";
    if let Some(theirs) = remote_tip(dir, remote, NOTES_REF)? {
        let ours = local_tip(dir, NOTES_REF);
        if !contains(dir, ours.as_deref(), &theirs) {
            run_git(
                dir,
                &["fetch", "-q", remote, &format!("+{NOTES_REF}:{THEIRS}")],
                None,
            )?;
            if ours.is_some() {
                run_git(
                    dir,
                    &[
                        "notes", "--ref", NOTES_REF, "merge", "-q", "-s", "ours", THEIRS,
                    ],
                    None,
                )?;
            } else {
                run_git(dir, &["update-ref", NOTES_REF, &theirs], None)?;
            }
            run_git(dir, &["update-ref", "-d", THEIRS], None)?;
        }
    }
    if let Some(theirs) = remote_tip(dir, remote, AUDIT_REF)? {
        let ours = local_tip(dir, AUDIT_REF);
        if !contains(dir, ours.as_deref(), &theirs) {
            run_git(
                dir,
                &["fetch", "-q", remote, &format!("+{AUDIT_REF}:{THEIRS}")],
                None,
            )?;
            let mine: Vec<Record> = match &ours {
                Some(o) => {
                    let range = format!("{theirs}..{o}");
                    let list = run_git(
                        dir,
                        &["rev-list", "--reverse", "--first-parent", &range],
                        None,
                    )?;
                    let revs: Vec<String> =
                        list.lines().map(|c| format!("{c}:record.json")).collect();
                    let refs: Vec<&str> = revs.iter().map(String::as_str).collect();
                    cat_blobs(dir, &refs)
                        .into_iter()
                        .filter_map(|t| serde_json::from_str(&t?).ok())
                        .collect()
                }
                None => Vec::new(),
            };
            let old = ours.unwrap_or_default();
            run_git(dir, &["update-ref", AUDIT_REF, &theirs, &old], None)?;
            for record in &mine {
                append(dir, record)?;
            }
            run_git(dir, &["update-ref", "-d", THEIRS], None)?;
        }
    }
    Ok(())
}

/// The audit trail, newest first: (commit, record or why it is unreadable).
pub fn log(dir: &Path) -> Vec<(String, Result<Record, String>)> {
    let Ok(out) = run_git(dir, &["rev-list", "--first-parent", AUDIT_REF], None) else {
        return Vec::new();
    };
    let commits: Vec<String> = out.lines().map(str::to_string).collect();
    let revs: Vec<String> = commits.iter().map(|c| format!("{c}:record.json")).collect();
    let refs: Vec<&str> = revs.iter().map(String::as_str).collect();
    commits
        .into_iter()
        .zip(cat_blobs(dir, &refs))
        .map(|(c, text)| {
            let rec = text
                .ok_or_else(|| "no record.json".to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
            (c, rec)
        })
        .collect()
}

/// Check the chain: one parent per entry (one root), a tree of exactly
/// `record.json` that parses. (Times may go backwards: entries made offline
/// are appended after others' when they are pushed.) Returns the number of
/// entries, or what is wrong.
pub fn verify_chain(dir: &Path) -> Result<usize, Vec<String>> {
    let Ok(out) = run_git(dir, &["rev-list", "--parents", AUDIT_REF], None) else {
        return Ok(0);
    };
    let mut problems = Vec::new();
    let mut roots = 0;
    for line in out.lines() {
        let ids: Vec<&str> = line.split(' ').collect();
        match ids.len() {
            1 => roots += 1,
            2 => {}
            _ => problems.push(format!(
                "entry {} has {} parents (a chain has one)",
                ids[0],
                ids.len() - 1
            )),
        }
        let tree = run_git(dir, &["ls-tree", "--name-only", ids[0]], None).unwrap_or_default();
        if tree.trim() != "record.json" {
            problems.push(format!(
                "entry {} holds {:?}, not just record.json",
                ids[0],
                tree.trim()
            ));
        }
    }
    if roots > 1 {
        problems.push(format!("the chain has {roots} beginnings"));
    }
    let entries = log(dir);
    let mut later: Option<u64> = None;
    for (commit, rec) in &entries {
        match rec {
            Err(e) => problems.push(format!("entry {commit}: {e}")),
            Ok(r) => {
                if let Some(t) = later
                    && r.when > t
                {
                    problems.push(format!(
                        "entry {commit} is dated after the entry that follows it"
                    ));
                }
                later = Some(r.when);
            }
        }
    }
    if problems.is_empty() {
        Ok(entries.len())
    } else {
        Err(problems)
    }
}

/// GPUs on this machine from NVML (empty without a GPU or a driver).
pub struct GpuMeter {
    nvml: Option<nvml_wrapper::Nvml>,
    start: Vec<Gpu>,
}

impl GpuMeter {
    pub fn start() -> GpuMeter {
        let nvml = nvml_wrapper::Nvml::init().ok();
        let start = nvml.as_ref().map(read_gpus).unwrap_or_default();
        GpuMeter { nvml, start }
    }

    /// The GPUs, with the energy each used since [`GpuMeter::start`].
    pub fn finish(self) -> Vec<Gpu> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let end = read_gpus(nvml);
        end.into_iter()
            .map(|mut g| {
                let before = self
                    .start
                    .iter()
                    .find(|s| s.uuid == g.uuid)
                    .and_then(|s| s.energy_mj);
                g.energy_mj = g.energy_mj.zip(before).map(|(e, b)| e.saturating_sub(b));
                g
            })
            .collect()
    }
}

fn read_gpus(nvml: &nvml_wrapper::Nvml) -> Vec<Gpu> {
    let driver = nvml.sys_driver_version().unwrap_or_default();
    let n = nvml.device_count().unwrap_or(0);
    (0..n)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            Some(Gpu {
                index: i,
                name: d.name().unwrap_or_default(),
                uuid: d.uuid().unwrap_or_default(),
                driver: driver.clone(),
                memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
                energy_mj: d.total_energy_consumption().ok(),
            })
        })
        .collect()
}
