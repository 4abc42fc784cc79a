//! Finding the provisioning DVD: CD-ROM drives by their sysfs/procfs properties (never a name pattern), media
//! presence by `CDROM_DRIVE_STATUS`, bounded wait for a late disc only while a drive without media exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::media::{self, MediaError, MediaOvf};
use crate::system::{CdromStatus, System};
use crate::timeutil::Clock;

/// CD-ROM block devices (`/dev/<name>`): SCSI type 5 in sysfs, or a drive listed in `/proc/sys/dev/cdrom/info`.
pub fn find_drives(sys: &dyn System) -> Vec<PathBuf> {
    let mut names: Vec<String> = Vec::new();
    for dev in sys.read_dir(Path::new("/sys/class/block")).unwrap_or_default() {
        let ty = sys.read_to_string(&Path::new("/sys/class/block").join(&dev).join("device/type")).unwrap_or_default();
        if ty.trim() == "5" {
            names.push(dev);
        }
    }
    if let Ok(info) = sys.read_to_string(Path::new("/proc/sys/dev/cdrom/info")) {
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("drive name:") {
                for n in rest.split_whitespace() {
                    if !names.iter().any(|x| x == n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
    }
    names.sort();
    names.into_iter().map(|n| PathBuf::from("/dev").join(n)).collect()
}

/// What the search found.
#[derive(Debug)]
pub enum Found {
    /// `ovf-env.xml` read from this drive.
    Ovf { device: PathBuf, media: MediaOvf },
    /// No CD-ROM drive at all (no wait).
    NoDrive,
    /// Drives exist, none had a readable provisioning disc within the wait.
    NoMedia { drives: Vec<PathBuf>, notes: Vec<String> },
    /// A disc was there but its file system or OVF is broken: not the same as absent.
    Corrupt { device: PathBuf, error: MediaError },
}

/// Search every drive; wait up to `wait` only while some drive reports no disc / not ready.
pub fn find_provisioning_media(sys: &dyn System, wait: Duration, clock: &dyn Clock) -> Found {
    let drives = find_drives(sys);
    if drives.is_empty() {
        return Found::NoDrive;
    }
    let start = clock.now();
    loop {
        let mut notes = Vec::new();
        let mut waiting = false;
        for d in &drives {
            match sys.cdrom_status(d) {
                Ok(CdromStatus::DiscOk) | Ok(CdromStatus::ImageFile) | Ok(CdromStatus::Unknown(_)) => {}
                Ok(CdromStatus::NoDisc) | Ok(CdromStatus::NotReady) | Ok(CdromStatus::TrayOpen) => {
                    waiting = true;
                    notes.push(format!("{}: no disc", d.display()));
                    continue;
                }
                Err(e) => {
                    notes.push(format!("{}: {e}", d.display()));
                    continue;
                }
            }
            let reader = match sys.open_read(d) {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("{}: {e}", d.display()));
                    continue;
                }
            };
            match media::read_ovf(reader.as_ref()) {
                Ok(m) => return Found::Ovf { device: d.clone(), media: m },
                // a disc that is not a provisioning disc (e.g. an install ISO) is skipped, not an error
                Err(MediaError::NotRecognized) | Err(MediaError::NoOvf) => {
                    notes.push(format!("{}: not a provisioning disc", d.display()))
                }
                Err(MediaError::Io(e)) => notes.push(format!("{}: {e}", d.display())),
                Err(error) => return Found::Corrupt { device: d.clone(), error },
            }
        }
        if !waiting || clock.now().duration_since(start) >= wait {
            return Found::NoMedia { drives, notes };
        }
        clock.sleep(Duration::from_millis(200));
    }
}
