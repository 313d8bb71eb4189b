"""Call Keap with your own HTTP client and a token from keapalive's access-token (Python).

Run: ACCESS_TOKEN_FUNCTION=keapalive-dev-access-token python invoke_access_token.py \
       '/v1/contacts?limit=1' '/v1/account/profile'
Each argument is a Keap REST path (with its query) sent as a GET. The token is asked for once and
cached until 5 minutes before it expires; a 401 from Keap is reported with the token's
`generation` (keapalive checks it and, if Keap really refuses it, rotates once) and the request
is sent once more. Never refresh the token yourself: keapalive holds the only refresh token.

Exit codes: 0 Keap answered every request (any status but a second 401), 2 fix the request,
3 re-authorize the connection, 4 retry later.
"""

import json
import os
import sys
import time

import boto3
import requests
from botocore.config import Config

FUNCTION_NAME = os.environ.get("ACCESS_TOKEN_FUNCTION", "keapalive-dev-access-token")
CONNECTION_ID = os.environ.get("KEAP_CONNECTION_ID", "default")
MARGIN_SECS = 300  # ask again this long before the token expires

lambda_client = boto3.client("lambda", config=Config(read_timeout=35, retries={"mode": "standard"}))


class TokenError(Exception):
    def __init__(self, error_type, message, exit_code):
        super().__init__(f"{error_type}: {message}")
        self.exit_code = exit_code


EXIT_CODES = {"ValidationError": 2, "NotAuthorized": 3}


def invoke(request):
    response = lambda_client.invoke(FunctionName=FUNCTION_NAME, Payload=json.dumps(request).encode())
    payload = json.loads(response["Payload"].read() or b"null")
    if "FunctionError" in response:
        error_type = payload.get("errorType", "Unknown")
        raise TokenError(error_type, payload.get("errorMessage", ""), EXIT_CODES.get(error_type, 4))
    return payload


class KeapToken:
    """The connection's token, cached until `expires_at` minus a margin."""

    def __init__(self):
        self.current = None

    def get(self):
        if self.current is None or time.time() >= self.current["expires_at"] - MARGIN_SECS:
            self.current = invoke({"connection_id": CONNECTION_ID, "min_valid_secs": MARGIN_SECS + 60})
        return self.current

    def rejected(self):
        """Keap answered 401: report the generation we were given, take what comes back."""
        self.current = invoke(
            {"connection_id": CONNECTION_ID, "rejected_generation": self.current["generation"]}
        )
        return self.current


def keap_get(token, path):
    current = token.get()
    for attempt in (1, 2):
        response = requests.get(
            current["api_base_url"] + path,
            headers={"Authorization": f"Bearer {current['access_token']}", "Accept": "application/json"},
            timeout=30,
        )
        if response.status_code != 401 or attempt == 2:
            return response
        current = token.rejected()
    return response


def main():
    token = KeapToken()
    try:
        for path in sys.argv[1:]:
            response = keap_get(token, path)
            print(f"GET {path.split('?')[0]}: status {response.status_code}")
            if response.status_code == 401:
                print("Keap still refuses the token: retry later", file=sys.stderr)
                return 4
    except TokenError as error:
        print(error, file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
