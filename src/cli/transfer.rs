//! `lode remote`, `push`, `fetch`, `pull`, `clone` and `hook`: moving data
//! between this repository and its remote store.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{Ctx, Outcome, checkout, human, setup};
use crate::config;
use crate::git::{Repo, Tracked};
use crate::id::Id;
use crate::remote::{self, Remote};
use crate::store::Store;
use crate::transfer::{self, FetchReport, PushReport};

/// Show or set where this repository's data lives.
///
/// The URL is written to the committed `.lodeconfig`, so every clone finds
/// the data; `--local` writes git config `lode.remote.url` instead (this
/// machine only; it overrides `.lodeconfig`). Without arguments, prints the
/// URL in use and where it comes from.
///
/// URLs: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix,
/// http(s)://host/path, file:///dir, or a local directory path. Credentials
/// and endpoints come from each store's standard environment (for S3:
/// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
/// AWS_ALLOW_HTTP=true for a plain-http endpoint); never put them in the URL.
#[derive(Args)]
pub struct RemoteArgs {
    #[command(subcommand)]
    action: Option<RemoteAction>,
}

#[derive(Subcommand)]
enum RemoteAction {
    /// Set the remote URL.
    Set {
        url: String,
        /// Write git config (this machine) instead of .lodeconfig.
        #[arg(long)]
        local: bool,
    },
}

pub fn remote(ctx: &Ctx, args: RemoteArgs) -> Result<Outcome> {
    let repo = ctx.repo()?;
    match args.action {
        None => match config::remote_url(&repo)? {
            Some(r) => {
                println!("{}", r.url);
                ctx.note(format!("(from {})", r.source));
                Ok(Outcome::Ok)
            }
            None => {
                ctx.note("no remote is set; `lode remote set URL` sets one");
                Ok(Outcome::No)
            }
        },
        Some(RemoteAction::Set { url, local }) => {
            let url = remote::normalize_url(&url, &ctx.cwd)?;
            if local {
                repo.git(&["config", "--local", "lode.remote.url", &url])?;
                ctx.note(format!(
                    "remote set to {url} (git config, this machine only)"
                ));
            } else {
                let path = repo.workdir.join(config::FILE);
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let text = config::with_url(&text, &url)?;
                crate::durable::write(&path, text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                ctx.note(format!(
                    "remote set to {url} in {}; commit it so that clones find the data",
                    config::FILE
                ));
            }
            Ok(Outcome::Ok)
        }
    }
}

/// The remote of this repository, connected; an error that says how to
/// set one when there is none.
pub fn open_remote(repo: &Repo) -> Result<Remote> {
    let r = config::remote_url(repo)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no lode remote is set for {}; run `lode remote set URL` (an s3:// bucket, or a directory)",
            repo.workdir.display()
        )
    })?;
    let fault = std::env::var("LODE_TEST_FAIL_REQUEST")
        .ok()
        .and_then(|s| remote::Fault::parse(&s));
    let transfers = std::env::var("LODE_TRANSFERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    // A path in .lodeconfig is relative to the top of the working tree.
    let url = remote::normalize_url(&r.url, &repo.workdir)?;
    Ok(Remote::open(&url)?
        .with_fault(fault)
        .with_transfers(transfers))
}

fn transfer_bar(ctx: &Ctx, what: &str) -> impl Fn(u64, u64) + Sync + use<> {
    let bar = ctx.progress(0, what);
    move |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    }
}

/// Upload the data that commits need to the remote store.
///
/// By default: every lode file in the history of REV (default HEAD) that
/// no remote-tracking branch has yet, and every file in REV's tree. Only
/// what the remote lacks is sent, as whole packs (a dataset of many small
/// files goes up in a few large requests), many at once; then one index
/// segment makes them visible. An interrupted push leaves no half-visible
/// data, and the next push does not send finished packs again.
///
/// `git push` runs this through the pre-push hook `lode init` installs.
#[derive(Args)]
pub struct PushArgs {
    /// Commits whose data to push (default HEAD).
    revs: Vec<String>,
    /// Every file in the history of every ref, whatever the remotes have.
    #[arg(long)]
    all: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

pub fn push(ctx: &Ctx, args: PushArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let files = if args.all {
        repo.new_pointers(&["--all".into()], &[])?
    } else {
        let revs = if args.revs.is_empty() {
            vec!["HEAD".to_string()]
        } else {
            args.revs.clone()
        };
        let mut files = repo.new_pointers(&revs, &["--remotes".into()])?;
        for rev in &revs {
            files.extend(repo.tracked_at(rev)?);
        }
        files
    };
    let remote = open_remote(&repo)?;
    let report = push_files(ctx, &repo, &store, &remote, &files)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(Outcome::Ok)
}

fn push_files(
    ctx: &Ctx,
    repo: &Repo,
    store: &Store,
    remote: &Remote,
    files: &[Tracked],
) -> Result<PushReport> {
    let ids: Vec<(Id, String)> = files
        .iter()
        .map(|t| (t.pointer.id, t.path.clone()))
        .collect();
    let bar = transfer_bar(ctx, "uploading");
    let report = transfer::push(store, remote, &repo.lode_dir, &ids, &bar)
        .with_context(|| format!("pushing data to {}", remote.url()))?;
    drop(bar);
    if report.packs_uploaded + report.packs_present == 0 {
        ctx.note(format!(
            "{} already has the data of {} file{}",
            remote.url(),
            report.files,
            plural(report.files)
        ));
    } else {
        ctx.note(format!(
            "pushed {} to {}: {} pack{} uploaded, {} already there; {} request{}",
            human(report.bytes_uploaded),
            remote.url(),
            report.packs_uploaded,
            plural(report.packs_uploaded),
            report.packs_present,
            report.requests,
            plural(report.requests as usize),
        ));
    }
    Ok(report)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Download the data of a commit's lode files into the local store.
///
/// Downloads only what the local store lacks: ranged, coalesced reads of
/// the remote's packs, many at once, every chunk verified before it is
/// stored. The working tree is not touched (`lode checkout` writes files).
#[derive(Args)]
pub struct FetchArgs {
    /// Commits whose files to fetch (default HEAD).
    revs: Vec<String>,
    /// Limit to these paths (files or directories, relative to the top of
    /// the repository).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

pub fn fetch(ctx: &Ctx, args: FetchArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let revs = if args.revs.is_empty() {
        vec!["HEAD".to_string()]
    } else {
        args.revs.clone()
    };
    let mut files = Vec::new();
    for rev in &revs {
        files.extend(repo.tracked_at(rev)?);
    }
    if !args.paths.is_empty() {
        files.retain(|t| {
            args.paths.iter().any(|p| {
                let p = p.trim_end_matches('/');
                t.path == p || t.path.starts_with(&format!("{p}/"))
            })
        });
    }
    let report = fetch_files(ctx, &repo, &store, &files)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(Outcome::Ok)
}

/// Fetch what the local store lacks of `files`.
pub fn fetch_files(
    ctx: &Ctx,
    repo: &Repo,
    store: &Store,
    files: &[Tracked],
) -> Result<FetchReport> {
    let ids: Vec<(Id, String)> = files
        .iter()
        .map(|t| (t.pointer.id, t.path.clone()))
        .collect();
    if ids.iter().all(|(id, _)| store.has_file(id)) {
        return Ok(FetchReport {
            files: ids.len(),
            files_present: ids.len(),
            ..Default::default()
        });
    }
    let remote = open_remote(repo)?;
    let bar = transfer_bar(ctx, "downloading");
    let report = transfer::sync_index(&remote, &repo.lode_dir)
        .and_then(|known| transfer::fetch(store, &remote, &known, &ids, &bar))
        .with_context(|| format!("fetching data from {}", remote.url()))?;
    drop(bar);
    ctx.note(format!(
        "fetched {} file{} ({} downloaded) from {}",
        report.files - report.files_present,
        plural(report.files - report.files_present),
        human(report.bytes_downloaded),
        remote.url()
    ));
    Ok(report)
}

/// `git pull`, then fetch and check out the data of the new HEAD.
///
/// git updates the branch with pointers only (no file-by-file download);
/// then the data comes down in parallel and is written into the working
/// tree. Arguments go to `git pull` as they are.
#[derive(Args)]
pub struct PullArgs {
    /// Arguments for `git pull` (remote, branch, --rebase, …).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    git_args: Vec<String>,
}

pub fn pull(ctx: &Ctx, args: PullArgs) -> Result<Outcome> {
    let (repo, store) = ctx.open()?;
    let mut cmd = std::process::Command::new("git");
    cmd.arg("-C")
        .arg(&repo.workdir)
        .arg("pull")
        .args(&args.git_args);
    cmd.env("LODE_SKIP_SMUDGE", "1");
    let status = cmd.status().context("running git pull")?;
    if !status.success() {
        anyhow::bail!("`git pull` failed; no data was fetched");
    }
    materialize_head(ctx, &repo, &store)
}

/// Fetch HEAD's data and replace its pointer files with their data.
fn materialize_head(ctx: &Ctx, repo: &Repo, store: &Store) -> Result<Outcome> {
    let files = repo.tracked_at("HEAD")?;
    fetch_files(ctx, repo, store, &files)?;
    checkout::materialize(ctx, repo, store, &[])
}

/// Clone a repository and get its lode data.
///
/// `git clone --no-checkout`, then lode is set up in the clone (git config
/// and hooks), the data of HEAD is fetched from the remote named in its
/// committed `.lodeconfig` (in parallel, verified), and the working tree is
/// checked out. With LODE_SKIP_SMUDGE=1 nothing is fetched: the tree holds
/// pointers (for `lode mount`, or a later `lode checkout`).
#[derive(Args)]
pub struct CloneArgs {
    /// The git repository to clone (any URL or path git accepts).
    repository: String,
    /// Where to clone it (default: named after the repository, as git does).
    directory: Option<PathBuf>,
    /// Branch to check out.
    #[arg(short, long)]
    branch: Option<String>,
}

pub fn clone(ctx: &Ctx, args: CloneArgs) -> Result<Outcome> {
    let mut cmd = std::process::Command::new("git");
    cmd.current_dir(&ctx.cwd).arg("clone").arg("--no-checkout");
    if ctx.quiet {
        cmd.arg("-q");
    }
    if let Some(b) = &args.branch {
        cmd.arg("--branch").arg(b);
    }
    cmd.arg("--").arg(&args.repository);
    let dir = args
        .directory
        .clone()
        .unwrap_or_else(|| PathBuf::from(git_humanish(&args.repository)));
    cmd.arg(&dir);
    let status = cmd.status().context("running git clone")?;
    if !status.success() {
        anyhow::bail!("`git clone` failed");
    }
    let dir = ctx.cwd.join(&dir);
    let repo = Repo::discover(&dir)?;
    setup::configure(&repo)?;
    let store = Store::open(&repo.lode_dir)?;
    let has_head = repo.git(&["rev-parse", "--verify", "-q", "HEAD"]).is_ok();
    if !has_head {
        ctx.note("the repository is empty; lode is set up in it");
        return Ok(Outcome::Ok);
    }
    let mut skip = crate::cli::skip_smudge();
    if !skip {
        let files = repo.tracked_at("HEAD")?;
        if !files.is_empty() && config::remote_url(&repo)?.is_none() {
            ctx.note(format!(
                "the repository names no lode remote (.lodeconfig), so its {} lode file(s) stay pointers; \
                 `lode remote set URL` then `lode checkout` gets them",
                files.len()
            ));
            skip = true;
        } else if !files.is_empty() {
            fetch_files(ctx, &repo, &store, &files)?;
        }
    }
    // git writes the tree with pointers (its filter would fetch file by
    // file); lode then writes the data of all of them in parallel.
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(&repo.workdir)
        .args(["checkout", "-q", "-f", "HEAD", "--", "."])
        .env("LODE_SKIP_SMUDGE", "1")
        .status()
        .context("running git checkout")?;
    if !status.success() {
        anyhow::bail!("`git checkout` in {} failed", repo.workdir.display());
    }
    if skip {
        ctx.note(format!(
            "cloned into {} with pointers only; `lode checkout` gets the data",
            dir.display()
        ));
        return Ok(Outcome::Ok);
    }
    checkout::materialize(ctx, &repo, &store, &[])
}

/// The directory name git gives a clone of `url`.
fn git_humanish(url: &str) -> String {
    let trimmed = url.trim_end_matches('/').trim_end_matches("/.git");
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() {
        "repo".into()
    } else {
        name.into()
    }
}

/// Run by git hooks that `lode init` installs; not for people.
///
/// pre-push: first runs the pre-push hook that was there before lode's (kept
/// as `pre-push.lode-chained`, e.g. git-lfs's), then uploads the lode data
/// of the commits being pushed. If the upload fails, the hook fails and git
/// moves no remote ref: a ref never points at data the remote lacks.
#[derive(Args)]
pub struct HookArgs {
    /// The hook: pre-push.
    name: String,
    /// What git passes to the hook.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn hook(ctx: &Ctx, args: HookArgs) -> Result<Outcome> {
    match args.name.as_str() {
        "pre-push" => pre_push(ctx, &args.args),
        "pre-receive" => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading what is pushed from stdin")?;
            super::gate::pre_receive(ctx, &input)
        }
        other => anyhow::bail!("unknown hook {other:?}; lode handles pre-push and pre-receive"),
    }
}

fn pre_push(ctx: &Ctx, args: &[String]) -> Result<Outcome> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading what git pushes from stdin")?;
    let (repo, store) = ctx.open()?;
    run_chained(&repo, "pre-push", args, &input)?;
    let remote_name = args.first().map(String::as_str).unwrap_or("");
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let mut moves = Vec::new();
    for line in input.lines() {
        // <local ref> SP <local sha> SP <remote ref> SP <remote sha>
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_, local, remote_ref, theirs] = parts[..] else {
            continue;
        };
        moves.push(crate::audit::RefMove {
            name: remote_ref.to_string(),
            old: theirs.to_string(),
            new: local.to_string(),
        });
        if local.bytes().all(|b| b == b'0') {
            continue; // a deletion sends nothing
        }
        include.push(local.to_string());
        if !theirs.bytes().all(|b| b == b'0') && repo.has_object(theirs) {
            exclude.push(theirs.to_string());
        }
    }
    if include.is_empty() {
        return Ok(Outcome::Ok);
    }
    // Which git remote to push notes and the audit trail to.
    let destination = args.get(1).or(args.first()).cloned().unwrap_or_default();
    let named_remote = !remote_name.is_empty()
        && repo
            .git(&["config", "--get", &format!("remote.{remote_name}.url")])
            .is_ok();
    if named_remote {
        exclude.push(format!("--remotes={remote_name}"));
    }
    // What git sends (one `rev-list` per pushed ref, each gated on its
    // own), and below every file in the pushed tips' trees (cheap to check
    // against the remote's index): a remote-tracking ref says the git
    // remote has a commit, not that the lode store has its data.
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let mut files = Vec::new();
    let mut gate_results = Vec::new();
    for m in moves.iter().filter(|m| !zero(&m.new)) {
        let sent = repo.new_pointers(std::slice::from_ref(&m.new), &exclude)?;
        // Gates first: a failing model stops the push before any data moves.
        if m.name.starts_with("refs/heads/") || m.name.starts_with("refs/tags/") {
            let theirs = (!zero(&m.old) && repo.has_object(&m.old)).then_some(m.old.as_str());
            let judged: Vec<(String, crate::pointer::Pointer)> =
                sent.iter().map(|t| (t.path.clone(), t.pointer)).collect();
            gate_results.extend(super::gate::gate_push(
                ctx,
                &repo.workdir,
                &repo.lode_dir,
                &store,
                &m.new,
                theirs,
                &judged,
            )?);
        }
        files.extend(sent);
    }
    for tip in &include {
        files.extend(repo.tracked_at(tip)?);
    }
    if !files.is_empty() {
        let remote = open_remote(&repo)
            .context("the push carries lode files, so their data must go first")?;
        push_files(ctx, &repo, &store, &remote, &files)
            .context("the push is refused, so that no ref points at data the remote lacks")?;
    }
    // The audit entry for this push; then notes and the trail go with it.
    let mut rec = crate::audit::Record::new(&repo.workdir, "push");
    rec.refs = moves;
    rec.files = files.iter().map(|t| t.pointer.id.to_string()).collect();
    rec.files.sort();
    rec.files.dedup();
    rec.message = Some(format!("git push to {destination}"));
    rec.gates = super::gate::summaries(&gate_results);
    crate::audit::append(&repo.workdir, &rec).context("recording the push in the audit trail")?;
    push_lode_refs(&repo, &destination)?;
    Ok(Outcome::Ok)
}

/// Push the gate notes and the audit trail to the git remote (a nested
/// push, without hooks), after catching up with what others pushed there
/// ([`crate::audit::catch_up`]).
fn push_lode_refs(repo: &Repo, destination: &str) -> Result<()> {
    if destination.is_empty() {
        return Ok(());
    }
    crate::audit::catch_up(&repo.workdir, destination).with_context(|| {
        format!("merging {destination}'s gate notes and audit trail into ours; the push is refused")
    })?;
    let refs: Vec<&str> = [crate::audit::NOTES_REF, crate::audit::AUDIT_REF]
        .into_iter()
        .filter(|r| repo.git(&["rev-parse", "-q", "--verify", r]).is_ok())
        .collect();
    if refs.is_empty() {
        return Ok(());
    }
    let mut args = vec!["push", "-q", "--no-verify", destination];
    args.extend(refs.iter().copied());
    repo.git(&args).with_context(|| {
        format!("pushing gate notes and the audit trail to {destination}; the push is refused")
    })?;
    Ok(())
}

/// Run the hook lode's shim replaced, if there was one, with git's
/// arguments and stdin; its failure stops the push.
fn run_chained(repo: &Repo, name: &str, args: &[String], input: &str) -> Result<()> {
    let path = setup::hooks_dir(repo)?.join(format!("{name}.lode-chained"));
    if !path.exists() {
        return Ok(());
    }
    let mut child = std::process::Command::new(&path)
        .args(args)
        .current_dir(&repo.workdir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", path.display()))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        // A hook that does not read its stdin closes the pipe early.
        let _ = stdin.write_all(input.as_bytes());
    }
    let status = child
        .wait()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        anyhow::bail!("{} failed ({status})", path.display());
    }
    Ok(())
}

/// Fetches single files for the smudge filter (a `git checkout` of a
/// commit whose data is not here yet). The remote and its index are opened
/// on the first miss and reused for the rest of the checkout.
pub struct SmudgeFetcher<'a> {
    repo: &'a Repo,
    store: &'a Store,
    remote: std::cell::OnceCell<Result<(Remote, transfer::Known), String>>,
}

impl<'a> SmudgeFetcher<'a> {
    pub fn new(repo: &'a Repo, store: &'a Store) -> Self {
        SmudgeFetcher {
            repo,
            store,
            remote: std::cell::OnceCell::new(),
        }
    }

    pub fn fetch(&self, id: Id, path: &str) -> Result<(), String> {
        let opened = self.remote.get_or_init(|| {
            let remote = open_remote(self.repo).map_err(|e| format!("{e:#}"))?;
            let known = transfer::sync_index(&remote, &self.repo.lode_dir)
                .map_err(|e| format!("reading the index of {}: {e}", remote.url()))?;
            Ok((remote, known))
        });
        let (remote, known) = opened.as_ref().map_err(Clone::clone)?;
        transfer::fetch(
            self.store,
            remote,
            known,
            &[(id, path.to_string())],
            &|_, _| {},
        )
        .map(|_| ())
        .map_err(|e| format!("fetching from {}: {e}", remote.url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_directories_are_named_as_git_names_them() {
        assert_eq!(git_humanish("https://host/team/models.git"), "models");
        assert_eq!(git_humanish("/srv/git/models.git/"), "models");
        assert_eq!(git_humanish("git@host:team/data"), "data");
        assert_eq!(git_humanish("/srv/repo/.git"), "repo");
    }
}
