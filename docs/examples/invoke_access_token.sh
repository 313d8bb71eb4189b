#!/usr/bin/env bash
# Get a Keap access token from keapalive's access-token with the AWS CLI, and call Keap with curl.
#
# Run: ACCESS_TOKEN_FUNCTION=keapalive-dev-access-token ./invoke_access_token.sh '/v1/contacts?limit=1'
# The argument is a Keap REST path (with its query) sent as a GET. A 401 from Keap is reported
# with the token's generation (keapalive checks it and, if Keap really refuses it, rotates once)
# and the request is sent once more. Never refresh the token yourself. Exit codes: 0 Keap
# answered (any status but a second 401), 2 fix the request, 3 re-authorize, 4 retry later.
# (A shell script cannot keep a cache between runs without writing the token to disk: a
# long-running caller keeps it in memory until expires_at minus a margin, as the other examples.)
set -euo pipefail

function_name="${ACCESS_TOKEN_FUNCTION:-keapalive-dev-access-token}"
connection="${KEAP_CONNECTION_ID:-default}"
path="${1:?usage: invoke_access_token.sh /v1/<path>}"
answer="$(mktemp)"
body="$(mktemp)"
request="$(mktemp)"
trap 'rm -f "$answer" "$body" "$request"' EXIT

field() { sed -n "s/.*\"$1\": *\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" "$answer"; }

token() {
  local function_error
  # fileb:// sends the file as the payload, unchanged, with CLI v1 and v2 alike.
  printf '%s' "$1" >"$request"
  function_error="$(aws lambda invoke --function-name "$function_name" --cli-read-timeout 35 \
    --payload "fileb://$request" --query FunctionError --output text "$answer")"
  if [ "$function_error" != "None" ]; then
    local error_type
    error_type="$(field errorType)"
    echo "$error_type: $(cat "$answer")" >&2
    case "$error_type" in
      ValidationError) exit 2 ;;
      NotAuthorized) exit 3 ;;
      *) exit 4 ;;
    esac
  fi
}

token "{\"connection_id\": \"$connection\", \"min_valid_secs\": 360}"
for attempt in 1 2; do
  # The token goes in a header read from stdin, so it never shows in the process list.
  status="$(printf 'header = "Authorization: Bearer %s"\n' "$(field access_token)" |
    curl --silent --config - --output "$body" --write-out '%{http_code}' \
      --header 'Accept: application/json' "$(field api_base_url)$path")"
  if [ "$status" != 401 ] || [ "$attempt" = 2 ]; then
    break
  fi
  token "{\"connection_id\": \"$connection\", \"rejected_generation\": $(field generation)}"
done
echo "GET ${path%%\?*}: status $status"
[ "$status" != 401 ] || { echo "Keap still refuses the token: retry later" >&2; exit 4; }
