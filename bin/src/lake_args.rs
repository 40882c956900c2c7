//! Lake flags of `treeai run` and `treeai backfill`.

use crate::config::LakeFile;
use anyhow::bail;
use clap::Args;
use std::time::Duration;
use treeai_connectors::lake::LakeConfig;
use treeai_connectors::parquet_out::Codec;

/// Where the lake is and how files roll.
#[derive(Args, Clone, Debug, Default)]
pub struct LakeArgs {
    /// Lake root: a local path or a file://, s3://, gs://, az:// URL [default: ./lake].
    #[arg(long, env = "TREEAI_LAKE")]
    pub lake: Option<String>,
    /// Do not write the lake.
    #[arg(long, conflicts_with = "lake")]
    pub no_lake: bool,
    /// Parquet compression of lake files: zstd, lz4 or none [default: zstd].
    #[arg(long, env = "TREEAI_LAKE_COMPRESSION")]
    pub lake_compression: Option<String>,
    /// Roll a lake file after this many bytes of input [default: 67108864].
    #[arg(long, env = "TREEAI_LAKE_ROLL_BYTES")]
    pub lake_roll_bytes: Option<usize>,
    /// Roll a lake file after this many milliseconds [default: 60000].
    #[arg(long, env = "TREEAI_LAKE_ROLL_MS")]
    pub lake_roll_ms: Option<u64>,
}

/// Parses a compression name.
pub fn codec(name: &str) -> anyhow::Result<Codec> {
    Ok(match name {
        "zstd" => Codec::Zstd,
        "lz4" => Codec::Lz4,
        "none" => Codec::None,
        other => bail!("compression {other:?}: expected zstd, lz4 or none"),
    })
}

impl LakeArgs {
    /// The lake configuration (flags/env over the file over defaults); `None` with `--no-lake`.
    /// `url` overrides everything when given (`backfill --lake-output`).
    pub fn config(&self, file: &LakeFile, url: Option<&str>) -> anyhow::Result<Option<LakeConfig>> {
        if self.no_lake {
            return Ok(None);
        }
        let defaults = LakeConfig::default();
        let compression = match self.lake_compression.as_deref().or(file.compression.as_deref()) {
            Some(name) => codec(name)?,
            None => defaults.compression,
        };
        Ok(Some(LakeConfig {
            url: url
                .map(str::to_string)
                .or_else(|| self.lake.clone())
                .or_else(|| file.url.clone())
                .unwrap_or(defaults.url),
            compression,
            roll_bytes: self.lake_roll_bytes.or(file.roll_bytes).unwrap_or(defaults.roll_bytes),
            roll_interval: self.lake_roll_ms.or(file.roll_ms).map_or(defaults.roll_interval, Duration::from_millis),
            options: file.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }))
    }
}
