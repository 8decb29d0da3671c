//! Payload files: the chunk payloads of a large job in a file of their own under `payloads/`
//! beside the SQLite database, one write and one sync where SQLite would write and checksum them
//! page by page, twice (WAL, then the database file).
//!
//! The files of ended jobs are kept as spares, up to [`SPARES`] of at most [`SPARE_MAX_BYTES`]
//! each, and the next large job's payloads are written over one of them in place: writing over
//! allocated blocks needs no block allocation and no metadata in its sync, nor a sync of the
//! directory (`dd` of 40 MiB with `O_DIRECT` on the disk W2 was measured on, whose file system
//! trims freed blocks: 22-27 ms over an existing file, 34-38 ms into a new one). A
//! spare keeps its name and its length; the row naming a file gives where its payloads end, and
//! whatever lies past that is a former job's bytes, never read. Spares are not kept across a
//! restart: files no row names are removed when the store loads. Nor do they stand in the way of a
//! new file: one that cannot be written removes them before its one more try.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;

use super::{io_error, StoreError};

/// Most spare files kept.
const SPARES: usize = 2;
/// Largest file kept as a spare (its bytes stay on the disk until a job writes over them).
const SPARE_MAX_BYTES: u64 = 256 << 20;

/// The payload directory and its spare files.
pub(super) struct PayloadFiles {
    dir: PathBuf,
    /// Names and lengths of files no row names any more, to be written over.
    spares: Vec<(String, u64)>,
}

impl PayloadFiles {
    /// The payload directory `dir`, created if missing.
    pub(super) fn open(dir: PathBuf) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error("create", &dir, e))?;
        super::make_private(&dir, 0o700)?;
        Ok(Self {
            dir,
            spares: Vec::new(),
        })
    }

    /// The directory's path.
    #[cfg(test)]
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `inputs` one after another into a file and makes them durable; returns its name:
    /// a spare's, or a new file named after `job`.
    pub(super) fn write(&mut self, job: &str, inputs: &[Bytes]) -> Result<String, StoreError> {
        let total: u64 = inputs.iter().map(|input| input.len() as u64).sum();
        if let Some(name) = self.take_spare(total) {
            match write_payload_file(&self.dir, &name, inputs, true) {
                Ok(()) => return Ok(name),
                // Removed or damaged behind the store's back: a new file does instead.
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot write over a spare payload file");
                    let _ = std::fs::remove_file(self.dir.join(&name));
                }
            }
        }
        let name = format!("{job}.bin");
        match write_payload_file(&self.dir, &name, inputs, false) {
            Err(e) if !self.spares.is_empty() => {
                // A full disk may have room once the spares are gone: one more try without them.
                tracing::warn!(file = %name, error = %e, spares = self.spares.len(), "removing spare payload files to write a new one");
                for (spare, _) in std::mem::take(&mut self.spares) {
                    let _ = std::fs::remove_file(self.dir.join(spare));
                }
                write_payload_file(&self.dir, &name, inputs, false)?;
            }
            written => written?,
        }
        Ok(name)
    }

    /// The spare to write `total` bytes over: the smallest that holds them, else the largest.
    fn take_spare(&mut self, total: u64) -> Option<String> {
        let holds = |len: u64| len >= total;
        let at = (0..self.spares.len())
            .filter(|&k| holds(self.spares[k].1))
            .min_by_key(|&k| self.spares[k].1)
            .or_else(|| (0..self.spares.len()).max_by_key(|&k| self.spares[k].1))?;
        Some(self.spares.swap_remove(at).0)
    }

    /// The first `len` bytes of the file `name`.
    pub(super) fn read(&self, name: &str, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::Read;
        let path = self.dir.join(name);
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        std::fs::File::open(&path)
            .and_then(|file| file.take(len).read_to_end(&mut data))
            .map_err(|e| io_error("read", &path, e))?;
        Ok(data)
    }

    /// Files no row names any more (their rows' deletion committed): kept as spares while there
    /// is room, removed otherwise; the first removal that failed is reported, after every file
    /// was seen to (one left behind goes at the next start).
    pub(super) fn retire(&mut self, names: Vec<String>) -> Result<(), StoreError> {
        let mut failed = Ok(());
        for name in names {
            let path = self.dir.join(&name);
            let len = std::fs::metadata(&path).map(|m| m.len());
            match len {
                Ok(len) if self.spares.len() < SPARES && len <= SPARE_MAX_BYTES => {
                    self.spares.push((name, len));
                }
                _ => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        failed = failed.and(Err(io_error("remove", &path, e)));
                    }
                }
            }
        }
        failed
    }

    /// Removes payload files `named` does not hold (left by a crash between writing a file and
    /// committing its job, or between dropping a job's payloads and deleting the file, and the
    /// spares of an earlier run), and forgets this run's spares.
    pub(super) fn remove_strays(&mut self, named: &HashSet<String>) {
        self.spares.clear();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bin") && !named.contains(&name) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stray payload file");
                }
            }
        }
    }
}

/// Payload files are written past the page cache (`O_DIRECT`, where the file system allows it) in
/// pieces of this many bytes, copied into one aligned buffer: copying 40 MB into the page cache
/// cost the writer thread 20-130 ms of CPU on W2, in the middle of the chunks' dispatch, and the
/// sync then had all of it still to write.
const DIRECT_PIECE: usize = 4 << 20;
/// Alignment of `O_DIRECT` buffers, offsets and lengths (a page: enough for any block size).
const DIRECT_ALIGN: usize = 4096;

/// Writes `inputs` one after another from the start of the file at `path` with `O_DIRECT`: a new
/// file cut to their length, or a spare written over in place (see [`open_for`]); an error of any
/// kind (a file system without `O_DIRECT` among them) leaves the caller to write it the ordinary
/// way.
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, inputs: &[Bytes], spare: bool) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = open_for(spare).custom_flags(libc::O_DIRECT).open(path)?;
    let total: u64 = inputs.iter().map(|input| input.len() as u64).sum();
    // Two pieces: one is filled while a thread writes the other, so the disk does not wait for
    // the copies (40 MB of them for W2's payloads).
    let (full_tx, full_rx) = mpsc::sync_channel::<(DirectPiece, usize)>(1);
    let (free_tx, free_rx) = mpsc::channel::<DirectPiece>();
    let mut idle = vec![DirectPiece::new(), DirectPiece::new()];
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<std::fs::File> {
            for (piece, len) in full_rx {
                file.write_all(&piece.bytes()[..len])?;
                let _ = free_tx.send(piece);
            }
            Ok(file)
        });
        let mut piece = idle.pop();
        let mut filled = 0;
        'fill: for input in inputs {
            let mut rest: &[u8] = input;
            while !rest.is_empty() {
                let Some(current) = piece.as_mut() else {
                    break 'fill;
                };
                let n = rest.len().min(DIRECT_PIECE - filled);
                current.bytes_mut()[filled..filled + n].copy_from_slice(&rest[..n]);
                (filled, rest) = (filled + n, &rest[n..]);
                if filled == DIRECT_PIECE {
                    let full = piece.take().map(|p| (p, DIRECT_PIECE));
                    if full.is_some_and(|full| full_tx.send(full).is_err()) {
                        break 'fill;
                    }
                    // A failed write ends the writer, and with it the free pieces.
                    piece = idle.pop().or_else(|| free_rx.recv().ok());
                    filled = 0;
                }
            }
        }
        if let Some(mut last) = piece.filter(|_| filled > 0) {
            // The last piece is written whole, padded with zeros; a new file is then cut to its
            // length.
            let padded = filled.next_multiple_of(DIRECT_ALIGN);
            last.bytes_mut()[filled..padded].fill(0);
            let _ = full_tx.send((last, padded));
        }
        drop(full_tx);
        let file = writer
            .join()
            .map_err(|_| std::io::Error::other("the payload writer thread panicked"))??;
        // A spare keeps its length (the rows say where the payloads end), so its sync writes no
        // metadata.
        if !spare {
            file.set_len(total)?;
        }
        Ok(file)
    })
}

/// An aligned piece of [`DIRECT_PIECE`] bytes for `O_DIRECT` writes.
struct DirectPiece {
    buffer: Vec<u8>,
    start: usize,
}

impl DirectPiece {
    fn new() -> Self {
        let buffer = vec![0u8; DIRECT_PIECE + DIRECT_ALIGN];
        let start = buffer.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Self { buffer, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..self.start + DIRECT_PIECE]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..self.start + DIRECT_PIECE]
    }
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_: &Path, _: &[Bytes], _: bool) -> std::io::Result<std::fs::File> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Writes `inputs` one after another from the start of the file at `path` through the page cache
/// (a new file, or a spare written over in place).
fn write_buffered(path: &Path, inputs: &[Bytes], spare: bool) -> Result<std::fs::File, StoreError> {
    use std::io::Write;
    let file = open_for(spare)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    // Many small payloads are gathered into 64 KiB writes; a payload larger than the buffer goes
    // straight through, without a copy into it.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
    for input in inputs {
        out.write_all(input)
            .map_err(|e| io_error("write", path, e))?;
    }
    out.into_inner()
        .map_err(|e| io_error("write", path, e.into_error()))
}

/// Options to write a payload file: a new one, or an existing spare, which is neither created nor
/// cut (writing over its allocated blocks needs no allocation, and on a file system mounted with
/// `discard`, none of the trims a deleted file's blocks get).
fn open_for(spare: bool) -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if !spare {
        options.create(true).truncate(true).mode(0o600);
    }
    options
}

/// Writes payloads to the file `name` in `dir` (new, or a spare written over) and makes them
/// durable, with the name of a new file.
fn write_payload_file(
    dir: &Path,
    name: &str,
    inputs: &[Bytes],
    spare: bool,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let path = dir.join(name);
    let (file, direct) = match write_direct(&path, inputs, spare) {
        Ok(file) => (file, true),
        Err(_) => (write_buffered(&path, inputs, spare)?, false),
    };
    let written = started.elapsed();
    file.sync_data().map_err(|e| io_error("sync", &path, e))?;
    let synced = started.elapsed();
    // A spare's name was made durable with the job it was first written for.
    if !spare {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, e))?;
    }
    tracing::debug!(direct, spare, ?written, ?synced, took = ?started.elapsed(), "payload file written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_files_hold_exactly_their_payloads_written_either_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Lengths that are not multiples of a block, across and within pieces.
        let sizes: [&[usize]; 4] = [
            &[1],
            &[4095, 4097, 1],
            &[DIRECT_PIECE - 3, 5, 3 * DIRECT_PIECE / 2],
            &[400_000; 30],
        ];
        for (k, sizes) in sizes.iter().enumerate() {
            let inputs: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    Bytes::from((0..n).map(|b| (b * 7 + i + k) as u8).collect::<Vec<_>>())
                })
                .collect();
            let whole = inputs.concat();
            let name = format!("job-{k}.bin");
            write_payload_file(dir.path(), &name, &inputs, false).expect("written");
            assert_eq!(
                std::fs::read(dir.path().join(&name)).expect("read"),
                whole,
                "case {k}"
            );
            let buffered = dir.path().join(format!("buffered-{k}.bin"));
            drop(write_buffered(&buffered, &inputs, false).expect("written"));
            assert_eq!(std::fs::read(&buffered).expect("read"), whole, "case {k}");
            // Where the file system takes O_DIRECT (not tmpfs, say), that path on its own.
            let direct = dir.path().join(format!("direct-{k}.bin"));
            if let Ok(file) = write_direct(&direct, &inputs, false) {
                drop(file);
                assert_eq!(std::fs::read(&direct).expect("read"), whole, "case {k}");
            }
        }
    }

    fn payloads(seed: usize, sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Bytes::from((0..n).map(|b| (b * 3 + i + seed) as u8).collect::<Vec<_>>())
            })
            .collect()
    }

    #[test]
    fn ended_jobs_files_are_written_over_and_read_to_their_payloads_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = PayloadFiles::open(dir.path().join("payloads")).expect("opened");
        let large = payloads(1, &[3 * DIRECT_PIECE / 2, 1000]);
        let first = files.write("a", &large).expect("written");
        assert_eq!(first, "a.bin");
        files.retire(vec![first.clone()]).expect("kept");
        // A smaller job goes over the spare: its bytes are read back up to its end, not past it.
        let small = payloads(2, &[5000, 7]);
        let over = files.write("b", &small).expect("written");
        assert_eq!(over, first, "the spare is written over");
        assert!(!dir.path().join("payloads/b.bin").exists());
        assert_eq!(files.read(&over, 5007).expect("read"), small.concat());
        // Written over again by a job larger than it: the file grows.
        files.retire(vec![over.clone()]).expect("kept");
        let larger = payloads(3, &[2 * DIRECT_PIECE, DIRECT_PIECE + 1]);
        assert_eq!(files.write("c", &larger).expect("written"), first);
        let whole = larger.concat();
        assert_eq!(files.read(&first, whole.len() as u64).expect("read"), whole);
        // No spare left: a new file, named after its job.
        assert_eq!(files.write("d", &small).expect("written"), "d.bin");
        // Past the number kept, retired files are removed; a restart forgets the spares.
        let extra = files.write("e", &small).expect("written");
        let kept_at_most = ["a.bin", "d.bin", "e.bin"].map(String::from);
        files.retire(kept_at_most.to_vec()).expect("retired");
        assert_eq!(files.spares.len(), SPARES);
        assert!(!files.dir().join(&extra).exists(), "{extra} is removed");
        files.remove_strays(&HashSet::new());
        assert!(files.spares.is_empty());
        assert_eq!(std::fs::read_dir(files.dir()).expect("listed").count(), 0);
        // A new file that cannot be written (here: a directory in its place, as in the way of
        // the spare tried first) takes the other spares with it before its one retry: on a full
        // disk, their room is what it lacks.
        for name in ["h.bin", "j.bin"] {
            std::fs::create_dir(files.dir().join(name)).expect("in the way");
        }
        std::fs::write(files.dir().join("i.bin"), b"spare").expect("written");
        files.spares = vec![("h.bin".into(), 1 << 30), ("i.bin".into(), 5)];
        assert!(
            files.write("j", &small).is_err(),
            "written into a directory"
        );
        assert!(files.spares.is_empty());
        assert!(
            !files.dir().join("i.bin").exists(),
            "the other spare is removed"
        );
        for name in ["h.bin", "j.bin"] {
            std::fs::remove_dir(files.dir().join(name)).expect("removed");
        }
        // A spare removed behind the store's back: a new file instead.
        let f = files.write("f", &small).expect("written");
        files.retire(vec![f]).expect("kept");
        std::fs::remove_file(files.dir().join("f.bin")).expect("removed");
        assert_eq!(files.write("g", &small).expect("written"), "g.bin");
        assert_eq!(files.read("g.bin", 5007).expect("read"), small.concat());
    }
}
