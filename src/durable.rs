//! Durable writes: temp file, fsync, rename, fsync of the directory
//! (invariant I1). gix and std write no fsync, so everything lode persists
//! goes through here. An fsync error is returned, never retried (I4).

use std::io::Write;
use std::path::Path;

/// fsync a directory so a rename inside it survives power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes` atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".lode-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Temporary files are created owner-only; the file keeps the mode it
    // had, or gets the usual 0644 when it is new (.gitattributes is shared).
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::Permissions::from_mode(0o644)
        });
    tmp.as_file().set_permissions(mode)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}
