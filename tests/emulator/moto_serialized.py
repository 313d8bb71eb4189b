#!/usr/bin/env python3
"""moto's server with every request serialized, plus fault injection and request counting.

moto checks a ConditionExpression and writes without a lock, so two concurrent conditional
writes can both succeed where DynamoDB lets exactly one through. Holding one lock around each
request makes race tests fail only for the code under test, never for the emulator.

Faults model what real networks do to real DynamoDB (docs/design.md, "The fault model"):
  mode "error"            answer the error, apply nothing (the default)
  mode "apply_then_error" let moto apply the request, then answer the error instead (a write that
                          landed and lost its answer; the SDK retries it)
  mode "apply_then_hang"  let moto apply the request, then hold the answer for hang_secs
  mode "hang"             hold the request for hang_secs, then answer the error, apply nothing
  mode "failed_entries"   EventBridge PutEvents only: answer 200 with every entry failed
                          (FailedEntryCount = the number of entries, ErrorCode = error_type),
                          publish nothing
Faults target any JSON-protocol operation by its X-Amz-Target: "DynamoDB_20120810.UpdateItem",
"AWSEvents.PutEvents" (a PutEvents fault in mode "error" fails the whole request).
Hangs sleep outside the lock that serialises moto, so other requests go on meanwhile.
"probability" < 1 picks each matching request at random (times counts only picked ones).

Control endpoints on the same port (never forwarded to moto):
  POST   /_keapalive/faults    {"target", "error_type", "status"=400, "times"=1, "body_contains"?: str | [str],
                                "mode"="error", "hang_secs"=0, "probability"=1}
                               → {"ok": true, "id": N}
  DELETE /_keapalive/faults[?body_contains=NEEDLE]   all faults, or only those scoped by NEEDLE
  GET    /_keapalive/faults/fired?id=N   {"fired": count}: how many requests fault N answered
                                         (kept after the fault is used up or cleared, so a test
                                         can prove its fault matched a request)
  GET    /_keapalive/requests[?resource=NAME]   {"<X-Amz-Target or Action>": count, ...}
  DELETE /_keapalive/requests                    (also clears the log below)
  GET    /_keapalive/requests/log   [{"caller", "service", "action", "table", "index", "key_prefixes",
                                      "projection", "select", "return_values",
                                      "return_values_on_condition_check_failure", "bus",
                                      "secret", "queue", "items"?, "entries"?}, ...] every request in order, with
                                   what an IAM policy's resources and condition keys see
                                   (infra/checks evaluates it against a function's role);
                                   caller = the access key id that signed it; items = a
                                   TransactWriteItems' items, each as its own action;
                                   entries = a PutEvents' entries (bus, source, detail_type)
"""

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.parse

from moto.moto_server.threaded_moto_server import (
    DomainDispatcherApplication,
    create_backend_app,
)
from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import make_server

CONTROL_PREFIX = "/_keapalive/"
DYNAMODB_ERROR_NAMESPACE = "com.amazonaws.dynamodb.v20120810#"


class Fault:
    def __init__(self, spec):
        self.target = spec["target"]
        self.error_type = spec["error_type"]
        self.status = int(spec.get("status", 400))
        self.times = int(spec.get("times", 1))
        needles = spec.get("body_contains")
        # One substring or a list of them, all of which must occur.
        self.body_contains = [needles] if isinstance(needles, str) else needles
        self.mode = spec.get("mode", "error")
        self.hang_secs = float(spec.get("hang_secs", 0))
        self.probability = float(spec.get("probability", 1))
        self.id = None
        if self.times < 1:
            raise ValueError("times must be >= 1")
        if self.mode not in ("error", "apply_then_error", "apply_then_hang", "hang", "failed_entries"):
            raise ValueError(f"unknown mode {self.mode!r}")

    def matches(self, target, body):
        if self.target != target:
            return False
        if self.body_contains is None:
            return True
        return all(n.encode("utf-8") in body for n in self.body_contains)


def read_body(environ):
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        return stream.read(int(length))
    if environ.get("wsgi.input_terminated"):
        # Chunked upload: werkzeug has already bounded the stream.
        return stream.read()
    return b""


def request_target(environ, body):
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target
    # Query-protocol services name the operation in an Action parameter.
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if "Action" in form:
            return form["Action"][0]
    return f'{environ.get("REQUEST_METHOD", "?")} {environ.get("PATH_INFO", "/")}'


def request_resources(body):
    """Names of the tables, secrets and queues a JSON-protocol request touches.

    Lets one test (or benchmark) count its own requests while other tests share the emulator.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set()
    if not isinstance(payload, dict):
        return set()
    resources = set()
    for key in ("TableName", "SecretId", "Name", "QueueUrl", "QueueName"):
        value = payload.get(key)
        if isinstance(value, str):
            resources.add(value)
    request_items = payload.get("RequestItems")
    if isinstance(request_items, dict):
        resources.update(request_items.keys())
    for item in payload.get("TransactItems") or []:
        if isinstance(item, dict):
            for operation in item.values():
                if isinstance(operation, dict) and isinstance(operation.get("TableName"), str):
                    resources.add(operation["TableName"])
    return resources


# X-Amz-Target prefix -> the IAM service prefix of its actions.
SERVICE_OF_TARGET_PREFIX = {
    "DynamoDB_20120810": "dynamodb",
    "secretsmanager": "secretsmanager",
    "AmazonSQS": "sqs",
    "AWSEvents": "events",
}


def caller_of(environ):
    """The access key id in the SigV4 Authorization header (each rehearsed function signs with
    its own), or None."""
    match = re.search(r"Credential=([^/,\s]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1) if match else None


def leading_key_prefix(item_key):
    """`conn#` of {"pk": {"S": "conn#default"}}: what dynamodb:LeadingKeys patterns match."""
    if not isinstance(item_key, dict):
        return None
    # The partition key is `pk` in keapalive's table; an Item has other string attributes too.
    values = [item_key["pk"]] if "pk" in item_key else item_key.values()
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("S"), str):
            text = value["S"]
            return text.split("#", 1)[0] + "#" if "#" in text else text
    return None


def projected_attributes(payload):
    """The attribute names a read asks for (dynamodb:Attributes), names resolved."""
    names = payload.get("ExpressionAttributeNames") or {}
    expression = payload.get("ProjectionExpression")
    if isinstance(expression, str):
        return sorted({names.get(p.strip(), p.strip()) for p in expression.split(",")})
    if isinstance(payload.get("AttributesToGet"), list):
        return sorted(payload["AttributesToGet"])
    return None


def request_record(environ, target, body):
    """What the request presents to IAM: action, resources, condition-key values."""
    prefix, _, action = target.rpartition(".")
    service = SERVICE_OF_TARGET_PREFIX.get(prefix, prefix.lower() or None)
    record = {"caller": caller_of(environ), "service": service, "action": action}
    try:
        payload = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        payload = {k: v[0] for k, v in form.items()} | payload
    prefixes = set()
    if isinstance(payload.get("Key"), dict):
        prefixes.add(leading_key_prefix(payload["Key"]))
    if isinstance(payload.get("Item"), dict):
        prefixes.add(leading_key_prefix(payload["Item"]))
    values = payload.get("ExpressionAttributeValues") or {}
    if action == "Query" and isinstance(payload.get("KeyConditionExpression"), str):
        # A Query's partition key value: the first placeholder of its key condition.
        found = re.search(r":\w+", payload["KeyConditionExpression"])
        if found and isinstance(values.get(found.group(0)), dict):
            prefixes.add(leading_key_prefix({"k": values[found.group(0)]}))
    prefixes.discard(None)
    record.update({
        "table": payload.get("TableName"),
        "index": payload.get("IndexName"),
        "key_prefixes": sorted(prefixes),
        "projection": projected_attributes(payload),
        "select": payload.get("Select"),
        "return_values": payload.get("ReturnValues"),
        "return_values_on_condition_check_failure": payload.get("ReturnValuesOnConditionCheckFailure"),
        "bus": payload.get("EventBusName") or next(
            (e.get("EventBusName") for e in payload.get("Entries") or [] if isinstance(e, dict)), None
        ),
        "secret": payload.get("SecretId"),
        "queue": payload.get("QueueUrl"),
    })
    if action == "PutEvents":
        # IAM authorizes each entry with its events:source and events:detail-type.
        record["entries"] = [
            {"bus": e.get("EventBusName"), "source": e.get("Source"), "detail_type": e.get("DetailType")}
            for e in payload.get("Entries") or [] if isinstance(e, dict)
        ]
    if action == "TransactWriteItems":
        # IAM has no action of that name: it authorizes each item as its own action
        # (PutItem, UpdateItem, DeleteItem, ConditionCheckItem) on its own key.
        record["items"] = [transact_item(item) for item in payload.get("TransactItems") or []]
    return record


TRANSACT_ACTIONS = {
    "Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def transact_item(item):
    """One item of a transaction as IAM sees it: its action, table and leading key."""
    if not isinstance(item, dict) or len(item) != 1:
        return {"action": None}
    kind, operation = next(iter(item.items()))
    operation = operation if isinstance(operation, dict) else {}
    key = operation.get("Key") if kind != "Put" else operation.get("Item")
    prefix = leading_key_prefix(key)
    return {
        "action": TRANSACT_ACTIONS.get(kind, kind),
        "table": operation.get("TableName"),
        "key_prefixes": [prefix] if prefix else [],
        "return_values_on_condition_check_failure":
            operation.get("ReturnValuesOnConditionCheckFailure"),
    }


def json_response(start_response, status, payload, content_type="application/json"):
    body = json.dumps(payload).encode("utf-8")
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


class SerializedMoto:
    def __init__(self, app, serialize=True):
        self.app = app
        # Unserialized (--no-serialize) is for benchmarks with no race to get wrong: moto's own
        # threading is then the only limit on throughput.
        self.moto_lock = threading.Lock() if serialize else contextlib.nullcontext()
        # Faults and counters have their own lock so control calls never wait behind moto.
        self.state_lock = threading.Lock()
        self.faults = []
        # Fault id -> requests it answered; outlives the fault itself.
        self.fired = collections.Counter()
        self.next_fault_id = 1
        self.counts = collections.Counter()
        self.counts_by_resource = collections.defaultdict(collections.Counter)
        # Every request in order, as IAM would see it (GET /_keapalive/requests/log).
        self.log = []

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
            return self.control(environ, start_response)

        body = read_body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        target = request_target(environ, body)

        with self.state_lock:
            self.counts[target] += 1
            for resource in request_resources(body):
                self.counts_by_resource[resource][target] += 1
            self.log.append(request_record(environ, target, body))
            fault = self.take_fault(environ.get("HTTP_X_AMZ_TARGET"), body)

        if fault is None:
            return self.forward(environ, start_response)
        if fault.mode == "hang":
            time.sleep(fault.hang_secs)
            return self.injected_error(fault, start_response)
        if fault.mode == "error":
            return self.injected_error(fault, start_response)
        if fault.mode == "failed_entries":
            return self.failed_entries(fault, body, start_response)
        # Applied by moto; its answer is then lost (replaced by an error) or held back.
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        body = self.forward(environ, capture)
        if fault.mode == "apply_then_error":
            return self.injected_error(fault, start_response)
        time.sleep(fault.hang_secs)
        start_response(captured["status"], captured["headers"])
        return body

    def forward(self, environ, start_response):
        with self.moto_lock:
            result = self.app(environ, start_response)
            try:
                # Drain inside the lock: moto may produce the body lazily from shared state.
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    @staticmethod
    def injected_error(fault, start_response):
        return json_response(
            start_response,
            f"{fault.status} Injected",
            {"__type": DYNAMODB_ERROR_NAMESPACE + fault.error_type, "message": "injected"},
            content_type="application/x-amz-json-1.0",
        )

    @staticmethod
    def failed_entries(fault, body, start_response):
        """A PutEvents answered 200 with every entry refused: EventBridge's partial failure."""
        try:
            entries = json.loads(body).get("Entries") or []
        except (ValueError, AttributeError):
            entries = []
        return json_response(
            start_response,
            "200 OK",
            {
                "FailedEntryCount": len(entries),
                "Entries": [
                    {"ErrorCode": fault.error_type, "ErrorMessage": "injected"} for _ in entries
                ],
            },
            content_type="application/x-amz-json-1.1",
        )

    def take_fault(self, target, body):
        for fault in self.faults:
            if fault.matches(target, body):
                if fault.probability < 1 and random.random() >= fault.probability:
                    continue
                fault.times -= 1
                self.fired[fault.id] += 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def control(self, environ, start_response):
        path = environ["PATH_INFO"][len(CONTROL_PREFIX):].rstrip("/")
        method = environ.get("REQUEST_METHOD")
        if path == "faults" and method == "POST":
            try:
                fault = Fault(json.loads(read_body(environ)))
            except (ValueError, KeyError, TypeError) as error:
                return json_response(start_response, "400 Bad Request", {"error": str(error)})
            with self.state_lock:
                fault.id = self.next_fault_id
                self.next_fault_id += 1
                self.faults.append(fault)
            return json_response(start_response, "200 OK", {"ok": True, "id": fault.id})
        if path == "faults/fired" and method == "GET":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            try:
                fault_id = int(query["id"][0])
            except (KeyError, ValueError):
                return json_response(start_response, "400 Bad Request", {"error": "id required"})
            with self.state_lock:
                fired = self.fired[fault_id]
            return json_response(start_response, "200 OK", {"fired": fired})
        if path == "faults" and method == "DELETE":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            with self.state_lock:
                if "body_contains" in query:
                    # Tests share one emulator: clear only the faults of the caller's table.
                    needle = query["body_contains"][0]
                    self.faults = [f for f in self.faults if needle not in (f.body_contains or [])]
                else:
                    self.faults.clear()
            return json_response(start_response, "200 OK", {"ok": True})
        if path == "requests" and method == "GET":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            with self.state_lock:
                if "resource" in query:
                    counts = dict(self.counts_by_resource.get(query["resource"][0], {}))
                else:
                    counts = dict(self.counts)
            return json_response(start_response, "200 OK", counts)
        if path == "requests/log" and method == "GET":
            with self.state_lock:
                log = list(self.log)
            return json_response(start_response, "200 OK", log)
        if path == "requests" and method == "DELETE":
            with self.state_lock:
                self.counts.clear()
                self.counts_by_resource.clear()
                self.log.clear()
            return json_response(start_response, "200 OK", {"ok": True})
        return json_response(start_response, "404 Not Found", {"error": "unknown control path"})


def exit_when_stdin_closes():
    # The parent holds our stdin open; when it dies for any reason the pipe closes.
    while sys.stdin.buffer.read(65536):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument(
        "--no-serialize",
        action="store_true",
        help="let moto handle requests concurrently (faster; wrong under conditional-write races)",
    )
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    app = SerializedMoto(
        DomainDispatcherApplication(create_backend_app), serialize=not args.no_serialize
    )
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.exit_on_stdin_eof:
        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()

    print(f"MOTO_PORT={server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
