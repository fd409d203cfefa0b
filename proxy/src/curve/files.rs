//! The key files: the proxy's secret key and the authorized keys, read at
//! start, and the authorized keys read again whenever the file changes, so
//! keys rotate without a restart.
//!
//! The file is polled (its content compared every period) rather than
//! watched with inotify: a Kubernetes Secret or ConfigMap volume replaces
//! files by swapping a symlink, which path-based watches miss, and the file
//! is small. A file that does not parse keeps the previous set in force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{AuthorizedKeys, AuthorizedKeysError, KeyError, SecretKey, SharedKeys};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// How often the authorized-keys file is compared with what is in force.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(1);

/// Errors reading a key file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The secret key is malformed.
    #[error("secret key file {path}: {source}")]
    SecretKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// The authorized-keys file is malformed.
    #[error("authorized keys file {path}: {source}")]
    AuthorizedKeys {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: AuthorizedKeysError,
    },
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the proxy's Z85 secret key; warns when others than its owner's
/// group may read it.
pub fn load_secret_key(path: &Path) -> Result<SecretKey, FileError> {
    use std::os::unix::fs::PermissionsExt;
    let text = read(path)?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(path = %path.display(), "the CURVE secret key file is world-readable");
        }
    }
    SecretKey::from_z85(&text).map_err(|source| FileError::SecretKey {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses the authorized-keys file; returns the text too, for
/// [`watch_authorized_keys`].
pub fn load_authorized_keys(path: &Path) -> Result<(AuthorizedKeys, String), FileError> {
    let text = read(path)?;
    Ok((parse_authorized(path, &text)?, text))
}

fn parse_authorized(path: &Path, text: &str) -> Result<AuthorizedKeys, FileError> {
    AuthorizedKeys::parse(text).map_err(|source| FileError::AuthorizedKeys {
        path: path.to_path_buf(),
        source,
    })
}

/// What one look at the file found.
#[derive(Debug)]
enum Change {
    /// Same content as last time.
    None,
    /// New content that parses.
    Replaced(AuthorizedKeys),
    /// New content (or no file) that cannot be used: the set in force stays.
    Failed(FileError),
}

/// The content last seen, so an unchanged file is neither parsed again nor
/// reported again (a broken file is logged once, not every period).
#[derive(Debug)]
struct Seen {
    path: PathBuf,
    content: Option<String>,
}

impl Seen {
    fn look(&mut self, read: impl Fn(&Path) -> Result<String, FileError>) -> Change {
        let text = read(&self.path);
        let content = text.as_ref().ok().cloned();
        if content.is_some() && content == self.content {
            return Change::None;
        }
        let failed_again = content.is_none() && self.content.is_none();
        self.content = content;
        match text {
            Ok(text) => match parse_authorized(&self.path, &text) {
                Ok(keys) => Change::Replaced(keys),
                Err(error) => Change::Failed(error),
            },
            // An unreadable file (being replaced, say) is reported once.
            Err(_) if failed_again => Change::None,
            Err(error) => Change::Failed(error),
        }
    }
}

/// Re-reads `path` every [`RELOAD_PERIOD`] until the proxy stops, and puts
/// each new valid content in force in `keys`. `loaded` is the content in
/// force at start. Counts every reload in
/// `zmq_proxy_curve_reloads_total{result}`.
pub async fn watch_authorized_keys(
    path: PathBuf,
    loaded: String,
    keys: SharedKeys,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    let mut seen = Seen {
        path,
        content: Some(loaded),
    };
    let mut tick = tokio::time::interval(RELOAD_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.stopping() => return,
        }
        match seen.look(read) {
            Change::None => {}
            Change::Replaced(new) => {
                tracing::info!(path = %seen.path.display(), keys = new.len(), "authorized CURVE keys reloaded");
                keys.replace(new);
                metrics.count_curve_reload("ok");
            }
            Change::Failed(error) => {
                tracing::error!(%error, "authorized CURVE keys not reloaded; the previous keys stay in force");
                metrics.count_curve_reload("error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

    #[test]
    fn a_change_is_parsed_once_and_a_broken_file_keeps_the_old_set() {
        let file = std::cell::RefCell::new(Ok::<_, ()>(format!("{A}\n")));
        let reader = |_: &Path| {
            file.borrow().clone().map_err(|()| FileError::Read {
                path: PathBuf::from("k"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        };
        let mut seen = Seen {
            path: PathBuf::from("k"),
            content: Some(format!("{A}\n")),
        };
        assert!(matches!(seen.look(reader), Change::None), "unchanged");
        *file.borrow_mut() = Ok(format!("{A}\nbroken\n"));
        assert!(matches!(
            seen.look(reader),
            Change::Failed(FileError::AuthorizedKeys { .. })
        ));
        assert!(matches!(seen.look(reader), Change::None), "reported once");
        *file.borrow_mut() = Ok("# nobody\n".into());
        assert!(matches!(seen.look(reader), Change::Replaced(k) if k.is_empty()));
        *file.borrow_mut() = Err(());
        assert!(matches!(
            seen.look(reader),
            Change::Failed(FileError::Read { .. })
        ));
        assert!(
            matches!(seen.look(reader), Change::None),
            "still missing: reported once"
        );
        *file.borrow_mut() = Ok("# nobody\n".into());
        assert!(
            matches!(seen.look(reader), Change::Replaced(_)),
            "back after a gap: put in force again"
        );
    }

    #[test]
    fn the_secret_key_file_is_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("curve-files-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\n").unwrap();
        let secret = load_secret_key(&path).unwrap();
        assert_eq!(secret.public().to_z85(), A);
        std::fs::write(&path, "short\n").unwrap();
        let err = load_secret_key(&path).unwrap_err();
        assert!(err.to_string().contains("secret key file"), "{err}");
        assert!(load_secret_key(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
