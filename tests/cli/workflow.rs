//! The everyday workflow with plain git: track, add, commit, checkout,
//! status, diff, and lode's own commands over it.

use crate::common::*;

/// The headline: two versions of a 256 MiB checkpoint (every tenth
/// tensor changed), committed with plain git. Nothing lost: either commit
/// checks out byte-identical, and storage stays near one version.
#[test]
fn two_versions_of_a_checkpoint_dedup_and_check_out_identically() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let model = repo.join("model.safetensors");
    let v1 = env.tmp.path().join("v1.safetensors");
    let v2 = env.tmp.path().join("v2.safetensors");
    env.model(&v1, 256.0, 1);
    env.finetune(&v1, &v2, 10, 2);
    let one_version = std::fs::metadata(&v1).unwrap().len();

    std::fs::copy(&v1, &model).unwrap();
    env.git_in(&repo, &["add", ".gitattributes", "model.safetensors"]);
    env.git_in(&repo, &["commit", "-qm", "v1"]);
    std::fs::copy(&v2, &model).unwrap();
    env.git_in(&repo, &["add", "model.safetensors"]);
    env.git_in(&repo, &["commit", "-qm", "v2"]);

    // The committed blob is the pointer, and git sees a clean tree.
    let blob = env.git_in(&repo, &["cat-file", "-p", "HEAD:model.safetensors"]);
    assert!(blob.starts_with("version lode/1\noid b3:"), "{blob}");
    assert_eq!(
        env.git_in(&repo, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );

    let stored = du(&repo.join(".git/lode"));
    assert!(
        (stored as f64) <= 1.15 * one_version as f64,
        "stored {stored} bytes for two versions of {one_version}"
    );

    env.git_in(&repo, &["checkout", "-q", "HEAD~1"]);
    assert_eq!(sha(&model), sha(&v1), "v1 checks out byte-identical");
    env.git_in(&repo, &["checkout", "-q", "main"]);
    assert_eq!(sha(&model), sha(&v2), "v2 checks out byte-identical");
    env.lode_ok(&repo, &["fsck", "--read-data"]);

    // A flipped byte in a pack is caught, and named by path.
    let pack = largest_pack(&repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    let out = env.lode(&repo, &["fsck", "--read-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(":model.safetensors"),
        "{}",
        stdout(&out)
    );
}

/// git's own commands keep working on tracked files: status is clean after
/// a commit, diff shows a readable summary naming the changed tensors, and
/// `git fsck --full` stays clean.
#[test]
fn plain_git_commands_work_on_tracked_files() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let model = repo.join("model.safetensors");
    env.model(&model, 4.0, 1);
    std::fs::write(repo.join("README.txt"), "ordinary file\n").unwrap();
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "v1"]);
    assert_eq!(env.git_in(&repo, &["status", "--porcelain"]), "");

    let base = env.tmp.path().join("base.safetensors");
    std::fs::copy(&model, &base).unwrap();
    env.finetune(&base, &model, 3, 7);
    let diff = env.git_in(&repo, &["diff"]);
    assert!(
        diff.contains("-lode file b3:") && diff.contains("+lode file b3:"),
        "{diff}"
    );
    let changed = diff.lines().filter(|l| l.starts_with("+tensor ")).count();
    let tensors = diff
        .lines()
        .filter(|l| l.starts_with(" tensor ") || l.starts_with("+tensor "))
        .count();
    assert!(
        changed > 0 && changed < tensors,
        "diff should name only the changed tensors:\n{diff}"
    );
    assert!(
        !diff.contains("version lode/1"),
        "no pointer noise in the diff"
    );

    env.git_in(&repo, &["commit", "-qam", "v2"]);
    let log = env.git_in(&repo, &["log", "--oneline", "--", "model.safetensors"]);
    assert_eq!(log.lines().count(), 2);
    env.git_in(&repo, &["fsck", "--full", "--strict"]);
    assert_eq!(env.git_in(&repo, &["status", "--porcelain"]), "");
}

/// `lode add` tracks, stores and stages in one step; `lode status`,
/// `ls`, `show`, `hash` and `du` describe what is there.
#[test]
fn lode_add_and_the_inspection_commands() {
    let env = Env::new();
    let repo = env.repo("repo");
    std::fs::create_dir_all(repo.join("data/shards")).unwrap();
    for i in 0..40 {
        std::fs::write(
            repo.join(format!("data/shards/part {i:03}.bin")),
            format!("shard {i}\n").repeat(300),
        )
        .unwrap();
    }
    env.model(&repo.join("model.safetensors"), 3.0, 4);
    env.lode_ok(&repo, &["add", "data", "model.safetensors"]);
    // A directory is tracked as a whole, a file by its name.
    let attributes = std::fs::read_to_string(repo.join(".gitattributes")).unwrap();
    assert_eq!(
        attributes,
        "/data/** filter=lode diff=lode -text\n/model.safetensors filter=lode diff=lode -text\n"
    );
    // Staged as pointers with the attributes file, ready to commit.
    let staged = env.git_in(&repo, &["diff", "--cached", "--name-only"]);
    assert!(
        staged.contains(".gitattributes") && staged.contains("data/shards/part 007.bin"),
        "{staged}"
    );
    env.git_in(&repo, &["commit", "-qm", "add"]);
    assert_eq!(
        env.git_in(&repo, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );
    // Forty small files share packs, not one object each.
    let packs = std::fs::read_dir(repo.join(".git/lode/packs"))
        .unwrap()
        .count();
    assert!(packs <= 2, "{packs} packs");

    let ls = env.lode_ok(&repo, &["ls", "--json"]);
    assert_eq!(ls.lines().count(), 41);
    let hash = env.lode_ok(&repo, &["hash", "model.safetensors"]);
    let id = hash.split_whitespace().next().unwrap();
    let pointer = env.git_in(&repo, &["show", "HEAD:model.safetensors"]);
    assert!(
        pointer.contains(&format!("oid {id}\n")),
        "{hash} vs {pointer}"
    );

    let show: serde_json::Value =
        serde_json::from_str(&env.lode_ok(&repo, &["show", "--json", "model.safetensors"]))
            .unwrap();
    assert_eq!(show["id"], id);
    assert!(show["tensors"].as_array().unwrap().len() >= 2);

    let status = env.lode_ok(&repo, &["status"]);
    assert!(status.lines().all(|l| l.starts_with("present")), "{status}");
    std::fs::write(repo.join("data/shards/part 001.bin"), "edited\n").unwrap();
    let status = env.lode_ok(&repo, &["status"]);
    assert!(
        status.contains("modified") && status.contains("part 001.bin"),
        "{status}"
    );

    let du: serde_json::Value =
        serde_json::from_str(&env.lode_ok(&repo, &["du", "--json"])).unwrap();
    assert_eq!(du["files"], 41);
    assert!(du["stored"].as_u64().unwrap() < du["logical"].as_u64().unwrap());
}

/// LODE_SKIP_SMUDGE=1 leaves pointers; `lode checkout` then materializes
/// them in parallel, and git still sees a clean tree.
#[test]
fn skip_smudge_then_lode_checkout() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let (a, b) = (repo.join("a.safetensors"), repo.join("b.safetensors"));
    env.model(&a, 2.0, 1);
    env.model(&b, 2.0, 2);
    let (sa, sb) = (sha(&a), sha(&b));
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "two"]);
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
    let out = output(
        env.cmd("git", &repo)
            .env("LODE_SKIP_SMUDGE", "1")
            .args(["checkout", "--", "."]),
    );
    assert!(out.status.success());
    assert!(
        std::fs::read_to_string(&a)
            .unwrap()
            .starts_with("version lode/1")
    );
    let status = env.lode_ok(&repo, &["status"]);
    assert!(status.lines().all(|l| l.starts_with("pointer")), "{status}");
    assert_eq!(
        env.git_in(&repo, &["status", "--porcelain"]),
        "",
        "pointers are clean for git"
    );
    env.lode_ok(&repo, &["checkout"]);
    assert_eq!((sha(&a), sha(&b)), (sa, sb));
    assert_eq!(env.git_in(&repo, &["status", "--porcelain"]), "");
    let again = env.lode(&repo, &["checkout"]);
    assert!(stderr(&again).contains("already checked out"));
}

/// `lode install` configures git globally, `git lode` is an alias of
/// `lode`, and a repository works from a subdirectory.
#[test]
fn install_and_git_lode_alias() {
    let env = Env::new();
    env.lode_ok(&env.home, &["install"]);
    let filter = env.git_in(&env.home, &["config", "--global", "filter.lode.process"]);
    assert_eq!(filter.trim(), "lode filter-process");
    let repo = env.tracked_repo("repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    env.model(&repo.join("sub/m.safetensors"), 1.0, 3);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "m"]);
    let ls = env.git_in(&repo.join("sub"), &["lode", "ls"]);
    assert!(ls.contains("sub/m.safetensors"), "{ls}");
    // (`git lode --help` is git's own man-page lookup; `help` is lode's.)
    let help = env.git_in(&repo, &["lode", "help"]);
    assert!(help.contains("checkout") && help.contains("fsck"));
}

/// Files outside lode's patterns are plain git; a file committed before
/// it was tracked still checks out.
#[test]
fn ordinary_files_are_left_alone() {
    let env = Env::new();
    let repo = env.repo("repo");
    std::fs::write(repo.join("early.safetensors"), b"plain bytes").unwrap();
    env.git_in(&repo, &["add", "early.safetensors"]);
    env.git_in(&repo, &["commit", "-qm", "before tracking"]);
    env.lode_ok(&repo, &["track", "*.safetensors"]);
    env.git_in(&repo, &["add", ".gitattributes"]);
    env.git_in(&repo, &["commit", "-qm", "track"]);
    std::fs::remove_file(repo.join("early.safetensors")).unwrap();
    env.git_in(&repo, &["checkout", "HEAD~1", "--", "early.safetensors"]);
    assert_eq!(
        std::fs::read(repo.join("early.safetensors")).unwrap(),
        b"plain bytes"
    );
}

/// The clean filter chunks a large working file from disk in parallel while
/// it compares git's stream with it; when git cleans other bytes under that
/// path (`git hash-object --path`), what git sent is what counts.
#[test]
fn clean_stores_what_git_sends_even_when_the_file_on_disk_differs() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let (a, b) = (
        repo.join("a.safetensors"),
        env.tmp.path().join("b.safetensors"),
    );
    env.model(&a, 6.0, 1);
    env.finetune(&a, &b, 2, 9);
    let ours = env.lode_ok(&repo, &["hash", b.to_str().unwrap()]);
    let want = ours.split_whitespace().next().unwrap();
    let blob = env.git_in(
        &repo,
        &[
            "hash-object",
            "-w",
            "--path=a.safetensors",
            b.to_str().unwrap(),
        ],
    );
    let pointer = env.git_in(&repo, &["cat-file", "-p", blob.trim()]);
    assert!(
        pointer.contains(&format!("oid {want}\n")),
        "{pointer} vs {ours}"
    );
    // And the usual case: the working file itself.
    let ours = env.lode_ok(&repo, &["hash", "a.safetensors"]);
    let blob = env.git_in(&repo, &["hash-object", "-w", "a.safetensors"]);
    let pointer = env.git_in(&repo, &["cat-file", "-p", blob.trim()]);
    assert!(pointer.contains(&format!(
        "oid {}\n",
        ours.split_whitespace().next().unwrap()
    )));
    // Both are stored in full, and read back verified.
    env.lode_ok(&repo, &["fsck", "--read-data"]);
    let working = ours.split_whitespace().next().unwrap();
    for id in [want, working] {
        let show: serde_json::Value =
            serde_json::from_str(&env.lode_ok(&repo, &["show", "--json", id])).unwrap();
        assert_eq!(show["local"], true, "{id} is not stored: {show}");
    }
}

/// `lode add DIR` takes what `git add DIR` would: ignored files stay out,
/// and git's own control files (a nested .gitattributes or .gitignore)
/// stay plain git files, never pointers; a directory holding them is
/// tracked file by file rather than as a whole.
#[test]
fn lode_add_of_a_directory_respects_git_ignore_and_control_files() {
    let env = Env::new();
    let repo = env.repo("repo");
    std::fs::create_dir_all(repo.join("d/sub")).unwrap();
    std::fs::write(repo.join("d/a.bin"), vec![1u8; 100_000]).unwrap();
    std::fs::write(repo.join("d/sub/b.bin"), vec![2u8; 100_000]).unwrap();
    std::fs::write(repo.join("d/scratch.tmp"), b"ignored").unwrap();
    std::fs::write(repo.join("d/.gitignore"), "*.tmp\n").unwrap();
    std::fs::write(repo.join("d/sub/.gitattributes"), "*.txt text\n").unwrap();
    env.lode_ok(&repo, &["add", "d"]);
    let staged = env.git_in(&repo, &["diff", "--cached", "--name-only"]);
    assert!(
        staged.contains("d/a.bin") && staged.contains("d/sub/b.bin"),
        "{staged}"
    );
    assert!(
        !staged.contains("scratch.tmp"),
        "an ignored file was added:\n{staged}"
    );
    // Like `git add d`: git's own files are staged too, as plain files.
    assert!(staged.contains("d/.gitignore"), "{staged}");
    let attributes = std::fs::read_to_string(repo.join(".gitattributes")).unwrap();
    assert!(!attributes.contains("/d/**"), "{attributes}");
    assert!(attributes.contains("/d/a.bin filter=lode"), "{attributes}");
    env.git_in(&repo, &["commit", "-qm", "d"]);
    for control in ["d/.gitignore", "d/sub/.gitattributes"] {
        let blob = env.git_in(&repo, &["show", &format!("HEAD:{control}")]);
        assert!(
            !blob.starts_with("version lode/"),
            "{control} became a pointer"
        );
    }
    let blob = env.git_in(&repo, &["show", "HEAD:d/a.bin"]);
    assert!(blob.starts_with("version lode/1"), "{blob}");
}

/// README's first command: `lode demo` runs the main job end to end (here
/// on an 8 MiB checkpoint) and leaves a repository that verifies.
#[test]
fn demo_runs_end_to_end() {
    let env = Env::new();
    let out = env.lode(env.tmp.path(), &["demo", "--mib", "8", "demo"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("v1 identical: true") && text.contains("identical: true"),
        "{text}"
    );
    let repo = env.tmp.path().join("demo");
    assert_eq!(env.git_in(&repo, &["log", "--oneline"]).lines().count(), 2);
    env.lode_ok(&repo, &["fsck", "--read-data"]);
    // A second demo into the same, now non-empty, directory is refused.
    let again = env.lode(env.tmp.path(), &["demo", "demo"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
}
