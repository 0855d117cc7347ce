//! A JSON-lines journal file, one value per line: read back once when kshift starts
//! ([`replay`]), appended to while it runs ([`Journal::append`]), and rewritten to a smaller
//! state its owner hands over ([`Journal::compact`], [`rewrite`]). The offset map
//! ([`super::offset_map`]) and the mirror failure journal ([`super::failures`]) are two.
//!
//! Once open, every write to the file happens on the journal's own thread, never on an async
//! worker (a write that the kernel throttles, or a compaction's rewrite and fsync, would
//! stall every task on that worker). Appends and compactions are commands on one channel,
//! carried out in the order they were given: the file holds the appended lines in append
//! order, and a compaction replaces exactly the lines appended before it (its owner builds
//! the new state under the same lock it appends under, see the offset map).
//!
//! What is durable when:
//! - A line is queued when [`Journal::append`] returns, and written (handed to the kernel,
//!   one `write` per burst) as soon as the thread takes it, which is at once unless the
//!   thread is compacting; [`Journal::has_written`] tells. From then on it survives kshift
//!   dying. If kshift dies (killed, aborted, out of memory) before that, the lines still
//!   queued are lost: always the last ones appended, so the file holds a prefix of the
//!   appends.
//! - Appends are not fsynced: an OS crash or power loss loses what the kernel had not yet
//!   written back.
//! - A compaction writes a temporary file, fsyncs it, renames it over the journal and fsyncs
//!   the directory: a crash at any point leaves the old journal or the new one, never a mix.
//!   Appends queued meanwhile wait for it, then go to the new file.
//! - Dropping the [`Journal`] (with its owner, as kshift stops) writes whatever is queued,
//!   fsyncs the file and waits for that: nothing queued is lost, not even to a power loss
//!   afterwards.
//! - A line torn by a crash (or by a failed write) is skipped by [`replay`]; the next line
//!   appended starts on a line of its own.
//!
//! Within the process a reader sees its own writes: [`replay`] first waits until every
//! journal open here on the same file has written what it had queued (a re-read of the
//! failure journal, a test checking the file, a second instance started on the file).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sync::lock;

/// What a journal file held when it was read.
#[derive(Debug)]
pub struct Replay<T> {
    /// Every line that parsed, in file order.
    pub entries: Vec<T>,
    /// Lines that did not (1-based line number, why): a line torn by a crash, most likely.
    pub unreadable: Vec<(usize, serde_json::Error)>,
}

/// Reads the journal at `path` (a missing file is an empty journal), once the journals open
/// on it in this process have written what they queued. Blank lines are skipped; a line
/// that is not a `T` (torn by a crash, or not UTF-8) is set aside in [`Replay::unreadable`]
/// and the rest are still read.
pub fn replay<T: DeserializeOwned>(path: &Path) -> std::io::Result<Replay<T>> {
    wait_for_queued(path);
    let mut replay = Replay {
        entries: Vec::new(),
        unreadable: Vec::new(),
    };
    for_each_line(path, |number, line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match serde_json::from_slice(line) {
            Ok(entry) => replay.entries.push(entry),
            Err(error) => replay.unreadable.push((number, error)),
        }
    })?;
    Ok(replay)
}

/// Every line of the plain-text file at `path` (none when it is missing).
pub fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for_each_line(path, |_, line| {
        lines.push(String::from_utf8_lossy(line).into_owned())
    })?;
    Ok(lines)
}

/// Calls `each` with every line of `path` (1-based number, bytes without the newline).
fn for_each_line(path: &Path, mut each: impl FnMut(usize, &[u8])) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        each(number, &line);
    }
}

/// Rewrites the journal at `path` to hold exactly `entries`, one line each (via a
/// temporary file, fsynced, then renamed over it, and the directory fsynced), and returns
/// the new file open for appending. Runs where it is called: at start, before
/// [`Journal::open`]; later only on the journal's thread.
pub fn rewrite<T: Serialize>(
    path: &Path,
    entries: impl IntoIterator<Item = T>,
) -> std::io::Result<File> {
    rewrite_lines(
        path,
        entries.into_iter().map(|entry| serde_json::to_vec(&entry)),
    )
}

/// [`rewrite`] with the lines already serialized (or not: the first error stops it, and
/// the journal stays as it was).
fn rewrite_lines(
    path: &Path,
    lines: impl Iterator<Item = serde_json::Result<Vec<u8>>>,
) -> std::io::Result<File> {
    let temporary = path.with_extension("compacting");
    // A leftover of a compaction cut short holds nothing the journal lacks.
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&temporary)?;
    let written = (|| {
        let mut writer = std::io::BufWriter::new(&file);
        for line in lines {
            writer.write_all(&line.map_err(std::io::Error::other)?)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        drop(writer);
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    // The rename itself is durable once the directory is. Not every file system lets a
    // directory be fsynced; the journal is complete either way.
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Err(error) = File::open(directory).and_then(|directory| directory.sync_all()) {
        tracing::debug!(directory = %directory.display(), %error, "cannot fsync the journal's directory");
    }
    // The temporary file, renamed, is the journal now: appends continue on it.
    Ok(file)
}

/// Journals open in this process, by file, for [`replay`]'s wait.
static OPEN: Mutex<Vec<(PathBuf, Weak<Mutex<Queue>>)>> = Mutex::new(Vec::new());

/// Waits until every journal open in this process on the file at `path` has done what it
/// had queued.
fn wait_for_queued(path: &Path) {
    let Ok(file) = path.canonicalize() else {
        return; // Open journals create their file: none is open on this one.
    };
    let queues: Vec<Arc<Mutex<Queue>>> = lock(&OPEN)
        .iter()
        .filter(|(open, _)| *open == file)
        .filter_map(|(_, queue)| queue.upgrade())
        .collect();
    for queue in queues {
        flush(&queue);
    }
}

/// Waits until the thread behind `queue` has done everything queued so far.
fn flush(queue: &Mutex<Queue>) {
    let (done, wait) = mpsc::sync_channel(1);
    let sent = match &lock(queue).commands {
        Some(commands) => commands.send(Command::Flush(done)).is_ok(),
        None => false,
    };
    if sent {
        let _ = wait.recv();
    }
}

/// An open journal: appends and compactions go to its thread.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// The channel to the thread, and the number of the last line queued on it; one lock
    /// so that lines are numbered in the order they are queued.
    queue: Arc<Mutex<Queue>>,
    /// Lines the thread is done with (written, or failed and logged), counted from 1.
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Queue {
    /// `None` once the journal is closing.
    commands: Option<mpsc::Sender<Command>>,
    appended: u64,
}

enum Command {
    /// One line, without its newline.
    Append(Vec<u8>),
    /// The new state, serialized on the thread.
    Compact(Box<dyn Iterator<Item = serde_json::Result<Vec<u8>>> + Send>),
    /// Answered once everything before it is done.
    Flush(mpsc::SyncSender<()>),
}

/// The number of an appended line, to ask whether it is written yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LineNumber(u64);

/// Names a journal in its thread's log lines: what it is, and what a lost line costs.
#[derive(Debug, Clone, Copy)]
pub struct JournalName {
    /// "the offset map file".
    pub what: &'static str,
    /// "cutover translation will miss these batches".
    pub if_lost: &'static str,
}

impl Journal {
    /// Opens the journal at `path` for appending (created if missing) and starts its
    /// thread. After a torn last line, the next line starts on a line of its own.
    pub fn open(path: &Path, name: JournalName) -> std::io::Result<Journal> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        if file.metadata()?.len() > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        let (commands, receiver) = mpsc::channel();
        let written = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            path: path.to_path_buf(),
            name,
            file,
            written: written.clone(),
            torn: false,
        };
        let thread = std::thread::Builder::new()
            .name("kshift-journal".into())
            .spawn(move || writer.run(receiver))?;
        let queue = Arc::new(Mutex::new(Queue {
            commands: Some(commands),
            appended: 0,
        }));
        let mut open = lock(&OPEN);
        open.retain(|(_, queue)| queue.strong_count() > 0);
        open.push((path.canonicalize()?, Arc::downgrade(&queue)));
        drop(open);
        Ok(Journal {
            path: path.to_path_buf(),
            queue,
            written,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `entry` as one line. Never waits for the file (see the module's notes on
    /// what is durable when).
    pub fn append<T: Serialize>(&self, entry: &T) -> serde_json::Result<LineNumber> {
        let line = serde_json::to_vec(entry)?;
        let mut queue = lock(&self.queue);
        queue.appended += 1;
        let number = LineNumber(queue.appended);
        if let Some(commands) = &queue.commands {
            // Fails only if the thread died (a panic, reported on stderr): the line is lost.
            let _ = commands.send(Command::Append(line));
        }
        Ok(number)
    }

    /// Whether the line `number` has been written to the file (or its write failed and was
    /// logged): a reader of the file then sees it.
    pub fn has_written(&self, number: LineNumber) -> bool {
        self.written.load(Ordering::Acquire) >= number.0
    }

    /// Queues a rewrite of the journal to hold exactly `entries`, replacing every line
    /// appended before this call; lines appended after it are kept after them. `entries`
    /// is serialized on the thread.
    pub fn compact<I, T>(&self, entries: I)
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: Serialize,
    {
        let lines = entries.into_iter().map(|entry| serde_json::to_vec(&entry));
        if let Some(commands) = &lock(&self.queue).commands {
            let _ = commands.send(Command::Compact(Box::new(lines)));
        }
    }

    /// Waits until everything queued so far is done. Blocks: for tests and tools, not for
    /// async code.
    pub fn flush(&self) {
        flush(&self.queue);
    }
}

impl Drop for Journal {
    /// Writes what is queued and fsyncs it before returning (see the module's notes).
    fn drop(&mut self) {
        lock(&self.queue).commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Bytes of queued lines the journal's thread gathers into one write.
const MAX_BURST_BYTES: usize = 1 << 20;

/// The journal's thread: owns the file.
struct Writer {
    path: PathBuf,
    name: JournalName,
    file: File,
    written: Arc<AtomicU64>,
    /// The last write failed, perhaps halfway through a line.
    torn: bool,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut burst = Vec::new();
        let mut next = commands.recv().ok();
        while let Some(command) = next.take() {
            match command {
                Command::Append(line) => {
                    // The appends already queued go into the same write (up to a bound, so
                    // that appenders faster than this loop cannot keep it from writing).
                    burst.clear();
                    if self.torn {
                        burst.push(b'\n');
                    }
                    let mut lines = 1;
                    burst.extend_from_slice(&line);
                    burst.push(b'\n');
                    while burst.len() < MAX_BURST_BYTES {
                        match commands.try_recv() {
                            Ok(Command::Append(line)) => {
                                lines += 1;
                                burst.extend_from_slice(&line);
                                burst.push(b'\n');
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write(&burst, lines);
                }
                Command::Compact(lines) => match rewrite_lines(&self.path, lines) {
                    Ok(file) => {
                        tracing::debug!(file = %self.path.display(), "{} compacted", self.name.what);
                        self.file = file;
                        self.torn = false;
                    }
                    Err(error) => {
                        tracing::error!(file = %self.path.display(), %error, "cannot compact {}; it keeps growing", self.name.what);
                    }
                },
                Command::Flush(done) => {
                    let _ = done.send(());
                }
            }
            if next.is_none() {
                next = commands.recv().ok();
            }
        }
        // Every handle is gone (kshift is stopping): make what was written durable.
        if let Err(error) = self.file.sync_data() {
            tracing::error!(file = %self.path.display(), %error, "cannot fsync {}", self.name.what);
        }
    }

    fn write(&mut self, burst: &[u8], lines: u64) {
        match self.file.write_all(burst) {
            Ok(()) => self.torn = false,
            Err(error) => {
                self.torn = true;
                tracing::error!(file = %self.path.display(), %error, lines, "cannot append to {}; {}", self.name.what, self.name.if_lost);
            }
        }
        self.written.fetch_add(lines, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: JournalName = JournalName {
        what: "the test journal",
        if_lost: "the test fails",
    };

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
    struct Entry {
        key: String,
        value: i64,
    }

    fn entry(key: &str, value: i64) -> Entry {
        Entry {
            key: key.into(),
            value,
        }
    }

    #[test]
    fn what_was_appended_is_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        assert!(
            replay::<Entry>(&path).unwrap().entries.is_empty(),
            "missing is empty"
        );
        let journal = Journal::open(&path, NAME).unwrap();
        let numbers: Vec<LineNumber> = (0..100)
            .map(|i| journal.append(&entry("a", i)).unwrap())
            .collect();
        journal.flush();
        assert!(numbers.iter().all(|number| journal.has_written(*number)));
        let replayed = replay::<Entry>(&path).unwrap();
        let values: Vec<i64> = replayed.entries.iter().map(|e| e.value).collect();
        assert_eq!(values, (0..100).collect::<Vec<_>>());
        assert!(replayed.unreadable.is_empty());
        // Dropping the journal writes what is still queued.
        journal.append(&entry("b", 100)).unwrap();
        drop(journal);
        assert_eq!(replay::<Entry>(&path).unwrap().entries.len(), 101);
    }

    #[test]
    fn a_compaction_keeps_its_state_and_every_line_appended_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let journal = Journal::open(&path, NAME).unwrap();
        for i in 0..50 {
            journal.append(&entry("a", i)).unwrap();
        }
        // The latest state of what came before: one line.
        journal.compact(vec![entry("a", 49)]);
        journal.append(&entry("b", 1)).unwrap();
        journal.append(&entry("b", 2)).unwrap();
        journal.flush();
        let replayed = replay::<Entry>(&path).unwrap().entries;
        assert_eq!(replayed, [entry("a", 49), entry("b", 1), entry("b", 2)]);
        assert!(!path.with_extension("compacting").exists());
        // The compacted file is the one appended to from then on, and it reopens.
        drop(journal);
        let journal = Journal::open(&path, NAME).unwrap();
        journal.append(&entry("c", 3)).unwrap();
        drop(journal);
        assert_eq!(replay::<Entry>(&path).unwrap().entries.len(), 4);
        // At start, before the thread runs.
        rewrite(&path, [entry("d", 4)]).unwrap();
        assert_eq!(replay::<Entry>(&path).unwrap().entries, [entry("d", 4)]);
    }

    #[test]
    fn a_compaction_runs_on_the_journal_thread_and_later_appends_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let journal = Journal::open(&path, NAME).unwrap();
        journal.append(&entry("a", 1)).unwrap();
        journal.flush();
        // A state that takes its time to produce, as a large map's rewrite does.
        let (release, hold) = mpsc::channel::<()>();
        let watchdog = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(5));
            let _ = watchdog.send(());
        });
        let started = std::time::Instant::now();
        journal.compact((0..1).map(move |_| {
            let _ = hold.recv();
            entry("a", 2)
        }));
        let after = journal.append(&entry("b", 3)).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "compact and append returned at once, the rewrite waits on the journal's thread"
        );
        assert!(!journal.has_written(after), "queued behind the compaction");
        release.send(()).unwrap();
        journal.flush();
        assert!(journal.has_written(after));
        assert_eq!(
            replay::<Entry>(&path).unwrap().entries,
            [entry("a", 2), entry("b", 3)]
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_append_starts_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let journal = Journal::open(&path, NAME).unwrap();
        journal.append(&entry("a", 1)).unwrap();
        drop(journal);
        // A crash in the middle of a write, with bytes that are not even UTF-8.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"key\": \"a\xff\", \"val")
            .unwrap();
        let replayed = replay::<Entry>(&path).unwrap();
        assert_eq!(replayed.entries, [entry("a", 1)]);
        assert_eq!(
            replayed
                .unreadable
                .iter()
                .map(|(line, _)| *line)
                .collect::<Vec<_>>(),
            [2]
        );
        let journal = Journal::open(&path, NAME).unwrap();
        journal.append(&entry("a", 2)).unwrap();
        drop(journal);
        let replayed = replay::<Entry>(&path).unwrap();
        assert_eq!(replayed.entries, [entry("a", 1), entry("a", 2)]);
        assert_eq!(replayed.unreadable.len(), 1);
    }
}
