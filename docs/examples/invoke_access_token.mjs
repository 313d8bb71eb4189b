// Call Keap with your own HTTP client and a token from keapalive's access-token (Node, AWS SDK v3).
//
// Run: ACCESS_TOKEN_FUNCTION=keapalive-dev-access-token node invoke_access_token.mjs \
//        '/v1/contacts?limit=1' '/v1/account/profile'
// Each argument is a Keap REST path (with its query) sent as a GET. The token is asked for once
// and cached until 5 minutes before it expires; a 401 from Keap is reported with the token's
// `generation` (keapalive checks it and, if Keap really refuses it, rotates once) and the request
// is sent once more. Never refresh the token yourself: keapalive holds the only refresh token.
//
// Exit codes: 0 Keap answered every request (any status but a second 401), 2 fix the request,
// 3 re-authorize the connection, 4 retry later.

import { InvokeCommand, LambdaClient } from "@aws-sdk/client-lambda";

const FUNCTION_NAME = process.env.ACCESS_TOKEN_FUNCTION ?? "keapalive-dev-access-token";
const CONNECTION_ID = process.env.KEAP_CONNECTION_ID ?? "default";
const MARGIN_SECS = 300; // ask again this long before the token expires
const EXIT_CODES = { ValidationError: 2, NotAuthorized: 3 };

const lambda = new LambdaClient({});

class TokenError extends Error {
  constructor(errorType, message) {
    super(`${errorType}: ${message}`);
    this.exitCode = EXIT_CODES[errorType] ?? 4;
  }
}

async function invoke(request) {
  const response = await lambda.send(
    new InvokeCommand({ FunctionName: FUNCTION_NAME, Payload: JSON.stringify(request) }),
  );
  const payload = JSON.parse(new TextDecoder().decode(response.Payload) || "null");
  if (response.FunctionError) {
    throw new TokenError(payload?.errorType ?? "Unknown", payload?.errorMessage ?? "");
  }
  return payload;
}

// The connection's token, cached until `expires_at` minus a margin.
class KeapToken {
  current = null;

  async get() {
    if (this.current === null || Date.now() / 1000 >= this.current.expires_at - MARGIN_SECS) {
      this.current = await invoke({ connection_id: CONNECTION_ID, min_valid_secs: MARGIN_SECS + 60 });
    }
    return this.current;
  }

  // Keap answered 401: report the generation we were given, take what comes back.
  async rejected() {
    this.current = await invoke({
      connection_id: CONNECTION_ID,
      rejected_generation: this.current.generation,
    });
    return this.current;
  }
}

async function keapGet(token, path) {
  let current = await token.get();
  for (const attempt of [1, 2]) {
    const response = await fetch(current.api_base_url + path, {
      headers: { Authorization: `Bearer ${current.access_token}`, Accept: "application/json" },
    });
    if (response.status !== 401 || attempt === 2) {
      return response;
    }
    current = await token.rejected();
  }
}

const token = new KeapToken();
try {
  for (const path of process.argv.slice(2)) {
    const response = await keapGet(token, path);
    console.log(`GET ${path.split("?")[0]}: status ${response.status}`);
    if (response.status === 401) {
      console.error("Keap still refuses the token: retry later");
      process.exit(4);
    }
  }
} catch (error) {
  console.error(String(error.message ?? error));
  process.exit(error.exitCode ?? 4);
}
