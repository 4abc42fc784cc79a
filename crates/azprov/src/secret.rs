//! A byte buffer for secrets (passwords, private keys, customData): never printed, zeroed on drop.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // volatile so the compiler keeps the wipe of a buffer that is about to be freed
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn debug_hides_content() {
        let s = Secret::from("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret(<7 bytes redacted>)");
        assert_eq!(s.expose(), b"hunter2");
    }
}
