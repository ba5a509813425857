//! The command line: argument parsing, output, exit codes. Everything that
//! writes to the terminal lives under this module; data goes to stdout,
//! progress and diagnostics to stderr.
//!
//! Exit codes: 0 success, 1 "ran, and the answer is no" (fsck found damage),
//! 2 error. A closed stdout (`lode ls | head`) is success.

mod add;
mod checkout;
mod demo;
mod filter;
mod fsck;
mod gate;
mod inspect;
mod mount;
mod setup;
mod transfer;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::git::Repo;
use crate::store::Store;

const HELP_TEMPLATE: &str = "\
{about-with-newline}
{usage-heading} {usage}

Set-up:
  init            Set up lode in this git repository (git init first if needed)
  install         Configure git globally so plain `git clone` materializes lode files
  track           Track paths matching a pattern with lode (writes .gitattributes)
  demo            Run lode's main job end to end in a new directory

Data:
  add             Store files in lode and stage them (parallel, deduplicated)
  status          Show tracked files: present, pointer only, modified, missing
  checkout        Replace pointer files in the working tree with their data
  ls              List the tracked files of a commit
  show            Describe a tracked file: id, size, chunks, tensors
  hash            Print the lode file id of files
  du              Logical vs stored bytes and the dedup ratio

Transfer:
  remote          Show or set where the data lives (s3://, gs://, az://, a directory)
  push            Upload the data of commits to the remote (git push does it too)
  fetch           Download the data of a commit into the local store
  pull            git pull, then fetch and check out the new data in parallel
  clone           git clone, then fetch and check out the data in parallel

Mount:
  mount           Show a commit's files in a directory, fetched lazily as they are read
  umount          Unmount a directory lode mount serves
  prefetch        Fill the node cache with a commit's files ahead of a job

Governance:
  gate            Run, list and inspect eval gates (.lode/gates.toml)
  verify          Check that a commit's models passed their gates (for CI, deploys)
  audit           Show or check the audit trail of pushes and gate results

Upkeep:
  fsck            Verify the store; --read-data re-checks every byte

Plumbing:
  filter-process  git's long-running clean/smudge filter (run by git)
  hook            git hooks lode installs (run by git)

Options:
{options}
`git lode <command>` works the same. Run `lode <command> --help` for details.
";

/// lode versions models, datasets and checkpoints inside git: large files
/// become small pointers in commits, their bytes are chunked, deduplicated
/// and compressed into packs under .git/lode.
#[derive(Parser)]
#[command(name = "lode", version, help_template = HELP_TEMPLATE)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    chdir: Option<PathBuf>,
    /// No progress bars or summaries (errors still go to stderr).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Init(setup::InitArgs),
    Install(setup::InstallArgs),
    Demo(demo::DemoArgs),
    Track(setup::TrackArgs),
    Add(add::AddArgs),
    Status(inspect::StatusArgs),
    Checkout(checkout::CheckoutArgs),
    Ls(inspect::LsArgs),
    Show(inspect::ShowArgs),
    Hash(inspect::HashArgs),
    Du(inspect::DuArgs),
    Remote(transfer::RemoteArgs),
    Push(transfer::PushArgs),
    Fetch(transfer::FetchArgs),
    Pull(transfer::PullArgs),
    Clone(transfer::CloneArgs),
    Mount(mount::MountArgs),
    Umount(mount::UmountArgs),
    Prefetch(mount::PrefetchArgs),
    Gate(gate::GateArgs),
    Verify(gate::VerifyArgs),
    Audit(gate::AuditArgs),
    Fsck(fsck::FsckArgs),
    Hook(transfer::HookArgs),
    #[command(name = "filter-process")]
    FilterProcess(filter::FilterArgs),
}

/// What every command gets: where it runs and how loud it may be.
pub struct Ctx {
    pub cwd: PathBuf,
    pub quiet: bool,
}

impl Ctx {
    pub fn repo(&self) -> Result<Repo> {
        Ok(Repo::discover(&self.cwd)?)
    }

    /// The repository and its store; the store must have been set up.
    pub fn open(&self) -> Result<(Repo, Store)> {
        let repo = self.repo()?;
        if !repo.lode_dir.exists() {
            anyhow::bail!(
                "lode is not set up in {}; run `lode init`",
                repo.workdir.display()
            );
        }
        let store = Store::open(&repo.lode_dir)
            .with_context(|| format!("opening the lode store in {}", repo.lode_dir.display()))?;
        Ok((repo, store))
    }

    /// A progress bar on stderr when it is a terminal and not `--quiet`.
    pub fn progress(&self, total: u64, what: &str) -> Option<indicatif::ProgressBar> {
        if self.quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Some(bar)
    }

    /// A line for people, on stderr, unless `--quiet`.
    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// Exit status of a command that ran.
pub enum Outcome {
    Ok,
    /// Ran, and the answer is no.
    No,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let cwd = match &cli.chdir {
        Some(d) => d.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let ctx = Ctx {
        cwd,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Init(a) => setup::init(&ctx, a),
        Command::Install(a) => setup::install(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Track(a) => setup::track(&ctx, a),
        Command::Add(a) => add::run(&ctx, a),
        Command::Status(a) => inspect::status(&ctx, a),
        Command::Checkout(a) => checkout::run(&ctx, a),
        Command::Ls(a) => inspect::ls(&ctx, a),
        Command::Show(a) => inspect::show(&ctx, a),
        Command::Hash(a) => inspect::hash(&ctx, a),
        Command::Du(a) => inspect::du(&ctx, a),
        Command::Remote(a) => transfer::remote(&ctx, a),
        Command::Push(a) => transfer::push(&ctx, a),
        Command::Fetch(a) => transfer::fetch(&ctx, a),
        Command::Pull(a) => transfer::pull(&ctx, a),
        Command::Clone(a) => transfer::clone(&ctx, a),
        Command::Mount(a) => mount::mount(&ctx, a),
        Command::Umount(a) => mount::umount(&ctx, a),
        Command::Prefetch(a) => mount::prefetch(&ctx, a),
        Command::Gate(a) => gate::gate(&ctx, a),
        Command::Verify(a) => gate::verify(&ctx, a),
        Command::Audit(a) => gate::audit_cmd(&ctx, a),
        Command::Fsck(a) => fsck::run(&ctx, a),
        Command::Hook(a) => transfer::hook(&ctx, a),
        Command::FilterProcess(a) => filter::run(&ctx, a),
    };
    match result {
        Ok(Outcome::Ok) => 0,
        Ok(Outcome::No) => 1,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return 0;
            }
            eprintln!("lode: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            2
        }
    }
}

/// Whether `LODE_SKIP_SMUDGE` asks for pointers instead of data.
pub fn skip_smudge() -> bool {
    std::env::var("LODE_SKIP_SMUDGE").is_ok_and(|v| v == "1" || v == "true")
}

/// `bytes` for people: 1.5 GiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A path given on the command line, relative to the working tree, with
/// `/` separators; refused when it is outside the working tree.
pub fn repo_relative(repo: &Repo, cwd: &Path, arg: &Path) -> Result<String> {
    let abs = if arg.is_absolute() {
        arg.to_path_buf()
    } else {
        cwd.join(arg)
    };
    let normal = crate::remote::lexical_normalize(&abs);
    let outside = || {
        anyhow::anyhow!(
            "{} is outside the repository at {}",
            arg.display(),
            repo.workdir.display()
        )
    };
    let rel = match normal.strip_prefix(&repo.workdir) {
        Ok(r) => r.to_path_buf(),
        Err(_) => {
            // The working tree may be reached through a symlink (/tmp on
            // some systems): compare with the parent made canonical.
            let canonical = normal
                .parent()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .zip(normal.file_name())
                .map(|(p, name)| p.join(name));
            canonical
                .and_then(|c| c.strip_prefix(&repo.workdir).ok().map(Path::to_path_buf))
                .ok_or_else(outside)?
        }
    };
    let s = rel
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not valid UTF-8", arg.display()))?;
    if s.split('/').any(|c| c == ".git") {
        anyhow::bail!(
            "{} is inside .git; lode does not track git's own files",
            arg.display()
        );
    }
    Ok(s.to_string())
}
