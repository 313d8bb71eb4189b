//! The SQS client dead letters go through: only contact-upsert's SQS batches use it, and no
//! commit does, so it is built the first time it is needed, then kept.

use std::sync::{Arc, OnceLock};

#[derive(Clone, Debug)]
pub struct LazySqs {
    config: aws_sdk_sqs::Config,
    client: Arc<OnceLock<aws_sdk_sqs::Client>>,
}

impl LazySqs {
    /// `config` carries the timeouts every AWS call of keapalive has (the composition root
    /// sets them).
    pub fn new(config: aws_sdk_sqs::Config) -> Self {
        Self {
            config,
            client: Arc::new(OnceLock::new()),
        }
    }

    pub fn get(&self) -> &aws_sdk_sqs::Client {
        self.client
            .get_or_init(|| aws_sdk_sqs::Client::from_conf(self.config.clone()))
    }
}
