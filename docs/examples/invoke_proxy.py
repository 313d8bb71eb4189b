"""Call any Keap REST endpoint through keapalive's keap-proxy from Python (boto3).

Run: KEAP_PROXY_FUNCTION=keapalive-dev-keap-proxy python invoke_proxy.py \
       '{"method": "GET", "path": "/v1/contacts", "query": {"email": "ada@example.com"}}'
The argument is the proxy request (docs/keap-proxy.md); the function is the stage's
keap-proxy (keapalive-<stage>-keap-proxy). AWS credentials, region and endpoint come from the standard
environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_LAMBDA for a local endpoint, ...).

Exit codes: 0 Keap answered (any status: a 404 is data), 2 fix the request, 3 re-authorize the
connection, 4 retry later, 5 Keap may have applied a POST or PATCH: check before sending it again.
"""

import json
import os
import re
import sys
import time

import boto3
from botocore.config import Config

FUNCTION_NAME = os.environ.get("KEAP_PROXY_FUNCTION", "keapalive-dev-keap-proxy")

# The SDK's own retries are off and its read timeout is above the function's Timeout (30 s):
# boto3 re-invokes after a read timeout or a 5xx from Lambda, which would send a POST twice.
# This caller retries by itself, only where repeating is safe.
lambda_client = boto3.client(
    "lambda",
    config=Config(read_timeout=40, connect_timeout=5, retries={"total_max_attempts": 1}),
)

NOT_REPEATABLE = {"POST", "PATCH"}  # a second POST creates a second record
MAX_WAIT_SECS = 10  # longer throttles: give up and let the caller come back later


class ProxyError(Exception):
    def __init__(self, error_type, message, exit_code, retry_after_secs=None):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.exit_code = exit_code
        self.retry_after_secs = retry_after_secs


def classify(error_type, message, method):
    """The function's errorType (and, for Unavailable, its message) says what to do next."""
    if error_type == "ValidationError":  # no Keap request was made
        return ProxyError(error_type, message + " (fix the request; do not retry it)", 2)
    if error_type == "ResponseTooLarge":  # Keap did it; the answer does not fit in Lambda's
        return ProxyError(error_type, message + " (ask for less: limit/offset)", 2)
    if error_type == "NotAuthorized":
        return ProxyError(error_type, message + " (re-authorize the connection, then retry)", 3)
    if error_type == "RateLimited":  # nothing was applied
        wait = re.search(r"retry_after_secs=(\d+)$", message)
        secs = int(wait.group(1)) if wait else 60
        return ProxyError(error_type, f"{message} (retry in {secs} s)", 4, secs)
    if method in NOT_REPEATABLE and "nothing was applied" not in message:
        return ProxyError(
            error_type, message + " (Keap may have applied it: check before sending it again)", 5
        )
    return ProxyError(error_type, message + " (retry later)", 4)


def call_keap(request):
    """Keap's answer {"status", "headers", "body", "body_encoding"}, or raises ProxyError."""
    method = request.get("method", "")
    try:
        response = lambda_client.invoke(
            FunctionName=FUNCTION_NAME, Payload=json.dumps(request).encode("utf-8")
        )
    except Exception as error:  # no answer from Lambda: the function may have run
        raise classify("Invoke", f"the invocation failed: {error}", method) from error
    payload = json.loads(response["Payload"].read() or b"null")
    if "FunctionError" in response:
        raise classify(payload.get("errorType", "Unknown"), payload.get("errorMessage", ""), method)
    return payload


def call_with_retries(request, attempts=3):
    for attempt in range(1, attempts + 1):
        try:
            return call_keap(request)
        except ProxyError as error:
            retryable = error.exit_code == 4 and (error.retry_after_secs or 1) <= MAX_WAIT_SECS
            if not retryable or attempt == attempts:
                raise
            delay = error.retry_after_secs or 2**attempt
            print(f"{error} (retrying in {delay} s)", file=sys.stderr)
            time.sleep(delay)


def main():
    request = json.loads(sys.argv[1])
    request.setdefault("connection_id", "default")
    try:
        answer = call_with_retries(request)
    except ProxyError as error:
        print(error, file=sys.stderr)
        return error.exit_code
    print("answer:", json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
