//! Kafka flags of `treeai run` and `treeai produce`.

use crate::config::KafkaFile;
use anyhow::{bail, Context};
use clap::Args;
use std::time::Duration;
use treeai_connectors::kafka::{KafkaConfig, StartOffset};

/// Which Kafka cluster, topics and librdkafka settings (each also in the
/// config file's `[kafka]` table; flags and `TREEAI_*` variables win).
#[derive(Args, Clone, Debug, Default)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]: read the input topics instead of the generator.
    #[arg(long, env = "TREEAI_BROKERS")]
    pub brokers: Option<String>,
    /// Any librdkafka property, KEY=VALUE (repeatable): security.protocol, sasl.*, ssl.*, fetch sizes.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
    /// A file of librdkafka properties, one KEY=VALUE a line (`#` comments), as Kafka's
    /// client.properties: where secrets (sasl.password, ssl.key.password) belong, rather than the
    /// command line. Also `TREEAI_KAFKA_PROPERTY_<KEY>` variables (`_` for `.`, e.g.
    /// TREEAI_KAFKA_PROPERTY_SASL_PASSWORD). Values are never logged.
    #[arg(long, env = "TREEAI_KAFKA_PROPERTY_FILE", value_name = "FILE")]
    pub kafka_property_file: Option<std::path::PathBuf>,
    /// Where partitions without a stored offset start: earliest or latest [default: earliest].
    #[arg(long, env = "TREEAI_KAFKA_START")]
    pub kafka_start: Option<String>,
    /// Tree events topic [default: treeai.trees].
    #[arg(long)]
    pub trees_topic: Option<String>,
    /// Assessment events topic [default: treeai.assessments].
    #[arg(long)]
    pub assessments_topic: Option<String>,
    /// Readings topic [default: treeai.readings].
    #[arg(long)]
    pub readings_topic: Option<String>,
    /// Alerts topic (output) [default: treeai.alerts].
    #[arg(long)]
    pub alerts_topic: Option<String>,
    /// Dead-letter topic (output) [default: treeai.deadletter].
    #[arg(long)]
    pub deadletter_topic: Option<String>,
}

impl KafkaArgs {
    /// The Kafka configuration if brokers are given (flags/env over the file).
    pub fn config(&self, file: &KafkaFile) -> anyhow::Result<Option<KafkaConfig>> {
        let Some(brokers) = self.brokers.clone().or_else(|| file.brokers.clone()) else {
            if !self.kafka_property.is_empty() {
                bail!("--kafka-property needs --brokers");
            }
            return Ok(None);
        };
        if brokers.trim().is_empty() {
            bail!("--brokers is empty");
        }
        let mut config = KafkaConfig::new(brokers);
        if let Some(start) = self.kafka_start.as_deref().or(file.start.as_deref()) {
            config.start = start.parse::<StartOffset>().map_err(anyhow::Error::msg).context("--kafka-start")?;
        }
        let t = &mut config.topics;
        let f = &file.topics;
        for (slot, flag, from_file) in [
            (&mut t.trees, &self.trees_topic, &f.trees),
            (&mut t.assessments, &self.assessments_topic, &f.assessments),
            (&mut t.readings, &self.readings_topic, &f.readings),
            (&mut t.alerts, &self.alerts_topic, &f.alerts),
            (&mut t.deadletter, &self.deadletter_topic, &f.deadletter),
        ] {
            if let Some(name) = flag.clone().or_else(|| from_file.clone()) {
                *slot = name;
            }
        }
        if let Some(ms) = file.metadata_refresh_ms {
            config.metadata_refresh = Duration::from_millis(ms.max(100));
        }
        // Lowest first: the config file, the property file, TREEAI_KAFKA_PROPERTY_* variables, flags.
        config.properties = file.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(path) = &self.kafka_property_file {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--kafka-property-file {}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                let Some((k, v)) = line.split_once('=') else {
                    bail!("--kafka-property-file {} line {}: expected KEY=VALUE", path.display(), n + 1);
                };
                config.properties.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut from_env: Vec<(String, String)> = std::env::vars()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("TREEAI_KAFKA_PROPERTY_")?;
                (key != "FILE" && !key.is_empty()).then(|| (key.to_ascii_lowercase().replace('_', "."), v))
            })
            .collect();
        from_env.sort();
        config.properties.extend(from_env);
        for kv in &self.kafka_property {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--kafka-property {kv:?}: expected KEY=VALUE");
            };
            config.properties.push((k.trim().to_string(), v.to_string()));
        }
        Ok(Some(config))
    }
}
