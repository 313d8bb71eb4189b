"""Queue a contact upsert (boto3): SQS retries failures, the dead-letter queue keeps the rest.

Run: UPSERT_QUEUE_URL=https://sqs.<region>.amazonaws.com/<account>/<queue> python send_to_queue.py ada@example.com
The queue URL is the stack output `UpsertQueueUrl`. The message body is the same JSON as a
direct invocation.
"""

import json
import os
import sys

import boto3


def main():
    email = sys.argv[1] if len(sys.argv) > 1 else "ada@example.com"
    request = {
        "connection_id": "default",
        "contact": {
            "email": email,
            "given_name": "Ada",
            "family_name": "Lovelace",
            "custom_fields": {"Favorite Color": "blue"},
            "tags": ["buttonpushed"],
        },
        "match_on": "email",
    }
    sqs = boto3.client("sqs")
    sent = sqs.send_message(QueueUrl=os.environ["UPSERT_QUEUE_URL"], MessageBody=json.dumps(request))
    print("queued:", sent["MessageId"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
