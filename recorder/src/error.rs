//! The recorder's one error type. Errors come from bad input, the disk or an encoder; a panic
//! is a bug.

use std::io;
use std::path::{Path, PathBuf};

/// Why a recording operation failed. After any error the [`crate::Recording`] is *failed*: later
/// calls return [`RecorderError::Failed`], and its journal stays on disk so that
/// [`crate::recover`] can finalise it once the cause (e.g. a full disk) is gone.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// A file system operation failed (a full disk shows up here as "No space left on device").
    #[error("recorder: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "write FLAC".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A journal whose header cannot be read (not a recorder journal, another version, or
    /// damaged before the first packet). A torn *tail* is not an error: it is ignored.
    #[error("recorder: corrupt journal: {0}")]
    CorruptJournal(String),
    /// An encoder or decoder could not be created or failed (LAME, libopus).
    #[error("recorder: encoder error: {0}")]
    Encode(String),
    /// The configuration or an argument is invalid (e.g. an id that is not a safe file name).
    #[error("recorder: invalid input: {0}")]
    InvalidInput(String),
    /// An earlier call on this recording failed; it accepts nothing more.
    #[error("recorder: the recording failed earlier: {0}")]
    Failed(String),
}

impl RecorderError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        RecorderError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the cause is a full disk or an exhausted quota.
    pub fn is_disk_full(&self) -> bool {
        match self {
            RecorderError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || source.kind() == io::ErrorKind::QuotaExceeded
                    || source.raw_os_error() == Some(28) // ENOSPC
            }
            _ => false,
        }
    }
}
