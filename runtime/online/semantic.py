"""matcher semantic in the router: two answers agree when their embeddings' cosine reaches the cutoff.

The packaged MiniLM runs on ONNX Runtime (`kascade.runtime.models.encoder`,
no torch) in a worker thread, so neither the event loop nor any response
waits for it. Questions asked while an embedding is running wait for it and
are then embedded together, one batch at a time: the encoder's threads are
bounded by its config, never multiplied by concurrent samples. An encoder that
fails loses those samples, counted in `failed`; it never guesses a verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kascade.api.agreement import AnswerMatcher
from kascade.runtime.models.encoder import SentenceEncoder, export_packaged_encoder, is_exported
from kascade.runtime.online.agreement import AgreementQuestion

if TYPE_CHECKING:
    from kascade.runtime.config import SemanticConfig

log = logging.getLogger("kascade.router.semantic")

_Waiting = tuple[list[AgreementQuestion], "asyncio.Future[list[bool | None]]"]


class PairCosines(Protocol):
    """What the judge needs of an encoder (`SentenceEncoder`): the cosine of each pair of texts; thread-safe."""

    def cosines(self, left: Sequence[str], right: Sequence[str]) -> list[float]: ...


class SemanticJudge:
    """An `AgreementJudge` by embedding cosine: `cosine(answer, reference) >= cutoff` (a `SentenceEncoder`'s)."""

    matcher = AnswerMatcher.semantic

    def __init__(self, encoder: PairCosines, cutoff: float) -> None:
        self.cutoff = cutoff
        self.failed = 0  # questions lost to an encoder failure
        self.batches = 0  # embedding runs (concurrent questions share one)
        self._encoder = encoder
        self._pending: list[_Waiting] = []
        self._running = asyncio.Lock()

    @classmethod
    def from_config(cls, config: SemanticConfig) -> SemanticJudge:
        """The judge of a router's config; raises ModelNotAvailable (at start) when the encoder's folder is missing.

        Local mode (`export_if_missing`) exports the packaged encoder there first, with torch.
        """
        folder = Path(config.model_dir)
        if config.export_if_missing and not is_exported(folder):
            export_packaged_encoder(folder)
        return cls(SentenceEncoder(folder, threads=config.threads), config.cutoff)

    async def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        if not questions:
            return []
        verdicts: asyncio.Future[list[bool | None]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(questions), verdicts))
        async with self._running:
            if self._pending:
                batch, self._pending = self._pending, []
                # Shielded: a cancelled caller leaves the batch running for the others waiting on it.
                await asyncio.shield(self._judge(batch))
        return await verdicts

    async def close(self) -> None:
        """Waits for the embedding in flight, so that no worker thread outlives the router."""
        async with self._running:
            return None

    async def _judge(self, batch: list[_Waiting]) -> None:
        questions = [question for asked, _ in batch for question in asked]
        self.batches += 1
        verdicts: list[bool | None]
        try:
            cosines = await asyncio.to_thread(
                self._encoder.cosines, [q.answer for q in questions], [q.reference for q in questions]
            )
        except Exception:  # whatever the encoder raised: the samples are lost and counted, never guessed
            self.failed += len(questions)
            log.warning("semantic matcher: the encoder failed on %d answer(s)", len(questions), exc_info=True)
            verdicts = [None] * len(questions)
        else:
            verdicts = [cosine >= self.cutoff for cosine in cosines]
        start = 0
        for asked, future in batch:
            if not future.done():
                future.set_result(verdicts[start : start + len(asked)])
            start += len(asked)
