//! Checkpoint flags of `treeai run` (INTERFACES.md: `--checkpoint-url`,
//! `--checkpoint-interval-ms`, `--restore-from`, `--no-restore`, `--no-checkpoint`).

use crate::config::CheckpointFile;
use clap::Args;
use std::time::Duration;
use treeai_connectors::checkpoint::{CheckpointConfig, RestoreFrom};
use treeai_connectors::lake::LakeConfig;

#[derive(Args, Debug, Default)]
pub struct CheckpointArgs {
    /// Where checkpoints go: a local path or an object store URL like the lake's
    /// [default: <lake>/_checkpoints, or ./checkpoints with --no-lake].
    #[arg(long, env = "TREEAI_CHECKPOINT_URL")]
    pub checkpoint_url: Option<String>,
    /// Time between checkpoints, ms [default: 30000]; 0 takes checkpoints only on request
    /// (POST /v1/admin/checkpoint) and at a clean stop.
    #[arg(long, env = "TREEAI_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoints kept [default: 3].
    #[arg(long, env = "TREEAI_CHECKPOINTS_KEPT")]
    pub checkpoints_kept: Option<usize>,
    /// Take no checkpoints (and resume from none): a restart replays the sources, the lake
    /// publishes files as they are written.
    #[arg(long, conflicts_with = "restore_from")]
    pub no_checkpoint: bool,
    /// Resume from the checkpoint in this folder (a `<checkpoint-url>/<number>` folder)
    /// instead of the newest complete one.
    #[arg(long, env = "TREEAI_RESTORE_FROM", conflicts_with = "no_restore")]
    pub restore_from: Option<String>,
    /// Start from the sources' beginning instead of a checkpoint (checkpoints are still taken).
    #[arg(long)]
    pub no_restore: bool,
}

impl CheckpointArgs {
    /// The checkpoint configuration (flags/env over the file over defaults); `None` with
    /// `--no-checkpoint`.
    pub fn config(&self, file: &CheckpointFile, lake: Option<&LakeConfig>) -> Option<CheckpointConfig> {
        if self.no_checkpoint || file.enabled == Some(false) {
            return None;
        }
        let url = self.checkpoint_url.clone().or_else(|| file.url.clone()).unwrap_or_else(|| match lake {
            Some(lake) => format!("{}/_checkpoints", lake.url.trim_end_matches('/')),
            None => "./checkpoints".to_string(),
        });
        let options = match (&file.options, lake) {
            (Some(o), _) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            (None, Some(lake)) => lake.options.clone(),
            (None, None) => Vec::new(),
        };
        let restore = match (&self.restore_from, self.no_restore) {
            (Some(folder), _) => RestoreFrom::Folder(folder.clone()),
            (None, true) => RestoreFrom::Nothing,
            (None, false) => RestoreFrom::Newest,
        };
        Some(CheckpointConfig {
            url,
            options,
            interval: Duration::from_millis(self.checkpoint_interval_ms.or(file.interval_ms).unwrap_or(30_000)),
            kept: self.checkpoints_kept.or(file.kept).unwrap_or(3).max(1),
            restore,
        })
    }
}
