//! Tests that try to break lode: damaged packs, hand-edited pointers, a
//! full disk, files that change while they are added, hostile paths, and
//! data missing from the store. Each test says what "nothing lost" means
//! for it, and checks it; each asserts what a user would notice (exit
//! status, the path named in the message, the bytes on disk).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers (only this module uses them).

/// A repository with `*.safetensors` routed to lode (not yet committed).
fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Both streams, for assertion messages and for "names the path" checks.
fn both(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// Flip every bit of the byte at `at` in `path`.
fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// The names and contents of every file under `dir`, sorted: two equal
/// snapshots mean nothing was written there.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                out.push((e.path(), target.into_os_string().into_encoded_bytes()));
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Files whose name says they are a temporary (`pack-*.tmp`,
/// `.lode-*.tmp`), anywhere under `dir`, plus anything at all in
/// `<dir>/tmp` when `dir` is a store.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if name.ends_with(".tmp") || d == dir.join("tmp") {
                out.push(e.path());
            }
        }
    }
    out
}

/// What git's index holds for `path` (`git ls-files -s`), "" if nothing.
fn staged(env: &Env, repo: &Path, path: &str) -> String {
    env.git_in(repo, &["ls-files", "-s", "--", path])
}

/// The blob git's index holds for `path`.
fn index_blob(env: &Env, repo: &Path, path: &str) -> String {
    env.git_in(repo, &["show", &format!(":{path}")])
}

/// Replace the working file with the pointer committed at HEAD, as a
/// pointer-only checkout would leave it.
fn pointer_in_place(env: &Env, repo: &Path, path: &str) -> String {
    let pointer = env.git_in(repo, &["show", &format!("HEAD:{path}")]);
    assert!(pointer.starts_with("version lode/1\n"), "{pointer}");
    std::fs::write(repo.join(path), &pointer).unwrap();
    pointer
}

/// `git rev-list --all`: every commit, full hex.
fn commits(env: &Env, repo: &Path) -> Vec<String> {
    env.git_in(repo, &["rev-list", "--all"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether fsck's report has a `committed at <commit>:<path>` line for
/// `path`, with `<commit>` an abbreviation of a real commit.
fn names_place(report: &str, all_commits: &[String], path: &str) -> bool {
    report.lines().any(|l| {
        l.trim()
            .strip_prefix("committed at ")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(c, p)| {
                p == path && c.len() >= 7 && all_commits.iter().any(|full| full.starts_with(c))
            })
    })
}

/// A file of `len` pseudo-random bytes (xorshift64, fixed seed): fast to
/// write, incompressible, the same on every run.
/// `lode checkout` of a file whose data is damaged or gone: exit 2, the
/// path named, and the pointer still in place (never partial bytes).
/// Returns the pointer text.
fn checkout_is_refused_and_keeps_the_pointer(env: &Env, repo: &Path, path: &str) -> String {
    let pointer = pointer_in_place(env, repo, path);
    let out = env.lode(repo, &["checkout"]);
    assert_eq!(code(&out), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains(path), "{}", both(&out));
    assert_eq!(std::fs::read_to_string(repo.join(path)).unwrap(), pointer);
    pointer
}

/// Both `lode fsck` and `lode fsck --read-data` exit 1, name `object`
/// (an id or any text the report must hold) and the (commit, path) of
/// model.safetensors.
fn assert_fsck_names(env: &Env, repo: &Path, object: &str) {
    let all = commits(env, repo);
    for args in [&["fsck"][..], &["fsck", "--read-data"][..]] {
        let out = env.lode(repo, args);
        assert_eq!(code(&out), Some(1), "{args:?}: {}", both(&out));
        let report = stdout(&out);
        assert!(
            report.contains(object),
            "{args:?}: {object} is not named:\n{report}"
        );
        assert!(
            names_place(&report, &all, "model.safetensors"),
            "{args:?}: the report does not name the committed path:\n{report}"
        );
    }
}

fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        w.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    w.flush().unwrap();
}

/// After a successful add: what git staged for `path` is the pointer of
/// the bytes on disk now, and those bytes come back out of the store
/// (pointer put in the working tree, `lode checkout`, same hash).
fn assert_staged_is_file_and_restores(env: &Env, repo: &Path, path: &str) {
    let file = repo.join(path);
    let before = sha(&file);
    let size = std::fs::metadata(&file).unwrap().len();
    let id = env.lode_ok(repo, &["hash", path]);
    let id = id.split_whitespace().next().unwrap().to_string();
    let blob = index_blob(env, repo, path);
    assert_eq!(
        blob,
        format!("version lode/1\noid {id}\nsize {size}\n"),
        "the staged pointer is not the file on disk"
    );
    std::fs::write(&file, &blob).unwrap();
    env.lode_ok(repo, &["checkout", path]);
    assert_eq!(
        sha(&file),
        before,
        "{path} did not come back byte-identical"
    );
}

// ---------------------------------------------------------------------------
// 1. A damaged store.

/// A byte flipped in the middle of a pack. Nothing lost means: the damage
/// is found and named (the pack, the chunk, and the committed path), no
/// command ever hands out wrong bytes for the damaged file (lode checkout
/// fails and leaves the pointer; git's smudge fails and leaves no file),
/// and a file stored in another pack still checks out byte-identical.
#[test]
fn flipped_byte_in_a_pack_is_named_and_never_checked_out() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 8.0, 11);
    env.git_in(&repo, &["add", ".gitattributes", "model.safetensors"]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    // A second `git add` is a second filter process: another pack.
    env.model(&repo.join("other.safetensors"), 2.0, 12);
    let other_sha = sha(&repo.join("other.safetensors"));
    env.git_in(&repo, &["add", "other.safetensors"]);
    env.git_in(&repo, &["commit", "-qm", "other"]);
    let packs = std::fs::read_dir(repo.join(".git/lode/packs"))
        .unwrap()
        .count();
    assert_eq!(packs, 2, "each commit should have stored its own pack");
    env.lode_ok(&repo, &["fsck", "--read-data"]);

    let pack = largest_pack(&repo);
    let pack_id = pack.file_stem().unwrap().to_string_lossy().into_owned();
    let len = std::fs::metadata(&pack).unwrap().len() as usize;
    flip_byte(&pack, len / 2);

    // Without --read-data only structure is checked: it may pass, but it
    // must not crash.
    let out = env.lode(&repo, &["fsck"]);
    assert!(matches!(code(&out), Some(0 | 1)), "{}", both(&out));

    let out = env.lode(&repo, &["fsck", "--read-data"]);
    assert_eq!(code(&out), Some(1), "{}", both(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("damaged pack b3:{pack_id}")),
        "the damaged pack is not named:\n{report}"
    );
    assert!(
        report.contains("damaged chunk b3:"),
        "the damaged chunk is not named:\n{report}"
    );
    let all = commits(&env, &repo);
    assert!(
        names_place(&report, &all, "model.safetensors"),
        "the affected path is not named:\n{report}"
    );
    assert!(
        !report.contains("other.safetensors"),
        "an intact file is reported as damaged:\n{report}"
    );

    // lode checkout of the damaged file: exit 2, the pointer stays, no
    // temporary file is left beside it.
    let pointer = pointer_in_place(&env, &repo, "model.safetensors");
    let out = env.lode(&repo, &["checkout", "model.safetensors"]);
    assert_eq!(code(&out), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("model.safetensors"), "{}", both(&out));
    assert_eq!(
        std::fs::read_to_string(repo.join("model.safetensors")).unwrap(),
        pointer,
        "a failed checkout must leave the pointer in place"
    );
    assert_eq!(leftovers(&repo), Vec::<PathBuf>::new());

    // git's own checkout (the smudge filter) must not write wrong bytes
    // either: the file is absent or the pointer, never partial data.
    std::fs::remove_file(repo.join("model.safetensors")).unwrap();
    let out = env.run("git", &repo, &["checkout", "--", "model.safetensors"]);
    let file = repo.join("model.safetensors");
    if file.exists() {
        assert_eq!(
            std::fs::read_to_string(&file).ok().as_deref(),
            Some(pointer.as_str()),
            "git checkout of damaged data left something other than the pointer ({})",
            both(&out)
        );
    }
    if !out.status.success() || !file.exists() {
        assert!(stderr(&out).contains("model.safetensors"), "{}", both(&out));
    }

    // The file in the intact pack still checks out byte-identical.
    pointer_in_place(&env, &repo, "other.safetensors");
    env.lode_ok(&repo, &["checkout", "other.safetensors"]);
    assert_eq!(sha(&repo.join("other.safetensors")), other_sha);
}

/// A pack cut to half its length (an interrupted copy). Nothing lost
/// means: fsck (even without --read-data) reports the pack and the
/// committed path, and checkout refuses rather than writing a short file.
#[test]
fn pack_truncated_to_half_is_reported_with_its_path() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 4.0, 21);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let pack = largest_pack(&repo);
    let pack_id = pack.file_stem().unwrap().to_string_lossy().into_owned();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    assert_fsck_names(&env, &repo, &format!("damaged pack b3:{pack_id}"));

    checkout_is_refused_and_keeps_the_pointer(&env, &repo, "model.safetensors");
}

/// A pack that lost only its last bytes (the trailer): every record is
/// still there, but the pack can no longer be indexed from its footer, so
/// the next `--rebuild-index` would drop it. Nothing lost means: fsck
/// reports the damaged pack *and* the (commit, path) of the files stored
/// in it — the index still says which records live there — so the user
/// knows what to re-add or fetch before the pack is gone for good.
#[test]
fn pack_missing_its_trailer_is_reported_with_the_paths_it_affects() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 4.0, 22);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let pack = largest_pack(&repo);
    let pack_id = pack.file_stem().unwrap().to_string_lossy().into_owned();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 16)
        .unwrap();

    assert_fsck_names(&env, &repo, &format!("damaged pack b3:{pack_id}"));
}

/// The offset where a pack's footer starts (from its trailer).
fn footer_at(pack: &Path) -> usize {
    let bytes = std::fs::read(pack).unwrap();
    let n = bytes.len();
    let flen = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().unwrap()) as usize;
    assert_eq!(&bytes[n - 8..], b"LODEEND1", "not a whole pack");
    n - 16 - flen
}

/// A byte flipped in a pack's footer (its index): the records are intact
/// and the local index still says where each lies. Nothing lost means:
/// fsck reports the damaged pack and the (commit, path) of the files
/// stored in it — the same answer as for a pack missing its trailer.
#[test]
fn pack_with_a_damaged_footer_is_reported_with_the_paths_it_affects() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 4.0, 23);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let pack = largest_pack(&repo);
    let pack_id = pack.file_stem().unwrap().to_string_lossy().into_owned();
    // The first entry's id, inside the footer (past its 24-byte header).
    flip_byte(&pack, footer_at(&pack) + 24 + 5);

    let out = env.lode(&repo, &["fsck", "--read-data"]);
    assert_eq!(code(&out), Some(1), "{}", both(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("damaged pack b3:{pack_id}")),
        "{report}"
    );
    assert!(
        names_place(&report, &commits(&env, &repo), "model.safetensors"),
        "a pack with a damaged footer is reported without the paths it affects:\n{report}"
    );
}

/// `lode fsck --rebuild-index` over a pack whose trailer is gone. Before
/// the rebuild the file checks out (the index knows where every record
/// is); the rebuild is a repair, so nothing lost means: the file still
/// checks out byte-identical after it. A repair that makes readable data
/// unreachable is a data-loss bug.
#[test]
fn rebuild_index_keeps_records_of_a_pack_whose_trailer_is_gone() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let model = repo.join("model.safetensors");
    env.model(&model, 2.0, 24);
    let original = sha(&model);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let pack = largest_pack(&repo);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 16)
        .unwrap();

    pointer_in_place(&env, &repo, "model.safetensors");
    env.lode_ok(&repo, &["checkout"]);
    assert_eq!(sha(&model), original, "readable before the repair");

    let out = env.lode(&repo, &["fsck", "--rebuild-index"]);
    assert!(matches!(code(&out), Some(0 | 1)), "{}", both(&out));
    pointer_in_place(&env, &repo, "model.safetensors");
    let out = env.lode(&repo, &["checkout"]);
    assert_eq!(
        code(&out),
        Some(0),
        "--rebuild-index made a readable file unreachable: {}",
        both(&out)
    );
    assert_eq!(sha(&model), original);
}

/// A byte flipped in the recipe record (the file's chunk list, the last
/// record a `git add` writes). Nothing lost means: even plain `lode fsck`
/// (structure only: it decodes every recipe) reports it and names the
/// path, and neither `lode checkout` nor git's smudge hands out bytes.
#[test]
fn flipped_byte_in_a_recipe_is_found_by_plain_fsck() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 2.0, 25);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let pack = largest_pack(&repo);
    flip_byte(&pack, footer_at(&pack) - 1);

    let out = env.lode(&repo, &["fsck"]);
    assert_eq!(code(&out), Some(1), "{}", both(&out));
    assert!(
        names_place(&stdout(&out), &commits(&env, &repo), "model.safetensors"),
        "{}",
        both(&out)
    );

    let pointer = checkout_is_refused_and_keeps_the_pointer(&env, &repo, "model.safetensors");

    std::fs::remove_file(repo.join("model.safetensors")).unwrap();
    let out = env.run("git", &repo, &["checkout", "--", "model.safetensors"]);
    let file = repo.join("model.safetensors");
    assert!(
        !file.exists() || std::fs::read_to_string(&file).ok().as_deref() == Some(pointer.as_str()),
        "git checkout of a damaged recipe wrote data: {}",
        both(&out)
    );
}

/// A byte flipped in the local index table (the length of one chunk's
/// entry): the packs are whole, but checkout now fails on that chunk.
/// Nothing lost means: `lode fsck` — which promises to check the index
/// against the packs — reports it (exit 1) instead of "no problems", and
/// `lode fsck --rebuild-index` repairs it so the file checks out again.
#[test]
fn damaged_index_table_is_found_by_fsck_and_repaired() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let model = repo.join("model.safetensors");
    env.model(&model, 2.0, 26);
    let original = sha(&model);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let tables: Vec<PathBuf> = std::fs::read_dir(repo.join(".git/lode/index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tables.len(), 1, "{tables:?}");
    // Table layout (src/index.rs): 24-byte header (pack count at 12,
    // entry count at 16), 32 bytes per pack, 56 per entry (id 32, pack 4,
    // offset 8, stored length 4, raw length 4, kind 1, ...).
    let bytes = std::fs::read(&tables[0]).unwrap();
    let npacks = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let count = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let entries_at = 24 + 32 * npacks;
    let chunk = (count / 2..count)
        .chain(0..count / 2)
        .find(|i| bytes[entries_at + i * 56 + 52] == 1)
        .expect("a chunk entry");
    flip_byte(&tables[0], entries_at + chunk * 56 + 44);

    pointer_in_place(&env, &repo, "model.safetensors");
    let out = env.lode(&repo, &["checkout"]);
    assert_eq!(code(&out), Some(2), "the damage must show: {}", both(&out));

    for args in [&["fsck"][..], &["fsck", "--read-data"][..]] {
        let out = env.lode(&repo, args);
        assert_eq!(
            code(&out),
            Some(1),
            "{args:?} finds nothing wrong while checkout fails: {}",
            both(&out)
        );
    }

    env.lode_ok(&repo, &["fsck", "--rebuild-index", "--read-data"]);
    env.lode_ok(&repo, &["checkout"]);
    assert_eq!(sha(&model), original);
}

/// The index is derived data. Nothing lost means: with every index table
/// deleted, the next command re-indexes the packs from their footers by
/// itself (a kill -9 between a pack's rename and its table leaves the same
/// state), fsck is clean, and the file checks out byte-identical;
/// `lode fsck --rebuild-index` rebuilds the whole index explicitly too.
#[test]
fn a_deleted_index_is_rebuilt_from_the_packs() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let model = repo.join("model.safetensors");
    env.model(&model, 4.0, 31);
    let original = sha(&model);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let index = repo.join(".git/lode/index");
    for e in std::fs::read_dir(&index).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }

    env.lode_ok(&repo, &["fsck", "--read-data"]);
    assert!(
        std::fs::read_dir(&index).unwrap().count() > 0,
        "tables were written again"
    );
    pointer_in_place(&env, &repo, "model.safetensors");
    env.lode_ok(&repo, &["checkout"]);
    assert_eq!(sha(&model), original);

    let out = env.lode(&repo, &["fsck", "--rebuild-index", "--read-data"]);
    assert_eq!(code(&out), Some(0), "{}", both(&out));
    assert_eq!(
        std::fs::read_dir(&index).unwrap().count(),
        1,
        "one rebuilt table"
    );
}

/// Every pack and index table deleted. Nothing lost is impossible here;
/// what must hold is that the loss is reported, not discovered later:
/// fsck exits 1 and names the committed path, and checkout of the pointer
/// exits 2 naming it and leaves the pointer.
#[test]
fn fsck_names_committed_pointer_whose_data_is_missing() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 2.0, 61);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    for sub in ["packs", "index"] {
        for e in std::fs::read_dir(repo.join(".git/lode").join(sub)).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }

    let id = env.git_in(&repo, &["show", "HEAD:model.safetensors"]);
    let id = id
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("oid ")
        .unwrap()
        .to_string();
    assert_fsck_names(&env, &repo, &id);

    checkout_is_refused_and_keeps_the_pointer(&env, &repo, "model.safetensors");
}

// ---------------------------------------------------------------------------
// 2. Pointers edited by hand.

/// A committed pointer replaced by text that starts like a pointer but is
/// not one. Nothing lost means: `git add` (and `lode add`) refuse it,
/// naming the path and saying it looks like an edited pointer, and git's
/// index still holds the old, valid pointer — the edit never reaches a
/// commit, where it would orphan the data.
#[test]
fn hand_edited_pointer_is_refused_by_git_add() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 1.0, 41);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let good = index_blob(&env, &repo, "model.safetensors");
    let staged_before = staged(&env, &repo, "model.safetensors");
    let oid_line = good.lines().nth(1).unwrap().to_string();

    let edits = [
        "version lode/1\noid b3:zz\nsize 5\n".to_string(),
        good.replace("\nsize ", "\nsize 0"),
        good.trim_end().to_string(),
        format!("{good}extra\n"),
        format!("version lode/1\n{oid_line}\nsize -1\n"),
        good.replace("version lode/1", "version lode/9"),
    ];
    for edit in &edits {
        std::fs::write(repo.join("model.safetensors"), edit).unwrap();
        let out = env.run("git", &repo, &["add", "model.safetensors"]);
        assert!(!out.status.success(), "git add took {edit:?}");
        let err = stderr(&out);
        assert!(err.contains("model.safetensors"), "{edit:?}: {err}");
        assert!(err.contains("edited by hand"), "{edit:?}: {err}");
        assert_eq!(
            index_blob(&env, &repo, "model.safetensors"),
            good,
            "{edit:?}"
        );
        assert_eq!(
            staged(&env, &repo, "model.safetensors"),
            staged_before,
            "{edit:?}"
        );

        let out = env.lode(&repo, &["add", "model.safetensors"]);
        assert_eq!(
            code(&out),
            Some(2),
            "lode add took {edit:?}: {}",
            both(&out)
        );
        assert!(
            stderr(&out).contains("model.safetensors"),
            "{edit:?}: {}",
            both(&out)
        );
        assert_eq!(
            staged(&env, &repo, "model.safetensors"),
            staged_before,
            "{edit:?}"
        );
    }
    // The committed data is still whole.
    env.git_in(&repo, &["checkout", "--", "model.safetensors"]);
    env.lode_ok(&repo, &["fsck", "--read-data"]);
}

/// A valid pointer whose data this store never had (copied from another
/// repository). Nothing lost means: `git add` passes it through unchanged
/// (the pointer is the blob, nothing is invented), `lode status` says
/// `missing-data` for it, and `lode checkout` exits 2 naming it and
/// leaves the pointer.
#[test]
fn valid_pointer_without_data_passes_through_and_is_reported() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.git_in(&repo, &["add", ".gitattributes"]);
    env.git_in(&repo, &["commit", "-qm", "attributes"]);
    let pointer = format!(
        "version lode/1\noid b3:{}\nsize 123456\n",
        blake3::hash(b"data this store never had").to_hex()
    );
    std::fs::write(repo.join("model.safetensors"), &pointer).unwrap();

    env.git_in(&repo, &["add", "model.safetensors"]);
    assert_eq!(index_blob(&env, &repo, "model.safetensors"), pointer);

    let out = env.lode(&repo, &["status"]);
    assert_eq!(code(&out), Some(0), "{}", both(&out));
    let line = stdout(&out)
        .lines()
        .find(|l| l.ends_with("model.safetensors"))
        .map(str::to_string);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("missing-data")),
        "{}",
        both(&out)
    );

    let out = env.lode(&repo, &["checkout"]);
    assert_eq!(code(&out), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("model.safetensors"), "{}", both(&out));
    assert_eq!(
        std::fs::read_to_string(repo.join("model.safetensors")).unwrap(),
        pointer
    );
}

/// A valid pointer whose size line was edited (the id still names data
/// the store has). git add would take it as any pointer, and every later
/// `git checkout` of that commit fails (the smudge filter refuses a size
/// that contradicts the data) and leaves the file deleted. Nothing lost
/// means: the edit never reaches git's index — `git add` refuses it like
/// any other hand-edited pointer, naming the path.
#[test]
fn pointer_with_an_edited_size_is_refused_by_git_add() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 1.0, 42);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let good = index_blob(&env, &repo, "model.safetensors");
    let size_line = good.lines().nth(2).unwrap().to_string();
    let edited = good.replace(&size_line, "size 5");
    std::fs::write(repo.join("model.safetensors"), &edited).unwrap();

    let out = env.run("git", &repo, &["add", "model.safetensors"]);
    assert!(
        !out.status.success(),
        "git add staged a pointer whose size contradicts its data: {}",
        both(&out)
    );
    assert!(stderr(&out).contains("model.safetensors"), "{}", both(&out));
    assert_eq!(index_blob(&env, &repo, "model.safetensors"), good);
}

/// A commit holding a pointer whose size contradicts its data (made with
/// plumbing, as a tool or another machine without lode might): no
/// checkout of it can succeed. Nothing lost means: fsck reports it (exit
/// 1, naming the path) rather than "no problems".
#[test]
fn fsck_reports_a_committed_pointer_whose_size_contradicts_its_data() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    env.model(&repo.join("model.safetensors"), 1.0, 43);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "model"]);
    let good = index_blob(&env, &repo, "model.safetensors");
    let size_line = good.lines().nth(2).unwrap().to_string();
    let edited = good.replace(&size_line, "size 5");
    let blob_file = env.tmp.path().join("edited-pointer");
    std::fs::write(&blob_file, &edited).unwrap();
    let oid = env.git_in(
        &repo,
        &[
            "hash-object",
            "-w",
            "--no-filters",
            blob_file.to_str().unwrap(),
        ],
    );
    let cacheinfo = format!("100644,{},model.safetensors", oid.trim());
    env.git_in(&repo, &["update-index", "--cacheinfo", &cacheinfo]);
    env.git_in(&repo, &["commit", "-qm", "edited pointer"]);
    assert_eq!(
        env.git_in(&repo, &["show", "HEAD:model.safetensors"]),
        edited
    );

    let out = env.lode(&repo, &["fsck"]);
    assert_eq!(
        code(&out),
        Some(1),
        "fsck finds nothing wrong with a commit that cannot be checked out: {}",
        both(&out)
    );
    assert!(stdout(&out).contains("model.safetensors"), "{}", both(&out));
}

// ---------------------------------------------------------------------------
// 3. A full disk.

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `kib` KiB at `dir`; `None` (with a printed note)
    /// where this machine cannot, unless CI or LODE_REQUIRE_FUSE=1 says the
    /// test must run.
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        let required = std::env::var_os("CI").is_some()
            || std::env::var("LODE_REQUIRE_FUSE").is_ok_and(|v| v == "1");
        std::fs::create_dir_all(dir).unwrap();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    !required,
                    "cannot mount a tmpfs (root: {root}): {why}; CI/LODE_REQUIRE_FUSE=1 require this test"
                );
                eprintln!(
                    "note: skipping the full-disk test, cannot mount a tmpfs (root: {root}): {why}"
                );
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A 48 MiB model on a disk with 24 MiB left (a tmpfs sized to the model
/// plus 24 MiB: the model must be in the working tree, on the same disk
/// as the store). Nothing lost means: `lode add` and `git add` both fail
/// with a message that says the disk is full, leave no temporary pack
/// behind (so the space comes back), stage nothing, leave the store clean
/// (`lode fsck`) and usable (a small model added afterwards commits and
/// checks out), and never touch the working file.
#[test]
fn full_disk_fails_cleanly_and_leaves_the_file_untouched() {
    let env = Env::new();
    let original = env.tmp.path().join("model.safetensors");
    env.model(&original, 48.0, 51);
    let len = std::fs::metadata(&original).unwrap().len();
    let kib = len.div_ceil(1 << 20) * 1024 + 24 * 1024;
    let disk = env.tmp.path().join("disk");
    // Declared after `env`, so it is unmounted before the temp dir goes.
    let Some(_mount) = Tmpfs::mount(&disk, kib) else {
        return;
    };
    let repo = disk.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    env.git_in(&repo, &["init", "-q"]);
    env.lode_ok(&repo, &["init"]);
    let model = repo.join("model.safetensors");
    std::fs::copy(&original, &model).unwrap();
    let want = sha(&original);
    let lode_dir = repo.join(".git/lode");

    let check_nothing_happened = |how: &str, out: &Output| {
        assert_ne!(
            code(out),
            Some(0),
            "{how} succeeded on a full disk: {}",
            both(out)
        );
        let err = stderr(out).to_lowercase();
        assert!(
            err.contains("no space left"),
            "{how}: the message does not say the disk is full: {}",
            both(out)
        );
        assert!(
            err.contains("pack") || err.contains("model.safetensors"),
            "{how}: the message names neither the pack nor the file: {}",
            both(out)
        );
        assert_eq!(
            leftovers(&lode_dir),
            Vec::<PathBuf>::new(),
            "{how}: temporary files left"
        );
        assert_eq!(
            staged(&env, &repo, "model.safetensors"),
            "",
            "{how}: something was staged"
        );
        let fsck = env.lode(&repo, &["fsck"]);
        assert_eq!(code(&fsck), Some(0), "{how}: {}", both(&fsck));
        assert_eq!(sha(&model), want, "{how}: the working file changed");
    };

    let out = env.lode(&repo, &["add", "model.safetensors"]);
    assert_eq!(code(&out), Some(2), "{}", both(&out));
    check_nothing_happened("lode add", &out);

    env.lode_ok(&repo, &["track", "*.safetensors"]);
    let out = env.run("git", &repo, &["add", "model.safetensors"]);
    check_nothing_happened("git add", &out);

    // The space came back: a small model still goes in and comes out.
    let small = repo.join("small.safetensors");
    env.model(&small, 1.0, 52);
    let small_sha = sha(&small);
    env.lode_ok(&repo, &["add", "small.safetensors"]);
    env.git_in(&repo, &["commit", "-qm", "small"]);
    pointer_in_place(&env, &repo, "small.safetensors");
    env.lode_ok(&repo, &["checkout", "small.safetensors"]);
    assert_eq!(sha(&small), small_sha);
    env.lode_ok(&repo, &["fsck", "--read-data"]);
    assert_eq!(sha(&model), want);
}

// ---------------------------------------------------------------------------
// 4. Files that change while they are added.

const BIG: usize = 256 << 20;

/// Start `lode add big.bin`, wait until it has the file mapped (so it is
/// mid-ingest, before its after-check), then `disturb` the file. Returns
/// the output and whether the disturbance is known to have landed while
/// the file was being read.
fn add_while(env: &Env, repo: &Path, disturb: impl FnOnce(&Path)) -> (Output, bool) {
    let big = repo.join("big.bin");
    let mut child = env
        .cmd(LODE, repo)
        .args(["add", "big.bin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let maps = format!("/proc/{}/maps", child.id());
    // The map's line ends with the file's path (possibly "(deleted)").
    let needle = "/big.bin";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut during = false;
    loop {
        if std::fs::read_to_string(&maps).is_ok_and(|m| m.contains(needle)) {
            during = true;
            break;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    disturb(&big);
    let out = child.wait_with_output().unwrap();
    if !during {
        eprintln!("note: lode add finished before the file could be disturbed mid-read");
    }
    (out, during)
}

/// The outcome of a `lode add` whose file was disturbed mid-read: either
/// refused (exit 2, naming big.bin, saying one of `says`, nothing staged)
/// or, only if it finished before the disturbance, recorded whole (after
/// `undo` puts the file back where it was).
fn assert_refused_or_whole(
    env: &Env,
    repo: &Path,
    out: &Output,
    during: bool,
    says: &[&str],
    undo: impl FnOnce(),
) {
    match code(out) {
        Some(2) => {
            let err = stderr(out);
            assert!(err.contains("big.bin"), "{}", both(out));
            assert!(says.iter().any(|s| err.contains(s)), "{}", both(out));
            assert_eq!(staged(env, repo, "big.bin"), "");
        }
        Some(0) => {
            assert!(
                !during,
                "the file was disturbed mid-read, yet the add succeeded: {}",
                both(out)
            );
            undo();
            assert_staged_is_file_and_restores(env, repo, "big.bin");
        }
        _ => panic!("unexpected outcome: {}", both(out)),
    }
}

/// big.bin grows while `lode add` reads it. Nothing lost means: either the
/// add fails (exit 2, naming the path, saying it changed) and stages
/// nothing, or it succeeds and what is staged is exactly the file on disk
/// and checks out byte-identical; fsck is clean either way, and adding
/// again afterwards records the final contents.
#[test]
fn file_that_grows_while_added_is_refused_or_recorded_whole() {
    let env = Env::new();
    let repo = env.repo("repo");
    random_file(&repo.join("big.bin"), BIG, 0x5eed_0001);

    let (out, during) = add_while(&env, &repo, |p| {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
    });
    assert_refused_or_whole(
        &env,
        &repo,
        &out,
        during,
        &["changed while it was being added"],
        || {},
    );
    env.lode_ok(&repo, &["fsck", "--read-data"]);
    assert_eq!(leftovers(&repo.join(".git/lode")), Vec::<PathBuf>::new());

    // Again, undisturbed: the final contents are recorded and come back.
    env.lode_ok(&repo, &["add", "big.bin"]);
    assert_staged_is_file_and_restores(&env, &repo, "big.bin");
    env.lode_ok(&repo, &["fsck", "--read-data"]);
}

/// big.bin is deleted while `lode add` reads it. Nothing lost means: the
/// add fails (exit 2, naming the path, saying it vanished) and stages
/// nothing — a pointer to a file the user deleted must not appear in the
/// next commit — or, if it finished first, what it staged is whole; fsck
/// is clean either way.
#[test]
fn file_that_vanishes_while_added_is_refused() {
    let env = Env::new();
    let repo = env.repo("repo");
    random_file(&repo.join("big.bin"), BIG, 0x5eed_0002);
    let copy = env.tmp.path().join("big.copy");

    let (out, during) = add_while(&env, &repo, |p| {
        std::fs::rename(p, &copy).unwrap();
    });
    assert_refused_or_whole(
        &env,
        &repo,
        &out,
        during,
        &["vanished", "does not exist"],
        || {
            std::fs::rename(&copy, repo.join("big.bin")).unwrap();
        },
    );
    env.lode_ok(&repo, &["fsck", "--read-data"]);
    assert_eq!(leftovers(&repo.join(".git/lode")), Vec::<PathBuf>::new());
}

/// big.bin is overwritten in place (same size, no truncation) while `lode
/// add` reads it. Nothing lost means: the mixed read is never recorded —
/// exit 2 naming the path, nothing staged — or, if the add finished
/// first, what it staged is exactly the file on disk; fsck is clean.
#[test]
fn file_overwritten_in_place_while_added_is_refused_or_recorded_whole() {
    let env = Env::new();
    let repo = env.repo("repo");
    random_file(&repo.join("big.bin"), BIG, 0x5eed_0003);

    let (out, during) = add_while(&env, &repo, |p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x55u8; 4096], (BIG / 2) as u64).unwrap();
    });
    assert_refused_or_whole(
        &env,
        &repo,
        &out,
        during,
        &["changed while it was being added"],
        || {},
    );
    env.lode_ok(&repo, &["fsck", "--read-data"]);
}

/// A path that does not exist. Nothing lost means nothing to lose: exit
/// 2, the message names the path, nothing staged or tracked.
#[test]
fn add_of_a_nonexistent_path_names_it() {
    let env = Env::new();
    let repo = env.repo("repo");
    let out = env.lode(&repo, &["add", "no-such-model.safetensors"]);
    assert_eq!(code(&out), Some(2), "{}", both(&out));
    assert!(
        stderr(&out).contains("no-such-model.safetensors"),
        "{}",
        both(&out)
    );
    assert_eq!(env.git_in(&repo, &["ls-files", "-s"]), "");
}

// ---------------------------------------------------------------------------
// 5. Hostile paths.

/// Paths outside the working tree, or inside .git. Nothing lost means: each
/// is refused (exit 2, saying why), nothing is written outside the
/// repository, nothing is stored, staged or tracked.
#[test]
fn add_refuses_paths_outside_the_repository_and_in_git() {
    let env = Env::new();
    let repo = env.repo("repo");
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    env.model(&outside.join("secret.safetensors"), 1.0, 71);
    let before = snapshot(&outside);
    let config_before = std::fs::read(repo.join(".git/config")).unwrap();
    std::fs::create_dir_all(repo.join("sub")).unwrap();

    let abs = outside.join("secret.safetensors");
    let abs_args = ["add", abs.to_str().unwrap()];
    let cases: Vec<(PathBuf, &[&str], &str)> = vec![
        (
            repo.clone(),
            &["add", "../outside/secret.safetensors"],
            "outside the repository",
        ),
        (
            repo.clone(),
            &["add", "../outside"],
            "outside the repository",
        ),
        (
            repo.join("sub"),
            &["add", "../../outside/secret.safetensors"],
            "outside the repository",
        ),
        (
            repo.clone(),
            &["add", "sub/../../outside/secret.safetensors"],
            "outside the repository",
        ),
        (repo.clone(), &abs_args, "outside the repository"),
        (repo.clone(), &["add", ".git/config"], ".git"),
        (repo.clone(), &["add", "sub/../.git/config"], ".git"),
        (repo.clone(), &["add", ".git"], ".git"),
    ];
    for (cwd, args, why) in &cases {
        let out = env.lode(cwd, args);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", both(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", both(&out));
    }
    assert_eq!(
        snapshot(&outside),
        before,
        "something was written outside the repository"
    );
    assert_eq!(
        std::fs::read(repo.join(".git/config")).unwrap(),
        config_before
    );
    assert_eq!(env.git_in(&repo, &["ls-files", "-s"]), "");
    assert_eq!(du(&repo.join(".git/lode/packs")), 0, "something was stored");
    assert!(
        !repo.join(".gitattributes").exists(),
        "something was tracked"
    );
}

/// A directory inside the repository that is a symlink to one outside,
/// and a file that is a symlink out. Nothing lost means: `lode add`
/// through them fails (exit 2, naming the path) and stages nothing, and
/// the outside directory is not written to.
#[test]
fn add_through_a_symlink_out_of_the_tree_is_refused() {
    let env = Env::new();
    let repo = env.repo("repo");
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    env.model(&outside.join("secret.safetensors"), 1.0, 72);
    let before = snapshot(&outside);
    std::os::unix::fs::symlink(&outside, repo.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.safetensors"), repo.join("file-link")).unwrap();

    for path in ["link/secret.safetensors", "link", "file-link"] {
        let out = env.lode(&repo, &["add", path]);
        assert_eq!(code(&out), Some(2), "{path}: {}", both(&out));
        assert!(stderr(&out).contains(path), "{path}: {}", both(&out));
        assert_eq!(
            env.git_in(&repo, &["ls-files", "-s", "--", "link", "file-link"]),
            ""
        );
    }
    assert_eq!(
        snapshot(&outside),
        before,
        "something was written outside the repository"
    );
}

/// A tracked directory `d` replaced, after the commit, by a symlink to a
/// directory outside the tree holding a file with the same name (a valid
/// pointer to data the store has — the lure). git itself will not follow
/// the symlink; lode checkout must not either. Nothing lost means: the
/// outside directory is byte-for-byte unchanged (no data, no temp files
/// written through the link) and the command says why it refused.
#[test]
fn checkout_never_writes_through_a_symlinked_directory() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    std::fs::create_dir_all(repo.join("d")).unwrap();
    env.model(&repo.join("d/m.safetensors"), 1.0, 73);
    env.model(&repo.join("top.safetensors"), 1.0, 74);
    env.git_in(&repo, &["add", "."]);
    env.git_in(&repo, &["commit", "-qm", "models"]);
    let pointer = env.git_in(&repo, &["show", "HEAD:d/m.safetensors"]);

    let elsewhere = env.tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("m.safetensors"), &pointer).unwrap();
    std::fs::remove_dir_all(repo.join("d")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, repo.join("d")).unwrap();
    // The top-level file becomes a symlink to an outside pointer file too.
    let lure = env.tmp.path().join("lure.safetensors");
    let top_pointer = env.git_in(&repo, &["show", "HEAD:top.safetensors"]);
    std::fs::write(&lure, &top_pointer).unwrap();
    std::fs::remove_file(repo.join("top.safetensors")).unwrap();
    std::os::unix::fs::symlink(&lure, repo.join("top.safetensors")).unwrap();
    let before = snapshot(&elsewhere);

    for args in [
        &["checkout"][..],
        &["checkout", "d/m.safetensors"][..],
        &["checkout", "d"][..],
    ] {
        let out = env.lode(&repo, args);
        assert_eq!(
            snapshot(&elsewhere),
            before,
            "{args:?} wrote through the symlink: {}",
            both(&out)
        );
        assert_eq!(
            std::fs::read_to_string(&lure).unwrap(),
            top_pointer,
            "{args:?}"
        );
        if stderr(&out).contains("d/m.safetensors") || code(&out) != Some(0) {
            assert_eq!(code(&out), Some(2), "{args:?}: {}", both(&out));
            assert!(
                stderr(&out).contains("d/m.safetensors"),
                "{args:?}: {}",
                both(&out)
            );
        }
    }
    // The explicit request must be answered with a refusal, not silence.
    let out = env.lode(&repo, &["checkout", "d/m.safetensors"]);
    assert_eq!(code(&out), Some(2), "{}", both(&out));
    assert!(
        stderr(&out).contains("outside the working tree"),
        "{}",
        both(&out)
    );
    assert!(
        std::fs::symlink_metadata(repo.join("d"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        std::fs::symlink_metadata(repo.join("top.safetensors"))
            .unwrap()
            .is_symlink()
    );
}

/// kill -9 in the middle of `lode add`, once a first pack is durable.
/// Nothing lost means: the store is valid (`lode fsck` clean), the working
/// file is untouched, nothing is staged, and a re-run finishes without
/// storing again what the killed run had already made durable.
#[test]
fn kill_9_during_add_leaves_a_valid_store_and_the_rerun_reuses_it() {
    let env = Env::new();
    let repo = env.tracked_repo("repo");
    let big = repo.join("big.bin");
    random_file(&big, BIG, 99);
    let before = sha(&big);
    let packs = repo.join(".git/lode/packs");
    let mut child = env
        .cmd(LODE, &repo)
        .args(["add", "big.bin"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&packs).unwrap().count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no pack appeared");
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill: the rest still holds
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let durable = std::fs::read_dir(&packs).unwrap().count();
    assert!(durable >= 1);

    // The killed run's temporary pack, once an hour old, is cleaned up by
    // the next command.
    let tmp = repo.join(".git/lode/tmp");
    for e in std::fs::read_dir(&tmp).unwrap() {
        let path = e.unwrap().path();
        let out = env.run(
            "touch",
            &repo,
            &["-d", "2 hours ago", path.to_str().unwrap()],
        );
        assert!(out.status.success());
    }
    env.lode_ok(&repo, &["fsck", "--read-data"]);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "stale temporary packs remain"
    );
    assert_eq!(sha(&big), before, "the working file is untouched");
    let again = env.lode(&repo, &["add", "big.bin"]);
    assert_eq!(code(&again), Some(0), "{}", both(&again));
    // The summary says how much was new: less than the whole file when the
    // killed run had made at least one 64 MiB pack durable.
    let note = stderr(&again);
    assert!(note.contains("deduplicated"), "{note}");
    let stored = du(&packs);
    assert!(
        stored < (BIG as u64) * 11 / 10,
        "re-run stored {stored} bytes: work was redone"
    );
    assert_staged_is_file_and_restores(&env, &repo, "big.bin");
    env.lode_ok(&repo, &["fsck", "--read-data"]);
}
