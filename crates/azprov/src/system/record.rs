//! A recording test double: a real sandbox root underneath, with every command recorded and, for programs given
//! a scripted answer, not run at all.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{
    BlockInfo, CdromStatus, Command, CommandOutput, FileInfo, Ipv4Address, Ipv4Route, Link, LinkEvent, LinkWatch, Lock,
    NewIpv4Route, NextHop, RealSystem, System, IFF_LOWER_UP, IFF_RUNNING, IFF_UP, IF_OPER_UP, RTN_UNICAST, RTPROT_BOOT,
    RT_TABLE_MAIN,
};
use crate::platform::media::ReadAt;

/// `(data, credited bits)` given to `add_entropy`.
pub type EntropyCall = (Vec<u8>, u32);

/// One step of a scripted link-event stream (`script_link_events`), read by the watches `link_watch` opens.
#[derive(Debug, Clone)]
pub enum LinkStep {
    /// Deliver this event. `New` and `Del` also update the scripted link table, as the kernel's state changes.
    Event(LinkEvent),
    /// Replace the link table without any event (as if the notifications were lost); takes no poll.
    Silently(Vec<Link>),
    /// One poll that times out, at once (a quiet poll interval without the wait).
    Quiet,
}

/// A watch over the scripted link events. When the script is exhausted, polls time out after a short real sleep.
struct ScriptedWatch<'a> {
    sys: &'a RecordingSystem,
}

impl LinkWatch for ScriptedWatch<'_> {
    fn next_event(&mut self, timeout: Duration) -> io::Result<Option<LinkEvent>> {
        loop {
            let step = self.sys.link_script.lock().map_err(|_| io::Error::other("poisoned"))?.pop_front();
            match step {
                None => {
                    std::thread::sleep(timeout.min(Duration::from_millis(20)));
                    return Ok(None);
                }
                Some(LinkStep::Quiet) => return Ok(None),
                Some(LinkStep::Silently(table)) => self.sys.set_links(table),
                Some(LinkStep::Event(e)) => {
                    let mut guard = self.sys.links.lock().map_err(|_| io::Error::other("poisoned"))?;
                    let table = guard.get_or_insert_with(Vec::new);
                    match &e {
                        LinkEvent::New(l) => match table.iter_mut().find(|x| x.index == l.index) {
                            Some(x) => *x = l.clone(),
                            None => table.push(l.clone()),
                        },
                        LinkEvent::Del(l) => table.retain(|x| x.index != l.index),
                        LinkEvent::Overrun => {}
                    }
                    return Ok(Some(e));
                }
            }
        }
    }
}

/// A file a scripted program writes: its path under the root and its contents.
type FileEffect = (PathBuf, Vec<u8>);

pub struct RecordingSystem {
    /// Behave as the running system (`is_live`) while still keeping every path in the sandbox.
    live: std::sync::atomic::AtomicBool,
    inner: RealSystem,
    commands: Mutex<Vec<Command>>,
    scripted: Mutex<HashMap<String, CommandOutput>>,
    /// Files a scripted program leaves behind (sandbox paths and contents) each time it exits 0.
    effects: Mutex<HashMap<String, Vec<FileEffect>>>,
    missing: Mutex<Vec<String>>,
    /// A scripted kernel routing table (`None`: ask the inner system, which refuses under a root).
    routes: Mutex<Option<Vec<Ipv4Route>>>,
    added_routes: Mutex<Vec<NewIpv4Route>>,
    /// `None` until `accept_entropy`; then `(data, credited bits)` per `add_entropy` call.
    entropy: Mutex<Option<Vec<EntropyCall>>>,
    /// Scripted Identify Namespace answers by target path (`Err` kind stored as the error to give).
    nvme: Mutex<HashMap<PathBuf, Result<Vec<u8>, io::ErrorKind>>>,
    /// A scripted link table (`None`: ask the inner system, which refuses under a root).
    links: Mutex<Option<Vec<Link>>>,
    link_script: Mutex<VecDeque<LinkStep>>,
    links_set_up: Mutex<Vec<u32>>,
    /// Scripted IPv4 addresses (`None`: ask the inner system).
    addresses: Mutex<Option<Vec<Ipv4Address>>>,
}

impl RecordingSystem {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RecordingSystem {
            live: std::sync::atomic::AtomicBool::new(false),
            inner: RealSystem::new(root),
            commands: Mutex::new(Vec::new()),
            scripted: Mutex::new(HashMap::new()),
            effects: Mutex::new(HashMap::new()),
            missing: Mutex::new(Vec::new()),
            routes: Mutex::new(None),
            added_routes: Mutex::new(Vec::new()),
            entropy: Mutex::new(None),
            nvme: Mutex::new(HashMap::new()),
            links: Mutex::new(None),
            link_script: Mutex::new(VecDeque::new()),
            links_set_up: Mutex::new(Vec::new()),
            addresses: Mutex::new(None),
        }
    }
    /// Act like a live kernel for `add_entropy`: accept and record the data (otherwise `Ok(false)`, as under a root).
    pub fn accept_entropy(&self) {
        if let Ok(mut e) = self.entropy.lock() {
            e.get_or_insert_with(Vec::new);
        }
    }
    /// `(data, credited bits)` given to `add_entropy` since `accept_entropy`.
    pub fn entropy_added(&self) -> Vec<EntropyCall> {
        self.entropy.lock().ok().and_then(|e| e.clone()).unwrap_or_default()
    }
    /// Make `is_live()` true (for duties that act only on the running system), paths still map into the sandbox.
    pub fn pretend_live(&self) {
        self.live.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answer `program` with `output` instead of running it.
    pub fn script(&self, program: &str, output: CommandOutput) {
        if let Ok(mut m) = self.scripted.lock() {
            m.insert(program.to_string(), output);
        }
    }
    /// Make a scripted `program` leave `files` (absolute paths under the root, contents) each time it exits 0, as
    /// a daemon writes its pid file.
    pub fn script_effect(&self, program: &str, files: &[(&str, &str)]) {
        if let Ok(mut m) = self.effects.lock() {
            let files = files.iter().map(|(p, c)| (PathBuf::from(p), c.as_bytes().to_vec())).collect();
            m.insert(program.to_string(), files);
        }
    }
    /// Pretend `program` is not installed.
    pub fn uninstall(&self, program: &str) {
        if let Ok(mut m) = self.missing.lock() {
            m.push(program.to_string());
        }
    }
    /// Stand in for the kernel's routing tables: `ipv4_routes` answers this table and `add_ipv4_route` adds to it
    /// (refusing a duplicate like the kernel) instead of touching any kernel.
    pub fn set_routes(&self, routes: Vec<Ipv4Route>) {
        if let Ok(mut r) = self.routes.lock() {
            *r = Some(routes);
        }
    }
    /// Routes added through `add_ipv4_route` so far.
    pub fn added_routes(&self) -> Vec<NewIpv4Route> {
        self.added_routes.lock().map(|a| a.clone()).unwrap_or_default()
    }
    /// Answer `nvme_identify_namespace(dev)` with `answer` (a 4096-byte buffer, or an error kind). Devices not
    /// scripted answer `Unsupported`, as under a root.
    pub fn script_nvme_identify(&self, dev: &str, answer: Result<Vec<u8>, io::ErrorKind>) {
        if let Ok(mut m) = self.nvme.lock() {
            m.insert(PathBuf::from(dev), answer);
        }
    }
    /// Stand in for the kernel's links: `links` answers this table, `link_watch` reads the scripted events
    /// (`script_link_events`) and `set_link_up` changes the table, instead of touching any kernel.
    pub fn set_links(&self, links: Vec<Link>) {
        if let Ok(mut l) = self.links.lock() {
            *l = Some(links);
        }
    }
    /// The current scripted link table.
    pub fn scripted_links(&self) -> Vec<Link> {
        self.links.lock().ok().and_then(|l| l.clone()).unwrap_or_default()
    }
    /// Append steps to the link-event script (implies a scripted link table, empty unless set).
    pub fn script_link_events(&self, steps: Vec<LinkStep>) {
        if let Ok(mut l) = self.links.lock() {
            l.get_or_insert_with(Vec::new);
        }
        if let Ok(mut s) = self.link_script.lock() {
            s.extend(steps);
        }
    }
    /// Indices given to `set_link_up` so far (scripted table only).
    pub fn links_set_up(&self) -> Vec<u32> {
        self.links_set_up.lock().map(|l| l.clone()).unwrap_or_default()
    }
    /// Stand in for the kernel's IPv4 addresses.
    pub fn set_ipv4_addresses(&self, addresses: Vec<Ipv4Address>) {
        if let Ok(mut a) = self.addresses.lock() {
            *a = Some(addresses);
        }
    }
    /// Commands run so far.
    pub fn commands(&self) -> Vec<Command> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }
    fn is_missing(&self, program: &str) -> bool {
        self.missing.lock().map(|m| m.iter().any(|p| p == program)).unwrap_or(false)
    }
}

impl System for RecordingSystem {
    fn root(&self) -> &Path {
        self.inner.root()
    }
    fn is_live(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::SeqCst) || self.inner.is_live()
    }
    fn host_path(&self, path: &Path) -> PathBuf {
        self.inner.host_path(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }
    fn stat(&self, path: &Path) -> io::Result<FileInfo> {
        self.inner.stat(path)
    }
    fn write_file(&self, path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        self.inner.write_file(path, data, mode, owner)
    }
    fn write_file_unsynced(&self, path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        self.inner.write_file_unsynced(path, data, mode, owner)
    }
    fn create_dir_all(&self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        self.inner.create_dir_all(path, mode, owner)
    }
    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.inner.set_owner(path, uid, gid)
    }
    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.inner.set_mode(path, mode)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.inner.read_link(path)
    }
    fn ipv4_routes(&self) -> io::Result<Vec<Ipv4Route>> {
        let scripted = self.routes.lock().map_err(|_| io::Error::other("poisoned"))?.clone();
        match scripted {
            Some(table) => Ok(table),
            None => self.inner.ipv4_routes(),
        }
    }
    fn add_ipv4_route(&self, route: &NewIpv4Route) -> io::Result<()> {
        let mut guard = self.routes.lock().map_err(|_| io::Error::other("poisoned"))?;
        let Some(table) = guard.as_mut() else { return self.inner.add_ipv4_route(route) };
        let dup = table.iter().any(|r| {
            r.table == RT_TABLE_MAIN
                && r.destination == route.destination
                && r.prefix_len == route.prefix_len
                && r.metric == 0
        });
        if dup {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        table.push(Ipv4Route {
            destination: route.destination,
            prefix_len: route.prefix_len,
            kind: RTN_UNICAST,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_BOOT,
            metric: 0,
            hops: vec![NextHop { oif: route.oif, gateway: Some(route.gateway) }],
        });
        if let Ok(mut a) = self.added_routes.lock() {
            a.push(*route);
        }
        Ok(())
    }
    fn links(&self) -> io::Result<Vec<Link>> {
        let scripted = self.links.lock().map_err(|_| io::Error::other("poisoned"))?.clone();
        match scripted {
            Some(table) => Ok(table),
            None => self.inner.links(),
        }
    }
    fn link_watch(&self) -> io::Result<Box<dyn LinkWatch + '_>> {
        if self.links.lock().map_err(|_| io::Error::other("poisoned"))?.is_none() {
            return self.inner.link_watch();
        }
        Ok(Box::new(ScriptedWatch { sys: self }))
    }
    /// Scripted: the link becomes up with carrier (as a NIC whose cable is plugged in).
    fn set_link_up(&self, index: u32) -> io::Result<()> {
        let mut guard = self.links.lock().map_err(|_| io::Error::other("poisoned"))?;
        let Some(table) = guard.as_mut() else { return self.inner.set_link_up(index) };
        let Some(link) = table.iter_mut().find(|l| l.index == index) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such link"));
        };
        link.flags |= IFF_UP | IFF_RUNNING | IFF_LOWER_UP;
        link.oper_state = IF_OPER_UP;
        if let Ok(mut s) = self.links_set_up.lock() {
            s.push(index);
        }
        Ok(())
    }
    fn ipv4_addresses(&self) -> io::Result<Vec<Ipv4Address>> {
        let scripted = self.addresses.lock().map_err(|_| io::Error::other("poisoned"))?.clone();
        match scripted {
            Some(a) => Ok(a),
            None => self.inner.ipv4_addresses(),
        }
    }
    fn run(&self, cmd: &Command) -> io::Result<CommandOutput> {
        if let Ok(mut c) = self.commands.lock() {
            c.push(cmd.clone());
        }
        if self.is_missing(&cmd.program) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let scripted = self.scripted.lock().ok().and_then(|m| m.get(&cmd.program).cloned());
        match scripted {
            Some(out) => {
                let effects = self.effects.lock().ok().and_then(|m| m.get(&cmd.program).cloned());
                for (path, data) in effects.into_iter().flatten().filter(|_| out.success()) {
                    if let Some(dir) = path.parent() {
                        self.inner.create_dir_all(dir, 0o755, None)?;
                    }
                    self.inner.write_file(&path, &data, 0o644, None)?;
                }
                Ok(out)
            }
            None => self.inner.run(cmd),
        }
    }
    fn has_program(&self, program: &str) -> bool {
        if self.is_missing(program) {
            return false;
        }
        self.scripted.lock().map(|m| m.contains_key(program)).unwrap_or(false) || self.inner.has_program(program)
    }
    fn set_kernel_hostname(&self, _name: &str) -> io::Result<bool> {
        Ok(false)
    }
    fn add_entropy(&self, data: &[u8], bits: u32) -> io::Result<bool> {
        let mut e = self.entropy.lock().map_err(|_| io::Error::other("poisoned"))?;
        match e.as_mut() {
            Some(v) => {
                v.push((data.to_vec(), bits));
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn append_existing(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.append_existing(path, data)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        self.inner.open_read(path)
    }
    fn open_host_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        self.inner.open_host_read(path)
    }
    fn cdrom_status(&self, path: &Path) -> io::Result<CdromStatus> {
        self.inner.cdrom_status(path)
    }
    fn eject(&self, path: &Path) -> io::Result<bool> {
        self.inner.eject(path)
    }
    fn kvp_append(&self, path: &Path, records: &[u8]) -> io::Result<()> {
        self.inner.kvp_append(path, records)
    }
    fn kvp_truncate_if_older(&self, path: &Path, boot_time_s: i64) -> io::Result<bool> {
        self.inner.kvp_truncate_if_older(path, boot_time_s)
    }
    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Lock>> {
        self.inner.lock_exclusive(path)
    }
    fn block_info(&self, dev: &Path) -> io::Result<BlockInfo> {
        self.inner.block_info(dev)
    }
    fn nvme_identify_namespace(&self, dev: &Path) -> io::Result<Vec<u8>> {
        let answer = self.nvme.lock().map_err(|_| io::Error::other("poisoned"))?.get(dev).cloned();
        match answer {
            Some(Ok(buf)) => Ok(buf),
            Some(Err(kind)) => Err(io::Error::from(kind)),
            None => Err(io::Error::new(io::ErrorKind::Unsupported, "no scripted NVMe answer")),
        }
    }
    fn block_write_at(&self, dev: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.block_write_at(dev, offset, data)
    }
    fn flush_buffers(&self, dev: &Path) -> io::Result<()> {
        self.inner.flush_buffers(dev)
    }
    fn lock_block_device(&self, dev: &Path) -> io::Result<Box<dyn Lock>> {
        self.inner.lock_block_device(dev)
    }
    fn reread_partitions(&self, dev: &Path) -> io::Result<()> {
        self.inner.reread_partitions(dev)
    }
    fn add_partition(&self, dev: &Path, number: u32, start: u64, len: u64) -> io::Result<()> {
        self.inner.add_partition(dev, number, start, len)
    }
    fn delete_partition(&self, dev: &Path, number: u32) -> io::Result<()> {
        self.inner.delete_partition(dev, number)
    }
    fn mount(&self, source: &Path, target: &Path, fstype: &str, options: &str) -> io::Result<()> {
        self.inner.mount(source, target, fstype, options)
    }
    fn mountinfo(&self) -> io::Result<String> {
        self.inner.mountinfo()
    }
    fn swaps(&self) -> io::Result<String> {
        self.inner.swaps()
    }
    fn allocate_file(&self, path: &Path, len: u64, mode: u32) -> io::Result<()> {
        self.inner.allocate_file(path, len, mode)
    }
    fn write_attribute(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.write_attribute(path, data)
    }
}
