//! The run directory: made at the start of a new run (`runs/<UTC time>`, linked from
//! `runs/latest`, or the user's `--out-dir`), with the model before training in `init/`.

use super::checkpoint;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Makes the run directory: `out_dir` (which must not hold a run already), or
/// `runs/<UTC timestamp>` with the symbolic link `runs/latest` pointing at it.
pub(super) fn create_run_dir(out_dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = out_dir {
        // A run that stopped before its first checkpoint left only logs: a new run replaces them.
        if dir.join("latest").join(checkpoint::TRAINER_FILE).exists() {
            return Err(Error::Input(format!(
                "{} already holds a training run: continue it with --resume {0}, or choose another --out-dir",
                dir.display()
            )));
        }
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Input(format!(
                "--out-dir {}: a file, not a directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Input(format!("cannot create the run directory {}: {e}", dir.display())))?;
        return Ok(dir.to_path_buf());
    }
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
