//! The one file that touches `fuser`: replies to the kernel from [`Fs`].
//!
//! Everything is read-only: the mount is `ro`, opens for writing are
//! refused with EROFS, and attributes say so (no write bits). Contents are
//! immutable, so opens ask the kernel to keep its page cache
//! (`FOPEN_KEEP_CACHE`) and attributes and entries are cached for a day.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request, SessionACL,
};

use crate::{Attr, Error, Fs, Kind, Snapshot};

/// The tree never changes under a mount.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// How to mount.
pub struct Options {
    /// Name shown in `mount` and `/proc/mounts` (`lode:<rev>`).
    pub fsname: String,
    /// Threads serving requests.
    pub threads: usize,
    /// Let other users read (adds `default_permissions`).
    pub allow_other: bool,
    /// Owner of every node.
    pub uid: u32,
    pub gid: u32,
    /// Time shown for every node (the commit's time).
    pub mtime: SystemTime,
}

struct Adapter<S> {
    fs: Fs<S>,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl<S: Snapshot> Adapter<S> {
    fn attr(&self, ino: u64, a: &Attr) -> FileAttr {
        let (kind, perm, nlink) = match a.kind {
            Kind::Dir => (FileType::Directory, 0o555, 2),
            Kind::File if a.executable => (FileType::RegularFile, 0o555, 1),
            Kind::File => (FileType::RegularFile, 0o444, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 1 << 20,
        }
    }
}

impl<S: Snapshot + 'static> Filesystem for Adapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: reads of up to 1 MiB, and as much read-ahead as
        // the kernel allows (it caps what it offers).
        let _ = config.set_max_write(1 << 20);
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup(parent.0, name) {
            Ok((ino, a)) => reply.entry(&TTL, &self.attr(ino, &a), fuser::Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &self.attr(ino.0, &a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.fs.getattr(ino.0) {
            Ok(a) if a.kind == Kind::Dir => reply.error(Errno::EISDIR),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                log::warn!("read of inode {} at {offset}: {e}", ino.0);
                reply.error(errno(&e))
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            Ok(a) if a.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets: 1 is ".", 2 is "..", 2 + k follows the k-th child.
        let mut at = offset;
        if at == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            at = 1;
        }
        if at == 1 {
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            at = 2;
        }
        match self.fs.readdir(ino.0, at - 2) {
            Ok(entries) => {
                for (next, child, name, a) in entries {
                    let kind = match a.kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(child), next + 2, kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 1 << 20, 255, 1 << 20);
    }
}

fn config(opts: &Options) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("lode".into()),
    ];
    if opts.allow_other {
        config.mount_options.push(MountOption::DefaultPermissions);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config
}

/// Mount `snapshot` at `dir` and serve it until unmounted (blocks).
pub fn serve<S: Snapshot + 'static>(
    snapshot: S,
    dir: &Path,
    opts: &Options,
) -> std::io::Result<()> {
    let adapter = Adapter {
        fs: Fs::new(snapshot),
        uid: opts.uid,
        gid: opts.gid,
        mtime: opts.mtime,
    };
    fuser::mount(adapter, dir, &config(opts))
}
