//! How every GNS binary writes a file it must not lose or leak (keys,
//! tokens, certificates, the last config, the DNS cache): the new content
//! goes to a temporary file created with its final mode (0600 for a
//! private file, so it is never readable by others, not even for a moment),
//! is flushed to disk, renamed over the old file, and the directory is
//! flushed too, so after a crash or power loss the file is either the old
//! one or the new one, whole.

use std::io::Write;
use std::path::Path;

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The owner only (0600): keys, tokens.
    Private,
    /// Everyone may read (0644): certificates, configs, caches.
    Readable,
}

impl Access {
    #[cfg(unix)]
    fn mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Readable => 0o644,
        }
    }
}

/// Replaces `path` with `contents` atomically and durably (see the crate
/// docs). The temporary file is `path` with a `.tmp` extension.
pub fn write(path: &Path, contents: &[u8], access: Access) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(access.mode());
    }
    let mut file = options.open(&tmp)?;
    // An older temporary file keeps the mode it was created with.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(access.mode()))?;
    }
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// [`write`] with [`Access::Private`].
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write(path, contents, Access::Private)
}

/// Flushes the directory holding `path`, so a rename into it is durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_private_file_is_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_private(&path, b"first").expect("write");
        write_private(&path, b"second").expect("write again");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        assert!(
            !path.with_extension("tmp").exists(),
            "no temporary file left"
        );
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_leftover_temporary_file_does_not_leak_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, b"stale").expect("stale");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
        write_private(&path, b"secret").expect("write");
        assert_eq!(mode(&path), 0o600);
        write(&dir.path().join("config.json"), b"{}", Access::Readable).expect("write");
        assert_eq!(mode(&dir.path().join("config.json")), 0o644);
    }
}
