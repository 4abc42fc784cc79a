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

/// Helpers shared by the UDF and ISO9660 tests: external mastering tools, image generation, fuzz-style loops.
#[cfg(test)]
pub(crate) mod testsupport {
    use super::{MediaError, ReadAt, RootFile};
    use std::path::Path;
    use std::process::Command;

    /// Whether `tool` can be run. When it cannot, print why and return false (the test then skips), unless
    /// `AZPROV_REQUIRE_SHARED=1`, in which case the test fails.
    pub fn have_tool(tool: &str) -> bool {
        let ok = Command::new(tool).arg("--help").output().is_ok();
        if !ok {
            if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
                panic!("AZPROV_REQUIRE_SHARED=1 but `{tool}` is not installed");
            }
            eprintln!("skipping: `{tool}` is not installed (set AZPROV_REQUIRE_SHARED=1 to make this fatal)");
        }
        ok
    }

    /// Run a command, failing the test (with its stderr) when it does not succeed.
    pub fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Master `dir` with `genisoimage <args> -o <out> <dir>` and return the image bytes.
    pub fn genisoimage(args: &[&str], dir: &Path, out: &Path) -> Vec<u8> {
        run(Command::new("genisoimage").arg("-quiet").args(args).arg("-o").arg(out).arg(dir));
        std::fs::read(out).expect("read image")
    }

    /// A directory with the given files.
    pub fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).expect("write file");
        }
        dir
    }

    /// A borrowed byte slice as a sized `ReadAt`.
    pub struct Bytes<'a>(pub &'a [u8]);
    impl ReadAt for Bytes<'_> {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.0.read_at(offset, buf)
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
    }

    /// Deterministic xorshift64 generator.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A result a damaged image may legitimately produce (anything but an I/O error; panics fail the test).
    pub fn acceptable(r: &Result<RootFile, MediaError>) -> bool {
        matches!(
            r,
            Ok(_)
                | Err(MediaError::NotRecognized
                    | MediaError::Corrupt { .. }
                    | MediaError::TooLarge
                    | MediaError::NoOvf)
        )
    }

    /// Call `read` on truncations of `img` at many lengths and on images with single-byte flips in the sectors
    /// listed in `hot` (plus random flips elsewhere); every outcome must be acceptable.
    pub fn torture(img: &[u8], hot: &[usize], read: impl Fn(&[u8]) -> Result<RootFile, MediaError>) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut lens: Vec<usize> = (0..img.len()).step_by(2048).collect();
        lens.extend((0..400).map(|_| rng.below(img.len())));
        lens.extend([0, 1, 2047, 2049, img.len().saturating_sub(1)]);
        for len in lens {
            let r = read(&img[..len.min(img.len())]);
            assert!(acceptable(&r), "truncated to {len}: {r:?}");
        }
        let mut copy = img.to_vec();
        let flip = |copy: &mut Vec<u8>, off: usize, mask: u8| {
            if off >= copy.len() {
                return;
            }
            copy[off] ^= mask;
            let r = read(copy);
            copy[off] ^= mask;
            assert!(acceptable(&r), "byte {off} ^ {mask:#x}: {r:?}");
        };
        for &sector in hot {
            for i in 0..2048 {
                let mask = [0x01u8, 0x80, 0xFF][i % 3];
                flip(&mut copy, sector * 2048 + i, mask);
            }
        }
        for _ in 0..2000 {
            let off = rng.below(copy.len());
            let mask = (rng.next() as u8) | 1;
            flip(&mut copy, off, mask);
        }
    }
}
