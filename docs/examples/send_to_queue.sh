#!/usr/bin/env bash
# Queue a contact upsert with the AWS CLI. The queue URL is the stack output `UpsertQueueUrl`.
# Run: UPSERT_QUEUE_URL=https://sqs.<region>.amazonaws.com/<account>/<queue> ./send_to_queue.sh [request.json]
set -euo pipefail
request="${1:-$(dirname "$0")/request.json}"

# Only for a local emulator: AWS CLI v1 ignores AWS_ENDPOINT_URL_SQS (it pins SQS to its legacy
# endpoint), so pass it on explicitly. Against AWS, leave the variable unset.
endpoint=()
if [ -n "${AWS_ENDPOINT_URL_SQS:-}" ]; then
  endpoint=(--endpoint-url "$AWS_ENDPOINT_URL_SQS")
fi

aws sqs send-message ${endpoint[@]+"${endpoint[@]}"} --queue-url "$UPSERT_QUEUE_URL" \
  --message-body "file://$request" --query MessageId --output text
