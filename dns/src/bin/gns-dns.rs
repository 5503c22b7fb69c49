//! gns-dns
fn main() {}
