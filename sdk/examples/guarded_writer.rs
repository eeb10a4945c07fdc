//! An application that writes all the time and pauses its writes around every copy of its PVC.
//!
//! ```text
//!  writer task: loop { lock.read() ─► append a record ─► every 100: fsync }
//!  copy loop:   quiesced_copy(quiesce = lock.write() + fsync, unquiesce = drop the write guard)
//! ```
//!
//! While the copy loop holds the write lock no record is half-written and everything written
//! is on disk, so the snapshot the agent takes is consistent. The lock is released at the copy
//! point, however the copy ends, or after `--hold-limit` at the latest.
//!
//! ```sh
//! cargo run -p snapgate-sdk --example guarded_writer -- \
//!     --server http://127.0.0.1:50051 --namespace apps --pvc data --file /data/journal.log
//! ```

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use snapgate_sdk::{Client, Error, GuardOptions, Outcome, duration};
use tokio::sync::{Mutex, OwnedRwLockWriteGuard, RwLock};

/// Guarded writer: a write-heavy loop that takes part in snapgate's copy trigger.
#[derive(Debug, Parser)]
struct Args {
    /// The scheduler's endpoint.
    #[arg(
        long,
        env = "SNAPGATE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token, if the scheduler wants one.
    #[arg(long, env = "SNAPGATE_TOKEN")]
    token: Option<String>,
    /// Namespace of the PVC.
    #[arg(long, env = "SNAPGATE_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The PVC the data lives on.
    #[arg(long, env = "SNAPGATE_PVC")]
    pvc: String,
    /// The file the application writes to (on the PVC).
    #[arg(
        long,
        env = "GUARDED_WRITER_FILE",
        default_value = "guarded-writer.log"
    )]
    file: PathBuf,
    /// Longest pause of the writes per copy.
    #[arg(long, env = "SNAPGATE_HOLD_LIMIT", default_value = "2m")]
    hold_limit: String,
    /// Stop after this many completed copies (0: never).
    #[arg(long, default_value_t = 0)]
    copies: u32,
}

/// The application: its writes, and the lock that pauses them.
struct Journal {
    file: std::sync::Mutex<std::fs::File>,
    lock: Arc<RwLock<()>>,
    written: AtomicU64,
}

impl Journal {
    fn open(path: &PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: std::sync::Mutex::new(file),
            lock: Arc::new(RwLock::new(())),
            written: AtomicU64::new(0),
        })
    }

    /// One record; waits while the application is quiesced.
    async fn write(&self, record: &str) -> std::io::Result<()> {
        let _writing = self.lock.read().await;
        let mut file = self.file.lock().expect("not poisoned");
        writeln!(file, "{record}")?;
        let n = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(100) {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Waits for the write in flight, stops new ones, and flushes everything to disk.
    async fn quiesce(&self) -> std::io::Result<OwnedRwLockWriteGuard<()>> {
        let guard = self.lock.clone().write_owned().await;
        self.file.lock().expect("not poisoned").sync_all()?;
        Ok(guard)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hold_limit = duration::parse(&args.hold_limit).map_err(anyhow::Error::msg)?;
    let journal = Arc::new(Journal::open(&args.file)?);

    // The write-heavy part of the application.
    let writer = tokio::spawn({
        let journal = journal.clone();
        async move {
            let mut i: u64 = 0;
            loop {
                i += 1;
                let record = format!("{} record {i}", chrono::Utc::now().to_rfc3339());
                if let Err(e) = journal.write(&record).await {
                    eprintln!("write failed: {e}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let mut builder = Client::builder(args.server.clone());
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    // Lazy: the application starts writing even if the scheduler is not up yet.
    let client = builder.connect_lazy()?;
    let target = snapgate_sdk::pvc(&args.namespace, &args.pvc);
    let options = GuardOptions::default().hold_limit(hold_limit);

    let mut completed = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        // The write guard lives here between quiesce and unquiesce.
        let paused: Arc<Mutex<Option<OwnedRwLockWriteGuard<()>>>> = Arc::new(Mutex::new(None));
        let (quiesce_journal, quiesce_slot, unquiesce_slot) =
            (journal.clone(), paused.clone(), paused.clone());
        let result = client
            .quiesced_copy(
                target.clone(),
                move |request| async move {
                    let guard = quiesce_journal.quiesce().await?;
                    *quiesce_slot.lock().await = Some(guard);
                    println!(
                        "{}: writes paused after {} records",
                        request.run_id,
                        quiesce_journal.written.load(Ordering::Relaxed)
                    );
                    Ok::<_, std::io::Error>(())
                },
                move || async move {
                    unquiesce_slot.lock().await.take();
                    Ok::<_, std::io::Error>(())
                },
                options.clone(),
            )
            .await;
        match result {
            Ok(copy) => {
                completed += 1;
                backoff = Duration::from_secs(1);
                println!(
                    "{}: copy point reached with trigger {:?}; writes resumed after {:?}",
                    copy.run_id, copy.trigger, copy.held
                );
                if args.copies != 0 && completed >= args.copies {
                    break;
                }
            }
            Err(Error::CopyFailed {
                run_id,
                outcome,
                reason,
            }) => {
                let what = if outcome == Outcome::TimedOut {
                    "skipped"
                } else {
                    "failed"
                };
                println!("{run_id}: copy {what} ({outcome}: {reason}); writes resumed");
            }
            Err(e @ (Error::HoldLimitExceeded { .. } | Error::ReleasedByAnother { .. })) => {
                println!("{e}")
            }
            Err(e) if e.is_transient() => {
                println!("scheduler unavailable ({e}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                writer.abort();
                return Err(e.into());
            }
        }
    }
    writer.abort();
    println!(
        "{completed} copies; {} records written",
        journal.written.load(Ordering::Relaxed)
    );
    Ok(())
}
