//! The run directory: made at the start of a new run (`runs/<UTC time>`, linked from
//! `runs/latest`, or the user's `--out-dir`), with the model before training in `init/`. A run
//! holds it locked for its life, and replaces nothing in it that is not its own.

use super::checkpoint;
use super::metrics::METRICS_FILE;
use super::plot::is_loss_plot;
use crate::error::{Error, Result};
use crate::io::atomic::{self, check_replaceable};
use crate::io::lock::DirLock;
use crate::plot::ImageFormat;
use crate::runlog::{jsonl, param_stats};
use std::path::{Path, PathBuf};

/// The lock file of a run directory: a run holds it locked (`flock`) with its PID inside.
pub const LOCK_FILE: &str = ".gpt2.lock";

/// Makes the run directory: `out_dir` (which must not hold a run already, nor anything of the
/// user's where the run writes), or `runs/<UTC timestamp>` with the symbolic link `runs/latest`
/// pointing at it. Returns it locked ([`lock`]), with the temporaries of killed runs removed.
pub(super) fn create_run_dir(out_dir: Option<&Path>) -> Result<(PathBuf, DirLock)> {
    let dir = match out_dir {
        Some(dir) => {
            if dir.exists() && !dir.is_dir() {
                return Err(Error::Input(format!(
                    "--out-dir {}: a file, not a directory",
                    dir.display()
                )));
            }
            // Refused before anything is made; checked again below, under the lock.
            check_entries(dir, false)?;
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Input(format!("cannot create the run directory {}: {e}", dir.display())))?;
            dir.to_path_buf()
        }
        None => create_stamped_dir()?,
    };
    let lock = lock(&dir)?;
    check_entries(&dir, false)?;
    atomic::remove_stale_temps(&dir);
    Ok((dir, lock))
}

/// Locks the run directory `dir` for this process (a second run on it is refused), then puts
/// its latest/ back if a swap of checkpoint directories was cut short.
pub(super) fn lock(dir: &Path) -> Result<DirLock> {
    let lock = DirLock::take(dir, LOCK_FILE, "training run")?;
    atomic::recover_dir(&dir.join("latest"))?;
    Ok(lock)
}

/// Checks that everything a run writes in `dir` is missing or the run's own, so that nothing
/// of the user's is replaced: the checkpoints `latest/` and `best/` (a new run has none yet),
/// the logs and the loss plots (a run stopped before its first checkpoint left only those and
/// `init/`, which a new run replaces). (`init/` is checked where it is written.)
pub(super) fn check_entries(dir: &Path, resumed: bool) -> Result<()> {
    if !resumed && is_checkpoint(&dir.join("latest")) {
        return Err(Error::Input(format!(
            "{} already holds a training run: continue it with --resume {0}, or choose another --out-dir",
            dir.display()
        )));
    }
    for name in ["latest", "best"] {
        check_replaceable(&dir.join(name), "a checkpoint of this run", |p| {
            resumed && is_checkpoint(p)
        })?;
    }
    for name in [METRICS_FILE, param_stats::FILE] {
        check_replaceable(&dir.join(name), "a log of a training run", jsonl::is_log)?;
    }
    for format in [ImageFormat::Png, ImageFormat::Svg] {
        let path = dir.join(format!("loss.{}", format.extension()));
        check_replaceable(&path, "a loss plot of a training run", |p| is_loss_plot(p, format))?;
    }
    Ok(())
}

/// The name of step `step`'s kept checkpoint (`--keep-checkpoints`): `step-000500`.
pub(super) fn step_checkpoint_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// The step of a kept checkpoint's name.
fn checkpoint_step(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// A kept checkpoint may only replace one of this run's (a resumed run writes a step again).
pub(super) fn check_step_checkpoint(dir: &Path) -> Result<()> {
    check_replaceable(dir, "a checkpoint of this run", is_checkpoint)
}

/// Removes the kept checkpoints `step-NNNNNN/` of the run in `dir` but the last `keep`.
pub(super) fn prune_step_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = checkpoint_step(&name).filter(|_| is_checkpoint(&entry.path())) {
            steps.push((step, entry.path()));
        }
    }
    steps.sort();
    for (_, path) in steps.iter().rev().skip(keep) {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Whether `dir` is a checkpoint directory (not a link to one).
fn is_checkpoint(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) && dir.join(checkpoint::TRAINER_FILE).is_file()
}

/// Makes `runs/<UTC timestamp>` (`-2`, `-3`, ... appended if taken) and points `runs/latest`
/// at it.
fn create_stamped_dir() -> Result<PathBuf> {
    let runs = Path::new("runs");
    std::fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    let stamp = utc_timestamp(std::time::SystemTime::now());
    let (mut name, mut n) = (stamp.clone(), 1);
    loop {
        match std::fs::create_dir(runs.join(&name)) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                n += 1;
                name = format!("{stamp}-{n}");
            }
            Err(e) => return Err(Error::io(runs.join(&name), e)),
        }
    }
    point_latest_at(runs, &name)?;
    Ok(runs.join(name))
}

/// Replaces the link `runs/latest` by one to `name`, atomically (a new link renamed over it).
#[cfg(unix)]
fn point_latest_at(runs: &Path, name: &str) -> Result<()> {
    let tmp = runs.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, runs.join("latest")).map_err(|e| Error::io(runs.join("latest"), e))
}

#[cfg(not(unix))]
fn point_latest_at(_runs: &Path, _name: &str) -> Result<()> {
    Ok(())
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_timestamp(time: std::time::SystemTime) -> String {
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs| utc_timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "19700101-000000");
        assert_eq!(at(951_782_400 + 3_723), "20000229-010203"); // a leap day
        assert_eq!(at(1_700_000_000), "20231114-221320");
    }
}
