#!/usr/bin/env bash
# Upsert a Keap contact through keapalive with the AWS CLI (v2 or v1).
#
# Run: CONTACT_UPSERT_FUNCTION=keapalive-dev-contact-upsert ./invoke_upsert.sh [request.json]
# The function name is the stack output `ContactUpsertFunctionName`; credentials, region and
# endpoint come from the standard AWS environment.
set -euo pipefail

function_name="${CONTACT_UPSERT_FUNCTION:-keapalive-dev-contact-upsert}"
request="${1:-$(dirname "$0")/request.json}"
response="$(mktemp)"
trap 'rm -f "$response"' EXIT

# fileb:// sends the file as the payload, unchanged, with CLI v1 and v2 alike.
function_error="$(aws lambda invoke --function-name "$function_name" \
  --payload "fileb://$request" --query FunctionError --output text "$response")"

if [ "$function_error" = "None" ]; then
  echo "upserted: $(cat "$response")"
  exit 0
fi

# A function error: the response is {"errorType": "...", "errorMessage": "..."}.
error_type="$(sed -n 's/.*"errorType": *"\([A-Za-z]*\)".*/\1/p' "$response")"
case "$error_type" in
  ValidationError | KeapRejected)
    echo "$error_type: fix the request, do not retry it: $(cat "$response")" >&2
    exit 2 ;;
  NotAuthorized)
    echo "NotAuthorized: re-authorize the connection, then retry: $(cat "$response")" >&2
    exit 3 ;;
  *)
    echo "${error_type:-$function_error}: retry later: $(cat "$response")" >&2
    exit 4 ;;
esac
