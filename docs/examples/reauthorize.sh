#!/usr/bin/env bash
# The "connections-need-reauthorization" alarm fired: get a fresh authorize link and open it in a
# browser signed in to the Keap account (it works for 10 minutes, once).
#
# Run: OPERATOR_FUNCTION=keapalive-dev-operator ./reauthorize.sh [connection_id]
# The function name is the stack output `OperatorFunctionName` (the operator commands live there,
# never in the public oauth-callback function).
set -euo pipefail

function_name="${OPERATOR_FUNCTION:-keapalive-dev-operator}"
connection_id="${1:-default}"
request="$(mktemp)"
response="$(mktemp)"
trap 'rm -f "$request" "$response"' EXIT

printf '{"start_authorization": {"connection_id": "%s"}}' "$connection_id" > "$request"
function_error="$(aws lambda invoke --function-name "$function_name" \
  --payload "fileb://$request" --query FunctionError --output text "$response")"
if [ "$function_error" != "None" ]; then
  echo "start_authorization failed: $(cat "$response")" >&2
  exit 1
fi
authorize_url="$(sed -n 's/.*"authorize_url": *"\([^"]*\)".*/\1/p' "$response")"
echo "Open this link (valid for 10 minutes) and allow access for connection '$connection_id':"
echo "$authorize_url"
