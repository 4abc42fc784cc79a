//! Helpers for unit tests: locating `../shared/fixtures` (read in place, never copied).

use std::path::PathBuf;

/// The shared fixtures directory (`<repo>/../shared/fixtures`). `None` (with a printed reason) when it is absent,
/// unless `AZPROV_REQUIRE_SHARED=1`, in which case a missing directory fails the test.
pub fn shared_fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("AZPROV_REQUIRE_SHARED=1 but {} does not exist", dir.display());
    }
    eprintln!("skipping: {} is absent (set AZPROV_REQUIRE_SHARED=1 to make this fatal)", dir.display());
    None
}

/// Read one fixture file, e.g. `fixture("ovf/walinuxagent-ovf-env.xml")`; `None` when the fixtures are absent.
pub fn fixture(rel: &str) -> Option<Vec<u8>> {
    let dir = shared_fixtures()?;
    Some(std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}")))
}

/// Everything logged (any level, no colours) while `f` runs on this thread, to check what reaches the journal.
pub fn capture_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

/// A recording system over a fresh sandbox root holding `files` (target path, text).
pub fn sandbox(files: &[(&str, &str)]) -> (tempfile::TempDir, crate::system::record::RecordingSystem) {
    let d = tempfile::tempdir().expect("tempdir");
    for (p, text) in files {
        let host = d.path().join(p.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().expect("parent")).expect("mkdir");
        std::fs::write(host, text).expect("write");
    }
    let sys = crate::system::record::RecordingSystem::new(d.path());
    (d, sys)
}
