"""Upsert a Keap contact through keapalive from Python (boto3).

Run: CONTACT_UPSERT_FUNCTION=keapalive-dev-contact-upsert python invoke_upsert.py ada@example.com
The function name is the stack output `ContactUpsertFunctionName`. AWS credentials, region and
endpoint come from the standard environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_LAMBDA
for a local endpoint, ...).
"""

import json
import os
import sys
import time

import boto3

FUNCTION_NAME = os.environ.get("CONTACT_UPSERT_FUNCTION", "keapalive-dev-contact-upsert")

# The function's errorType tells the caller what to do.
PERMANENT = {"ValidationError", "KeapRejected"}  # fix the request; never retry it as is
NEEDS_HUMAN = {"NotAuthorized"}  # re-authorize the connection, then retry
TRANSIENT = {"RateLimited", "Unavailable"}  # retry later, with backoff

lambda_client = boto3.client("lambda")


class UpsertError(Exception):
    def __init__(self, error_type, message):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    @property
    def retryable(self):
        return self.error_type in TRANSIENT


def upsert_contact(request):
    """Returns {"contact_id", "created", "tags_applied"} or raises UpsertError."""
    response = lambda_client.invoke(
        FunctionName=FUNCTION_NAME,
        Payload=json.dumps(request).encode("utf-8"),
    )
    payload = json.loads(response["Payload"].read() or b"null")
    if "FunctionError" in response:
        raise UpsertError(payload.get("errorType", "Unknown"), payload.get("errorMessage", ""))
    return payload


def upsert_with_retries(request, attempts=3, first_delay=1.0):
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return upsert_contact(request)
        except UpsertError as error:
            if not error.retryable or attempt == attempts:
                raise
            print(f"{error} (retrying in {delay:.0f} s)", file=sys.stderr)
            time.sleep(delay)
            delay *= 2


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
    try:
        result = upsert_with_retries(request)
    except UpsertError as error:
        if error.error_type in PERMANENT:
            print(f"{error} (fix the request; do not retry it)", file=sys.stderr)
            return 2
        if error.error_type in NEEDS_HUMAN:
            print(f"{error} (re-authorize the connection, then retry)", file=sys.stderr)
            return 3
        print(f"{error} (giving up for now; retry later)", file=sys.stderr)
        return 4
    print("upserted:", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
