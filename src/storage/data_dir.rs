//! The data dir: a `LAYOUT` file saying how many partitions it holds and
//! which hash range each owns, and one RocksDB per partition in `pNNNN/`.
//!
//! ```text
//! DATA_DIR/LAYOUT      format = 2; partitions = P; one [[range]] per partition
//! DATA_DIR/p0000/ …    partition 0's RocksDB, and so on
//! ```
//!
//! The number of partitions is fixed when the dir is made: asking for
//! another number later is refused, saying what the dir holds (no silent
//! resharding). A data dir of format 1 (one RocksDB at the top, written by
//! releases before partitions) is moved into `p0000/` once, at start: its
//! files are renamed (never copied) into `p0000.moving/`, which is then
//! renamed to `p0000/`, and only then is `LAYOUT` written; a crash at any
//! point resumes the move at the next start. Its job ids are unchanged,
//! since partition 0's ids are the plain sequence. Ranges rather than "hash
//! mod P" are stored so that a later version can split one partition's range
//! (see docs/partitions.md).

use crate::error::{BrokerError, Result};
use crate::partition::placement::{Layout, PartitionId, MAX_PARTITIONS};
use std::path::{Path, PathBuf};

pub const LAYOUT_FILE: &str = "LAYOUT";
/// The data dir format with a `LAYOUT` file (format 1 had none).
pub const LAYOUT_FORMAT: u32 = 2;
const MOVING: &str = "p0000.moving";

/// The directory of partition `p`'s RocksDB.
pub fn partition_dir(root: &Path, p: PartitionId) -> PathBuf {
    root.join(format!("p{:04}", p.0))
}

/// The partition a directory name like `p0003` names.
fn parse_partition_dir(name: &str) -> Option<u16> {
    let digits = name.strip_prefix('p')?;
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn storage_err(what: String) -> BrokerError {
    BrokerError::Storage(what)
}

/// The `LAYOUT` file's text for `layout`.
pub fn render(layout: &Layout) -> String {
    let mut s = format!(
        "# Written by Fairway when this data dir was made; do not edit.\n\
         # Each partition owns the placement hashes from its start to the next.\n\
         format = {LAYOUT_FORMAT}\npartitions = {}\n",
        layout.len()
    );
    for (start, p) in layout.ranges() {
        s.push_str(&format!("\n[[range]]\npartition = {}\nstart = \"{start:016x}\"\n", p.0));
    }
    s
}

#[derive(serde::Deserialize)]
struct LayoutToml {
    format: u32,
    partitions: u32,
    range: Vec<RangeToml>,
}

#[derive(serde::Deserialize)]
struct RangeToml {
    partition: u16,
    start: String,
}

/// A `LAYOUT` file's layout, checked.
pub fn parse(text: &str) -> std::result::Result<Layout, String> {
    let t: LayoutToml = toml::from_str(text).map_err(|e| e.to_string())?;
    if t.format != LAYOUT_FORMAT {
        return Err(format!("format {} (this broker reads format {LAYOUT_FORMAT})", t.format));
    }
    let mut ranges = Vec::with_capacity(t.range.len());
    for r in &t.range {
        let start = u64::from_str_radix(&r.start, 16).map_err(|e| format!("range start {:?}: {e}", r.start))?;
        ranges.push((start, PartitionId(r.partition)));
    }
    if ranges.len() != t.partitions as usize {
        return Err(format!("partitions = {} but {} ranges", t.partitions, ranges.len()));
    }
    Layout::from_ranges(ranges)
}

/// Writes `LAYOUT` so that a crash leaves either no file or the whole one.
fn write_layout(root: &Path, layout: &Layout) -> Result<()> {
    let tmp = root.join("LAYOUT.tmp");
    let fail = |e: std::io::Error| storage_err(format!("cannot write {}: {e}", root.join(LAYOUT_FILE).display()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(render(layout).as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, root.join(LAYOUT_FILE)).map_err(fail)?;
    sync_dir(root).map_err(fail)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// True when `root` holds a format-1 RocksDB at its top.
fn holds_format_1(root: &Path) -> bool {
    root.join("CURRENT").is_file()
}

/// Moves a format-1 RocksDB at the top of `root` into `p0000/`, resuming
/// a move a crash interrupted.
fn migrate_format_1(root: &Path) -> Result<()> {
    let moving = root.join(MOVING);
    let fail =
        |what: &str, e: std::io::Error| storage_err(format!("moving {} into p0000/: {what}: {e}", root.display()));
    std::fs::create_dir_all(&moving).map_err(|e| fail("create p0000.moving", e))?;
    let entries = std::fs::read_dir(root).map_err(|e| fail("list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| fail("list", e))?;
        let name = entry.file_name();
        let is_partition = entry.path().is_dir() && parse_partition_dir(&name.to_string_lossy()).is_some();
        let keep = is_partition || [MOVING, LAYOUT_FILE, "LAYOUT.tmp"].iter().any(|k| name == *k);
        if keep {
            continue;
        }
        std::fs::rename(entry.path(), moving.join(&name)).map_err(|e| fail(&format!("rename {name:?}"), e))?;
    }
    sync_dir(&moving).map_err(|e| fail("sync p0000.moving", e))?;
    std::fs::rename(&moving, partition_dir(root, PartitionId(0))).map_err(|e| fail("rename p0000.moving", e))?;
    sync_dir(root).map_err(|e| fail("sync", e))
}

/// How many partitions the data dir at `root` holds, without changing
/// anything: `None` for a dir that is new (absent, or empty of Fairway's
/// files).
pub fn held(root: &Path) -> Result<Option<usize>> {
    let layout_path = root.join(LAYOUT_FILE);
    if layout_path.is_file() {
        let text = std::fs::read_to_string(&layout_path)
            .map_err(|e| storage_err(format!("cannot read {}: {e}", layout_path.display())))?;
        let layout = parse(&text).map_err(|e| storage_err(format!("{}: {e}", layout_path.display())))?;
        return Ok(Some(layout.len()));
    }
    Ok((holds_format_1(root) || root.join(MOVING).is_dir()).then_some(1))
}

/// What a start found and did with the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Made now, with this many partitions.
    Created,
    /// Already in the current format.
    Existing,
    /// A format-1 data dir, moved into `p0000/` now.
    Migrated,
}

/// Opens (making it if needed) the data dir at `root`: its layout, and how
/// it was found. `requested` is `--partitions` (`None` = unset: what an
/// existing dir holds, or `default` for a new one).
pub fn open(root: &Path, requested: Option<u32>, default: u32) -> Result<(Layout, Opened)> {
    std::fs::create_dir_all(root)
        .map_err(|e| storage_err(format!("cannot create data dir {}: {e}", root.display())))?;
    let layout_path = root.join(LAYOUT_FILE);
    if let Some(n) = requested {
        if n == 0 || n > MAX_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "--partitions {n}: a broker holds 1 to {MAX_PARTITIONS} partitions"
            )));
        }
    }
    let refuse = |holds: usize, how: &str| {
        BrokerError::FailedPrecondition(format!(
            "data dir {} holds {holds} partition{} ({how}); it was asked for {}. The number of partitions \
             is fixed when a data dir is made: start with --partitions {holds} (or leave it unset), or give \
             a new --data-dir",
            root.display(),
            if holds == 1 { "" } else { "s" },
            requested.unwrap_or(holds as u32),
        ))
    };
    if layout_path.is_file() {
        let text = std::fs::read_to_string(&layout_path)
            .map_err(|e| storage_err(format!("cannot read {}: {e}", layout_path.display())))?;
        let layout = parse(&text).map_err(|e| {
            storage_err(format!(
                "{} is not a layout this broker reads: {e}; nothing was changed",
                layout_path.display()
            ))
        })?;
        if requested.is_some_and(|n| n as usize != layout.len()) {
            return Err(refuse(layout.len(), "as its LAYOUT file says"));
        }
        return Ok((layout, Opened::Existing));
    }
    let old = holds_format_1(root) || root.join(MOVING).is_dir();
    if old {
        if requested.is_some_and(|n| n != 1) {
            return Err(refuse(1, "written by a release before partitions"));
        }
        migrate_format_1(root)?;
        let layout = Layout::even(1);
        write_layout(root, &layout)?;
        tracing::warn!(data_dir = %root.display(),
            "data dir of format 1 (one RocksDB at the top) moved into p0000/ as partition 0 of 1; job ids unchanged");
        return Ok((layout, Opened::Migrated));
    }
    if partition_dir(root, PartitionId(0)).exists() {
        return Err(storage_err(format!(
            "data dir {} holds partition directories but no LAYOUT file: it was not made by Fairway, or its \
             LAYOUT was removed; nothing was changed",
            root.display()
        )));
    }
    let layout = Layout::even(requested.unwrap_or(default).max(1));
    write_layout(root, &layout)?;
    Ok((layout, Opened::Created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_renders_and_parses_back() {
        for n in [1, 2, 4, 16] {
            let l = Layout::even(n);
            assert_eq!(parse(&render(&l)).unwrap(), l);
        }
        assert!(parse("format = 3\npartitions = 1\n[[range]]\npartition = 0\nstart = \"0\"\n")
            .unwrap_err()
            .contains("format 3"));
        assert!(parse("format = 2\npartitions = 2\n[[range]]\npartition = 0\nstart = \"0\"\n").is_err());
    }

    #[test]
    fn a_new_dir_gets_the_requested_or_default_count_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("d");
        assert_eq!(open(&root, None, 3).unwrap(), (Layout::even(3), Opened::Created));
        assert_eq!(open(&root, None, 8).unwrap(), (Layout::even(3), Opened::Existing), "unset: what it holds");
        assert_eq!(open(&root, Some(3), 8).unwrap().1, Opened::Existing);
        let err = open(&root, Some(4), 8).unwrap_err().to_string();
        assert!(
            err.contains("holds 3 partitions") && err.contains("asked for 4") && err.contains("--partitions 3"),
            "{err}"
        );
        assert!(open(&root, Some(0), 1).is_err());
        assert!(open(&root, Some(MAX_PARTITIONS + 1), 1).is_err());
    }

    #[test]
    fn a_format_1_dir_moves_into_partition_0_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["CURRENT", "MANIFEST-000005", "000004.log", "OPTIONS-000007", "LOCK"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        assert!(open(root, Some(2), 2).unwrap_err().to_string().contains("before partitions"));
        assert!(root.join("CURRENT").is_file(), "a refusal changes nothing");
        assert_eq!(open(root, None, 2).unwrap(), (Layout::even(1), Opened::Migrated));
        let p0 = partition_dir(root, PartitionId(0));
        assert_eq!(std::fs::read_to_string(p0.join("MANIFEST-000005")).unwrap(), "MANIFEST-000005");
        assert!(!root.join("CURRENT").exists() && root.join(LAYOUT_FILE).is_file());
        assert_eq!(open(root, None, 2).unwrap().1, Opened::Existing);
    }

    #[test]
    fn a_move_cut_short_by_a_crash_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Crashed after moving CURRENT and one file, before the rest.
        std::fs::create_dir(root.join(MOVING)).unwrap();
        std::fs::write(root.join(MOVING).join("CURRENT"), "c").unwrap();
        std::fs::write(root.join(MOVING).join("000004.log"), "l").unwrap();
        std::fs::write(root.join("MANIFEST-000005"), "m").unwrap();
        assert_eq!(open(root, None, 2).unwrap().1, Opened::Migrated);
        let p0 = partition_dir(root, PartitionId(0));
        for f in ["CURRENT", "000004.log", "MANIFEST-000005"] {
            assert!(p0.join(f).is_file(), "{f} in p0000");
        }
    }

    #[test]
    fn partition_dirs_without_a_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(partition_dir(dir.path(), PartitionId(0))).unwrap();
        assert!(open(dir.path(), None, 1).unwrap_err().to_string().contains("no LAYOUT file"));
    }
}
