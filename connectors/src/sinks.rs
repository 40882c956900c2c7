//! In-process sinks: collect dead letters and alerts for a batch job or a test; a tee over several sinks.

use std::sync::{Arc, Mutex};
use treeai_dataflows::event::{Event, Position};
use treeai_dataflows::source::{Alert, DeadLetter, ScoreChange, Sink, SinkFactory};

/// What the workers' [`CollectSink`]s gathered.
#[derive(Debug, Default)]
pub struct Collected {
    /// Rejected messages.
    pub dead_letters: Vec<DeadLetter>,
    /// Alerts.
    pub alerts: Vec<Alert>,
}

/// A sink that appends to a shared [`Collected`], batching per round.
pub struct CollectSink {
    shared: Arc<Mutex<Collected>>,
    local: Collected,
}

impl CollectSink {
    /// A factory of sinks all collecting into `shared`.
    pub fn factory(shared: Arc<Mutex<Collected>>) -> SinkFactory {
        Arc::new(move |_role| {
            Box::new(CollectSink { shared: shared.clone(), local: Collected::default() }) as Box<dyn Sink>
        })
    }
}

impl Sink for CollectSink {
    fn dead_letter(&mut self, letter: DeadLetter) {
        self.local.dead_letters.push(letter);
    }
    fn alert(&mut self, alert: Alert) {
        self.local.alerts.push(alert);
    }
    fn flush(&mut self) {
        if self.local.dead_letters.is_empty() && self.local.alerts.is_empty() {
            return;
        }
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.dead_letters.append(&mut self.local.dead_letters);
        shared.alerts.append(&mut self.local.alerts);
    }
}

/// A sink that passes everything to several sinks.
pub struct Tee(pub Vec<Box<dyn Sink>>);

impl Tee {
    /// A factory of tees over the sinks of several factories.
    pub fn factory(factories: Vec<SinkFactory>) -> SinkFactory {
        Arc::new(move |role| Box::new(Tee(factories.iter().map(|f| f(role)).collect())) as Box<dyn Sink>)
    }
}

impl Sink for Tee {
    fn dead_letter(&mut self, letter: DeadLetter) {
        for s in &mut self.0 {
            s.dead_letter(letter.clone());
        }
    }
    fn alert(&mut self, alert: Alert) {
        for s in &mut self.0 {
            s.alert(alert.clone());
        }
    }
    fn event(&mut self, event: &Event, pos: Position, arrival_ms: i64) {
        for s in &mut self.0 {
            s.event(event, pos, arrival_ms);
        }
    }
    fn score_change(&mut self, change: &ScoreChange) {
        for s in &mut self.0 {
            s.score_change(change);
        }
    }
    fn flush(&mut self) {
        for s in &mut self.0 {
            s.flush();
        }
    }
    fn checkpoint(&mut self, number: u64) -> Vec<(String, i64)> {
        self.0.iter_mut().flat_map(|s| s.checkpoint(number)).collect()
    }
    fn close(&mut self) {
        for s in &mut self.0 {
            s.close();
        }
    }
}
