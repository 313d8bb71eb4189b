// Call any Keap REST endpoint through keapalive's keap-proxy from Node (AWS SDK for JavaScript v3).
//
// npm install @aws-sdk/client-lambda
// Run: KEAP_PROXY_FUNCTION=keapalive-dev-keap-proxy node invoke_proxy.mjs \
//        '{"method": "GET", "path": "/v1/contacts", "query": {"email": "ada@example.com"}}'
// The argument is the proxy request (docs/keap-proxy.md); the function is the stage's keap-proxy
// (keapalive-<stage>-keap-proxy). AWS credentials, region and endpoint come from the standard
// environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_LAMBDA for a local endpoint, ...).
//
// Exit codes: 0 Keap answered (any status: a 404 is data), 2 fix the request, 3 re-authorize the
// connection, 4 retry later, 5 Keap may have applied a POST or PATCH: check before sending it again.

import { InvokeCommand, LambdaClient } from "@aws-sdk/client-lambda";

const functionName = process.env.KEAP_PROXY_FUNCTION ?? "keapalive-dev-keap-proxy";

// The SDK's own retries are off (maxAttempts: 1) and its socket timeout is above the function's
// Timeout (30 s): an SDK that re-invokes after a timeout or a 5xx from Lambda would send a POST
// twice. This caller retries by itself, only where repeating is safe.
const lambda = new LambdaClient({
  maxAttempts: 1,
  requestHandler: { requestTimeout: 40_000, connectionTimeout: 5_000 },
});

const NOT_REPEATABLE = new Set(["POST", "PATCH"]); // a second POST creates a second record
const MAX_WAIT_SECS = 10; // longer throttles: give up and let the caller come back later

export class ProxyError extends Error {
  constructor(errorType, message, exitCode, retryAfterSecs) {
    super(`${errorType}: ${message}`);
    this.errorType = errorType;
    this.exitCode = exitCode;
    this.retryAfterSecs = retryAfterSecs;
  }
}

/** The function's errorType (and, for Unavailable, its message) says what to do next. */
function classify(errorType, message, method) {
  switch (errorType) {
    case "ValidationError": // no Keap request was made
      return new ProxyError(errorType, `${message} (fix the request; do not retry it)`, 2);
    case "ResponseTooLarge": // Keap did it; the answer does not fit in Lambda's
      return new ProxyError(errorType, `${message} (ask for less: limit/offset)`, 2);
    case "NotAuthorized":
      return new ProxyError(errorType, `${message} (re-authorize the connection, then retry)`, 3);
    case "RateLimited": {
      // nothing was applied
      const wait = /retry_after_secs=(\d+)$/.exec(message);
      const secs = wait ? Number(wait[1]) : 60;
      return new ProxyError(errorType, `${message} (retry in ${secs} s)`, 4, secs);
    }
  }
  if (NOT_REPEATABLE.has(method) && !message.includes("nothing was applied")) {
    return new ProxyError(
      errorType,
      `${message} (Keap may have applied it: check before sending it again)`,
      5,
    );
  }
  return new ProxyError(errorType, `${message} (retry later)`, 4);
}

/** Resolves to Keap's answer {status, headers, body, body_encoding}; rejects with ProxyError. */
export async function callKeap(request) {
  let response;
  try {
    response = await lambda.send(
      new InvokeCommand({
        FunctionName: functionName,
        Payload: new TextEncoder().encode(JSON.stringify(request)),
      }),
    );
  } catch (error) {
    // No answer from Lambda: the function may have run.
    throw classify("Invoke", `the invocation failed: ${error.name}: ${error.message}`, request.method);
  }
  const text = response.Payload ? new TextDecoder().decode(response.Payload) : "null";
  const payload = JSON.parse(text || "null");
  if (response.FunctionError) {
    throw classify(payload?.errorType ?? "Unknown", payload?.errorMessage ?? "", request.method);
  }
  return payload;
}

export async function callWithRetries(request, attempts = 3) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await callKeap(request);
    } catch (error) {
      const wait = error.retryAfterSecs ?? 2 ** attempt;
      const retryable = error instanceof ProxyError && error.exitCode === 4 && wait <= MAX_WAIT_SECS;
      if (!retryable || attempt === attempts) throw error;
      console.error(`${error.message} (retrying in ${wait} s)`);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
  }
}

async function main() {
  const request = { connection_id: "default", ...JSON.parse(process.argv[2]) };
  try {
    const answer = await callWithRetries(request);
    console.log("answer:", JSON.stringify(answer));
    return 0;
  } catch (error) {
    if (!(error instanceof ProxyError)) throw error;
    console.error(error.message);
    return error.exitCode;
  }
}

process.exitCode = await main();
