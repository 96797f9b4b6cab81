//! `dir/META`: what the log's seqs are bound to ([`LogMeta`]), and how far past its last commit
//! the log vouches for the stream ([`Position`]). See `proto/changelog.proto`.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

use super::frame::{self, Frame};
use super::record::proto;
use super::segment::replace_file;
use super::LogError;
use crate::binding::{Lineage, SourceId};
use crate::lsn::Lsn;

/// A point of the stream: everything with row changes that ended at or before `lsn` is in
/// the log, which then ended at seq `last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub lsn: Lsn,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMeta {
    pub lineage: Lineage,
    pub source: SourceId,
    /// The furthest point the log vouched for beyond its commits (transactions with nothing to
    /// log, an idle server); the slot is never confirmed past it or the last durable commit.
    pub position: Position,
    /// The numbering continues after this seq (0 unless the log was started over).
    pub base_seq: u64,
}

pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join("META")
}

/// The log's META file; `None` when there is none (a new log, or one an older pgfanout wrote).
pub fn read_meta(dir: &Path) -> Result<Option<LogMeta>, LogError> {
    let path = meta_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogError::Io {
                action: "reading the change log's META file",
                path,
                source,
            })
        }
    };
    let bad = |detail: &str| LogError::BadMeta {
        path: path.clone(),
        detail: detail.to_owned(),
    };
    let payload = match frame::decode_frame(&bytes) {
        Ok(Frame::Complete { payload, len }) if len == bytes.len() => payload,
        Ok(_) => return Err(bad("the file is cut short or has trailing bytes")),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let m = proto::LogMeta::decode(payload).map_err(|e| bad(&e.to_string()))?;
    let lineage: [u8; 16] = m
        .lineage
        .as_ref()
        .try_into()
        .map_err(|_| bad("its lineage is not 16 bytes"))?;
    Ok(Some(LogMeta {
        lineage: Lineage(lineage),
        source: SourceId {
            system_identifier: m.system_identifier,
            timeline: m.timeline,
            database: m.database,
            slot: m.slot,
        },
        position: Position {
            lsn: Lsn(m.position_lsn),
            last_seq: m.position_seq,
        },
        base_seq: m.base_seq,
    }))
}

/// Replaces the META file as a whole and syncs the directory: once this returns, a crash
/// leaves `meta`.
pub fn write_meta(dir: &Path, meta: &LogMeta) -> Result<(), LogError> {
    let msg = proto::LogMeta {
        lineage: bytes::Bytes::copy_from_slice(&meta.lineage.0),
        system_identifier: meta.source.system_identifier,
        timeline: meta.source.timeline,
        database: meta.source.database.clone(),
        slot: meta.source.slot.clone(),
        position_lsn: meta.position.lsn.0,
        position_seq: meta.position.last_seq,
        base_seq: meta.base_seq,
    };
    let mut out = Vec::new();
    frame::encode_frame(&msg.encode_to_vec(), &mut out);
    replace_file(
        dir,
        &meta_path(dir),
        &out,
        true,
        Some(crate::failpoint::LOG_AFTER_META_TMP_BEFORE_RENAME),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_damage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_meta(dir.path()).unwrap(), None);
        let meta = LogMeta {
            lineage: Lineage::random(),
            source: SourceId {
                system_identifier: u64::MAX,
                timeline: 3,
                database: "app".into(),
                slot: "pgfanout".into(),
            },
            position: Position {
                lsn: Lsn(0x1_0000_0010),
                last_seq: 42,
            },
            base_seq: 7,
        };
        write_meta(dir.path(), &meta).unwrap();
        assert_eq!(read_meta(dir.path()).unwrap(), Some(meta));
        let path = meta_path(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = read_meta(dir.path()).unwrap_err().to_string();
        assert!(err.contains("META"), "{err}");
    }
}
