//! Parquet output of a whole table (`treeai backfill`'s view files) and the
//! compression codecs offered to users (also the lake's).

use crate::ConnectorError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::Path;

/// Parquet compression codecs offered to users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// zstd (default).
    #[default]
    Zstd,
    /// lz4 (raw).
    Lz4,
    /// none.
    None,
}

impl Codec {
    /// The Parquet compression of the codec (zstd at its default level).
    pub fn compression(self) -> Compression {
        match self {
            Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::None => Compression::UNCOMPRESSED,
        }
    }
}

/// Writes `batch` to `path` as one Parquet file, via a temporary name and a
/// rename, so that the file is never visible half-written.
pub fn write_parquet(path: &Path, batch: &RecordBatch, codec: Codec) -> Result<(), ConnectorError> {
    let io = |e: std::io::Error| ConnectorError::Output(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let props = WriterProperties::builder().set_compression(codec.compression()).build();
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let pq = |e: parquet::errors::ParquetError| ConnectorError::Output(format!("{}: {e}", path.display()));
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    writer.write(batch).map_err(pq)?;
    writer.close().map_err(pq)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}
