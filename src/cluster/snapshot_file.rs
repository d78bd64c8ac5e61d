//! A partition snapshot as one file: the snapshot's Raft metadata, then
//! every file of a RocksDB checkpoint of the partition's store. One file is
//! what openraft sends to a replica that is new or too far behind, and
//! what that replica unpacks into a directory it then opens as its store.
//!
//! `"FWS1" | meta length (u32 BE) | meta (JSON) | file count (u32 BE) |
//! per file: name length (u16 BE), name, size (u64 BE), bytes`. Names are
//! plain file names (a checkpoint is one flat directory); anything else is
//! refused, so a snapshot can never write outside the directory it unpacks
//! into. RocksDB checks its own files' checksums when it opens them.
//!
//! Blocking file I/O: call from a blocking thread.

use super::raft_types::SnapshotMeta;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 4] = b"FWS1";

fn err(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("snapshot file: {what}"))
}

/// Writes `meta` and every file of `dir` into `out`.
pub fn pack(meta: &SnapshotMeta, dir: &Path, out: &Path) -> std::io::Result<()> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            return Err(err(format!("{} is not a plain file", entry.path().display())));
        }
        names.push(entry.file_name().into_string().map_err(|n| err(format!("file name {n:?} is not UTF-8")))?);
    }
    names.sort();
    let mut w = BufWriter::new(File::create(out)?);
    w.write_all(MAGIC)?;
    let meta = serde_json::to_vec(meta).map_err(err)?;
    w.write_all(&(meta.len() as u32).to_be_bytes())?;
    w.write_all(&meta)?;
    w.write_all(&(names.len() as u32).to_be_bytes())?;
    for name in &names {
        let mut f = File::open(dir.join(name))?;
        let size = f.metadata()?.len();
        w.write_all(&(name.len() as u16).to_be_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&size.to_be_bytes())?;
        let copied = std::io::copy(&mut (&mut f).take(size), &mut w)?;
        if copied != size {
            return Err(err(format!("{name} shrank while it was packed")));
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn read_exact<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_meta(r: &mut impl Read) -> std::io::Result<SnapshotMeta> {
    if &read_exact::<4>(r)? != MAGIC {
        return Err(err("not a Fairway snapshot"));
    }
    let len = u32::from_be_bytes(read_exact(r)?) as usize;
    if len > 64 << 20 {
        return Err(err("metadata too large"));
    }
    let mut meta = vec![0u8; len];
    r.read_exact(&mut meta)?;
    serde_json::from_slice(&meta).map_err(err)
}

/// The metadata at the head of a snapshot file.
pub fn meta_of(path: &Path) -> std::io::Result<SnapshotMeta> {
    read_meta(&mut BufReader::new(File::open(path)?))
}

/// Unpacks the snapshot at `path` into the new directory `dir` (fsynced),
/// returning its metadata.
pub fn unpack(path: &Path, dir: &Path) -> std::io::Result<SnapshotMeta> {
    let mut r = BufReader::new(File::open(path)?);
    let meta = read_meta(&mut r)?;
    std::fs::create_dir(dir)?;
    let count = u32::from_be_bytes(read_exact(&mut r)?);
    for _ in 0..count {
        let len = u16::from_be_bytes(read_exact(&mut r)?) as usize;
        let mut name = vec![0u8; len];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| err("file name is not UTF-8"))?;
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\\')
            || name.contains('\0')
        {
            return Err(err(format!("refusing file name {name:?}")));
        }
        let size = u64::from_be_bytes(read_exact(&mut r)?);
        let mut f = File::create_new(dir.join(&name))?;
        let copied = std::io::copy(&mut (&mut r).take(size), &mut f)?;
        if copied != size {
            return Err(err(format!("{name} is cut short")));
        }
        f.sync_all()?;
    }
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(err("bytes after the last file"));
    }
    File::open(dir)?.sync_all()?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: "s-1".into() }
    }

    #[test]
    fn a_directory_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("000012.sst"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.join("CURRENT"), b"MANIFEST-000005\n").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let file = t.path().join("snap");
        pack(&meta(), &src, &file).unwrap();
        assert_eq!(meta_of(&file).unwrap().snapshot_id, "s-1");
        let dst = t.path().join("dst");
        assert_eq!(unpack(&file, &dst).unwrap().snapshot_id, "s-1");
        for name in ["000012.sst", "CURRENT", "empty"] {
            assert_eq!(std::fs::read(src.join(name)).unwrap(), std::fs::read(dst.join(name)).unwrap(), "{name}");
        }
    }

    #[test]
    fn damaged_files_are_refused_without_escaping_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let mut bytes = MAGIC.to_vec();
        let m = serde_json::to_vec(&meta()).unwrap();
        bytes.extend_from_slice(&(m.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&m);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        let evil = b"../escape";
        bytes.extend_from_slice(&(evil.len() as u16).to_be_bytes());
        bytes.extend_from_slice(evil);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.push(b'x');
        let file = t.path().join("evil");
        std::fs::write(&file, &bytes).unwrap();
        let e = unpack(&file, &t.path().join("d1")).unwrap_err().to_string();
        assert!(e.contains("refusing file name"), "{e}");
        assert!(!t.path().join("escape").exists());

        // Cut short: the last file's bytes are missing.
        let cut = &bytes[..bytes.len() - 1];
        let mut fixed = cut.to_vec();
        let at = fixed.len() - 8 - evil.len() - 2;
        fixed.truncate(at);
        fixed.extend_from_slice(&4u16.to_be_bytes());
        fixed.extend_from_slice(b"file");
        fixed.extend_from_slice(&10u64.to_be_bytes());
        fixed.extend_from_slice(b"short");
        std::fs::write(&file, &fixed).unwrap();
        let e = unpack(&file, &t.path().join("d2")).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");

        std::fs::write(&file, b"NOPE").unwrap();
        assert!(meta_of(&file).unwrap_err().to_string().contains("not a Fairway snapshot"));
    }
}
