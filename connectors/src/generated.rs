//! The generator as a source: each worker generates its shard of the trees,
//! paced at `rate / workers` events per second of wall-clock time (or unpaced
//! for benchmarks and tests), up to an optional total count.
//!
//! Each worker's shard is one source partition (`source` = shard, `start` 0,
//! `next` = the sequence number of the next event, from 1). The generator is
//! deterministic, so seeking regenerates the shard's events up to `next` and
//! drops them; positions resume a run with the same configuration and number
//! of workers.

use crate::generator::{Generator, GeneratorConfig};
use std::time::Instant;
use treeai_dataflows::event::Position;
use treeai_dataflows::source::{PartitionPosition, Poll, RawMessage, Source, SourceError, SourceRef};

/// One worker's share of the generator.
pub struct GeneratorSource {
    generator: Generator,
    shard: u32,
    /// Wall-clock events per second for this shard; `None` = as fast as possible.
    paced_rate: Option<f64>,
    /// Events this shard emits before it is done; `None` = forever.
    limit: Option<u64>,
    started: Instant,
    emitted: u64,
    /// Events emitted before `started` (by an earlier run, when resumed).
    resumed_at: u64,
    /// The shard's registrations, emitted first and unpaced: the inventory a city already
    /// has is loaded at once, not at the events' rate (see [`Generator::local_trees`]).
    inventory: u64,
}

impl GeneratorSource {
    /// Shard `worker` of `peers`. `paced`: hold `config.rate` in wall-clock time.
    /// `count`: total events over all shards (a bounded input), `None` = unbounded.
    pub fn new(config: GeneratorConfig, worker: usize, peers: usize, paced: bool, count: Option<u64>) -> Self {
        let peers = peers.max(1) as u64;
        let shard = worker as u64;
        let paced_rate = paced.then(|| config.rate / peers as f64);
        let limit = count.map(|c| c / peers + u64::from(shard < c % peers));
        let generator = Generator::new(config, shard as u32, peers as u32);
        GeneratorSource {
            inventory: generator.local_trees(),
            generator,
            shard: shard as u32,
            paced_rate,
            limit,
            started: Instant::now(),
            emitted: 0,
            resumed_at: 0,
        }
    }
}

impl GeneratorSource {
    /// Paced: event time runs `speedup` times faster than the wall clock (events are
    /// produced `speedup` times faster than `config.rate`).
    pub fn with_speedup(mut self, speedup: f64) -> Self {
        if speedup.is_finite() && speedup > 0.0 {
            self.paced_rate = self.paced_rate.map(|r| r * speedup);
        }
        self
    }
}

impl Source for GeneratorSource {
    fn poll(&mut self, max: usize, emit: &mut dyn FnMut(RawMessage<'_>)) -> Poll {
        let mut budget = max as u64;
        if let Some(limit) = self.limit {
            if self.emitted >= limit {
                return Poll::Done;
            }
            budget = budget.min(limit - self.emitted);
        }
        if let Some(rate) = self.paced_rate {
            let due = self.resumed_at.max(self.inventory) + (self.started.elapsed().as_secs_f64() * rate) as u64;
            budget = budget.min(due.saturating_sub(self.emitted));
        }
        if budget == 0 {
            return Poll::Idle;
        }
        for _ in 0..budget {
            let Some(event) = self.generator.next() else {
                return Poll::Done;
            };
            self.emitted += 1;
            let pos = Position { source: self.shard, offset: self.emitted };
            emit(RawMessage { bytes: &event.json, kind: None, pos, partition: 0, key: None });
        }
        Poll::Ready
    }

    fn source_ref(&self, pos: Position) -> SourceRef {
        SourceRef::Generator { shard: pos.source, seq: pos.offset }
    }

    fn positions(&self) -> Vec<PartitionPosition> {
        let finished = self.limit.is_some_and(|l| self.emitted >= l);
        vec![PartitionPosition { source: self.shard, start: 0, next: self.emitted + 1, finished, digest: 0 }]
    }

    fn seek(&mut self, positions: &[PartitionPosition]) -> Result<(), SourceError> {
        let Some(p) = positions.iter().find(|p| p.source == self.shard) else { return Ok(()) };
        let skip = p.next.saturating_sub(1).saturating_sub(self.emitted);
        for _ in 0..skip {
            if self.generator.next().is_none() {
                break;
            }
            self.emitted += 1;
        }
        self.resumed_at = self.emitted;
        self.started = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeking_to_reported_positions_replays_the_rest() {
        let config = GeneratorConfig { trees: 50, bad_fraction: 0.05, ..Default::default() };
        for peers in [1, 2, 3] {
            for cut in [0, 1, 99, 500] {
                let config = config.clone();
                crate::seek_contract::check(
                    &move |w, n| Box::new(GeneratorSource::new(config.clone(), w, n, false, Some(1_200))),
                    peers,
                    cut,
                    usize::MAX,
                );
            }
        }
    }
}
