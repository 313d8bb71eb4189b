"""Queue a contact upsert on the FIFO queue (boto3): in order per contact.

Run: UPSERT_QUEUE_URL=https://sqs.<region>.amazonaws.com/<account>/<queue>.fifo python send_to_fifo_queue.py ada@example.com
The queue URL is the stack output `UpsertQueueUrl` of a stack deployed with
`UpsertQueueType=fifo` (docs/calling.md, "Queue types").
"""

import os
import sys

# The part docs/calling.md quotes:
import hashlib, json, uuid
import boto3

def send_upsert(queue_url, request):
    email = request["contact"]["email"].strip().lower()
    connection_id = request.get("connection_id", "default")
    group = hashlib.sha256(f"{connection_id}\n{email}".encode()).hexdigest()
    boto3.client("sqs").send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(request),
        MessageGroupId=group,
        MessageDeduplicationId=str(uuid.uuid4()),  # or your event's own id
    )
# (end of the quoted part)


def main():
    email = sys.argv[1] if len(sys.argv) > 1 else "ada@example.com"
    given_name = sys.argv[2] if len(sys.argv) > 2 else "Ada"
    request = {
        "connection_id": "default",
        "contact": {"email": email, "given_name": given_name},
        "match_on": "email",
    }
    send_upsert(os.environ["UPSERT_QUEUE_URL"], request)
    print("queued")
    return 0


if __name__ == "__main__":
    sys.exit(main())
