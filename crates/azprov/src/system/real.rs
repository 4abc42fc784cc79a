//! `System` on a real machine, under a root directory (`/` = live).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{
    BlockInfo, CdromStatus, Command, CommandOutput, FileInfo, Ipv4Address, Ipv4Route, Link, LinkWatch, Lock,
    NewIpv4Route, PartitionNode, System,
};
use crate::platform::media::ReadAt;

pub struct RealSystem {
    root: PathBuf,
}

impl RealSystem {
    /// `root` = `/` for the running system, or a sandbox/offline image directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RealSystem { root: root.into() }
    }
}

struct FileReader {
    file: File,
    size: u64,
}

impl ReadAt for FileReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.size
    }
}

fn open_reader(host: &Path) -> io::Result<Box<dyn ReadAt>> {
    let file = OpenOptions::new().read(true).custom_flags(libc_o_nonblock()).open(host)?;
    let meta = file.metadata()?;
    let size = if meta.file_type().is_file() { meta.len() } else { block_size(&file).unwrap_or(0) };
    Ok(Box::new(FileReader { file, size }))
}

const fn libc_o_nonblock() -> i32 {
    0o4000 // O_NONBLOCK: a CD-ROM open must not wait for the tray
}

/// `BLKGETSIZE64`.
fn block_size(file: &File) -> io::Result<u64> {
    struct BlkGetSize64(u64);
    unsafe impl rustix::ioctl::Ioctl for BlkGetSize64 {
        type Output = u64;
        const IS_MUTATING: bool = true;
        fn opcode(&self) -> rustix::ioctl::Opcode {
            0x8008_1272
        }
        fn as_ptr(&mut self) -> *mut core::ffi::c_void {
            (&mut self.0) as *mut u64 as *mut core::ffi::c_void
        }
        unsafe fn output_from_ptr(
            _out: rustix::ioctl::IoctlOutput,
            ptr: *mut core::ffi::c_void,
        ) -> rustix::io::Result<u64> {
            Ok(*(ptr as *const u64))
        }
    }
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass.
    unsafe { rustix::ioctl::ioctl(file, BlkGetSize64(0)) }.map_err(io::Error::from)
}

/// An ioctl taking an integer argument and returning the syscall's integer result.
struct IntIoctl {
    opcode: rustix::ioctl::Opcode,
    arg: usize,
}

unsafe impl rustix::ioctl::Ioctl for IntIoctl {
    type Output = i32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        self.opcode
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.arg as *mut core::ffi::c_void
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _ptr: *mut core::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

/// `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: rustix::ioctl::Opcode = 0x4008_5203;
const SIGKILL: rustix::process::Signal = rustix::process::Signal::KILL;
/// Output kept per stream; the rest is read and dropped so the child never blocks on a full pipe.
const OUTPUT_CAP: usize = 4 << 20;

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` in one buffer, wiped on drop.
struct AddEntropy(zeroize::Zeroizing<Vec<u8>>);

impl AddEntropy {
    fn new(data: &[u8], bits: u32) -> io::Result<Self> {
        let len = i32::try_from(data.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let bits = i32::try_from(bits).unwrap_or(i32::MAX).min(len.saturating_mul(8));
        let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(8 + data.len().div_ceil(4) * 4));
        buf.extend_from_slice(&bits.to_ne_bytes());
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(8 + data.len().div_ceil(4) * 4, 0);
        Ok(AddEntropy(buf))
    }
}

unsafe impl rustix::ioctl::Ioctl for &mut AddEntropy {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        RNDADDENTROPY
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.0.as_mut_ptr() as *mut core::ffi::c_void
    }
    unsafe fn output_from_ptr(
        _out: rustix::ioctl::IoctlOutput,
        _ptr: *mut core::ffi::c_void,
    ) -> rustix::io::Result<()> {
        Ok(())
    }
}

const CDROM_DRIVE_STATUS: rustix::ioctl::Opcode = 0x5326;
const CDROMEJECT: rustix::ioctl::Opcode = 0x5309;
const CDSL_CURRENT: usize = i32::MAX as usize;

const BLKRRPART: rustix::ioctl::Opcode = 0x125f;
const BLKFLSBUF: rustix::ioctl::Opcode = 0x1261;
const BLKPG: rustix::ioctl::Opcode = 0x1269;
const BLKPG_ADD_PARTITION: i32 = 1;
const BLKPG_DEL_PARTITION: i32 = 2;

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

struct BlkpgIoctl<'a> {
    arg: BlkpgArg,
    _part: std::marker::PhantomData<&'a mut BlkpgPartition>,
}

unsafe impl rustix::ioctl::Ioctl for BlkpgIoctl<'_> {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        BLKPG
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        (&mut self.arg) as *mut BlkpgArg as *mut core::ffi::c_void
    }
    unsafe fn output_from_ptr(
        _out: rustix::ioctl::IoctlOutput,
        _ptr: *mut core::ffi::c_void,
    ) -> rustix::io::Result<()> {
        Ok(())
    }
}

fn blkpg(dev: &Path, op: i32, number: u32, start: u64, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().read(true).open(dev)?;
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(io::Error::other)?,
        length: i64::try_from(len).map_err(io::Error::other)?,
        pno: i32::try_from(number).map_err(io::Error::other)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part as *mut BlkpgPartition,
    };
    // SAFETY: BLKPG reads a blkpg_ioctl_arg whose data points at a blkpg_partition that outlives the call.
    unsafe { rustix::ioctl::ioctl(&file, BlkpgIoctl { arg, _part: std::marker::PhantomData }) }?;
    Ok(())
}

/// `NVME_IOCTL_ID`: `_IO('N', 0x40)`, returns the namespace id of a namespace block device.
const NVME_IOCTL_ID: rustix::ioctl::Opcode = 0x4e40;
/// `NVME_IOCTL_ADMIN_CMD`: `_IOWR('N', 0x41, struct nvme_admin_cmd)` (72 bytes).
const NVME_IOCTL_ADMIN_CMD: rustix::ioctl::Opcode = 0xc048_4e41;
const NVME_ADMIN_IDENTIFY: u8 = 0x06;

/// `struct nvme_passthru_cmd` (linux/nvme_ioctl.h).
#[repr(C)]
#[derive(Default)]
struct NvmePassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<NvmePassthruCmd>() == 72);

struct NvmeAdminIoctl<'a> {
    cmd: NvmePassthruCmd,
    _buf: std::marker::PhantomData<&'a mut [u8]>,
}

unsafe impl rustix::ioctl::Ioctl for NvmeAdminIoctl<'_> {
    type Output = i32;
    const IS_MUTATING: bool = true;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        NVME_IOCTL_ADMIN_CMD
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        (&mut self.cmd) as *mut NvmePassthruCmd as *mut core::ffi::c_void
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _ptr: *mut core::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

/// Identify Namespace (admin opcode 0x06, CNS 0) of the namespace behind an NVMe namespace block device (host
/// path): `NVME_IOCTL_ID` for its namespace id, then the admin command through the same node (CAP_SYS_ADMIN).
fn nvme_identify_ns(host: &Path) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new().read(true).custom_flags(libc_o_nonblock()).open(host)?;
    if !file.metadata()?.file_type().is_block_device() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, format!("{} is not a block device", host.display())));
    }
    // SAFETY: NVME_IOCTL_ID takes no argument and returns the namespace id.
    let nsid = unsafe { rustix::ioctl::ioctl(&file, IntIoctl { opcode: NVME_IOCTL_ID, arg: 0 }) }?;
    let nsid = u32::try_from(nsid).map_err(io::Error::other)?;
    let mut buf = vec![0u8; crate::platform::nvme::IDENTIFY_LEN];
    let cmd = NvmePassthruCmd {
        opcode: NVME_ADMIN_IDENTIFY,
        nsid,
        addr: buf.as_mut_ptr() as u64,
        data_len: buf.len() as u32,
        cdw10: 0, // CNS 0: Identify Namespace
        timeout_ms: 5000,
        ..Default::default()
    };
    // SAFETY: the command points at `buf` (data_len bytes), which outlives the call; the kernel writes at most
    // data_len bytes into it.
    let status = unsafe { rustix::ioctl::ioctl(&file, NvmeAdminIoctl { cmd, _buf: std::marker::PhantomData }) }?;
    if status != 0 {
        return Err(io::Error::other(format!("NVMe Identify Namespace status {status:#x}")));
    }
    Ok(buf)
}

fn read_sys_u64(path: &Path) -> io::Result<u64> {
    fs::read_to_string(path)?.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_sys_dev(path: &Path) -> io::Result<(u32, u32)> {
    let text = fs::read_to_string(path)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad device number in {}", path.display()));
    let (maj, min) = text.trim().split_once(':').ok_or_else(bad)?;
    Ok((maj.parse().map_err(|_| bad())?, min.parse().map_err(|_| bad())?))
}

struct FileLock {
    _file: File,
}
impl Lock for FileLock {}

fn info(meta: &fs::Metadata) -> FileInfo {
    let ft = meta.file_type();
    FileInfo {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        is_dir: ft.is_dir(),
        is_symlink: ft.is_symlink(),
        is_file: ft.is_file(),
        len: meta.len(),
        mtime_s: meta.mtime(),
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Temp file in the same directory (O_EXCL|O_NOFOLLOW, `mode`, `owner`), optionally fsync, rename over `host`.
/// Refuses to replace a symlink. `target` is only for messages.
fn atomic_write(
    host: &Path,
    target: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    sync: bool,
) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(host) {
        if m.file_type().is_symlink() {
            return Err(io::Error::other(format!("refusing to replace symlink {}", target.display())));
        }
    }
    let dir = host.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    let name = host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.azprov-tmp"));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        // O_EXCL + O_NOFOLLOW: never write through something planted at the temp name.
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(0o400_000).open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        chown(&tmp, owner)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, host)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Lock a pool file with both lock kinds hv_kvp_daemon and other agents use.
fn kvp_lock(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive)?;
    rustix::fs::fcntl_lock(file, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(())
}

fn kvp_open(host: &Path) -> io::Result<File> {
    if let Some(dir) = host.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new().read(true).append(true).create(true).mode(0o644).custom_flags(0o400_000).open(host)
}

/// After the child exited, how long to keep reading pipes a grandchild may still hold open.
const PIPE_GRACE: Duration = Duration::from_millis(100);
/// Without a pidfd (kernels before 5.3), how often to check whether the child exited.
const EXIT_POLL: Duration = Duration::from_millis(1);

/// One end of a child's pipe, non-blocking, with what was read from it.
struct Pipe<T: AsFd> {
    fd: Option<T>,
    buf: Vec<u8>,
}

impl<T: AsFd + Read> Pipe<T> {
    fn new(fd: Option<T>) -> io::Result<Self> {
        if let Some(f) = &fd {
            rustix::io::ioctl_fionbio(f, true)?;
        }
        Ok(Pipe { fd, buf: Vec::new() })
    }
    /// Read what is available; EOF or an error closes the pipe.
    fn drain(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Some(f) = self.fd.as_mut() {
            match f.read(&mut chunk) {
                Ok(0) => self.fd = None,
                Ok(n) => {
                    // keep at most OUTPUT_CAP; the rest is read and dropped so the child never blocks
                    let room = OUTPUT_CAP.saturating_sub(self.buf.len()).min(n);
                    self.buf.extend_from_slice(&chunk[..room]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.fd = None,
            }
        }
    }
}

/// Feed `stdin`, collect stdout/stderr and wait for the child, all on this thread: one `poll` over the pipes and
/// a pidfd (so the exit is seen at once, without sleeping or helper threads). Kills the child at `timeout`.
fn supervise(mut child: std::process::Child, stdin: &[u8], timeout: Duration) -> io::Result<CommandOutput> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let start = Instant::now();
    let mut input = child.stdin.take();
    if let Some(f) = &input {
        rustix::io::ioctl_fionbio(f, true)?;
    }
    let mut written = 0;
    if stdin.is_empty() {
        input = None;
    }
    let mut out = Pipe::new(child.stdout.take())?;
    let mut err = Pipe::new(child.stderr.take())?;
    let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
    let mut status = None;
    let mut exited_at = None;
    let mut timed_out = false;
    loop {
        if status.is_none() {
            if let Some(st) = child.try_wait()? {
                status = Some(st);
                exited_at = Some(Instant::now());
                input = None;
            }
        }
        let pipes_open = out.fd.is_some() || err.fd.is_some();
        let now = Instant::now();
        let wait = match exited_at {
            Some(_) if !pipes_open => break,
            Some(t) if now.duration_since(t) >= PIPE_GRACE => break,
            Some(t) => PIPE_GRACE - now.duration_since(t),
            None => {
                let elapsed = now.duration_since(start);
                if elapsed >= timeout {
                    // the child leads its own process group: take what it started with it
                    let _ = rustix::process::kill_process_group(rustix::process::Pid::from_child(&child), SIGKILL);
                    let _ = child.kill();
                    status = Some(child.wait()?);
                    timed_out = true;
                    break;
                }
                let left = timeout - elapsed;
                if pidfd.is_some() {
                    left
                } else {
                    left.min(EXIT_POLL)
                }
            }
        };
        let ts = Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: wait.subsec_nanos() as _ };
        let r = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
            let (mut i_in, mut i_out, mut i_err) = (None, None, None);
            if let Some(f) = &input {
                i_in = Some(fds.len());
                fds.push(PollFd::new(f, PollFlags::OUT));
            }
            if let Some(f) = &out.fd {
                i_out = Some(fds.len());
                fds.push(PollFd::new(f, PollFlags::IN));
            }
            if let Some(f) = &err.fd {
                i_err = Some(fds.len());
                fds.push(PollFd::new(f, PollFlags::IN));
            }
            if let (Some(f), None) = (&pidfd, &status) {
                fds.push(PollFd::new(f, PollFlags::IN));
            }
            match poll(&mut fds, Some(&ts)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready = |i: Option<usize>| i.map(|i| !fds[i].revents().is_empty()).unwrap_or(false);
            (ready(i_in), ready(i_out), ready(i_err))
        };
        let (in_ready, out_ready, err_ready) = r;
        if in_ready {
            if let Some(f) = input.as_mut() {
                match f.write(&stdin[written..]) {
                    Ok(n) => written += n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    // the child closed its stdin (EPIPE): it takes no more input
                    Err(_) => written = stdin.len(),
                }
            }
            if written >= stdin.len() {
                input = None; // EOF for the child
            }
        }
        if out_ready {
            out.drain();
        }
        if err_ready {
            err.drain();
        }
    }
    out.drain();
    err.drain();
    Ok(CommandOutput { status: status.and_then(|s| s.code()), stdout: out.buf, stderr: err.buf, timed_out })
}

impl System for RealSystem {
    fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(self.host_path(path))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(self.host_path(path))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn stat(&self, path: &Path) -> io::Result<FileInfo> {
        fs::symlink_metadata(self.host_path(path)).map(|m| info(&m))
    }

    fn write_file(&self, path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        atomic_write(&self.host_path(path), path, data, mode, owner, true)
    }

    fn write_file_unsynced(&self, path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        atomic_write(&self.host_path(path), path, data, mode, owner, false)
    }

    fn create_dir_all(&self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        let host = self.host_path(path);
        let mut missing = Vec::new();
        let mut p = host.as_path();
        while fs::symlink_metadata(p).is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        for dir in missing.iter().rev() {
            fs::DirBuilder::new().mode(mode).create(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            chown(dir, owner)?;
        }
        if !fs::symlink_metadata(&host)?.is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", path.display())));
        }
        Ok(())
    }

    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(self.host_path(path), Some(uid), Some(gid))
    }

    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(self.host_path(path), fs::Permissions::from_mode(mode))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(self.host_path(path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.host_path(from), self.host_path(to))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(self.host_path(path))
    }

    fn ipv4_routes(&self) -> io::Result<Vec<Ipv4Route>> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "routes are kernel state of the running system"));
        }
        super::netlink::ipv4_routes()
    }

    fn add_ipv4_route(&self, route: &NewIpv4Route) -> io::Result<()> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "routes are kernel state of the running system"));
        }
        super::netlink::add_ipv4_route(route)
    }

    fn links(&self) -> io::Result<Vec<Link>> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "links are kernel state of the running system"));
        }
        super::netlink::links()
    }

    fn link_watch(&self) -> io::Result<Box<dyn LinkWatch + '_>> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "links are kernel state of the running system"));
        }
        Ok(Box::new(super::netlink::link_watch()?))
    }

    fn set_link_up(&self, index: u32) -> io::Result<()> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "links are kernel state of the running system"));
        }
        super::netlink::set_link_up(index)
    }

    fn ipv4_addresses(&self) -> io::Result<Vec<Ipv4Address>> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "addresses are kernel state of the running system"));
        }
        super::netlink::ipv4_addresses()
    }

    fn run(&self, cmd: &Command) -> io::Result<CommandOutput> {
        let child = std::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C")
            // its own process group, so a timeout can end the children it started too
            .process_group(0)
            .spawn()?;
        let stdin = cmd.stdin.as_ref().map(|s| s.expose()).unwrap_or_default();
        supervise(child, stdin, cmd.timeout)
    }

    fn has_program(&self, program: &str) -> bool {
        if program.contains('/') {
            return Path::new(program).exists();
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path).any(|d| {
            fs::metadata(d.join(program)).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
        })
    }

    fn set_kernel_hostname(&self, name: &str) -> io::Result<bool> {
        if !self.is_live() {
            return Ok(false);
        }
        rustix::system::sethostname(name.as_bytes())?;
        Ok(true)
    }

    fn add_entropy(&self, data: &[u8], bits: u32) -> io::Result<bool> {
        if !self.is_live() {
            return Ok(false);
        }
        let random = OpenOptions::new().write(true).open("/dev/random")?;
        let mut req = AddEntropy::new(data, bits)?;
        // SAFETY: RNDADDENTROPY reads a `struct rand_pool_info` whose `buf_size` bytes follow the two ints.
        unsafe { rustix::ioctl::ioctl(&random, &mut req) }?;
        Ok(true)
    }

    fn kernel_release(&self) -> Option<String> {
        let proc = self.read_to_string(Path::new("/proc/sys/kernel/osrelease")).ok();
        if let Some(r) = proc.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
            return Some(r);
        }
        if !self.is_live() {
            return None;
        }
        let u = rustix::system::uname();
        Some(u.release().to_string_lossy().into_owned()).filter(|s| !s.is_empty())
    }

    fn append_existing(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK;
        let mut f = OpenOptions::new().append(true).custom_flags(flags.bits() as i32).open(self.host_path(path))?;
        f.write_all(data)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        open_reader(&self.host_path(path))
    }

    fn open_host_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        open_reader(path)
    }

    fn cdrom_status(&self, path: &Path) -> io::Result<CdromStatus> {
        let host = self.host_path(path);
        let file = OpenOptions::new().read(true).custom_flags(libc_o_nonblock()).open(&host)?;
        let meta = file.metadata()?;
        if meta.file_type().is_file() {
            // an image file standing in for a drive (sandboxes); an empty one is a drive without a disc
            return Ok(if meta.len() == 0 { CdromStatus::NoDisc } else { CdromStatus::ImageFile });
        }
        // SAFETY: CDROM_DRIVE_STATUS takes an integer slot argument and returns an integer.
        let st = unsafe { rustix::ioctl::ioctl(&file, IntIoctl { opcode: CDROM_DRIVE_STATUS, arg: CDSL_CURRENT }) }?;
        Ok(match st {
            1 => CdromStatus::NoDisc,
            2 => CdromStatus::TrayOpen,
            3 => CdromStatus::NotReady,
            4 => CdromStatus::DiscOk,
            n => CdromStatus::Unknown(n),
        })
    }

    fn eject(&self, path: &Path) -> io::Result<bool> {
        let host = self.host_path(path);
        let file = OpenOptions::new().read(true).custom_flags(libc_o_nonblock()).open(&host)?;
        if file.metadata()?.file_type().is_file() {
            return Ok(false);
        }
        // SAFETY: CDROMEJECT takes no argument.
        unsafe { rustix::ioctl::ioctl(&file, IntIoctl { opcode: CDROMEJECT, arg: 0 }) }?;
        Ok(true)
    }

    fn kvp_append(&self, path: &Path, records: &[u8]) -> io::Result<()> {
        let mut file = kvp_open(&self.host_path(path))?;
        kvp_lock(&file)?;
        file.write_all(records)?;
        file.sync_all()
        // locks drop with the fd
    }

    fn kvp_truncate_if_older(&self, path: &Path, boot_time_s: i64) -> io::Result<bool> {
        let host = self.host_path(path);
        if fs::symlink_metadata(&host).is_err() {
            return Ok(false);
        }
        let file = kvp_open(&host)?;
        kvp_lock(&file)?;
        if file.metadata()?.mtime() < boot_time_s {
            file.set_len(0)?;
            file.sync_all()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn block_info(&self, dev: &Path) -> io::Result<BlockInfo> {
        // While the kernel re-reads the partition table (udev's watch after someone closed the disk for writing,
        // another tool's BLKRRPART), the partitions' sysfs entries vanish and come back: ENODEV/ENOENT mid-scan.
        // Read again for a few seconds before believing it.
        let mut tries = 0;
        loop {
            match block_info_once(dev) {
                Err(e) if tries < 50 && (e.raw_os_error() == Some(19) || e.kind() == io::ErrorKind::NotFound) => {
                    let name = dev.file_name().unwrap_or_default();
                    if !Path::new("/sys/class/block").join(name).exists() {
                        return Err(e);
                    }
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    fn nvme_identify_namespace(&self, dev: &Path) -> io::Result<Vec<u8>> {
        if !self.is_live() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "NVMe admin commands only on the live system"));
        }
        nvme_identify_ns(&self.host_path(dev))
    }

    fn block_write_at(&self, dev: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        // O_EXCL on a block device: refused while mounted or otherwise claimed by the kernel
        let file = OpenOptions::new().write(true).custom_flags(0o200).open(dev)?;
        file.write_all_at(data, offset)?;
        file.sync_all()
    }

    fn flush_buffers(&self, dev: &Path) -> io::Result<()> {
        let file = OpenOptions::new().read(true).open(dev)?;
        // SAFETY: BLKFLSBUF takes no argument.
        unsafe { rustix::ioctl::ioctl(&file, IntIoctl { opcode: BLKFLSBUF, arg: 0 }) }?;
        Ok(())
    }

    fn lock_block_device(&self, dev: &Path) -> io::Result<Box<dyn Lock>> {
        let file = OpenOptions::new().read(true).custom_flags(libc_o_nonblock()).open(dev)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut locked = Err(rustix::io::Errno::WOULDBLOCK);
        crate::timeutil::poll_until(deadline, Duration::from_millis(20), || {
            locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
            locked != Err(rustix::io::Errno::WOULDBLOCK)
        });
        locked?;
        Ok(Box::new(FileLock { _file: file }))
    }

    fn reread_partitions(&self, dev: &Path) -> io::Result<()> {
        let file = OpenOptions::new().read(true).open(dev)?;
        // SAFETY: BLKRRPART takes no argument.
        unsafe { rustix::ioctl::ioctl(&file, IntIoctl { opcode: BLKRRPART, arg: 0 }) }?;
        Ok(())
    }

    fn add_partition(&self, dev: &Path, number: u32, start: u64, len: u64) -> io::Result<()> {
        blkpg(dev, BLKPG_ADD_PARTITION, number, start, len)
    }

    fn delete_partition(&self, dev: &Path, number: u32) -> io::Result<()> {
        blkpg(dev, BLKPG_DEL_PARTITION, number, 0, 0)
    }

    fn mount(&self, source: &Path, target: &Path, fstype: &str, options: &str) -> io::Result<()> {
        use rustix::mount::MountFlags;
        let mut flags = MountFlags::empty();
        let mut data = Vec::new();
        for o in options.split(',').filter(|o| !o.is_empty() && *o != "defaults") {
            match o {
                "ro" => flags |= MountFlags::RDONLY,
                "nosuid" => flags |= MountFlags::NOSUID,
                "nodev" => flags |= MountFlags::NODEV,
                "noexec" => flags |= MountFlags::NOEXEC,
                "noatime" => flags |= MountFlags::NOATIME,
                other => data.push(other),
            }
        }
        let data = std::ffi::CString::new(data.join(",")).map_err(io::Error::other)?;
        rustix::mount::mount(source, self.host_path(target), fstype, flags, data.as_c_str())?;
        Ok(())
    }

    fn mountinfo(&self) -> io::Result<String> {
        fs::read_to_string("/proc/thread-self/mountinfo").or_else(|_| fs::read_to_string("/proc/self/mountinfo"))
    }

    fn swaps(&self) -> io::Result<String> {
        fs::read_to_string("/proc/swaps")
    }

    fn allocate_file(&self, path: &Path, len: u64, mode: u32) -> io::Result<()> {
        let host = self.host_path(path);
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(0o400_000).open(&host)?;
        let result = (|| {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                    let zeros = vec![0u8; 1 << 20];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        file.write_all(&zeros[..n])?;
                        left -= n as u64;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            file.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&host);
        }
        result
    }

    fn write_attribute(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut file =
            OpenOptions::new().write(true).truncate(true).custom_flags(0o400_000).open(self.host_path(path))?;
        file.write_all(data)
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Lock>> {
        let host = self.host_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(0o400_000)
            .open(host)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(Box::new(FileLock { _file: file }))
    }
}

/// One reading of a disk and its partitions from sysfs.
fn block_info_once(dev: &Path) -> io::Result<BlockInfo> {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::other(format!("{} names no device", dev.display())))?;
    let sys = Path::new("/sys/class/block").join(&name);
    if sys.join("partition").exists() {
        return Err(io::Error::other(format!("{} is a partition, not a disk", dev.display())));
    }
    let mut partitions = Vec::new();
    for entry in fs::read_dir(&sys)?.filter_map(|e| e.ok()) {
        let p = entry.path();
        let child = entry.file_name().to_string_lossy().into_owned();
        if !child.starts_with(&name) || !p.join("partition").exists() {
            continue;
        }
        partitions.push(PartitionNode {
            number: u32::try_from(read_sys_u64(&p.join("partition"))?).map_err(io::Error::other)?,
            start: read_sys_u64(&p.join("start"))? * 512,
            len: read_sys_u64(&p.join("size"))? * 512,
            node: Path::new("/dev").join(&child),
            dev: read_sys_dev(&p.join("dev"))?,
        });
    }
    partitions.sort_by_key(|p| p.number);
    Ok(BlockInfo {
        dev: read_sys_dev(&sys.join("dev"))?,
        size: read_sys_u64(&sys.join("size"))? * 512,
        logical_block: read_sys_u64(&sys.join("queue/logical_block_size"))
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(512),
        name,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_under_root() {
        let s = RealSystem::new("/tmp/sandbox");
        assert_eq!(s.host_path(Path::new("/etc/passwd")), PathBuf::from("/tmp/sandbox/etc/passwd"));
        assert!(!s.is_live());
        assert!(RealSystem::new("/").is_live());
    }

    #[test]
    fn atomic_write_mode_and_symlink_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let s = RealSystem::new(dir.path());
        s.create_dir_all(Path::new("/a/b"), 0o700, None).unwrap();
        s.write_file(Path::new("/a/b/f"), b"x", 0o600, None).unwrap();
        let st = s.stat(Path::new("/a/b/f")).unwrap();
        assert_eq!(st.mode, 0o600);
        assert_eq!(s.stat(Path::new("/a")).unwrap().mode, 0o700);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("a/link")).unwrap();
        assert!(s.write_file(Path::new("/a/link"), b"x", 0o600, None).is_err());
        assert!(s.write_file_unsynced(Path::new("/a/link"), b"x", 0o600, None).is_err());
        s.write_file_unsynced(Path::new("/a/b/f"), b"yz", 0o640, None).unwrap();
        assert_eq!(s.read(Path::new("/a/b/f")).unwrap(), b"yz");
        assert_eq!(s.stat(Path::new("/a/b/f")).unwrap().mode, 0o640);
        assert!(!dir.path().join("a/b/.f.azprov-tmp").exists());
    }

    #[test]
    fn commands_get_stdin_and_timeouts() {
        let s = RealSystem::new("/");
        let out = s.run(&Command::new("cat", &[]).stdin(crate::secret::Secret::new(b"abc".to_vec()))).unwrap();
        assert_eq!(out.stdout, b"abc");
        let mut slow = Command::new("sleep", &["5"]);
        slow.timeout = Duration::from_millis(100);
        let out = s.run(&slow).unwrap();
        assert!(out.timed_out);
        // a timeout ends the children too, and a background child holding the pipes does not stall the caller
        let mut slow = Command::new("sh", &["-c", "echo started; sleep 30; echo never"]);
        slow.timeout = Duration::from_millis(200);
        let t = Instant::now();
        let out = s.run(&slow).unwrap();
        assert!(out.timed_out && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(out.stdout, b"started\n");
        let t = Instant::now();
        let out = s.run(&Command::new("sh", &["-c", "(sleep 5 &) ; echo done"])).unwrap();
        assert!(out.success() && t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(out.stdout, b"done\n");
        let missing = s.run(&Command::new("azprov-no-such-program", &[]));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn commands_stream_large_io_and_report_status() {
        let s = RealSystem::new("/");
        // more than a pipe buffer each way: stdin is fed while stdout is drained
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let out = s.run(&Command::new("cat", &[]).stdin(crate::secret::Secret::new(big.clone()))).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, big);
        let out = s.run(&Command::new("sh", &["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_text(), "err");
        assert!(!out.timed_out);
        // a child that does not read its stdin
        let out = s.run(&Command::new("true", &[]).stdin(crate::secret::Secret::new(big))).unwrap();
        assert!(out.success());
    }

    #[test]
    fn a_grandchild_holding_the_pipes_does_not_stall_the_run() {
        let s = RealSystem::new("/");
        let t = Instant::now();
        let out = s.run(&Command::new("sh", &["-c", "sleep 3 & echo started"])).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, b"started\n");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn kvp_append_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let s = RealSystem::new(dir.path());
        let p = Path::new("/var/lib/hyperv/.kvp_pool_1");
        s.kvp_append(p, &[1u8; 2560]).unwrap();
        s.kvp_append(p, &[2u8; 2560]).unwrap();
        assert_eq!(s.read(p).unwrap().len(), 5120);
        assert!(!s.kvp_truncate_if_older(p, 0).unwrap());
        assert!(s.kvp_truncate_if_older(p, i64::MAX).unwrap());
        assert_eq!(s.read(p).unwrap().len(), 0);
    }

    #[test]
    fn entropy_request_layout_and_root_guard() {
        let r = AddEntropy::new(&[1, 2, 3, 4, 5], 40).unwrap();
        let mut want = 40i32.to_ne_bytes().to_vec();
        want.extend_from_slice(&5i32.to_ne_bytes());
        want.extend_from_slice(&[1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(&r.0[..], &want[..]);
        // credit never exceeds the data
        assert_eq!(&AddEntropy::new(&[9; 2], 1000).unwrap().0[..4], &16i32.to_ne_bytes());
        let dir = tempfile::tempdir().unwrap();
        assert!(!RealSystem::new(dir.path()).add_entropy(&[1; 8], 64).unwrap());
    }

    #[test]
    fn append_existing_never_creates_or_follows() {
        let dir = tempfile::tempdir().unwrap();
        let s = RealSystem::new(dir.path());
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        assert!(s.append_existing(Path::new("/dev/console"), b"x").is_err());
        assert!(!dir.path().join("dev/console").exists());
        std::fs::write(dir.path().join("dev/console"), b"a\n").unwrap();
        s.append_existing(Path::new("/dev/console"), b"b\n").unwrap();
        assert_eq!(std::fs::read(dir.path().join("dev/console")).unwrap(), b"a\nb\n");
        std::fs::write(dir.path().join("target"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("dev/link")).unwrap();
        assert!(s.append_existing(Path::new("/dev/link"), b"x").is_err());
        assert_eq!(std::fs::read(dir.path().join("target")).unwrap(), b"");
    }

    #[test]
    fn kernel_release_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = RealSystem::new(dir.path());
        assert_eq!(s.kernel_release(), None);
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(dir.path().join("proc/sys/kernel/osrelease"), "5.15.0-1019-azure\n").unwrap();
        assert_eq!(s.kernel_release().as_deref(), Some("5.15.0-1019-azure"));
        assert!(RealSystem::new("/").kernel_release().is_some());
    }

    #[test]
    fn image_file_is_not_a_drive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/sr0"), [0u8; 4096]).unwrap();
        let s = RealSystem::new(dir.path());
        assert_eq!(s.cdrom_status(Path::new("/dev/sr0")).unwrap(), CdromStatus::ImageFile);
        assert!(!s.eject(Path::new("/dev/sr0")).unwrap());
        assert_eq!(s.open_read(Path::new("/dev/sr0")).unwrap().size(), 4096);
    }
}
