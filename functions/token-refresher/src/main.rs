//! token-refresher: refreshes every due Keap connection on an EventBridge schedule, or one
//! connection on an operator's request. The protocol lives in `keapalive::refresh`.

use keapalive::config::{Config, Requirements};
use keapalive::lambda_deadline::DeadlinePolicy;
use keapalive::refresh::RefresherEvent;
use keapalive::telemetry;
use keapalive::wiring;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init_logging();
    let config = Config::from_env(Requirements::default())?;
    let stage = config.stage.clone();
    let concurrency = config.refresh_concurrency;
    let deadlines = DeadlinePolicy::from_config(&config);
    let clients = wiring::init(config).await?;
    let refresher = clients.refresher();

    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let (refresher, stage, deadlines) = (&refresher, &stage, &deadlines);
        async move {
            let deadline = deadlines.deadline(event.context.deadline);
            let request = RefresherEvent::parse(event.payload)?;
            let run = refresher.handle(request, deadline, concurrency).await?;
            run.metrics.emit(stage);
            Ok::<_, Diagnostic>(run.summary)
        }
    }))
    .await
}
