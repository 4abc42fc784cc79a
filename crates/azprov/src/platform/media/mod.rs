//! Provisioning media: read `ovf-env.xml` from a UDF or ISO9660 image in user space, without mounting.
//! Device discovery (sysfs) and opening devices go through `crate::system`.

pub mod iso9660;
pub mod udf;

use std::io;

/// Largest `ovf-env.xml` we accept.
pub const MAX_OVF_BYTES: usize = 1 << 20;

/// Random-access reads from an image file or block device.
pub trait ReadAt {
    /// Fill `buf` from byte `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Total size in bytes.
    fn size(&self) -> u64;
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start.checked_add(buf.len()).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let src = self.get(start..end).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Neither a UDF nor an ISO9660 file system.
    #[error("no UDF or ISO9660 file system found")]
    NotRecognized,
    /// A file system was recognized but its structures are invalid.
    #[error("corrupt {fs} file system: {msg}")]
    Corrupt { fs: &'static str, msg: String },
    /// Valid file system without `ovf-env.xml`.
    #[error("no ovf-env.xml on the media")]
    NoOvf,
    #[error("ovf-env.xml is larger than {MAX_OVF_BYTES} bytes")]
    TooLarge,
    #[error("I/O error reading the media: {0}")]
    Io(#[from] io::Error),
}

/// Which file system the OVF was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Udf,
    Iso9660,
}

/// `ovf-env.xml` as read from the media.
#[derive(Debug)]
pub struct MediaOvf {
    pub fs: FsKind,
    /// Volume label (UDF logical volume identifier or ISO9660 volume id), when readable.
    pub label: Option<String>,
    pub bytes: Vec<u8>,
}

/// Read `ovf-env.xml` (case-insensitive) from the root directory of a UDF image, else an ISO9660 image.
pub fn read_ovf(src: &dyn ReadAt) -> Result<MediaOvf, MediaError> {
    match udf::read_root_file(src, "ovf-env.xml", MAX_OVF_BYTES) {
        Ok(found) => {
            return match found.data {
                Some(bytes) => Ok(MediaOvf { fs: FsKind::Udf, label: found.label, bytes }),
                None => Err(MediaError::NoOvf),
            }
        }
        Err(MediaError::NotRecognized) => {}
        Err(e) => return Err(e),
    }
    let found = iso9660::read_root_file(src, "ovf-env.xml", MAX_OVF_BYTES)?;
    match found.data {
        Some(bytes) => Ok(MediaOvf { fs: FsKind::Iso9660, label: found.label, bytes }),
        None => Err(MediaError::NoOvf),
    }
}

/// Result of looking up one file in a file system's root directory.
#[derive(Debug, Default)]
pub struct RootFile {
    pub label: Option<String>,
    pub data: Option<Vec<u8>>,
}
