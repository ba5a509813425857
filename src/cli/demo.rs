//! `lode demo`: lode's main job end to end, in a new directory, with
//! nothing but git: version a checkpoint, fine-tune it, see the dedup, go
//! back in history, verify every byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::{Ctx, Outcome, human};

/// Run lode's main job end to end in a new directory: a safetensors
/// checkpoint committed with plain git, a fine-tune committed on top,
/// storage and dedup shown, the first version checked out again and
/// verified byte for byte, and the store checked with `fsck --read-data`.
#[derive(Args)]
pub struct DemoArgs {
    /// Directory to create for the demo repository.
    #[arg(default_value = "lode-demo")]
    dir: PathBuf,
    /// Size of the generated checkpoint in MiB.
    #[arg(long, default_value_t = 64)]
    mib: u64,
}

pub fn run(ctx: &Ctx, args: DemoArgs) -> Result<Outcome> {
    let dir = if args.dir.is_absolute() {
        args.dir.clone()
    } else {
        ctx.cwd.join(&args.dir)
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "{} exists and is not empty; pick another directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // git runs `lode filter-process` by name: make sure it finds this lode.
    let exe = std::env::current_exe().context("locating the lode binary")?;
    let bin_dir = exe
        .parent()
        .context("lode binary has no directory")?
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |program: &str, args: &[&str]| -> Result<String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(&dir)
            .env("PATH", &path)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "`{program} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let step = |n: u32, what: &str| println!("\n[{n}/6] {what}");

    step(
        1,
        "a git repository with lode: `git init`, `lode init`, `lode track '*.safetensors'`",
    );
    sh("git", &["init", "-q"])?;
    sh("git", &["config", "user.name", "lode demo"])?;
    sh("git", &["config", "user.email", "demo@lode.invalid"])?;
    sh(exe.to_str().context("non-UTF-8 path")?, &["-q", "init"])?;
    sh(
        exe.to_str().context("non-UTF-8 path")?,
        &["-q", "track", "*.safetensors"],
    )?;

    step(
        2,
        &format!(
            "a {} MiB fp16 checkpoint, committed with plain `git add` and `git commit`",
            args.mib
        ),
    );
    let model = dir.join("model.safetensors");
    let v1 = checkpoint(args.mib, None)?;
    std::fs::write(&model, &v1)?;
    let t = Instant::now();
    sh(
        "git",
        &["add", ".gitattributes", ".lodeconfig", "model.safetensors"],
    )?;
    sh("git", &["commit", "-qm", "v1: base checkpoint"])?;
    println!(
        "      committed in {:.2?}; the blob git stores is the pointer:",
        t.elapsed()
    );
    print!(
        "{}",
        indent(&sh("git", &["show", "HEAD:model.safetensors"])?)
    );

    step(
        3,
        "a fine-tune (every tenth tensor changed), committed the same way",
    );
    let v2 = checkpoint(args.mib, Some(10))?;
    std::fs::write(&model, &v2)?;
    let t = Instant::now();
    sh("git", &["commit", "-qam", "v2: fine-tuned"])?;
    println!(
        "      committed in {:.2?}; `git diff HEAD~1` names only the changed tensors:",
        t.elapsed()
    );
    let diff = sh("git", &["diff", "HEAD~1", "HEAD"])?;
    let changed: Vec<&str> = diff.lines().filter(|l| l.starts_with("+tensor ")).collect();
    println!(
        "      {} tensors changed, e.g. {}",
        changed.len(),
        changed.first().unwrap_or(&"-")
    );

    step(4, "storage: two versions, deduplicated (`lode du`)");
    print!(
        "{}",
        indent(&sh(exe.to_str().context("non-UTF-8 path")?, &["du"])?)
    );
    let stored = dir_size(&dir.join(".git/lode"));
    println!(
        "      .git/lode holds {} for {} of checkpoints ({:.2} × one version)",
        human(stored),
        human(2 * v1.len() as u64),
        stored as f64 / v1.len() as f64
    );

    step(
        5,
        "back in history: `git checkout HEAD~1` restores v1 byte for byte",
    );
    sh("git", &["checkout", "-q", "HEAD~1"])?;
    let same = std::fs::read(&model)? == v1;
    println!("      v1 identical: {same}");
    sh("git", &["checkout", "-q", "-"])?;
    let same2 = std::fs::read(&model)? == v2;
    println!("      back on v2, identical: {same2}");
    if !(same && same2) {
        anyhow::bail!("checked-out bytes differ from what was committed");
    }

    step(6, "verify every stored byte: `lode fsck --read-data`");
    let out = Command::new(&exe)
        .args(["fsck", "--read-data"])
        .current_dir(&dir)
        .env("PATH", &path)
        .output()?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    if !out.status.success() {
        anyhow::bail!("fsck found problems");
    }
    println!("\ndone: the demo repository is {}", dir.display());
    Ok(Outcome::Ok)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A deterministic fp16 checkpoint of about `mib` MiB, written with the
/// `safetensors` crate (Hugging Face's own serializer). With `changed =
/// Some(k)`, every k-th tensor gets new values (a fine-tune).
fn checkpoint(mib: u64, changed: Option<usize>) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let rows = 512usize;
    let cols = 1024usize;
    let per = rows * cols * 2;
    let count = ((mib as usize * 1024 * 1024) / per).max(1);
    let mut buffers = Vec::with_capacity(count);
    for i in 0..count {
        let seed = match changed {
            Some(k) if i % k == 0 => 1_000_003 + i as u64,
            _ => i as u64 + 1,
        };
        buffers.push(gaussian_f16(rows * cols, seed));
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Ok((
                format!("model.layers.{i:03}.weight"),
                TensorView::new(Dtype::F16, vec![rows, cols], b)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::tensor::serialize(views, None)?)
}

/// `n` fp16 values, roughly Gaussian with σ = 0.02 (sum of four uniforms).
fn gaussian_f16(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n * 2);
    for _ in 0..n {
        let mut s = 0.0f32;
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s += (x >> 40) as f32 / (1u64 << 24) as f32;
        }
        let v = (s - 2.0) * 0.02 * 1.732;
        out.extend_from_slice(&f32_to_f16(v).to_le_bytes());
    }
    out
}

/// IEEE half from single, round toward zero (exact enough for test data).
fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if exp <= 0 {
        if exp < -10 {
            return sign;
        }
        let m = (mant | 0x80_0000) >> (1 - exp + 13);
        return sign | m as u16;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    sign | ((exp as u16) << 10) | (mant >> 13) as u16
}
