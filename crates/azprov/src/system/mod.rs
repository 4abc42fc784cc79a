//! The system boundary: the only code that runs commands, touches files or makes syscalls.
//!
//! Every path given to a `System` is a path *on the target OS* (`/etc/passwd`); the implementation maps it under
//! its root (`--root DIR`). Commands are argv vectors with optional secret stdin, never shell strings.

mod netlink;
pub mod real;
pub mod record;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::platform::media::ReadAt;
use crate::secret::Secret;

pub use real::RealSystem;

/// One external command.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    /// Fed to the child's stdin (passwords go here, never into `args`).
    pub stdin: Option<Secret>,
    pub timeout: Duration,
}

impl Command {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Command {
            program: program.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            timeout: Duration::from_secs(60),
        }
    }
    pub fn stdin(mut self, data: Secret) -> Self {
        self.stdin = Some(data);
        self
    }
    /// `program arg …` for logs (stdin is never shown).
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(|s| s.as_str())).collect::<Vec<_>>().join(" ")
    }
}

#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal or the timeout.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// `lstat` facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only.
    pub mode: u32,
    pub is_dir: bool,
    pub is_symlink: bool,
    pub is_file: bool,
    pub len: u64,
    pub mtime_s: i64,
}

/// `CDROM_DRIVE_STATUS` answers (platform.md §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdromStatus {
    NoDisc,
    TrayOpen,
    NotReady,
    DiscOk,
    /// Not a drive (a non-empty image file standing in for one in a sandbox): readable as is. An empty file
    /// stands for a drive without a disc (`NoDisc`).
    ImageFile,
    Unknown(i32),
}

/// `RTN_UNICAST`: an ordinary gateway or direct route.
pub const RTN_UNICAST: u8 = 1;
/// `RT_TABLE_MAIN`.
pub const RT_TABLE_MAIN: u32 = 254;
/// `RTPROT_BOOT`: the protocol of the routes azprov adds.
pub const RTPROT_BOOT: u8 = 3;

/// One next hop of a route: the output interface and the gateway (none for a directly connected route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
}

/// An IPv4 route from the kernel's routing tables (an `RTM_GETROUTE` dump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Route {
    /// `0.0.0.0` with `prefix_len` 0 for a default route.
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// `RTN_*`: [`RTN_UNICAST`], or blackhole (6), unreachable (7), prohibit (8), throw (9), local (2)…
    pub kind: u8,
    pub table: u32,
    /// `RTPROT_*`: kernel (2), boot (3), static (4), dhcp (16)…
    pub protocol: u8,
    /// `RTA_PRIORITY` (the metric); 0 when absent.
    pub metric: u32,
    /// One entry for an ordinary route, several for a multipath route, none for blackhole/unreachable routes.
    pub hops: Vec<NextHop>,
}

/// A route to add: `destination/prefix_len via gateway dev oif`, main table, protocol `boot`, scope universe,
/// no metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewIpv4Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub oif: u32,
}

/// `IFF_UP`: administratively up.
pub const IFF_UP: u32 = 0x1;
/// `IFF_LOOPBACK`.
pub const IFF_LOOPBACK: u32 = 0x8;
/// `IFF_RUNNING`: operationally up (RFC 2863 state up or unknown), set by the kernel.
pub const IFF_RUNNING: u32 = 0x40;
/// `IFF_LOWER_UP`: the driver signals carrier.
pub const IFF_LOWER_UP: u32 = 0x1_0000;
/// `ARPHRD_ETHER`: an Ethernet link.
pub const ARPHRD_ETHER: u16 = 1;
/// `IF_OPER_UP` (RFC 2863 operational state in `IFLA_OPERSTATE`).
pub const IF_OPER_UP: u8 = 6;
/// `IF_OPER_DOWN`.
pub const IF_OPER_DOWN: u8 = 2;
/// `IF_OPER_LOWERLAYERDOWN`: up but without carrier.
pub const IF_OPER_LOWERLAYERDOWN: u8 = 3;

/// A network link as the kernel reports it in `RTM_NEWLINK`/`RTM_DELLINK` (and `RTM_GETLINK` dumps).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// 12 upper-case hex digits, no separators (IMDS's form); empty when the link has no 6-byte address.
    pub mac: String,
    /// `ARPHRD_*`: [`ARPHRD_ETHER`], loopback (772)…
    pub link_type: u16,
    /// `IFF_*` flags, including the kernel's [`IFF_RUNNING`] and [`IFF_LOWER_UP`].
    pub flags: u32,
    /// `IF_OPER_*` (`IFLA_OPERSTATE`); 0 (unknown) when absent.
    pub oper_state: u8,
    /// `IFLA_CARRIER_DOWN_COUNT` (kernel 4.16+): how many times the carrier went away since the link was created.
    pub carrier_down_count: Option<u32>,
    /// `IFLA_MASTER`: the bond/bridge/VRF this link is enslaved to.
    pub master: Option<u32>,
}

impl Link {
    /// Administratively up, operationally up and with carrier.
    pub fn is_up(&self) -> bool {
        let want = IFF_UP | IFF_RUNNING | IFF_LOWER_UP;
        self.flags & want == want && !matches!(self.oper_state, IF_OPER_DOWN | IF_OPER_LOWERLAYERDOWN)
    }
    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }
}

/// One link notification from the kernel (`RTMGRP_LINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: a link appeared or changed (flags, operational state, name…).
    New(Link),
    /// `RTM_DELLINK`: a link went away (detached, deleted or moved to another namespace).
    Del(Link),
    /// The socket's queue overflowed (`ENOBUFS`): events were lost, the current state must be read again.
    Overrun,
}

/// A subscription to link events, opened by [`System::link_watch`]: events that happen after it was opened
/// queue up until read, so open it before whatever may trigger them.
pub trait LinkWatch: Send {
    /// The next event, waiting at most `timeout`; `Ok(None)` when nothing arrived in time.
    fn next_event(&mut self, timeout: Duration) -> io::Result<Option<LinkEvent>>;
}

/// An IPv4 address assigned to a link (`RTM_GETADDR` dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Address {
    pub index: u32,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// A block device as the host kernel sees it (sysfs under the HOST `/sys`, never under the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Kernel name (`sdb`, `nvme0n1`, `loop3`).
    pub name: String,
    /// `major:minor`.
    pub dev: (u32, u32),
    /// Size in bytes.
    pub size: u64,
    /// Logical block (sector) size in bytes.
    pub logical_block: u32,
    /// Partitions the kernel knows (nodes exist under `/dev` when devtmpfs is mounted).
    pub partitions: Vec<PartitionNode>,
}

/// One partition the kernel knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionNode {
    pub number: u32,
    /// Start and length in bytes.
    pub start: u64,
    pub len: u64,
    /// Host path of the node (`/dev/sdb1`).
    pub node: PathBuf,
    pub dev: (u32, u32),
}

/// A held lock; released on drop.
pub trait Lock: Send {}

pub trait System: Send + Sync {
    /// The target root (`/` on a live system).
    fn root(&self) -> &Path;
    /// True when operating on the running system (root is `/`): only then are kernel settings touched.
    fn is_live(&self) -> bool {
        self.root() == Path::new("/")
    }
    /// The host path of a target path.
    fn host_path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        if self.is_live() {
            Path::new("/").join(rel)
        } else {
            self.root().join(rel)
        }
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    /// Entry names of a directory, sorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// `lstat`.
    fn stat(&self, path: &Path) -> io::Result<FileInfo>;
    fn exists(&self, path: &Path) -> bool {
        self.stat(path).is_ok()
    }
    /// Atomically replace `path`: temp file in the same directory created with `mode`, owner set, fsync, rename.
    /// Refuses to replace a symlink.
    fn write_file(&self, path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()>;
    /// `write_file` without the fsync (still atomic towards readers: temp file, rename): only for files whose loss
    /// in a crash is harmless — per-boot copies under `/run` and diagnostic copies rewritten on every run.
    fn write_file_unsynced(&self, path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        self.write_file(path, data, mode, owner)
    }
    /// `mkdir -p`; directories this call creates get `mode` and `owner`.
    fn create_dir_all(&self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()>;
    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Remove a file; a missing file is not an error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// `rename(2)` between two target paths (moves a symlink itself, not what it points to).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `readlink(2)`: a symlink's target as stored (not mapped under the root).
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;

    /// Every IPv4 route of every table (netlink `RTM_GETROUTE` dump). Live only: under a root the kernel's
    /// tables are not the target's, so this is `ErrorKind::Unsupported`.
    fn ipv4_routes(&self) -> io::Result<Vec<Ipv4Route>>;
    /// Add a route over netlink (`RTM_NEWROUTE`, create-exclusive). Live only (`Unsupported` under a root);
    /// `ErrorKind::AlreadyExists` when the kernel already has that route.
    fn add_ipv4_route(&self, route: &NewIpv4Route) -> io::Result<()>;

    /// Every network link (netlink `RTM_GETLINK` dump). Live only (`Unsupported` under a root).
    fn links(&self) -> io::Result<Vec<Link>>;
    /// Subscribe to link events (`RTMGRP_LINK` on `NETLINK_ROUTE`). Live only (`Unsupported` under a root).
    fn link_watch(&self) -> io::Result<Box<dyn LinkWatch + '_>>;
    /// Set a link administratively up (`RTM_SETLINK` with `IFF_UP`). Live only (`Unsupported` under a root).
    fn set_link_up(&self, index: u32) -> io::Result<()>;
    /// Every IPv4 address of every link (netlink `RTM_GETADDR` dump). Live only (`Unsupported` under a root).
    fn ipv4_addresses(&self) -> io::Result<Vec<Ipv4Address>>;

    /// Run a host program. A program that is not installed gives `ErrorKind::NotFound`.
    fn run(&self, cmd: &Command) -> io::Result<CommandOutput>;
    /// Whether a host program is installed (on `PATH`).
    fn has_program(&self, program: &str) -> bool;

    /// `sethostname(2)` on a live system; `Ok(false)` (not touched) under a root.
    fn set_kernel_hostname(&self, name: &str) -> io::Result<bool>;

    /// Feed `data` to the kernel's entropy pool with `RNDADDENTROPY`, crediting `bits`, on a live system only;
    /// `Ok(false)` (not touched) under a root. Needs CAP_SYS_ADMIN.
    fn add_entropy(&self, data: &[u8], bits: u32) -> io::Result<bool>;

    /// The target's kernel release (`6.8.0-1015-azure`): `/proc/sys/kernel/osrelease` under the root (a live
    /// system may also ask `uname`). `None` when unknown (an offline image has no `/proc`).
    fn kernel_release(&self) -> Option<String> {
        let s = self.read_to_string(Path::new("/proc/sys/kernel/osrelease")).ok()?;
        Some(s.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// Append to a file or device that already exists (never created), without following a symlink, without
    /// becoming its controlling terminal and without blocking (a stuck serial console must not stall the agent).
    fn append_existing(&self, path: &Path, data: &[u8]) -> io::Result<()>;

    /// Open a target path (device node or, in a sandbox, an image file) for random-access reads.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    /// Open a host path given on the command line (`--media`).
    fn open_host_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    fn cdrom_status(&self, path: &Path) -> io::Result<CdromStatus>;
    /// Eject a CD-ROM; `Ok(false)` when the path is not a drive (nothing to eject).
    fn eject(&self, path: &Path) -> io::Result<bool>;

    /// Append KVP records under both `flock` and an `fcntl` write lock, then fsync.
    fn kvp_append(&self, path: &Path, records: &[u8]) -> io::Result<()>;
    /// Once per boot: truncate the pool if it was last written before `boot_time_s` (under the same locks).
    fn kvp_truncate_if_older(&self, path: &Path, boot_time_s: i64) -> io::Result<bool>;

    /// Exclusive, non-blocking lock on `path` (created 0600). `WouldBlock` when another process holds it.
    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Lock>>;

    /// Block devices are host objects. The host path of the block device a target path (`/dev/sdb`, a
    /// `/dev/disk/azure/resource` link) leads to, symlinks resolved.
    fn resolve_device(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(self.host_path(path))
    }
    /// Kernel facts about a block device (host path of its node).
    fn block_info(&self, dev: &Path) -> io::Result<BlockInfo>;
    /// NVMe Identify Namespace (admin opcode 0x06, CNS 0) of an NVMe namespace node (TARGET path `/dev/nvme0n1`):
    /// the 4096-byte structure. Live only (`Unsupported` under a root); fails on a node that is not an NVMe
    /// namespace (`ENOTTY`), without CAP_SYS_ADMIN (`EACCES`), or when the device rejects the command.
    fn nvme_identify_namespace(&self, dev: &Path) -> io::Result<Vec<u8>>;
    /// Write `data` at `offset` of a block device opened `O_EXCL` (fails with `EBUSY` while the kernel uses the disk
    /// or one of its partitions: mounted, swap, RAID member), then fsync.
    fn block_write_at(&self, dev: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `BLKFLSBUF`: write back and drop the device's page cache, so the next read sees what was written through
    /// another node of the same disk (a partition has a cache of its own).
    fn flush_buffers(&self, dev: &Path) -> io::Result<()>;
    /// An exclusive BSD lock on the whole-disk device `dev` (host path), held until the lock is dropped: udev neither
    /// probes the disk nor re-reads its partition table (removing and re-adding the partition nodes) while a tool
    /// holds it (systemd's block device locking). Waits a few seconds for udev's own shared lock.
    fn lock_block_device(&self, dev: &Path) -> io::Result<Box<dyn Lock>>;
    /// `BLKRRPART`: ask the kernel to re-read the partition table.
    fn reread_partitions(&self, dev: &Path) -> io::Result<()>;
    /// `BLKPG_ADD_PARTITION` (what `partx -a` does), for kernels that did not create the node themselves.
    fn add_partition(&self, dev: &Path, number: u32, start: u64, len: u64) -> io::Result<()>;
    /// `BLKPG_DEL_PARTITION`.
    fn delete_partition(&self, dev: &Path, number: u32) -> io::Result<()>;
    /// `mount(2)` of a host block device on a TARGET directory.
    fn mount(&self, source: &Path, target: &Path, fstype: &str, options: &str) -> io::Result<()>;
    /// The calling thread's `/proc/thread-self/mountinfo` (host facts: mounts are not under the root).
    fn mountinfo(&self) -> io::Result<String>;
    /// Host `/proc/swaps`.
    fn swaps(&self) -> io::Result<String>;
    /// Create a new file (`O_EXCL`, `mode` from creation) of `len` bytes: `fallocate`, or zeros where the file system
    /// does not support it.
    fn allocate_file(&self, path: &Path, len: u64, mode: u32) -> io::Result<()>;
    /// Overwrite an existing file in place, without creating it (sysfs attributes).
    fn write_attribute(&self, path: &Path, data: &[u8]) -> io::Result<()>;

    /// Seconds since the epoch when this boot started (`btime` in `/proc/stat` of the target).
    fn boot_time(&self) -> Option<i64> {
        let stat = self.read_to_string(Path::new("/proc/stat")).ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
    }

    /// A message to the service manager (`sd_notify`, e.g. `EXTEND_TIMEOUT_USEC=…`): only on the live system and
    /// only when systemd gave us `$NOTIFY_SOCKET` (the unit says `NotifyAccess=main`). `Ok(false)`: not sent.
    fn sd_notify(&self, state: &str) -> io::Result<bool> {
        if !self.is_live() {
            return Ok(false);
        }
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(false);
        };
        notify_socket_send(&path, state)?;
        Ok(true)
    }
}

/// Send one datagram to the service manager's notification socket (a path, or `@name` in the abstract namespace).
fn notify_socket_send(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(Path::new(path))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_path_and_abstract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_socket_send(path.as_os_str(), "EXTEND_TIMEOUT_USEC=5000000").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"EXTEND_TIMEOUT_USEC=5000000");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("azprov-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        notify_socket_send(std::ffi::OsStr::new(&format!("@{name}")), "STATUS=x").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x");
        // nobody listening: an error, never a panic
        assert!(notify_socket_send(dir.path().join("absent").as_os_str(), "X=1").is_err());
    }
}
