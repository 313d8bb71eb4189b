#!/usr/bin/env bash
# Call any Keap REST endpoint through keapalive's keap-proxy with the AWS CLI (v2 or v1).
#
# Run: KEAP_PROXY_FUNCTION=keapalive-dev-keap-proxy ./invoke_proxy.sh [proxy_request.json]
# The file is the proxy request (docs/keap-proxy.md); the function is the stage's keap-proxy
# (keapalive-<stage>-keap-proxy); credentials, region and endpoint come from the standard AWS
# environment. Exit codes: 0 Keap answered (any status: a 404 is data), 2 fix the request,
# 3 re-authorize the connection, 4 retry later, 5 Keap may have applied a POST or PATCH: check
# before sending it again.
set -euo pipefail

function_name="${KEAP_PROXY_FUNCTION:-keapalive-dev-keap-proxy}"
request="${1:-$(dirname "$0")/proxy_request.json}"
response="$(mktemp)"
trap 'rm -f "$response"' EXIT
method="$(sed -n 's/.*"method": *"\([A-Z]*\)".*/\1/p' "$request")"

# The CLI's own retries off (AWS_MAX_ATTEMPTS=1) and its read timeout above the function's
# Timeout (30 s): a CLI that re-invokes after a timeout or a 5xx from Lambda sends a POST twice.
# fileb:// sends the file as the payload, unchanged, with CLI v1 and v2 alike.
if ! function_error="$(AWS_MAX_ATTEMPTS=1 aws lambda invoke --function-name "$function_name" \
  --cli-read-timeout 40 --cli-connect-timeout 5 \
  --payload "fileb://$request" --query FunctionError --output text "$response")"; then
  case "$method" in
    POST | PATCH)
      echo "Invoke: no answer from Lambda (Keap may have applied it: check before sending it again)" >&2
      exit 5 ;;
    *)
      echo "Invoke: no answer from Lambda (retry later)" >&2
      exit 4 ;;
  esac
fi

if [ "$function_error" = "None" ]; then
  echo "answer: $(cat "$response")"
  exit 0
fi

# A function error: the response is {"errorType": "...", "errorMessage": "..."}.
error_type="$(sed -n 's/.*"errorType": *"\([A-Za-z]*\)".*/\1/p' "$response")"
case "$error_type" in
  ValidationError | ResponseTooLarge)
    echo "$error_type: fix the request (or ask for less), do not retry it: $(cat "$response")" >&2
    exit 2 ;;
  NotAuthorized)
    echo "NotAuthorized: re-authorize the connection, then retry: $(cat "$response")" >&2
    exit 3 ;;
  RateLimited)
    # The message ends with retry_after_secs=<N>; nothing was applied.
    secs="$(sed -n 's/.*retry_after_secs=\([0-9]*\)".*/\1/p' "$response")"
    echo "RateLimited: retry in ${secs:-60} s: $(cat "$response")" >&2
    exit 4 ;;
esac
if [[ "$method" =~ ^(POST|PATCH)$ ]] && ! grep -q "nothing was applied" "$response"; then
  echo "${error_type:-$function_error}: Keap may have applied it, check before sending it again: $(cat "$response")" >&2
  exit 5
fi
echo "${error_type:-$function_error}: retry later: $(cat "$response")" >&2
exit 4
