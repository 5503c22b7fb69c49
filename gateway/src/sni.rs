//! The server name (SNI) of a TLS ClientHello, read from the first bytes a
//! client sends, so TLS passthrough can route by name without terminating TLS.

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Not a TLS handshake.
    NotTls,
    /// A TLS handshake, but more bytes are needed.
    Incomplete,
    /// A ClientHello, with its server name if it has one.
    Hello(Option<String>),
}

/// A big-endian number of `n` bytes at `at`, if present.
fn number(buf: &[u8], at: usize, n: usize) -> Option<usize> {
    let bytes = buf.get(at..at.checked_add(n)?)?;
    Some(
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
    )
}

/// Reads the ClientHello at the start of `buf` (its first record only).
pub fn peek(buf: &[u8]) -> Peek {
    match buf {
        [] => return Peek::Incomplete,
        [0x16, ..] => {}
        _ => return Peek::NotTls,
    }
    if buf.len() < 5 {
        return Peek::Incomplete;
    }
    if buf[1] != 0x03 {
        return Peek::NotTls;
    }
    let Some(record_len) = number(buf, 3, 2) else {
        return Peek::Incomplete;
    };
    let Some(record) = buf.get(5..5 + record_len) else {
        return Peek::Incomplete;
    };
    if record.first() != Some(&0x01) {
        return Peek::NotTls;
    }
    Peek::Hello(client_hello_sni(record))
}

/// The host name in the server_name extension of a handshake message.
fn client_hello_sni(hs: &[u8]) -> Option<String> {
    // type (1), length (3), version (2), random (32)
    let mut at = 1 + 3 + 2 + 32;
    at += 1 + number(hs, at, 1)?; // session id
    at += 2 + number(hs, at, 2)?; // cipher suites
    at += 1 + number(hs, at, 1)?; // compression methods
    let extensions_end = at + 2 + number(hs, at, 2)?;
    at += 2;
    while at + 4 <= extensions_end {
        let kind = number(hs, at, 2)?;
        let len = number(hs, at + 2, 2)?;
        let data = hs.get(at + 4..at + 4 + len)?;
        if kind == 0 {
            // server_name_list: length (2), then entries: type (1), length (2), name
            let mut i = 2;
            while i + 3 <= data.len() {
                let name_len = number(data, i + 1, 2)?;
                let name = data.get(i + 3..i + 3 + name_len)?;
                if data[i] == 0 {
                    return std::str::from_utf8(name).ok().map(str::to_owned);
                }
                i += 3 + name_len;
            }
            return None;
        }
        at += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), server).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let bytes = hello("cache.production.app.acme.com");
        assert_eq!(
            peek(&bytes),
            Peek::Hello(Some("cache.production.app.acme.com".into()))
        );
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert_eq!(peek(&bytes[..cut]), Peek::Incomplete, "cut at {cut}");
        }
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let mut buf = vec![0x16, 0x03, 0x01, 0x00, len as u8, 0x01];
            buf.extend(std::iter::repeat_n(0xff, len));
            let _ = peek(&buf);
        }
    }
}
