//! Eval gates through git hooks: real git, a bare remote, models written by
//! the safetensors Python package, and an eval script in Python.

use std::path::{Path, PathBuf};

use crate::common::{Env, stderr, stdout};

/// A model whose eval reports `acc` and `loss` (stored in the file, so the
/// eval script is honest and tiny), optionally with a NaN in its weights.
fn model(path: &Path, acc: f32, loss: f32, nan: bool) {
    let script = r#"
import sys
import numpy as np
from safetensors.numpy import save_file
path, acc, loss, nan = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
rng = np.random.default_rng(int(acc * 1000 + loss * 10))
w = rng.normal(0, 0.02, size=(256, 256)).astype(np.float16)
if nan:
    w[17, 42] = np.nan
save_file({"acc": np.array([acc], dtype=np.float32), "loss": np.array([loss], dtype=np.float32), "w": w}, path)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .args([
            acc.to_string(),
            loss.to_string(),
            if nan { "1" } else { "0" }.into(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EVAL: &str = r#"import sys, json
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
json.dump({"accuracy": float(t["acc"][0]), "loss": float(t["loss"][0])}, open(sys.argv[2], "w"))
"#;

const GATES: &str = r#"
[[gate]]
name = "no-nans"
paths = ["models/**/*.safetensors"]
check = "nan"

[[gate]]
name = "accuracy"
paths = ["models/**/*.safetensors"]
run = "python3 eval.py {path} {metrics}"
require = ["accuracy >= 0.9", "loss <= baseline.loss * 1.02"]
timeout = "2m"
"#;

/// A repository with gates, an eval script, a directory data remote and a
/// bare git remote. Returns (repo, bare).
fn gated(env: &Env) -> (PathBuf, PathBuf) {
    let repo = env.repo("repo");
    env.lode_ok(&repo, &["track", "*.safetensors"]);
    env.lode_ok(
        &repo,
        &[
            "remote",
            "set",
            env.tmp.path().join("store").to_str().unwrap(),
        ],
    );
    std::fs::create_dir_all(repo.join(".lode")).unwrap();
    std::fs::write(repo.join(".lode/gates.toml"), GATES).unwrap();
    std::fs::write(repo.join("eval.py"), EVAL).unwrap();
    std::fs::create_dir_all(repo.join("models/llm")).unwrap();
    let bare = env.tmp.path().join("origin.git");
    std::fs::create_dir_all(&bare).unwrap();
    env.git_in(&bare, &["init", "-q", "--bare"]);
    env.git_in(&repo, &["remote", "add", "origin", bare.to_str().unwrap()]);
    (repo, bare)
}

fn commit_model(env: &Env, repo: &Path, acc: f32, loss: f32, nan: bool, msg: &str) {
    model(&repo.join("models/llm/model.safetensors"), acc, loss, nan);
    env.git_in(repo, &["add", "."]);
    env.git_in(repo, &["commit", "-q", "-m", msg]);
}

fn remote_ref(env: &Env, bare: &Path, name: &str) -> Option<String> {
    let out = env.run("git", bare, &["rev-parse", "-q", "--verify", name]);
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

#[test]
fn a_push_is_gated_results_and_audit_travel_and_a_worse_model_is_refused() {
    let env = Env::new();
    let (repo, bare) = gated(&env);
    commit_model(&env, &repo, 0.93, 1.0, false, "v1");
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v1 = remote_ref(&env, &bare, "refs/heads/main").expect("main was pushed");
    // The notes and the audit trail reached the remote.
    assert!(remote_ref(&env, &bare, "refs/notes/lode").is_some());
    assert!(remote_ref(&env, &bare, "refs/lode/audit").is_some());
    let note = env.git_in(
        &repo,
        &["notes", "--ref", "refs/notes/lode", "show", "HEAD"],
    );
    let note: serde_json::Value = serde_json::from_str(&note).unwrap();
    let results = note["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{note}");
    assert!(results.iter().all(|r| r["passed"] == true), "{note}");
    let acc = results.iter().find(|r| r["gate"] == "accuracy").unwrap();
    assert!((acc["metrics"]["accuracy"].as_f64().unwrap() - 0.93).abs() < 1e-6);
    assert!(note["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(note["gates_digest"].as_str().is_some_and(|d| d.len() == 64));
    env.lode_ok(&repo, &["verify", "HEAD"]);

    // Below the absolute threshold: refused, named, and nothing moves.
    commit_model(&env, &repo, 0.80, 0.9, false, "v2 worse accuracy");
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("accuracy") && err.contains("FAIL") && err.contains("0.8"),
        "{err}"
    );
    assert!(err.contains("models/llm/model.safetensors"), "{err}");
    assert_eq!(
        remote_ref(&env, &bare, "refs/heads/main").as_deref(),
        Some(v1.as_str())
    );

    // Worse than the remote's version by more than 2 %: refused by the baseline.
    env.git_in(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    commit_model(&env, &repo, 0.95, 1.5, false, "v2 worse loss");
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("baseline.loss") && err.contains("1.02"),
        "{err}"
    );
    assert_eq!(
        remote_ref(&env, &bare, "refs/heads/main").as_deref(),
        Some(v1.as_str())
    );

    // The audit trail names every decision.
    let log = env.lode_ok(&repo, &["audit", "log", "--json"]);
    let actions: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        actions.iter().filter(|a| *a == "gate-fail").count() >= 2,
        "{actions:?}"
    );
    assert!(actions.contains(&"push".to_string()) && actions.contains(&"gate-pass".to_string()));
    env.lode_ok(&repo, &["audit", "verify"]);
}

#[test]
fn a_nan_in_the_weights_is_refused() {
    let env = Env::new();
    let (repo, bare) = gated(&env);
    commit_model(&env, &repo, 0.99, 0.1, true, "nan");
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no-nans") && err.contains("nan"), "{err}");
    assert_eq!(remote_ref(&env, &bare, "refs/heads/main"), None);
    // Nothing was uploaded either.
    assert!(!env.tmp.path().join("store/index").exists());
    let out = env.lode(&repo, &["gate", "run"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn no_verify_is_caught_by_lode_verify_and_refused_by_pre_receive() {
    let env = Env::new();
    let (repo, bare) = gated(&env);
    commit_model(&env, &repo, 0.99, 0.1, false, "ok");
    env.git_in(&repo, &["push", "-q", "origin", "main"]);
    // A model that never went through the gates.
    commit_model(&env, &repo, 0.10, 9.0, false, "sneaky");
    env.git_in(&repo, &["push", "-q", "--no-verify", "origin", "main"]);
    let out = env.lode(&repo, &["verify", "HEAD"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("missing"), "{}", stdout(&out));
    env.lode_ok(&repo, &["verify", "HEAD~1"]);

    // The server's pre-receive hook refuses it.
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/pre-receive");
    std::fs::copy(&hook, bare.join("hooks/pre-receive")).unwrap();
    commit_model(&env, &repo, 0.20, 9.0, false, "sneakier");
    let out = env.run("git", &repo, &["push", "--no-verify", "origin", "main"]);
    assert!(!out.status.success(), "pre-receive let it through");
    let err = stderr(&out);
    assert!(
        err.contains("gate") && err.contains("models/llm/model.safetensors"),
        "{err}"
    );
    // With the gates run, the same push goes through (the hook pushes the
    // notes first).
    env.git_in(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    commit_model(&env, &repo, 0.97, 0.1, false, "good");
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `lode verify` works in the bare repository too.
    let head = env.git_in(&repo, &["rev-parse", "HEAD"]);
    let out = env.lode(&bare, &["verify", head.trim()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_rewritten_audit_entry_fails_audit_verify() {
    let env = Env::new();
    let (repo, _) = gated(&env);
    commit_model(&env, &repo, 0.99, 0.1, false, "ok");
    env.git_in(&repo, &["push", "-q", "origin", "main"]);
    env.lode_ok(&repo, &["audit", "verify"]);
    // Rewrite the oldest entry (a gate pass becomes something else) and
    // rebuild the chain on top of it, as someone covering tracks would.
    let chain = env.git_in(&repo, &["rev-list", "--reverse", "refs/lode/audit"]);
    let mut parent: Option<String> = None;
    for (i, commit) in chain.lines().enumerate() {
        let mut record = env.git_in(&repo, &["show", &format!("{commit}:record.json")]);
        if i == 0 {
            record = record.replace("gate-pass", "override");
        }
        let blob = env
            .cmd("git", &repo)
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(record.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let blob = String::from_utf8_lossy(&blob.stdout).trim().to_string();
        let tree = env
            .cmd("git", &repo)
            .args(["mktree"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("100644 blob {blob}\trecord.json\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let tree = String::from_utf8_lossy(&tree.stdout).trim().to_string();
        let mut args = vec![
            "commit-tree".to_string(),
            tree,
            "-m".into(),
            "lode audit".into(),
        ];
        if let Some(p) = &parent {
            args.extend(["-p".to_string(), p.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        parent = Some(env.git_in(&repo, &args).trim().to_string());
    }
    env.git_in(
        &repo,
        &["update-ref", "refs/lode/audit", parent.as_deref().unwrap()],
    );
    let out = env.lode(&repo, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("rewritten"), "{}", stdout(&out));
}

#[test]
fn a_gate_that_times_out_or_crashes_fails_closed_and_bad_config_names_the_line() {
    let env = Env::new();
    let (repo, _) = gated(&env);
    let gates = |run: &str| {
        format!(
            "[[gate]]\nname = \"slow\"\npaths = [\"models/**\"]\nrun = \"{run}\"\nrequire = [\"accuracy >= 0.5\"]\ntimeout = \"2s\"\n"
        )
    };
    commit_model(&env, &repo, 0.99, 0.1, false, "m");
    let cases = [
        ("sleep 30; true {path}", "timed out"),
        ("exit 3; true {path}", "failed"),
        ("true {path}", "no metrics"),
        ("echo '[1]' > {metrics}; true {path}", "not a JSON object"),
    ];
    for (run, why) in cases {
        std::fs::write(repo.join(".lode/gates.toml"), gates(run)).unwrap();
        env.git_in(&repo, &["commit", "-q", "-am", why]);
        let started = std::time::Instant::now();
        let out = env.lode(&repo, &["gate", "run"]);
        assert_eq!(out.status.code(), Some(1), "{run}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(why) && stderr(&out).contains("fails closed"),
            "{run}: {}",
            stderr(&out)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
    std::fs::write(
        repo.join(".lode/gates.toml"),
        "[[gate]]\nname = \"x\"\npaths = [\"a\"\n",
    )
    .unwrap();
    let out = env.lode(&repo, &["gate", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("gates.toml") && stderr(&out).contains("line"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_that_passed_a_gate_is_not_run_again() {
    let env = Env::new();
    let (repo, _) = gated(&env);
    commit_model(&env, &repo, 0.95, 0.5, false, "m");
    let first = env.lode(&repo, &["gate", "run"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // A commit that does not change the model: its gates are not re-run.
    std::fs::write(repo.join("README"), "docs\n").unwrap();
    env.git_in(&repo, &["add", "README"]);
    env.git_in(&repo, &["commit", "-q", "-m", "docs"]);
    let again = env.lode(&repo, &["gate", "run"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again).matches("not run again").count(),
        2,
        "{}",
        stderr(&again)
    );
    env.lode_ok(&repo, &["verify", "HEAD"]);
    let list = env.lode_ok(&repo, &["gate", "list"]);
    assert!(
        list.contains("no-nans") && list.contains("accuracy"),
        "{list}"
    );
}

#[test]
fn two_people_pushing_share_one_audit_trail_and_their_notes() {
    let a = Env::new();
    let (repo, bare) = gated(&a);
    commit_model(&a, &repo, 0.95, 0.5, false, "a1");
    a.git_in(&repo, &["push", "-q", "origin", "main"]);

    // Someone else clones (without the notes or the trail) and pushes.
    let b = Env::new();
    let clone = b.tmp.path().join("b");
    b.lode_ok(
        b.tmp.path(),
        &["clone", bare.to_str().unwrap(), clone.to_str().unwrap()],
    );
    commit_model(&b, &clone, 0.96, 0.4, false, "b1");
    let out = b.run("git", &clone, &["push", "origin", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The first person pulls the code and pushes again: their trail and
    // notes catch up with the remote's first, so both fast-forward.
    a.git_in(&repo, &["pull", "-q", "--ff-only", "origin", "main"]);
    commit_model(&a, &repo, 0.97, 0.3, false, "a2");
    let out = a.run("git", &repo, &["push", "origin", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let log = a.lode_ok(&bare, &["audit", "log", "--json"]);
    let pushes = log
        .lines()
        .filter(|l| l.contains("\"action\":\"push\""))
        .count();
    assert_eq!(pushes, 3, "{log}");
    a.lode_ok(&repo, &["audit", "verify"]);
    b.git_in(&clone, &["pull", "-q", "--ff-only", "origin", "main"]);
    // Every commit's gate results are on the server.
    for rev in ["HEAD", "HEAD~1", "HEAD~2"] {
        let commit = a.git_in(&repo, &["rev-parse", rev]);
        let out = a.lode(&bare, &["verify", commit.trim()]);
        assert!(out.status.success(), "{rev}: {}", stdout(&out));
    }
}
