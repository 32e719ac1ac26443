//! The durable local queue of writes the database could not take. One JSON line per
//! [`StoreOp`], appended and fsynced before the caller is told the write is safe. Ops leave
//! the front once the database has them. Ops are idempotent, so a crash while draining only
//! means some are written twice, which changes nothing.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::StoreOp;

pub struct Outbox {
    path: PathBuf,
    file: File,
    ops: VecDeque<StoreOp>,
}

impl Outbox {
    /// Open (creating) the outbox and load what a previous run left in it. Lines that do not
    /// parse (a torn last line after a crash) are skipped with a warning.
    pub fn open(path: &Path) -> std::io::Result<Outbox> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut ops = VecDeque::new();
        if path.exists() {
            let r = BufReader::new(File::open(path)?);
            for (n, line) in r.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<StoreOp>(&line) {
                    Ok(op) => ops.push_back(op),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        line = n + 1,
                        error = %e,
                        "skipping an unreadable outbox line"
                    ),
                }
            }
        }
        let had_bytes = path.exists() && std::fs::metadata(path)?.len() > 0;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut o = Outbox {
            path: path.to_path_buf(),
            file,
            ops,
        };
        if had_bytes {
            // Rewrite without any torn line, so new appends start on a fresh line.
            o.compact()?;
        }
        Ok(o)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Append and fsync.
    pub fn push(&mut self, op: StoreOp) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&op).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.ops.push_back(op);
        Ok(())
    }

    pub fn front(&self) -> Option<&StoreOp> {
        self.ops.front()
    }

    /// The front op is in the database. When the queue empties, the file is truncated.
    pub fn pop(&mut self) -> std::io::Result<()> {
        self.ops.pop_front();
        if self.ops.is_empty() {
            self.file.set_len(0)?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Rewrite the file with what is still queued (after a partial drain), atomically.
    pub fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            for op in &self.ops {
                let mut line = serde_json::to_vec(op).map_err(std::io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

/// Append a rejected op (one the database refuses for good) to `{outbox}.rejected`, so nothing
/// vanishes silently.
pub fn reject(outbox: &Path, op: &StoreOp, error: &str) {
    let path = outbox.with_extension("rejected.jsonl");
    let line = serde_json::json!({"error": error, "op": op}).to_string() + "\n";
    let r = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "cannot write the rejected-writes file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn op() -> StoreOp {
        StoreOp::CallActive {
            call_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn survives_reopen_and_torn_lines() {
        let dir = std::env::temp_dir().join(format!("commhub-outbox-{}", Uuid::new_v4()));
        let path = dir.join("o.jsonl");
        let (a, b) = (op(), op());
        {
            let mut o = Outbox::open(&path).expect("open");
            o.push(a.clone()).expect("push");
            o.push(b.clone()).expect("push");
        }
        // A torn line at the end, as after kill -9 mid-append.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"op\":\"call_ac"))
            .expect("tear");
        let mut o = Outbox::open(&path).expect("reopen");
        assert_eq!(o.len(), 2);
        assert_eq!(o.front(), Some(&a));
        o.pop().expect("pop");
        o.compact().expect("compact");
        let mut o = Outbox::open(&path).expect("reopen");
        assert_eq!(o.front(), Some(&b));
        o.pop().expect("pop");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
