//! Remotes: push, clone, pull and fetch through a directory remote and a
//! real S3-compatible server (Garage on loopback), with the real binary,
//! git's own push and hooks, and injected failures.

use std::path::{Path, PathBuf};

use crate::common::{Env, LODE, noise, sha, stderr, stdout};
use crate::s3::Garage;

/// A bare git repository to push to.
fn bare(env: &Env, name: &str) -> PathBuf {
    let dir = env.tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    env.git_in(&dir, &["init", "-q", "--bare"]);
    dir
}

/// The commit a bare repository's `main` points at, if any.
fn remote_main(env: &Env, bare: &Path) -> Option<String> {
    let out = env.run(
        "git",
        bare,
        &["rev-parse", "--verify", "-q", "refs/heads/main"],
    );
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

/// A new repository whose lode remote is the directory `<tmp>/store`.
fn with_directory_remote(env: &Env) -> (PathBuf, PathBuf) {
    let repo = env.repo("a");
    let store = env.tmp.path().join("store");
    env.lode_ok(&repo, &["remote", "set", store.to_str().unwrap()]);
    (repo, store)
}

/// A repository with a model committed, the lode remote set to `url` and
/// `origin` pointing at a new bare repository. Returns (repo, bare).
fn published(env: &Env, url: &str) -> (PathBuf, PathBuf) {
    let repo = env.tracked_repo("a");
    env.lode_ok(&repo, &["remote", "set", url]);
    env.model(&repo.join("model.safetensors"), 24.0, 1);
    std::fs::write(repo.join("README"), "a model\n").unwrap();
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-q", "-m", "v1"]);
    let origin = bare(env, "origin.git");
    env.git_in(
        &repo,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    (repo, origin)
}

/// Push with plain `git push` (the hook uploads), clone into a fresh HOME
/// with `lode clone`, pull a fine-tune with plain `git pull` (smudge
/// fetches) and another with `lode pull`: every checkout byte-identical.
fn round_trip(a: &Env, b: &Env, url: &str) {
    let (repo, origin) = published(a, url);
    let push = a.run("git", &repo, &["push", "-q", "origin", "main"]);
    assert!(push.status.success(), "git push: {}", stderr(&push));
    assert!(remote_main(a, &origin).is_some());

    // A second machine: nothing shared but the two remotes.
    let clone = b.tmp.path().join("b");
    let out = b.lode(
        b.tmp.path(),
        &["clone", origin.to_str().unwrap(), clone.to_str().unwrap()],
    );
    assert!(out.status.success(), "lode clone: {}", stderr(&out));
    assert_eq!(
        sha(&clone.join("model.safetensors")),
        sha(&repo.join("model.safetensors"))
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("README")).unwrap(),
        "a model\n"
    );
    let status = b.git_in(&clone, &["status", "--porcelain"]);
    assert!(status.is_empty(), "clone is dirty: {status}");

    // v2 by plain git: the smudge filter fetches the new data.
    let model = repo.join("model.safetensors");
    a.finetune(&model, &repo.join("v2.safetensors"), 4, 2);
    std::fs::rename(repo.join("v2.safetensors"), &model).unwrap();
    a.git_in(&repo, &["commit", "-q", "-am", "v2"]);
    a.git_in(&repo, &["push", "-q", "origin", "main"]);
    b.git_in(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(sha(&clone.join("model.safetensors")), sha(&model));

    // v3 by lode pull: pointers first, then the data in parallel.
    a.finetune(&model, &repo.join("v3.safetensors"), 3, 3);
    std::fs::rename(repo.join("v3.safetensors"), &model).unwrap();
    a.git_in(&repo, &["commit", "-q", "-am", "v3"]);
    a.git_in(&repo, &["push", "-q", "origin", "main"]);
    b.lode_ok(&clone, &["pull", "--ff-only"]);
    assert_eq!(sha(&clone.join("model.safetensors")), sha(&model));
    let status = b.git_in(&clone, &["status", "--porcelain"]);
    assert!(status.is_empty(), "clone is dirty after pull: {status}");

    // Nothing new: a push sends nothing.
    let report = a.lode_ok(&repo, &["push", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["packs_uploaded"], 0, "{report}");
}

#[test]
fn push_clone_and_pull_through_a_directory_remote() {
    let a = Env::new();
    let b = Env::new();
    let store = a.tmp.path().join("store");
    round_trip(&a, &b, store.to_str().unwrap());
    // The committed .lodeconfig names the remote as a file:// URL.
    let text = std::fs::read_to_string(a.tmp.path().join("a/.lodeconfig")).unwrap();
    assert!(text.contains("url = \"file://"), "{text}");
    assert!(store.join("index").read_dir().unwrap().count() >= 3);
}

#[test]
fn push_clone_and_pull_through_s3() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Env::new();
    let b = Env::new();
    garage.configure(&a);
    garage.configure(&b);
    round_trip(&a, &b, &garage.url("team/models"));
}

#[test]
fn a_push_to_an_unreachable_store_is_refused_and_no_ref_moves() {
    let env = Env::new();
    // An S3 endpoint where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.set_var("AWS_ACCESS_KEY_ID", "GK0000");
    env.set_var("AWS_SECRET_ACCESS_KEY", "secret");
    env.set_var("AWS_REGION", "garage");
    env.set_var("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"));
    env.set_var("AWS_ALLOW_HTTP", "true");
    let (repo, origin) = published(&env, "s3://nowhere/models");
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(!out.status.success(), "the push went through");
    let err = stderr(&out);
    assert!(err.contains("refused"), "{err}");
    assert!(err.contains("s3://nowhere/models"), "{err}");
    assert!(!err.contains("secret"), "a credential was printed: {err}");
    assert_eq!(remote_main(&env, &origin), None, "the remote ref moved");
}

#[test]
fn a_push_to_a_stopped_s3_server_is_refused_and_recovers_when_it_returns() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let env = Env::new();
    garage.configure(&env);
    let (repo, origin) = published(&env, &garage.url("m"));
    garage.stop();
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(!out.status.success(), "the push went through");
    assert_eq!(remote_main(&env, &origin), None, "the remote ref moved");
    garage.spawn();
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(remote_main(&env, &origin).is_some());
}

#[test]
fn git_push_without_a_lode_remote_is_refused_with_what_to_do() {
    let env = Env::new();
    let repo = env.tracked_repo("a");
    env.model(&repo.join("m.safetensors"), 1.0, 1);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-q", "-m", "m"]);
    let origin = bare(&env, "origin.git");
    env.git_in(
        &repo,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    let out = env.run("git", &repo, &["push", "origin", "main"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lode remote set"), "{}", stderr(&out));
    assert_eq!(remote_main(&env, &origin), None);
}

/// Parse a remote's index segments with lode's own reader and check that
/// every pack they name is whole on the remote.
fn segments_name_only_whole_packs(store: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(store.join("index")) else {
        return 0;
    };
    let mut n = 0;
    for seg in dir {
        let bytes = std::fs::read(seg.unwrap().path()).unwrap();
        let table = lode::index::Table::parse(&bytes[..], true).expect("segment parses");
        for pack in table.packs() {
            let path = store.join(format!("packs/{}.pack", pack.to_hex()));
            let data = std::fs::read(&path).unwrap_or_else(|_| {
                panic!("a segment names {} but it is not there", path.display())
            });
            assert_eq!(
                lode::id::Id::of_chunk(&data),
                *pack,
                "pack {} is not whole",
                path.display()
            );
        }
        n += 1;
    }
    n
}

#[test]
fn a_push_killed_midway_converges_without_sending_finished_packs_again() {
    let env = Env::new();
    let (repo, store) = with_directory_remote(&env);
    std::fs::create_dir_all(repo.join("data")).unwrap();
    // 4 × 72 MiB of noise: at least four packs.
    for i in 0..4 {
        std::fs::write(repo.join(format!("data/shard{i}.bin")), noise(72 << 20, i)).unwrap();
    }
    env.lode_ok(&repo, &["add", "data"]);
    env.git_in(&repo, &["add", ".lodeconfig"]);
    env.git_in(&repo, &["commit", "-q", "-m", "shards"]);

    let mut child = env
        .cmd(LODE, &repo)
        .args(["push"])
        .env("LODE_TRANSFERS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let packs = store.join("packs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let whole = |p: &Path| {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                    .count()
            })
            .unwrap_or(0)
    };
    while whole(&packs) == 0 {
        assert!(std::time::Instant::now() < deadline, "no pack was uploaded");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Killed before the segment: nothing is visible, nothing is half there.
    assert_eq!(
        segments_name_only_whole_packs(&store),
        0,
        "a segment went up before its packs"
    );
    let before: Vec<(PathBuf, std::time::SystemTime)> = std::fs::read_dir(&packs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    assert!(!before.is_empty());

    let report = env.lode_ok(&repo, &["push", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(
        report["packs_present"].as_u64().unwrap() >= before.len() as u64,
        "finished packs were sent again: {report}"
    );
    for (path, mtime) in &before {
        assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), *mtime);
    }
    assert_eq!(segments_name_only_whole_packs(&store), 1);

    // And the data is all there: a fresh clone of the commit gets it.
    let b = Env::new();
    let clone = b.tmp.path().join("b");
    b.lode_ok(
        b.tmp.path(),
        &["clone", repo.to_str().unwrap(), clone.to_str().unwrap()],
    );
    for i in 0..4 {
        let name = format!("data/shard{i}.bin");
        assert_eq!(sha(&clone.join(&name)), sha(&repo.join(&name)), "{name}");
    }
}

#[test]
fn every_request_failing_in_turn_ends_right_or_with_a_clear_error() {
    let env = Env::new();
    let (repo, _) = published(&env, "/dev/null/unused");
    std::fs::create_dir_all(repo.join("data")).unwrap();
    for i in 0..3 {
        std::fs::write(repo.join(format!("data/{i}.bin")), noise(300_000, i)).unwrap();
    }
    env.lode_ok(&repo, &["add", "data"]);
    env.git_in(&repo, &["commit", "-q", "-m", "data"]);

    // How many requests a clean push makes.
    let scratch = env.tmp.path().join("scratch");
    env.git_in(
        &repo,
        &["config", "lode.remote.url", scratch.to_str().unwrap()],
    );
    let report = env.lode_ok(&repo, &["push", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let n = report["requests"].as_u64().unwrap();
    assert!(n >= 4, "{report}");

    for k in 1..=n + 1 {
        // A fresh remote and git remote each time; request k and every
        // later one fail (the store went away at request k).
        let store = env.tmp.path().join(format!("store{k}"));
        let origin = bare(&env, &format!("origin{k}.git"));
        let url = lode::remote::normalize_url(store.to_str().unwrap(), Path::new("/")).unwrap();
        env.git_in(&repo, &["config", "lode.remote.url", &url]);
        env.git_in(
            &repo,
            &["remote", "set-url", "origin", origin.to_str().unwrap()],
        );
        let out = env
            .cmd("git", &repo)
            .args(["push", "origin", "main"])
            .env("LODE_TEST_FAIL_REQUEST", format!("{k}+"))
            .output()
            .unwrap();
        segments_name_only_whole_packs(&store);
        if out.status.success() {
            assert!(k > n, "request {k} failed yet the push succeeded");
        } else {
            let err = stderr(&out);
            assert!(
                err.contains("lode: error: the push is refused"),
                "k={k}: {err}"
            );
            assert!(err.contains("pushing data to file://"), "k={k}: {err}");
            assert!(err.contains("failed on purpose"), "k={k}: {err}");
            assert_eq!(
                remote_main(&env, &origin),
                None,
                "k={k}: the remote ref moved"
            );
        }
        // A single failed request is retried away.
        let once = env
            .cmd(LODE, &repo)
            .args(["push"])
            .env("LODE_TEST_FAIL_REQUEST", k.to_string())
            .output()
            .unwrap();
        assert!(once.status.success(), "k={k}: {}", stderr(&once));
        assert!(segments_name_only_whole_packs(&store) > 0);
    }

    // Fetch: a pointer-only clone fetches with request k failing; it ends
    // with the right bytes or an error, and a plain fetch then converges.
    let b = Env::new();
    let source = env.tmp.path().join("store1");
    let url = lode::remote::normalize_url(source.to_str().unwrap(), Path::new("/")).unwrap();
    let pointer_clone = |name: &str| {
        let clone = b.tmp.path().join(name);
        b.pointer_clone(&repo, &clone);
        b.git_in(&clone, &["config", "lode.remote.url", &url]);
        clone
    };
    let first = pointer_clone("b0");
    let report = b.lode_ok(&first, &["fetch", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let m = report["requests"].as_u64().unwrap();
    assert!(m >= 2, "{report}");
    for k in 1..=m + 1 {
        let clone = pointer_clone(&format!("b{k}"));
        let out = b
            .cmd(LODE, &clone)
            .args(["fetch"])
            .env("LODE_TEST_FAIL_REQUEST", format!("{k}+"))
            .output()
            .unwrap();
        if out.status.success() {
            assert!(k > m, "request {k} failed yet the fetch succeeded");
        } else {
            assert!(
                stderr(&out).contains("fetching data from"),
                "k={k}: {}",
                stderr(&out)
            );
        }
        let fsck = b.lode(&clone, &["fsck"]);
        assert!(
            fsck.status.success(),
            "k={k}: store damaged: {}",
            stderr(&fsck)
        );
        b.lode_ok(&clone, &["checkout"]);
        for name in [
            "data/0.bin",
            "data/1.bin",
            "data/2.bin",
            "model.safetensors",
        ] {
            assert_eq!(
                sha(&clone.join(name)),
                sha(&repo.join(name)),
                "k={k} {name}"
            );
        }
    }
}

#[test]
fn many_small_files_push_in_a_few_requests() {
    let env = Env::new();
    let (repo, store) = with_directory_remote(&env);
    let data = repo.join("dataset");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..2000u64 {
        std::fs::write(data.join(format!("{i:05}.bin")), noise(4096, i)).unwrap();
    }
    env.lode_ok(&repo, &["add", "dataset"]);
    env.git_in(&repo, &["commit", "-q", "-m", "dataset"]);
    let report = env.lode_ok(&repo, &["push", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["files"], 2000, "{report}");
    assert!(report["requests"].as_u64().unwrap() <= 10, "{report}");
    // One pack (and its footer) holds them all.
    assert_eq!(store.join("packs").read_dir().unwrap().count(), 2);
}

#[test]
fn an_existing_pre_push_hook_runs_first_and_can_stop_the_push() {
    let env = Env::new();
    let dir = env.tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    env.git_in(&dir, &["init", "-q"]);
    let hook = dir.join(".git/hooks/pre-push");
    let marker = env.tmp.path().join("ran");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat > {m}\n[ -e {m}.fail ] && exit 1\nexit 0\n",
            m = marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.lode_ok(&dir, &["init"]);
    assert!(dir.join(".git/hooks/pre-push.lode-chained").exists());
    env.lode_ok(&dir, &["init"]); // again: nothing moves twice
    env.lode_ok(&dir, &["track", "*.bin"]);
    let store = env.tmp.path().join("store");
    env.lode_ok(&dir, &["remote", "set", store.to_str().unwrap()]);
    std::fs::write(dir.join("w.bin"), noise(100_000, 9)).unwrap();
    env.git_in(&dir, &["add", "."]);
    env.git_in(&dir, &["commit", "-q", "-m", "w"]);
    let origin = bare(&env, "origin.git");
    env.git_in(&dir, &["remote", "add", "origin", origin.to_str().unwrap()]);

    std::fs::write(marker.with_extension("fail"), "").unwrap();
    let out = env.run("git", &dir, &["push", "origin", "main"]);
    assert!(!out.status.success());
    // The chained hook got git's ref lines on stdin.
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .contains("refs/heads/main")
    );
    assert!(!store.join("index").exists() || store.join("index").read_dir().unwrap().count() == 0);
    assert_eq!(remote_main(&env, &origin), None);

    std::fs::remove_file(marker.with_extension("fail")).unwrap();
    let out = env.run("git", &dir, &["push", "origin", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(store.join("index").read_dir().unwrap().count(), 1);
}

#[test]
fn remote_set_show_and_override() {
    let env = Env::new();
    let repo = env.repo("a");
    let out = env.lode(&repo, &["remote"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no remote yet: {}",
        stderr(&out)
    );
    env.lode_ok(&repo, &["remote", "set", "s3://bucket/models"]);
    assert_eq!(env.lode_ok(&repo, &["remote"]).trim(), "s3://bucket/models");
    let text = std::fs::read_to_string(repo.join(".lodeconfig")).unwrap();
    assert!(
        text.contains("version = 1") && text.contains("url = \"s3://bucket/models\""),
        "{text}"
    );
    env.lode_ok(&repo, &["remote", "set", "--local", "gs://other/x"]);
    assert_eq!(env.lode_ok(&repo, &["remote"]).trim(), "gs://other/x");
    let bad = env.lode(&repo, &["remote", "set", "s3://AKIA:secret@bucket/x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("credentials"), "{}", stderr(&bad));
    std::fs::write(repo.join(".lodeconfig"), "version = 1\n[remote\n").unwrap();
    env.git_in(&repo, &["config", "--unset", "lode.remote.url"]);
    let bad = env.lode(&repo, &["remote"]);
    assert!(stderr(&bad).contains("line 2"), "{}", stderr(&bad));
}
