//! `lode gate`, `lode verify`, `lode audit`, and the gate side of the
//! pre-push and pre-receive hooks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{Ctx, Outcome};
use crate::audit::{self, GateSummary, Note, Record};
use crate::gates::{self, Gates};
use crate::git::run_git;
use crate::pointer::{self, Pointer};
use crate::statcache::{Stamp, StatCache};
use crate::store::Store;

/// The gates file committed in `rev`, if any.
pub fn gates_at(dir: &Path, rev: &str) -> Result<Option<Gates>> {
    match run_git(dir, &["show", &format!("{rev}:{}", gates::FILE)], None) {
        Ok(text) => Ok(Some(
            Gates::parse(&text).with_context(|| format!("in {rev}"))?,
        )),
        Err(_) => Ok(None),
    }
}

/// The lode pointers in `rev`'s tree, through the git CLI (works in bare
/// repositories and hook quarantines).
pub fn pointers_at(dir: &Path, rev: &str) -> Result<Vec<(String, Pointer)>> {
    let out = run_git(dir, &["ls-tree", "-r", "-l", "-z", rev], None)?;
    let mut small = Vec::new();
    for rec in out.split('\0').filter(|r| !r.is_empty()) {
        let Some((meta, path)) = rec.split_once('\t') else {
            continue;
        };
        let f: Vec<&str> = meta.split_whitespace().collect();
        if f.len() == 4
            && f[1] == "blob"
            && f[3].parse::<usize>().is_ok_and(|s| s <= pointer::MAX_LEN)
        {
            small.push((path.to_string(), f[2].to_string()));
        }
    }
    let oids: Vec<&str> = small.iter().map(|s| s.1.as_str()).collect();
    Ok(small
        .iter()
        .zip(audit::cat_blobs(dir, &oids))
        .filter_map(|((path, _), text)| {
            Some((path.clone(), Pointer::parse(text?.as_bytes()).ok()?))
        })
        .collect())
}

/// Passing results already recorded anywhere, by (gate digest, file id).
fn recorded(dir: &Path) -> BTreeMap<(String, String), gates::Outcome> {
    let mut out = BTreeMap::new();
    for (_, note) in audit::all_notes(dir) {
        for r in note.results {
            if r.passed {
                out.insert((r.gate_digest.clone(), r.file_id.clone()), r);
            }
        }
    }
    out
}

/// The metrics a gate recorded for `path` on `commit` (the baseline).
fn baseline(dir: &Path, commit: Option<&str>) -> BTreeMap<(String, String), BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    if let Some(note) = commit.and_then(|c| audit::read_note(dir, c)) {
        for r in note.results {
            out.insert((r.gate, r.path), r.metrics);
        }
    }
    out
}

/// A file to judge, materialized where a gate can read it.
struct Subject {
    path: String,
    pointer: Pointer,
}

/// Run every applicable gate on `files` (reusing passing results recorded
/// for the same gate and file), record the results as a note on `commit`,
/// and return them.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    ctx: &Ctx,
    workdir: &Path,
    lode_dir: &Path,
    store: &Store,
    gates: &Gates,
    commit: &str,
    files: &[(String, Pointer)],
    baseline_commit: Option<&str>,
) -> Result<Vec<gates::Outcome>> {
    let done = recorded(workdir);
    let base = baseline(workdir, baseline_commit);
    let meter = audit::GpuMeter::start();
    let started = std::time::Instant::now();
    let scratch = tempfile::tempdir().context("creating a scratch directory for gate runs")?;
    let mut results = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, pointer) in files {
        if !seen.insert(path.clone()) {
            continue;
        }
        let applicable = gates.for_path(path);
        if applicable.is_empty() {
            continue;
        }
        let subject = Subject {
            path: path.clone(),
            pointer: *pointer,
        };
        let mut file: Option<PathBuf> = None;
        for i in applicable {
            let g = &gates.gates[i];
            let digest = gates.gate_digest(i);
            if let Some(prev) = done.get(&(digest.clone(), pointer.id.to_string())) {
                ctx.note(format!(
                    "gate {}: {} passed before (file {}); not run again",
                    g.name, path, pointer.id
                ));
                let mut r = prev.clone();
                r.path = path.clone();
                results.push(r);
                continue;
            }
            ctx.note(format!("gate {}: {}", g.name, path));
            let t = std::time::Instant::now();
            let metrics = match &file {
                Some(f) => Ok(f.clone()),
                None => materialize(workdir, lode_dir, store, &subject, scratch.path())
                    .inspect(|f| file = Some(f.clone())),
            }
            .and_then(|f| {
                if g.check.is_some() {
                    gates::builtin(g, path, &f).map_err(anyhow::Error::msg)
                } else {
                    gates::run_command(g, &f, workdir).map_err(anyhow::Error::msg)
                }
            });
            let requirements = if g.check.is_some() {
                gates::builtin_requirements(g)
            } else {
                gates.requirements(i).to_vec()
            };
            let (metrics, checks, error) = match metrics {
                Ok(m) => {
                    let b = base.get(&(g.name.clone(), path.clone()));
                    let checks: Vec<_> = requirements.iter().map(|r| r.check(&m, b)).collect();
                    (m, checks, None)
                }
                Err(e) => (BTreeMap::new(), Vec::new(), Some(format!("{e:#}"))),
            };
            let passed = error.is_none() && checks.iter().all(|c| c.ok);
            results.push(gates::Outcome {
                gate: g.name.clone(),
                gate_digest: digest,
                path: path.clone(),
                file_id: pointer.id.to_string(),
                passed,
                metrics,
                checks,
                duration_ms: t.elapsed().as_millis() as u64,
                error,
            });
        }
    }
    if !results.is_empty() {
        let note = Note {
            version: 1,
            gates_digest: gates.digest.clone(),
            host: audit::host(),
            when: audit::now(),
            duration_ms: started.elapsed().as_millis() as u64,
            gpus: meter.finish(),
            results: results.clone(),
        };
        audit::add_results(workdir, commit, note)
            .context("recording gate results as a git note")?;
    }
    Ok(results)
}

/// The file's bytes on disk: the working copy when the stat cache vouches
/// for it, else a verified copy from the store in `scratch`.
fn materialize(
    workdir: &Path,
    lode_dir: &Path,
    store: &Store,
    s: &Subject,
    scratch: &Path,
) -> Result<PathBuf> {
    let here = workdir.join(&s.path);
    if let Ok(meta) = std::fs::metadata(&here) {
        let cache = StatCache::load(&lode_dir.join("statcache"));
        if cache.get(&s.path, &Stamp::of(&meta)) == Some(s.pointer.id) {
            return Ok(here);
        }
    }
    let name = Path::new(&s.path)
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "file".into());
    let dir = scratch.join(s.pointer.id.to_hex());
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join(name);
    store
        .materialize(&s.pointer.id, &dest)
        .with_context(|| format!("{}: its data is needed to run the gates", s.path))?;
    Ok(dest)
}

/// Print results as a table; returns whether all passed.
fn table(results: &[gates::Outcome], only_failures: bool) -> bool {
    let mut rows = vec![[
        "gate".to_string(),
        "file".into(),
        "metric".into(),
        "value".into(),
        "threshold".into(),
        "result".into(),
    ]];
    for r in results {
        if only_failures && r.passed {
            continue;
        }
        if let Some(e) = &r.error {
            rows.push([
                r.gate.clone(),
                r.path.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("FAIL: {e}"),
            ]);
            continue;
        }
        for c in &r.checks {
            if only_failures && c.ok {
                continue;
            }
            let num = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_else(|| "-".into());
            let mut verdict = if c.ok {
                "pass".to_string()
            } else {
                "FAIL".to_string()
            };
            if let Some(n) = &c.note {
                verdict.push_str(&format!(" ({n})"));
            }
            rows.push([
                r.gate.clone(),
                r.path.clone(),
                c.metric.clone(),
                num(c.value),
                format!("{} ({})", num(c.threshold), c.require),
                verdict,
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        eprintln!("  {}", line.join("  ").trim_end());
    }
    results.iter().all(|r| r.passed)
}

pub fn summaries(results: &[gates::Outcome]) -> Vec<GateSummary> {
    results
        .iter()
        .map(|r| GateSummary {
            gate: r.gate.clone(),
            path: r.path.clone(),
            file_id: r.file_id.clone(),
            passed: r.passed,
            metrics: r.metrics.clone(),
        })
        .collect()
}

/// Gate the files a push sends: run the gates of the pushed tip, print a
/// table and return an error when any fails (before any data or ref moves).
pub fn gate_push(
    ctx: &Ctx,
    workdir: &Path,
    lode_dir: &Path,
    store: &Store,
    tip: &str,
    their: Option<&str>,
    files: &[(String, Pointer)],
) -> Result<Vec<gates::Outcome>> {
    let Some(gates) = gates_at(workdir, tip)? else {
        return Ok(Vec::new());
    };
    let results = evaluate(ctx, workdir, lode_dir, store, &gates, tip, files, their)?;
    if results.is_empty() {
        return Ok(results);
    }
    let passed = results.iter().all(|r| r.passed);
    let mut rec = Record::new(workdir, if passed { "gate-pass" } else { "gate-fail" });
    rec.files = results.iter().map(|r| r.file_id.clone()).collect();
    rec.gates = summaries(&results);
    rec.message = Some(format!("gates for a push of {tip}"));
    audit::append(workdir, &rec).context("recording the gate results in the audit trail")?;
    if !passed {
        eprintln!("lode: the push is refused: a gate failed");
        table(&results, true);
        anyhow::bail!(
            "gates failed; fix the model or the gate, then push again (nothing was uploaded, no ref moved)"
        );
    }
    Ok(results)
}

/// Run, list and inspect eval gates (`.lode/gates.toml`).
///
/// A gate runs for each lode file its `paths` match: a built-in check
/// (`nan`: no NaN/Inf in float tensors; `format`: no pickle-based weights;
/// `size`: a byte budget) or a command that writes metrics as JSON, judged
/// by its `require` expressions (`accuracy >= 0.9`, `loss <= baseline.loss *
/// 1.02`; `baseline` is the metrics recorded for the same path at the
/// upstream's version). Results become git notes (refs/notes/lode) on the
/// commit; a file that passed a gate before is not run again. `git push`
/// runs the gates for what it sends and refuses a failing push.
#[derive(Args)]
pub struct GateArgs {
    #[command(subcommand)]
    action: GateAction,
}

#[derive(Subcommand)]
enum GateAction {
    /// Run the gates on the lode files of REV (default HEAD); exit 1 if any fails.
    Run { rev: Option<String> },
    /// List the gates of the working tree's gates file.
    List,
    /// Show the recorded results for the lode files of REV (default HEAD);
    /// exit 1 if any file lacks a passing result.
    Status {
        rev: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn gate(ctx: &Ctx, args: GateArgs) -> Result<Outcome> {
    match args.action {
        GateAction::List => {
            let repo = ctx.repo()?;
            let Some(gates) = Gates::load(&repo.workdir)? else {
                ctx.note(format!("no gates: {} does not exist", gates::FILE));
                return Ok(Outcome::Ok);
            };
            for g in &gates.gates {
                let what = match (&g.check, &g.run) {
                    (Some(c), _) => format!("check {c}"),
                    (_, Some(r)) => format!("run `{r}`"),
                    _ => String::new(),
                };
                println!(
                    "{}\t{}\t{}\t{}",
                    g.name,
                    g.paths.join(","),
                    what,
                    g.require.join("; ")
                );
            }
            Ok(Outcome::Ok)
        }
        GateAction::Run { rev } => {
            let (repo, store) = ctx.open()?;
            let rev = rev.unwrap_or_else(|| "HEAD".into());
            let commit = repo.git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?;
            let commit = commit.trim();
            let Some(gates) = gates_at(&repo.workdir, commit)? else {
                anyhow::bail!("{rev} has no {}; commit one first", gates::FILE);
            };
            let upstream = repo
                .git(&["rev-parse", "-q", "--verify", "@{upstream}"])
                .ok()
                .map(|s| s.trim().to_string());
            let files = pointers_at(&repo.workdir, commit)?;
            let results = evaluate(
                ctx,
                &repo.workdir,
                &repo.lode_dir,
                &store,
                &gates,
                commit,
                &files,
                upstream.as_deref(),
            )?;
            if results.is_empty() {
                ctx.note("no lode file matches a gate");
                return Ok(Outcome::Ok);
            }
            let passed = table(&results, false);
            let mut rec = Record::new(
                &repo.workdir,
                if passed { "gate-pass" } else { "gate-fail" },
            );
            rec.files = results.iter().map(|r| r.file_id.clone()).collect();
            rec.gates = summaries(&results);
            rec.message = Some(format!("lode gate run {rev}"));
            audit::append(&repo.workdir, &rec)?;
            Ok(if passed { Outcome::Ok } else { Outcome::No })
        }
        GateAction::Status { rev, json } => {
            let repo = ctx.repo()?;
            let rev = rev.unwrap_or_else(|| "HEAD".into());
            let report = verify_commit(&repo.workdir, &rev)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_verify(&report);
            }
            Ok(if report.ok { Outcome::Ok } else { Outcome::No })
        }
    }
}

/// What `lode verify` found for one commit.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    pub commit: String,
    pub ok: bool,
    /// (gate, path, file id, "pass" | "FAIL" | "missing").
    pub files: Vec<(String, String, String, String)>,
}

/// Whether every lode file of `rev` that a gate of `rev` covers has a
/// passing result for that gate (same gate settings, same file id) in some
/// note. Works in bare repositories.
pub fn verify_commit(dir: &Path, rev: &str) -> Result<Verified> {
    let commit = run_git(
        dir,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
        None,
    )?
    .trim()
    .to_string();
    let mut out = Verified {
        commit: commit.clone(),
        ok: true,
        files: Vec::new(),
    };
    let Some(gates) = gates_at(dir, &commit)? else {
        return Ok(out);
    };
    let mut results: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (_, note) in audit::all_notes(dir) {
        for r in note.results {
            let e = results.entry((r.gate_digest, r.file_id)).or_insert(false);
            *e |= r.passed;
        }
    }
    for (path, pointer) in pointers_at(dir, &commit)? {
        for i in gates.for_path(&path) {
            let state = match results.get(&(gates.gate_digest(i), pointer.id.to_string())) {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "missing",
            };
            if state != "pass" {
                out.ok = false;
            }
            out.files.push((
                gates.gates[i].name.clone(),
                path.clone(),
                pointer.id.to_string(),
                state.into(),
            ));
        }
    }
    Ok(out)
}

fn print_verify(v: &Verified) {
    for (gate, path, id, state) in &v.files {
        println!("{state}\t{gate}\t{path}\t{id}");
    }
}

/// Check that a commit's models passed their gates (for CI and deploys).
///
/// Exits 0 when every lode file of REV that a gate covers has a passing
/// result recorded for that gate and that exact file (git notes,
/// refs/notes/lode), 1 when any lacks one (a push made with `git push
/// --no-verify`, a gate that failed, a note never pushed). Needs no data:
/// pointers and notes only, so it runs in a bare repository too.
#[derive(Args)]
pub struct VerifyArgs {
    rev: String,
    #[arg(long)]
    json: bool,
}

pub fn verify(ctx: &Ctx, args: VerifyArgs) -> Result<Outcome> {
    let report = verify_commit(&ctx.cwd, &args.rev)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_verify(&report);
        if report.ok {
            ctx.note(format!("{}: every gated file passed its gates", args.rev));
        } else {
            ctx.note(format!(
                "{}: some gated files lack a passing gate result",
                args.rev
            ));
        }
    }
    Ok(if report.ok { Outcome::Ok } else { Outcome::No })
}

/// The pre-receive hook of a server repository: refuse a push of a branch
/// or tag whose tip has gated files without passing results. Reads git's
/// `<old> <new> <ref>` lines.
pub fn pre_receive(ctx: &Ctx, input: &str) -> Result<Outcome> {
    let mut refused = Vec::new();
    for line in input.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, new, name] = f[..] else {
            continue;
        };
        if new.bytes().all(|b| b == b'0')
            || !(name.starts_with("refs/heads/") || name.starts_with("refs/tags/"))
        {
            continue;
        }
        let report = verify_commit(&ctx.cwd, new)?;
        if !report.ok {
            for (gate, path, id, state) in &report.files {
                if state != "pass" {
                    eprintln!("lode: {name}: {path} ({id}): gate {gate}: {state}");
                }
            }
            refused.push(name.to_string());
        }
    }
    if refused.is_empty() {
        return Ok(Outcome::Ok);
    }
    anyhow::bail!(
        "refused {}: gated models without passing gate results (push with lode's pre-push hook, or run `lode gate run` and push refs/notes/lode)",
        refused.join(", ")
    )
}

/// Show or check the audit trail (refs/lode/audit).
///
/// Every push, gate pass or failure is an entry: who, when, host, action,
/// refs old → new, file ids, gate results. Entries are a chain of git
/// commits, so a rewritten entry changes every later hash.
#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Print the trail, newest first (`--json`: one record per line).
    Log {
        #[arg(long)]
        json: bool,
    },
    /// Check the chain, and that it extends the copy on REMOTE (default
    /// origin, when it has one): a rewritten entry fails.
    Verify {
        #[arg(long, default_value = "origin")]
        remote: String,
    },
}

pub fn audit_cmd(ctx: &Ctx, args: AuditArgs) -> Result<Outcome> {
    let dir = ctx.cwd.clone();
    match args.action {
        AuditAction::Log { json } => {
            for (commit, rec) in audit::log(&dir) {
                match rec {
                    Ok(r) if json => println!("{}", serde_json::to_string(&r)?),
                    Ok(r) => {
                        let refs: Vec<String> = r
                            .refs
                            .iter()
                            .map(|m| format!("{} {}→{}", m.name, short(&m.old), short(&m.new)))
                            .collect();
                        let gates: Vec<String> = r
                            .gates
                            .iter()
                            .map(|g| {
                                format!(
                                    "{}:{}:{}",
                                    g.gate,
                                    g.path,
                                    if g.passed { "pass" } else { "FAIL" }
                                )
                            })
                            .collect();
                        println!(
                            "{} {} {} {} on {} {} {}",
                            short(&commit),
                            r.when,
                            r.action,
                            r.who,
                            r.host,
                            refs.join(" "),
                            gates.join(" ")
                        );
                    }
                    Err(e) => println!("{} unreadable: {e}", short(&commit)),
                }
            }
            Ok(Outcome::Ok)
        }
        AuditAction::Verify { remote } => {
            let n = match audit::verify_chain(&dir) {
                Ok(n) => n,
                Err(problems) => {
                    for p in &problems {
                        println!("broken: {p}");
                    }
                    return Ok(Outcome::No);
                }
            };
            let mut extends = String::new();
            if run_git(
                &dir,
                &["config", "--get", &format!("remote.{remote}.url")],
                None,
            )
            .is_ok()
            {
                let theirs = run_git(&dir, &["ls-remote", &remote, audit::AUDIT_REF], None)?;
                if let Some(sha) = theirs.split_whitespace().next() {
                    if run_git(&dir, &["cat-file", "-e", sha], None).is_err() {
                        run_git(&dir, &["fetch", "-q", &remote, audit::AUDIT_REF], None)?;
                    }
                    let ours = run_git(
                        &dir,
                        &["rev-parse", "-q", "--verify", audit::AUDIT_REF],
                        None,
                    )
                    .unwrap_or_default();
                    let ok = run_git(
                        &dir,
                        &["merge-base", "--is-ancestor", sha, ours.trim()],
                        None,
                    )
                    .is_ok();
                    if !ok {
                        println!(
                            "broken: the local audit trail does not extend {remote}'s (its tip {} is not in ours): an entry was rewritten or removed",
                            short(sha)
                        );
                        return Ok(Outcome::No);
                    }
                    extends = format!(", extends {remote}'s copy");
                }
            }
            ctx.note(format!("audit trail: {n} entries, chain intact{extends}"));
            Ok(Outcome::Ok)
        }
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}
