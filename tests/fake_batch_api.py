"""The Batch API half of the loopback test server (tests/test_generate_fakeserver.py): /files
uploads (multipart, as the openai client sends them), /files/{id}/content, /batches create,
retrieve and list. A batch is validating, then in_progress, and completes on the
`batch_polls_to_complete`-th poll unless `batch_hold` is set; completing runs every line through
the server's own `respond`, so batch answers equal synchronous ones and are billed the same way.
"""

from __future__ import annotations

import hashlib
import json
from email.parser import BytesParser
from email.policy import default as email_policy


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FakeBatchAPI:
    """Mixed into FakeOpenAI, which provides `_lock`, `files`, `batches`, `batch_prompts`,
    `batch_polls_to_complete`, `batch_hold` and `respond`."""

    # -- the Batch API -------------------------------------------------------------------------

    def _batch_view(self, batch_id: str, poll: bool) -> dict:
        with self._lock:
            job = self.batches[batch_id]
            if poll and job["status"] != "completed":
                job["_polls"] += 1
                ready = job["_polls"] >= self.batch_polls_to_complete and not self.batch_hold
                job["status"] = "in_progress" if not ready else "finalizing"
        if job["status"] == "finalizing":
            self._run_batch(job)
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _run_batch(self, job: dict) -> None:
        lines = [json.loads(line) for line in self.files[job["input_file_id"]]["data"].splitlines() if line.strip()]
        out, err = [], []
        for n, line in enumerate(lines):
            status, body = self.respond(line["url"], line["body"])
            record = {"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                      "response": {"status_code": status, "request_id": f"req_{n}", "body": body}, "error": None}
            (out if status == 200 else err).append(json.dumps(record))
        with self._lock:
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    fid = f"file-{len(self.files)}"
                    self.files[fid] = {"data": "\n".join(rows) + "\n", "purpose": "batch_output"}
                    job[name] = fid
            job["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
            job["status"] = "completed"

    def _create_batch(self, request: dict) -> dict:
        with self._lock:
            batch_id = f"batch_{len(self.batches)}"
            data = self.files[request["input_file_id"]]["data"]
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
            self.batch_prompts[batch_id] = [sha(line["body"]["messages"][-1]["content"]) for line in lines]
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
                "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
                "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": 0,
                "metadata": request.get("metadata"), "_polls": 0,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        return self._batch_view(batch_id, poll=False)

    def _upload(self, content_type: str, raw: bytes) -> dict:
        msg = BytesParser(policy=email_policy).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in msg.iter_parts()}
        with self._lock:
            fid = f"file-{len(self.files)}"
            self.files[fid] = {"data": fields["file"].decode("utf-8"), "purpose": fields["purpose"].decode()}
        return {"id": fid, "object": "file", "bytes": len(fields["file"]), "created_at": 0,
                "filename": "input.jsonl", "purpose": "batch", "status": "processed"}

