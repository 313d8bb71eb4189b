// Upsert a Keap contact through keapalive from Node (AWS SDK for JavaScript v3).
//
// npm install @aws-sdk/client-lambda
// Run: CONTACT_UPSERT_FUNCTION=keapalive-dev-contact-upsert node invoke_upsert.mjs ada@example.com
// The function name is the stack output `ContactUpsertFunctionName`. AWS credentials, region and
// endpoint come from the standard environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_LAMBDA
// for a local endpoint, ...).

import { InvokeCommand, LambdaClient } from "@aws-sdk/client-lambda";

const functionName = process.env.CONTACT_UPSERT_FUNCTION ?? "keapalive-dev-contact-upsert";

// The function's errorType tells the caller what to do.
const PERMANENT = new Set(["ValidationError", "KeapRejected"]); // fix the request; never retry it
const NEEDS_HUMAN = new Set(["NotAuthorized"]); // re-authorize the connection, then retry
const TRANSIENT = new Set(["RateLimited", "Unavailable"]); // retry later, with backoff

const lambda = new LambdaClient({});

export class UpsertError extends Error {
  constructor(errorType, message) {
    super(`${errorType}: ${message}`);
    this.errorType = errorType;
    this.retryable = TRANSIENT.has(errorType);
  }
}

/** Resolves to {contact_id, created, tags_applied}; rejects with UpsertError. */
export async function upsertContact(request) {
  const response = await lambda.send(
    new InvokeCommand({
      FunctionName: functionName,
      Payload: new TextEncoder().encode(JSON.stringify(request)),
    }),
  );
  const text = response.Payload ? new TextDecoder().decode(response.Payload) : "null";
  const payload = JSON.parse(text || "null");
  if (response.FunctionError) {
    throw new UpsertError(payload?.errorType ?? "Unknown", payload?.errorMessage ?? "");
  }
  return payload;
}

export async function upsertWithRetries(request, attempts = 3, firstDelayMs = 1000) {
  let delay = firstDelayMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await upsertContact(request);
    } catch (error) {
      if (!(error instanceof UpsertError) || !error.retryable || attempt === attempts) {
        throw error;
      }
      console.error(`${error.message} (retrying in ${delay / 1000} s)`);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay *= 2;
    }
  }
}

async function main() {
  const email = process.argv[2] ?? "ada@example.com";
  const request = {
    connection_id: "default",
    contact: {
      email,
      given_name: "Ada",
      family_name: "Lovelace",
      custom_fields: { "Favorite Color": "blue" },
      tags: ["buttonpushed"],
    },
    match_on: "email",
  };
  try {
    const result = await upsertWithRetries(request);
    console.log("upserted:", JSON.stringify(result));
    return 0;
  } catch (error) {
    if (!(error instanceof UpsertError)) throw error;
    if (PERMANENT.has(error.errorType)) {
      console.error(`${error.message} (fix the request; do not retry it)`);
      return 2;
    }
    if (NEEDS_HUMAN.has(error.errorType)) {
      console.error(`${error.message} (re-authorize the connection, then retry)`);
      return 3;
    }
    console.error(`${error.message} (giving up for now; retry later)`);
    return 4;
  }
}

process.exitCode = await main();
