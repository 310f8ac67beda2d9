"""Escalation-log segments on storage: the Parquet schema, writing one whole, listing, reading, expiring.

Storage is any fsspec URL: a folder (a plain path or file://) or s3://bucket/prefix
(through s3fs; the endpoint and credentials come from the standard AWS
variables, AWS_ENDPOINT_URL included, as for any S3 client). Imports pyarrow
and fsspec lazily: they come with the `log` extra, which `local` includes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kascade.api.escalation_record import EscalationRecord

if TYPE_CHECKING:
    import pyarrow as pa

SEGMENT_PATTERN = re.compile(r"^escalations-(\d{8}T\d{6}Z)-.+\.parquet$")
NEEDS_THE_LOG_EXTRA = "the escalation log needs pyarrow and fsspec: pip install 'kascade[log]' (local includes it)"


def arrow_schema() -> pa.Schema:
    """The Parquet columns: `EscalationRecord`'s fields, nested the same way."""
    import pyarrow as pa

    identity = pa.struct(
        [("tier", pa.string()), ("served_model", pa.string()), ("uri", pa.string()), ("revision", pa.string())]
    )
    declined = pa.struct(
        [
            ("model", identity),
            ("text", pa.string()),
            ("score", pa.float64()),
            ("method", pa.string()),
            ("threshold", pa.float64()),
        ]
    )
    tokens = pa.struct(
        [
            ("token_ids", pa.list_(pa.int32())),
            ("top_ids", pa.list_(pa.list_(pa.int32()))),
            ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
            ("tail_mass", pa.list_(pa.float32())),
        ]
    )
    probe = pa.struct(
        [("kept", pa.bool_()), ("keep_probability", pa.float64()), ("draw", pa.string()), ("rate", pa.float64())]
    )
    return pa.schema(
        [
            ("schema_version", pa.int16()),
            ("id", pa.string()),
            ("kind", pa.string()),
            ("cascade", pa.string()),
            ("recorded_at", pa.timestamp("ms", tz="UTC")),
            ("endpoint", pa.string()),
            ("request", pa.string()),
            ("declined", pa.list_(declined)),
            ("answered_by", identity),
            ("answer", pa.string()),
            ("finish_reason", pa.string()),
            ("tokens", tokens),
            ("class_probs", pa.list_(pa.float32())),
            ("input_tokens", pa.int32()),
            ("output_tokens", pa.int32()),
            ("redacted", pa.bool_()),
            ("agreed", pa.bool_()),
            ("probe", probe),
        ]
    )


def records_table(records: list[EscalationRecord]) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist([record.model_dump(mode="python") for record in records], schema=arrow_schema())


def segment_time(name: str) -> datetime | None:
    """When a segment was written, from its name; None for a file that is no segment."""
    match = SEGMENT_PATTERN.match(name.rsplit("/", 1)[-1])
    return None if match is None else datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


class SegmentStore:
    """The segments under one URL."""

    def __init__(self, uri: str) -> None:
        try:
            import fsspec.core
            import pyarrow  # noqa: F401 - checked here, so that a missing extra fails at start, not at the first write
        except ImportError as error:
            raise RuntimeError(NEEDS_THE_LOG_EXTRA) from error
        self.uri = uri
        self.fs, self.root = fsspec.core.url_to_fs(uri)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write(self, name: str, table: pa.Table) -> None:
        """One whole segment: a temporary name renamed in a folder; one PUT on an object store."""
        import pyarrow.parquet as pq

        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)
            temporary = self._path(f".{name}.{uuid.uuid4().hex}.tmp")
            try:
                with self.fs.open(temporary, "wb") as file:
                    pq.write_table(table, file, compression="zstd")
                self.fs.mv(temporary, self._path(name))
            finally:
                if self.fs.exists(temporary):
                    self.fs.rm(temporary)
            return
        with self.fs.open(self._path(name), "wb") as file:
            pq.write_table(table, file, compression="zstd")

    def segments(self) -> list[str]:
        """Full paths of the segments, oldest first."""
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = [path for path in names if segment_time(str(path)) is not None]
        return sorted(found, key=lambda path: (segment_time(path), path))

    def remove_older_than(self, cutoff: datetime) -> int:
        expired = [path for path in self.segments() if (segment_time(path) or cutoff) < cutoff]
        for path in expired:
            self.fs.rm(path)
        return len(expired)

    def read_rows(self, path: str) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        with self.fs.open(path, "rb") as file:
            return pq.read_table(file).to_pylist()

    def records(self) -> Iterator[EscalationRecord]:
        """Every record, oldest segment first; a record of a newer schema fails with the version named."""
        for path in self.segments():
            for row in self.read_rows(path):
                yield EscalationRecord.model_validate(row)
