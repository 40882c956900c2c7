//! The generator as a source: each worker generates its shard of the trees,
//! paced at `rate / workers` events per second of wall-clock time (or unpaced
//! for benchmarks and tests), up to an optional total count.

use crate::generator::{Generator, GeneratorConfig};
use std::time::Instant;
use treeai_dataflows::event::Position;
use treeai_dataflows::source::{Poll, RawMessage, Source};

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
}

impl GeneratorSource {
    /// Shard `worker` of `peers`. `paced`: hold `config.rate` in wall-clock time.
    /// `count`: total events over all shards (a bounded input), `None` = unbounded.
    pub fn new(config: GeneratorConfig, worker: usize, peers: usize, paced: bool, count: Option<u64>) -> Self {
        let peers = peers.max(1) as u64;
        let shard = worker as u64;
        let paced_rate = paced.then(|| config.rate / peers as f64);
        let limit = count.map(|c| c / peers + u64::from(shard < c % peers));
        GeneratorSource {
            generator: Generator::new(config, shard as u32, peers as u32),
            shard: shard as u32,
            paced_rate,
            limit,
            started: Instant::now(),
            emitted: 0,
        }
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
            let due = (self.started.elapsed().as_secs_f64() * rate) as u64;
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

    fn describe(&self, pos: Position) -> String {
        format!("generator/shard-{}:{}", pos.source, pos.offset)
    }
}
