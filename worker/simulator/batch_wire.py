"""The providers' batch APIs as the simulator serves them, in their wire formats (batches.py keeps the batches;
each line is answered by the simulator as the same request would be synchronously).

OpenAI (base /v1): POST /v1/files (multipart: `purpose`, `file`: JSONL of {"custom_id", "method": "POST",
"url": "/v1/chat/completions", "body"}); GET /v1/files/{id} and /v1/files/{id}/content; POST /v1/batches
(`input_file_id`, `endpoint`, `completion_window` "24h"); GET /v1/batches/{id}; POST /v1/batches/{id}/cancel.
One model a file, at most 50,000 requests and 200 MB. An ended batch has an output file (answered lines) and
an error file (errored lines with their response, expired and cancelled ones with `batch_expired` or
`batch_cancelled`), each only when it has lines.
Anthropic: POST /v1/messages/batches (`requests`: [{custom_id, params}], at most 100,000 or 256 MB, the
latter a 413 as the API's size limit is); GET /v1/messages/batches/{id}; GET .../{id}/results (JSONL of
succeeded, errored, canceled and expired results); POST .../{id}/cancel.
Gemini (v1beta, also v1): POST /v1beta/models/{model}:batchGenerateContent (inline requests, at most 20 MB)
and GET /v1beta/batches/{id}, an Operation whose metadata is the batch, with its output when done (a line
expired as an error DEADLINE_EXCEEDED); POST /v1beta/batches/{id}:cancel.

The batch endpoints' own calls are not counted in the stats; the lines they answer are (server.py).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from worker.simulator import wire
from worker.simulator.batches import SimBatch, SimLine
from worker.simulator.lean_server import Request, Response, json_response
from worker.simulator.requests import Call, anthropic_call, gemini_call, openai_call
from worker.simulator.validation import anthropic_refusal

if TYPE_CHECKING:
    from worker.simulator.server import Simulator

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
OPENAI_ENDPOINT = "/v1/chat/completions"  # the one endpoint the simulator's batches serve
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
GEMINI_MAX_INLINE_BYTES = 20 * 1024 * 1024
WINDOW_S = 24 * 3600  # a batch's completion window (Gemini's is 48 hours; the simulator's end long before)
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic's rule for a custom_id
_GEMINI_BATCH = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_GEMINI_OUTPUT = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
_ERROR_TYPES = {
    "openai": {400: "invalid_request_error", 404: "invalid_request_error"},
    "anthropic": {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large"},
    "gemini": {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"},
}
_json = msgspec.json.Encoder()


class Refused(Exception):
    """A batch request the API refuses: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(wire_name: str, status: int, message: str) -> Response:
    """An error of the batch endpoints in the wire's own body."""
    kind = _ERROR_TYPES[wire_name][status]
    if wire_name == "openai":
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    elif wire_name == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": f"req_{uuid.uuid4().hex}"}
    else:
        body = {"error": {"code": status, "message": message, "status": kind}}
    return json_response(_json.encode(body), status=status)


def multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """The fields of a multipart/form-data body: name -> (file name, value)."""
    boundary = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"')
    if not boundary:
        return {}
    fields = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing boundary
        head, found, value = part.partition(b"\r\n\r\n")
        disposition = next(
            (h for h in head.decode("latin-1").split("\r\n") if h.lower().startswith("content-disposition")), ""
        )
        name = re.search(r'\bname="([^"]*)"', disposition)
        if found and name:
            filename = re.search(r'\bfilename="([^"]*)"', disposition)
            fields[name.group(1)] = (filename.group(1) if filename else "", value.removesuffix(b"\r\n"))
    return fields


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


class BatchApis:
    """The handlers of the three batch APIs, on the simulator's batch store."""

    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator
        self._store = simulator.batches

    def _keyless(self, wire_name: str, request: Request) -> Response | None:
        """The wire's 401 (Gemini: 403) for a request without an API key."""
        if wire.api_key(wire_name, request.headers, request.query):
            return None
        return Response(*wire.error(wire_name, "", "auth", ""))

    def _batch(self, wire_name: str, batch_id: str) -> SimBatch | None:
        """The batch of the wire with that id, ended if its time has come."""
        self._sim.settle_batches()
        batch = self._store.batches.get(batch_id)
        return batch if batch is not None and batch.wire == wire_name else None

    def _line(self, custom_id: str, call: Call, path: str, headers: dict[str, str], **fields: Any) -> SimLine:
        """A line of a batch being taken, recorded for /_sim/requests."""
        self._sim.record(path, call.model, call.body, headers, "batch")
        return SimLine(custom_id=custom_id, call=call, **fields)

    async def get_batch(self, request: Request) -> Response:
        """GET /v1/batches/{id}: OpenAI's batch, or Gemini's on its v1 (GET /v1beta/batches/{id}: Gemini's)."""
        batch = self._store.batches.get(request.match_info["batch_id"])
        if batch is not None:
            gemini = batch.wire == "gemini"
        else:
            gemini = request.match_info["version"] == "v1beta" or "x-goog-api-key" in request.headers
        return await (self.gemini_get(request) if gemini else self.openai_get(request))

    # OpenAI

    async def openai_upload(self, request: Request) -> Response:
        """POST /v1/files: keep the file; its file object."""
        refused = self._keyless("openai", request)
        if refused is not None:
            return refused
        fields = multipart_fields(request.headers.get("content-type", ""), await request.read())
        if "file" not in fields or "purpose" not in fields:
            return error_response("openai", 400, "The request must carry a `file` and its `purpose`.")
        filename, data = fields["file"]
        stored = self._store.add_file(filename or "upload.jsonl", fields["purpose"][1].decode(), data)
        return json_response(_json.encode(self._file_object(stored.id)))

    def _file_object(self, file_id: str) -> dict[str, Any]:
        stored = self._store.files[file_id]
        return {
            "id": stored.id,
            "object": "file",
            "bytes": len(stored.data),
            "created_at": int(stored.created_at),
            "filename": stored.filename,
            "purpose": stored.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    async def openai_file(self, request: Request) -> Response:
        """GET /v1/files/{id}: the file object."""
        file_id = request.match_info["file_id"]
        refused = self._keyless("openai", request)
        if refused is not None:
            return refused
        if file_id not in self._store.files:
            return error_response("openai", 404, f"No such File object: {file_id}")
        return json_response(_json.encode(self._file_object(file_id)))

    async def openai_file_content(self, request: Request) -> Response:
        """GET /v1/files/{id}/content: the file's bytes."""
        file_id = request.match_info["file_id"]
        refused = self._keyless("openai", request)
        if refused is not None:
            return refused
        stored = self._store.files.get(file_id)
        if stored is None:
            return error_response("openai", 404, f"No such File object: {file_id}")
        return Response(200, {"content-type": "application/octet-stream"}, stored.data)

    async def openai_create(self, request: Request) -> Response:
        """POST /v1/batches: a batch of the input file's requests; the batch object (validating)."""
        refused = self._keyless("openai", request)
        if refused is not None:
            return refused
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            return error_response("openai", 400, "The request body is not a JSON object.")
        try:
            lines = self._openai_lines(body, request)
        except Refused as refusal:
            return error_response("openai", refusal.status, refusal.message)
        details = {key: body.get(key) for key in ("input_file_id", "endpoint", "completion_window", "metadata")}
        batch = self._store.add("openai", lines[0].call.model, lines, "batch_", details)
        return json_response(_json.encode(self._openai_batch(batch, "validating")))

    def _openai_lines(self, body: dict[str, Any], request: Request) -> list[SimLine]:
        """The lines of the batch `body` asks for; Refused when the API would refuse it."""
        if body.get("completion_window") != "24h":
            raise Refused(400, "completion_window: the only window supported is '24h'.")
        endpoint = body.get("endpoint")
        if endpoint != OPENAI_ENDPOINT:
            raise Refused(400, f"endpoint: the simulator's batches serve {OPENAI_ENDPOINT} only.")
        stored = self._store.files.get(str(body.get("input_file_id")))
        if stored is None:
            raise Refused(404, f"No such File object: {body.get('input_file_id')}")
        if len(stored.data) > OPENAI_MAX_BYTES:
            raise Refused(400, f"The input file is larger than the {OPENAI_MAX_BYTES // 2**20} MB a batch takes.")
        requests = [raw for raw in stored.data.splitlines() if raw.strip()]
        if not requests:
            raise Refused(400, "The input file has no requests.")
        if len(requests) > OPENAI_MAX_REQUESTS:
            raise Refused(400, f"The input file has {len(requests)} requests; a batch takes {OPENAI_MAX_REQUESTS}.")
        lines = [self._openai_line(raw, number, endpoint, request) for number, raw in enumerate(requests, 1)]
        if len({line.custom_id for line in lines}) < len(lines):
            raise Refused(400, "The input file's custom_id values are not unique.")
        models = sorted({line.call.model for line in lines})
        if len(models) > 1:
            raise Refused(
                400,
                f"The input file's requests are for {len(models)} models ({', '.join(models)}); a batch is for one.",
            )
        return lines

    def _openai_line(self, raw: bytes, number: int, endpoint: str, request: Request) -> SimLine:
        try:
            item = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise Refused(400, f"Line {number} of the input file is not JSON.") from None
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            raise Refused(400, f"Line {number} of the input file has no request `body`.")
        if item.get("method") != "POST" or item.get("url") != endpoint:
            raise Refused(400, f"Line {number} of the input file is not a POST to {endpoint}.")
        body, custom_id = item["body"], item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise Refused(400, f"Line {number} of the input file has no custom_id.")
        model = str(body.get("model") or "")
        behaviour = self._sim.config.models.get(model)
        wire_name = behaviour.wire if behaviour and behaviour.wire in ("openai", "openai_compatible") else "openai"
        key = wire.api_key("openai", request.headers, request.query)
        call = openai_call(body, wire=wire_name, model=model, key=key, arrived=request.arrived)
        return self._line(custom_id, call, endpoint, request.headers)

    def _openai_batch(self, batch: SimBatch, status: str = "") -> dict[str, Any]:
        """The batch object; `status` in place of the batch's own (the create and cancel replies')."""
        ended, cancelled = batch.ended_at, batch.cancelled_at
        expired = ended is not None and batch.count("expired") > 0
        if not status:
            status = (
                "in_progress" if ended is None else "cancelled" if cancelled else "expired" if expired else "completed"
            )
        output_file_id, error_file_id = self._openai_result_files(batch) if ended is not None else (None, None)
        answered = batch.count("answered")
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.details["endpoint"],
            "model": batch.model,
            "errors": None,
            "input_file_id": batch.details["input_file_id"],
            "completion_window": batch.details["completion_window"],
            "status": status,
            "output_file_id": output_file_id,
            "error_file_id": error_file_id,
            "created_at": int(batch.created_at),
            "in_progress_at": None if status == "validating" else int(batch.created_at),
            "expires_at": int(batch.created_at) + WINDOW_S,
            "finalizing_at": _whole(ended),
            "completed_at": _whole(ended) if status == "completed" else None,
            "failed_at": None,
            "expired_at": _whole(ended) if status == "expired" else None,
            "cancelling_at": _whole(cancelled),
            "cancelled_at": _whole(cancelled) if status == "cancelled" else None,
            "request_counts": {
                "total": len(batch.lines),
                "completed": answered,
                "failed": len(batch.lines) - answered if ended is not None else 0,
            },
            "metadata": batch.details["metadata"],
        }

    def _openai_result_files(self, batch: SimBatch) -> tuple[str | None, str | None]:
        """The ids of an ended batch's output and error files (None: no such lines), written once."""
        if "output_file_id" not in batch.details:
            output = [self._openai_result(line) for line in batch.lines if line.outcome == "answered"]
            errors = [self._openai_result(line) for line in batch.lines if line.outcome != "answered"]
            for field, results in (("output_file_id", output), ("error_file_id", errors)):
                data = b"".join(_json.encode(result) + b"\n" for result in results)
                name = f"{batch.id}_{field.removesuffix('_file_id')}.jsonl"
                batch.details[field] = self._store.add_file(name, "batch_output", data).id if results else None
        return batch.details["output_file_id"], batch.details["error_file_id"]

    @staticmethod
    def _openai_result(line: SimLine) -> dict[str, Any]:
        """A line of the output or error file."""
        result: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line.custom_id}
        if line.outcome in ("answered", "errored"):
            request_id = line.headers.get("x-request-id", f"req_{uuid.uuid4().hex[:24]}")
            response = {"status_code": line.status, "request_id": request_id, "body": msgspec.Raw(line.body)}
            return result | {"response": response, "error": None}
        if line.outcome == "expired":
            error = {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired.",
            }
        else:
            error = {"code": "batch_cancelled", "message": "This request was cancelled before it could be executed."}
        return result | {"response": None, "error": error}

    async def openai_get(self, request: Request) -> Response:
        """GET /v1/batches/{id}: the batch object."""
        return self._openai_reply(request, cancel=False)

    async def openai_cancel(self, request: Request) -> Response:
        """POST /v1/batches/{id}/cancel: a running batch is cancelled (the reply says cancelling)."""
        return self._openai_reply(request, cancel=True)

    def _openai_reply(self, request: Request, cancel: bool) -> Response:
        refused = self._keyless("openai", request)
        if refused is not None:
            return refused
        batch_id = request.match_info["batch_id"]
        batch = self._batch("openai", batch_id)
        if batch is None:
            return error_response("openai", 404, f"No batch found with id '{batch_id}'.")
        status = ""
        if cancel and batch.ended_at is None:
            self._store.cancel(batch)
            status = "cancelling"
        return json_response(_json.encode(self._openai_batch(batch, status)))

    # Anthropic

    async def anthropic_create(self, request: Request) -> Response:
        """POST /v1/messages/batches: a batch of the requests; the message batch (in progress)."""
        refused = self._keyless("anthropic", request)
        if refused is not None:
            return refused
        raw = await request.read()
        if len(raw) > ANTHROPIC_MAX_BYTES:
            return error_response(
                "anthropic", 413, f"Request exceeds the maximum size of {ANTHROPIC_MAX_BYTES // 2**20} MB."
            )
        try:
            lines = self._anthropic_lines(raw, request)
        except Refused as refusal:
            return error_response("anthropic", refusal.status, refusal.message)
        models = sorted({line.call.model for line in lines})
        batch = self._store.add("anthropic", ",".join(models), lines, "msgbatch_", {})
        return json_response(_json.encode(self._anthropic_batch(batch, request)))

    def _anthropic_lines(self, raw: bytes, request: Request) -> list[SimLine]:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise Refused(400, "The request body is not JSON.") from None
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise Refused(400, "requests: Field required (a list of at least one request)")
        if len(requests) > ANTHROPIC_MAX_REQUESTS:
            raise Refused(400, f"requests: a batch takes at most {ANTHROPIC_MAX_REQUESTS} requests.")
        version = request.headers.get("anthropic-version", "")
        if not version:
            raise Refused(400, "anthropic-version: header is required")
        key = wire.api_key("anthropic", request.headers, request.query)
        lines = []
        for i, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id) or not isinstance(params, dict):
                raise Refused(400, f"requests.{i}: a custom_id of 1 to 64 letters, digits, - or _, and params")
            model = str(params.get("model") or "")
            call = anthropic_call(params, model=model, key=key, arrived=request.arrived)
            refusal = anthropic_refusal(params, version, model)
            lines.append(self._line(custom_id, call, "/v1/messages", request.headers, refused=refusal))
        if len({line.custom_id for line in lines}) < len(lines):
            raise Refused(400, "requests: custom_id values must be unique within a batch.")
        return lines

    @staticmethod
    def _anthropic_batch(batch: SimBatch, request: Request, status: str = "") -> dict[str, Any]:
        """The message batch; `status` in place of its own (the cancel reply's)."""
        ended = batch.ended_at
        counts = {
            "processing": batch.count("pending"),
            "succeeded": batch.count("answered"),
            "errored": batch.count("errored"),
            "canceled": batch.count("cancelled"),
            "expired": batch.count("expired"),
        }
        host = request.headers.get("host", "127.0.0.1")
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status or ("in_progress" if ended is None else "ended"),
            "request_counts": counts,
            "ended_at": _rfc3339(ended),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + WINDOW_S),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch.cancelled_at),
            "results_url": f"http://{host}/v1/messages/batches/{batch.id}/results" if ended is not None else None,
        }

    async def anthropic_get(self, request: Request) -> Response:
        """GET /v1/messages/batches/{id}: the message batch."""
        return self._anthropic_reply(request, cancel=False)

    async def anthropic_cancel(self, request: Request) -> Response:
        """POST /v1/messages/batches/{id}/cancel: a running batch is cancelled (the reply says canceling)."""
        return self._anthropic_reply(request, cancel=True)

    def _anthropic_reply(self, request: Request, cancel: bool) -> Response:
        refused = self._keyless("anthropic", request)
        if refused is not None:
            return refused
        batch = self._batch("anthropic", request.match_info["batch_id"])
        if batch is None:
            return error_response("anthropic", 404, "Message batch not found.")
        status = ""
        if cancel and batch.ended_at is None:
            self._store.cancel(batch)
            status = "canceling"
        return json_response(_json.encode(self._anthropic_batch(batch, request, status)))

    async def anthropic_results(self, request: Request) -> Response:
        """GET /v1/messages/batches/{id}/results: one JSON line a request, once the batch ended."""
        refused = self._keyless("anthropic", request)
        if refused is not None:
            return refused
        batch = self._batch("anthropic", request.match_info["batch_id"])
        if batch is None:
            return error_response("anthropic", 404, "Message batch not found.")
        if batch.ended_at is None:
            return error_response(
                "anthropic", 400, "The message batch is still processing; its results come when it ends."
            )
        data = b"".join(_json.encode(self._anthropic_result(line)) + b"\n" for line in batch.lines)
        return Response(200, {"content-type": "application/binary"}, data)

    @staticmethod
    def _anthropic_result(line: SimLine) -> dict[str, Any]:
        if line.outcome == "answered":
            result: dict[str, Any] = {"type": "succeeded", "message": msgspec.Raw(line.body)}
        elif line.outcome == "errored":
            result = {"type": "errored", "error": msgspec.Raw(line.body)}
        else:
            result = {"type": "canceled" if line.outcome == "cancelled" else "expired"}
        return {"custom_id": line.custom_id, "result": result}

    # Gemini

    async def gemini_create(self, request: Request, model: str) -> Response:
        """POST /v1beta/models/{model}:batchGenerateContent: a batch of the inline requests; its Operation."""
        refused = self._keyless("gemini", request)
        if refused is not None:
            return refused
        behaviour = self._sim.config.models.get(model)
        if behaviour is None or behaviour.wire != "gemini":
            return Response(*wire.error("gemini", "", "not_found", model))
        raw = await request.read()
        try:
            lines, display_name = self._gemini_lines(raw, model, request)
        except Refused as refusal:
            return error_response("gemini", refusal.status, refusal.message)
        batch = self._store.add("gemini", model, lines, "", {"display_name": display_name})
        return json_response(_json.encode(self._gemini_operation(batch, "BATCH_STATE_PENDING")))

    def _gemini_lines(self, raw: bytes, model: str, request: Request) -> tuple[list[SimLine], str]:
        if len(raw) > GEMINI_MAX_INLINE_BYTES:
            raise Refused(
                400, f"Inline batch requests are limited to {GEMINI_MAX_INLINE_BYTES // 2**20} MB; use a file."
            )
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise Refused(400, "Invalid JSON payload received.") from None
        batch = body.get("batch") if isinstance(body, dict) else None
        batch = batch if isinstance(batch, dict) else {}
        config = batch.get("inputConfig", batch.get("input_config"))
        container = config.get("requests") if isinstance(config, dict) else None
        requests = container.get("requests") if isinstance(container, dict) else None
        if not isinstance(requests, list) or not requests:
            raise Refused(
                400, "batch.input_config: the simulator takes inline requests (requests.requests), not a file."
            )
        key = wire.api_key("gemini", request.headers, request.query)
        path = f"/v1beta/models/{model}:generateContent"
        lines = []
        for i, item in enumerate(requests):
            inner = item.get("request") if isinstance(item, dict) else None
            if not isinstance(inner, dict):
                raise Refused(
                    400, f"batch.input_config.requests.requests[{i}].request: a GenerateContentRequest is required."
                )
            metadata = item.get("metadata")
            custom_id = str(metadata.get("key", i)) if isinstance(metadata, dict) else str(i)
            call = gemini_call(inner, model=model, key=key, arrived=request.arrived)
            lines.append(self._line(custom_id, call, path, request.headers, metadata=metadata))
        return lines, str(batch.get("displayName", batch.get("display_name", "")))

    def _gemini_operation(self, batch: SimBatch, state: str = "") -> dict[str, Any]:
        """The batch as the Operation the API answers; `state` in place of its own (the create reply's)."""
        ended = batch.ended_at
        if not state:
            state = (
                "BATCH_STATE_RUNNING"
                if ended is None
                else "BATCH_STATE_CANCELLED"
                if batch.cancelled_at
                else "BATCH_STATE_EXPIRED"
                if batch.count("expired")
                else "BATCH_STATE_SUCCEEDED"
            )
        name = f"batches/{batch.id}"
        answered = batch.count("answered")
        metadata: dict[str, Any] = {
            "@type": _GEMINI_BATCH,
            "model": f"models/{batch.model}",
            "displayName": batch.details["display_name"],
            "createTime": _rfc3339(batch.created_at),
            "updateTime": _rfc3339(ended or batch.created_at),
            "batchStats": {
                "requestCount": str(len(batch.lines)),
                "successfulRequestCount": str(answered),
                "failedRequestCount": str(len(batch.lines) - answered - batch.count("pending")),
                "pendingRequestCount": str(batch.count("pending")),
            },
            "state": state,
            "name": name,
        }
        operation: dict[str, Any] = {"name": name, "metadata": metadata}
        if ended is not None:
            metadata["endTime"] = _rfc3339(ended)
            operation["done"] = True
            if not batch.cancelled_at:
                output = {"inlinedResponses": {"inlinedResponses": [self._gemini_result(line) for line in batch.lines]}}
                metadata["output"] = output
                operation["response"] = {"@type": _GEMINI_OUTPUT, **output}
        return operation

    @staticmethod
    def _gemini_result(line: SimLine) -> dict[str, Any]:
        if line.outcome == "answered":
            result: dict[str, Any] = {"response": msgspec.Raw(line.body)}
        elif line.outcome == "errored":
            result = {"error": msgspec.json.decode(line.body)["error"]}
        else:
            result = {
                "error": {
                    "code": 504,
                    "message": "The batch expired before this request was processed.",
                    "status": "DEADLINE_EXCEEDED",
                }
            }
        if line.metadata is not None:
            result["metadata"] = line.metadata
        return result

    async def gemini_get(self, request: Request) -> Response:
        """GET /v1beta/batches/{id} (and /v1/...): the Operation."""
        refused = self._keyless("gemini", request)
        if refused is not None:
            return refused
        batch_id = request.match_info["batch_id"]
        batch = self._batch("gemini", batch_id)
        if batch is None:
            return error_response("gemini", 404, f"Batch batches/{batch_id} not found.")
        return json_response(_json.encode(self._gemini_operation(batch)))

    async def gemini_cancel(self, request: Request) -> Response:
        """POST /v1beta/batches/{id}:cancel: a running batch is cancelled; an empty reply."""
        refused = self._keyless("gemini", request)
        if refused is not None:
            return refused
        batch_id, _, action = request.match_info["target"].partition(":")
        batch = self._batch("gemini", batch_id) if action == "cancel" else None
        if batch is None:
            return error_response("gemini", 404, f"Batch batches/{batch_id} not found.")
        if batch.ended_at is None:
            self._store.cancel(batch)
        return json_response(b"{}")
