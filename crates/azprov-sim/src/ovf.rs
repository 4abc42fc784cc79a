//! OVF generation
