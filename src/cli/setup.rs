//! `lode init`, `lode install`, `lode track`: git configuration and
//! `.gitattributes`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

use super::{Ctx, Outcome};
use crate::git::{self, Repo};
use crate::store::Store;

/// The git config lode needs, for `init` (this repository) and `install`
/// (global). `lode` is found on PATH, as git-lfs's filter is.
const FILTER_CONFIG: &[(&str, &str)] = &[
    ("filter.lode.process", "lode filter-process"),
    ("filter.lode.required", "true"),
    ("diff.lode.textconv", "lode show --textconv"),
];

/// The line `lode track` writes for a pattern.
pub fn attribute_line(pattern: &str) -> String {
    format!("{pattern} filter=lode diff=lode -text")
}

/// Hook shims `lode init` installs (all logic is in `lode hook`).
const HOOKS: &[(&str, &str)] = &[("pre-push", include_str!("../../hooks/pre-push"))];

/// The directory git runs hooks from (`core.hooksPath` honoured).
pub fn hooks_dir(repo: &Repo) -> Result<std::path::PathBuf> {
    let out = repo.git(&["rev-parse", "--git-path", "hooks"])?;
    let dir = std::path::PathBuf::from(out.trim());
    Ok(if dir.is_absolute() {
        dir
    } else {
        repo.workdir.join(dir)
    })
}

/// Install lode's hook shims. A hook already there that is not lode's
/// (git-lfs's, a team's own) is kept as `<hook>.lode-chained` and run by
/// lode's hook first, with the same arguments and input.
pub fn install_hooks(repo: &Repo) -> Result<()> {
    let dir = hooks_dir(repo)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in HOOKS {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == *text => continue,
            Ok(existing) if existing.contains("lode hook") => {} // an older shim
            Ok(_) => {
                let chained = dir.join(format!("{name}.lode-chained"));
                if chained.exists() {
                    anyhow::bail!(
                        "{} exists and so does {}; merge them by hand, then run `lode init` again",
                        path.display(),
                        chained.display()
                    );
                }
                std::fs::rename(&path, &chained)
                    .with_context(|| format!("moving {} aside", path.display()))?;
            }
            Err(_) => {}
        }
        crate::durable::write(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
}

/// Configure an existing repository for lode: git filter and diff config,
/// hooks, and the store. What `init` and `clone` share.
pub fn configure(repo: &Repo) -> Result<()> {
    for (key, value) in FILTER_CONFIG {
        repo.git(&["config", "--local", key, value])?;
    }
    install_hooks(repo)?;
    Store::open(&repo.lode_dir)?;
    Ok(())
}

/// Set up lode in this repository: git filter and diff configuration,
/// the pre-push hook (uploads data before `git push` moves a ref; a hook
/// already there runs first), the `.lodeconfig` file, and the store in
/// `.git/lode`.
///
/// Runs `git init` first when the directory is not in a repository yet.
/// Safe to run again.
#[derive(Args)]
pub struct InitArgs {}

pub fn init(ctx: &Ctx, _args: InitArgs) -> Result<Outcome> {
    let repo = match Repo::discover(&ctx.cwd) {
        Ok(r) => r,
        Err(git::GitError::NotARepo { .. }) => {
            git::run_git(&ctx.cwd, &["init", "-q"], None)?;
            ctx.note(format!(
                "initialized an empty git repository in {}",
                ctx.cwd.display()
            ));
            Repo::discover(&ctx.cwd)?
        }
        Err(e) => return Err(e.into()),
    };
    configure(&repo)?;
    let config = repo.workdir.join(crate::config::FILE);
    if !config.exists() {
        std::fs::write(&config, crate::config::TEMPLATE)
            .with_context(|| format!("writing {}", config.display()))?;
    }
    ctx.note(format!(
        "lode is set up in {}\n  next: `lode track '*.safetensors'` (or any pattern), then `git add` and `git commit` as usual",
        repo.workdir.display()
    ));
    Ok(Outcome::Ok)
}

/// Configure git for every repository of this user (like `git lfs
/// install`), so that a plain `git clone` of a lode repository
/// materializes its files.
#[derive(Args)]
pub struct InstallArgs {
    /// Only this repository's config, not the user's global one.
    #[arg(long)]
    local: bool,
}

pub fn install(ctx: &Ctx, args: InstallArgs) -> Result<Outcome> {
    let scope = if args.local { "--local" } else { "--global" };
    let dir = if args.local {
        ctx.repo()?.workdir
    } else {
        ctx.cwd.clone()
    };
    for (key, value) in FILTER_CONFIG {
        git::run_git(&dir, &["config", scope, key, value], None)?;
    }
    ctx.note(format!(
        "git is configured for lode ({})",
        scope.trim_start_matches('-')
    ));
    Ok(Outcome::Ok)
}

/// Track files matching PATTERN with lode: adds `PATTERN filter=lode
/// diff=lode -text` to .gitattributes. Patterns are git's (`*.safetensors`,
/// `models/**`, `data/train.bin`). Without a pattern, lists what is tracked.
#[derive(Args)]
pub struct TrackArgs {
    /// git-style patterns, e.g. '*.safetensors' (quote them from the shell).
    patterns: Vec<String>,
}

pub fn track(ctx: &Ctx, args: TrackArgs) -> Result<Outcome> {
    let repo = ctx.repo()?;
    let path = repo.workdir.join(".gitattributes");
    if args.patterns.is_empty() {
        for p in tracked_patterns(&path)? {
            println!("{p}");
        }
        return Ok(Outcome::Ok);
    }
    let added = add_patterns(&path, &args.patterns)?;
    for p in &args.patterns {
        if added.contains(p) {
            ctx.note(format!("tracking {p:?}"));
        } else {
            ctx.note(format!("{p:?} is already tracked"));
        }
    }
    if !added.is_empty() {
        ctx.note("commit .gitattributes so that every clone tracks the same files");
    }
    Ok(Outcome::Ok)
}

/// Patterns `.gitattributes` already routes to lode.
pub fn tracked_patterns(path: &Path) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.split_whitespace().skip(1).any(|a| a == "filter=lode"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Append patterns not yet tracked; returns the ones added.
pub fn add_patterns(path: &Path, patterns: &[String]) -> Result<Vec<String>> {
    let mut seen: std::collections::HashSet<String> = tracked_patterns(path)?.into_iter().collect();
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    let mut added = Vec::new();
    for p in patterns {
        if p.trim().is_empty() || p.contains('\n') {
            anyhow::bail!("{p:?} is not a usable pattern");
        }
        if !seen.insert(p.clone()) {
            continue;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&attribute_line(p));
        text.push('\n');
        added.push(p.clone());
    }
    if !added.is_empty() {
        crate::durable::write(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(added)
}

/// A .gitattributes pattern matching exactly `path` (relative, `/`-separated).
pub fn exact_pattern(path: &str) -> String {
    let mut out = String::from("/");
    for c in path.chars() {
        match c {
            '*' | '?' | '[' | '\\' | '!' | '#' => {
                out.push('\\');
                out.push(c);
            }
            ' ' => out.push_str("[[:space:]]"),
            c => out.push(c),
        }
    }
    out
}
