"""Process preference model (PPM): a policy-initialised backbone with a scalar value head.

Purpose
    * `ProcessPreferenceModel` turns a causal-LM checkpoint (the decoder without its LM
      head) into a step scorer: a ``Linear(hidden, 1)`` reads the final hidden state at the
      last non-pad token; ``raw`` is that logit and ``score = tanh(raw)`` lies in [-1, 1].
      Training and serving run the very same `forward`, so there is no train/serve skew.
    * `pairwise_loss` is the Bradley-Terry loss used to train it on (preferred, rejected)
      step pairs. It takes the *raw* logits, not the tanh scores: ``sigmoid(raw_pos -
      raw_neg)`` is the standard BT preference probability, while a difference of tanh
      scores is bounded in [-2, 2] (loss floor ``-log sigmoid(2) ~ 0.13``) and its gradient
      vanishes as scores saturate. Ranking is unaffected since tanh is monotonic.
    * The same model, head and forward also serve the two baselines of the reward-model
      ablation, told apart by its `objective` (kept in the manifest): an outcome reward
      model (``orm``, `outcome_loss`: binary cross-entropy of the raw logit against the
      final answer's correctness) and a pointwise Q-value model (``pqm``, `q_value_loss`:
      MSE of the tanh score against the step's Q value). Both are scored exactly like the
      PPM (``tanh(raw)`` at the last token), so any of the three plugs into the same port.
    * `save_pretrained` / `from_pretrained` store the backbone and tokenizer in the usual
      Hugging Face layout plus ``value_head.safetensors`` and an ``rstar_ppm.json``
      manifest; a round trip reproduces scores bit for bit.
    * `PPMRewardModel` implements the core `RewardModel` port in-process: it renders
      prefixes with the ``sft`` step format (the fine-tuned policy's prompt), merges
      concurrent `score` calls into batched forwards (one at a time, off the event loop).

Non-goals
    The training loop, data building and the gRPC service live elsewhere; this module
    only provides the model, its loss and the in-process scorer. No GPU placement or
    multi-device logic beyond what `from_pretrained` gives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rstar_core.ports import ScoringItem
from rstar_core.steps import get_format
from rstar_models.hardware import preferred_dtype

__all__ = [
    "MANIFEST_FILE",
    "OBJECTIVES",
    "PPMOutput",
    "PPMRewardModel",
    "ProcessPreferenceModel",
    "ScoringStats",
    "VALUE_HEAD_FILE",
    "build_ppm_dir",
    "outcome_loss",
    "pairwise_loss",
    "q_value_loss",
    "render_prefix",
]

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
MANIFEST_FILE = "rstar_ppm.json"
FORMAT_VERSION = 1
# The head is tiny; keeping it in float32 avoids bf16 rounding of the scalar output.
HEAD_DTYPE = torch.float32

DType = torch.dtype | str
# What a value-head model was trained for: step preferences (the PPM), solution outcomes
# (ORM) or step Q values (PQM). The scoring is the same for all three.
OBJECTIVES = ("ppm", "orm", "pqm")


def _resolve_dtype(dtype: DType) -> torch.dtype | str:
    """`torch.float32`, ``"float32"``, ``"bfloat16"``, ... or ``"auto"`` (as stored)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


@dataclass(frozen=True)
class PPMOutput:
    """Per-sequence head outputs, shape ``(batch,)``, float32."""

    raw: torch.Tensor
    score: torch.Tensor


def pairwise_loss(pos_raw: torch.Tensor, neg_raw: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss ``-log sigmoid(r_pos - r_neg)`` averaged over pairs.

    Pass `PPMOutput.raw` of the preferred and rejected prefixes (see the module docstring
    for why raw logits rather than tanh scores).
    """
    if pos_raw.shape != neg_raw.shape:
        raise ValueError(
            f"pos and neg shapes differ: {tuple(pos_raw.shape)} vs {tuple(neg_raw.shape)}"
        )
    return -F.logsigmoid(pos_raw - neg_raw).mean()


def outcome_loss(raw: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """ORM loss: binary cross-entropy of ``sigmoid(raw)`` against correctness (1/0), averaged.

    `raw` is the logit at a whole solution's last token. Serving reports ``tanh(raw)``,
    which is ``2 * sigmoid(2 * raw) - 1``: monotonic in the probability of a correct
    answer, so best-of-N picks the same solution either way.
    """
    if raw.shape != correct.shape:
        raise ValueError(f"raw and correct shapes differ: {tuple(raw.shape)} vs {tuple(correct.shape)}")
    return F.binary_cross_entropy_with_logits(raw.float(), correct.float())


def q_value_loss(raw: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """PQM loss: ``mean((tanh(raw) - q)^2)`` for step Q values `q` in [-1, 1].

    The tanh score, not the raw logit, is regressed: it is what serving returns and has the
    targets' range, so the served score *is* the predicted Q. Regressing the raw logit would
    leave serving's tanh to bend every prediction (a learnt 0.9 served as 0.72). The cost is
    a gradient that shrinks near +-1; targets of exactly +-1 (terminal steps) still pull the
    score towards them.
    """
    if raw.shape != q.shape:
        raise ValueError(f"raw and q shapes differ: {tuple(raw.shape)} vs {tuple(q.shape)}")
    return F.mse_loss(torch.tanh(raw.float()), q.float())


class ProcessPreferenceModel(torch.nn.Module):
    """Backbone (``AutoModel``) + ``Linear(hidden, 1)`` value head at the last real token."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        value_head: torch.nn.Linear,
        tokenizer: PreTrainedTokenizerBase,
        *,
        base_model: str,
        objective: str = "ppm",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        hidden = backbone.config.hidden_size
        if value_head.in_features != hidden or value_head.out_features != 1:
            raise ValueError(
                f"value head must be Linear({hidden}, 1), got "
                f"Linear({value_head.in_features}, {value_head.out_features})"
            )
        self.backbone = backbone
        self.value_head = value_head.to(HEAD_DTYPE)
        self.tokenizer = tokenizer
        # The policy checkpoint this PPM was initialised from (kept across save/load).
        self.base_model = base_model
        # ppm, orm or pqm: what the head was (or will be) trained for.
        self.objective = objective

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Recompute the backbone's activations in the backward (transformers' `Trainer` calls
        this when a recipe sets `gradient_checkpointing`); the head is one linear layer."""
        self.backbone.gradient_checkpointing_enable(**kwargs)

    # ---- construction -------------------------------------------------------------

    @classmethod
    def from_policy(
        cls,
        policy_dir: str | Path,
        *,
        dtype: DType = "auto",
        seed: int = 0,
        init_std: float = 1e-3,
        objective: str = "ppm",
    ) -> ProcessPreferenceModel:
        """An untrained PPM (or ORM/PQM): backbone from a policy checkpoint, head ~ N(0, init_std), bias 0.

        The head is drawn from its own generator seeded with `seed`, so it is reproducible
        and leaves the global torch RNG untouched.
        """
        policy_dir = str(policy_dir)
        backbone = AutoModel.from_pretrained(policy_dir, dtype=_resolve_dtype(dtype))
        tokenizer = _load_tokenizer(policy_dir)
        head = torch.nn.Linear(backbone.config.hidden_size, 1, dtype=HEAD_DTYPE)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.weight.normal_(0.0, init_std, generator=generator)
            head.bias.zero_()
        logger.info(
            "initialised %s from policy %s (seed %d, init_std %g)",
            objective.upper(), policy_dir, seed, init_std,
        )
        return cls(backbone, head, tokenizer, base_model=policy_dir, objective=objective)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, *, dtype: DType = "auto"
    ) -> ProcessPreferenceModel:
        """Load a directory written by `save_pretrained`.

        `dtype` applies to the backbone; ``"auto"`` keeps the stored dtype (needed for an
        exact round trip). The head is always float32.
        """
        path = Path(model_dir)
        if not path.is_dir():
            raise ValueError(f"PPM directory {str(path)!r} does not exist")
        for name in (MANIFEST_FILE, VALUE_HEAD_FILE, "config.json"):
            if not (path / name).is_file():
                raise ValueError(f"{str(path)!r} is not a PPM directory: missing {name}")
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path / MANIFEST_FILE}: unsupported format_version "
                f"{manifest.get('format_version')!r} (expected {FORMAT_VERSION})"
            )
        backbone = AutoModel.from_pretrained(str(path), dtype=_resolve_dtype(dtype))
        hidden = backbone.config.hidden_size
        if manifest["hidden_size"] != hidden:
            raise ValueError(
                f"{path / MANIFEST_FILE}: hidden_size {manifest['hidden_size']} does not match "
                f"the backbone's {hidden}"
            )
        state = load_file(str(path / VALUE_HEAD_FILE))
        if set(state) != {"weight", "bias"} or tuple(state["weight"].shape) != (1, hidden):
            raise ValueError(
                f"{path / VALUE_HEAD_FILE}: expected weight (1, {hidden}) and bias (1,), got "
                f"{ {k: tuple(v.shape) for k, v in state.items()} }"
            )
        head = torch.nn.Linear(hidden, 1, dtype=HEAD_DTYPE)
        head.load_state_dict({k: v.to(HEAD_DTYPE) for k, v in state.items()})
        # Directories written before the ORM/PQM baselines existed are PPMs.
        objective = manifest.get("objective", "ppm")
        logger.info("loaded %s from %s (backbone %s)", objective.upper(), path, backbone.dtype)
        return cls(backbone, head, _load_tokenizer(str(path)), base_model=manifest["base_model"],
                   objective=objective)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write backbone (safetensors), tokenizer, value head and manifest to `out_dir`."""
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        head_state = {
            k: v.detach().to("cpu", HEAD_DTYPE).contiguous()
            for k, v in self.value_head.state_dict().items()
        }
        save_file(head_state, str(path / VALUE_HEAD_FILE))
        manifest = {
            "format_version": FORMAT_VERSION,
            "hidden_size": self.backbone.config.hidden_size,
            "head_dtype": str(HEAD_DTYPE).removeprefix("torch."),
            "base_model": self.base_model,
            "objective": self.objective,
        }
        (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        logger.info("saved %s to %s", self.objective.upper(), path)
        return path

    # ---- compute ------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def encode(
        self, texts: Sequence[str], *, max_length: int = 2048, padding_side: str = "right"
    ) -> BatchEncoding:
        """Tokenize, truncating from the left (the last steps matter most), and pad."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length,
            padding_side=padding_side,
            return_tensors="pt",
        )
        return enc.to(self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PPMOutput:
        mask = attention_mask.long()
        # Explicit positions make left padding equivalent to right padding.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids
        ).last_hidden_state
        # Index of the last non-pad token, whichever side the padding is on.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=-1)
        final = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        raw = self.value_head(final.to(HEAD_DTYPE)).squeeze(-1)
        return PPMOutput(raw=raw, score=torch.tanh(raw))


def render_prefix(question: str, steps: Sequence[str], prompt_format: str = "sft") -> str:
    """The text a PPM scores for (question, steps): served scoring and training both use it."""
    return get_format(prompt_format).render_solution(question, steps)


def _load_tokenizer(model_dir: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A PPM scores the end of a prefix: always keep the end when truncating.
    tokenizer.truncation_side = "left"
    return tokenizer


def build_ppm_dir(
    policy_dir: str | Path, out_dir: str | Path, *, dtype: DType = "auto", seed: int = 0
) -> Path:
    """Save an untrained PPM (backbone from `policy_dir`, freshly initialised head)."""
    model = ProcessPreferenceModel.from_policy(policy_dir, dtype=dtype, seed=seed)
    return model.save_pretrained(out_dir)


# ---- the RewardModel port ---------------------------------------------------------


@dataclass
class ScoringStats:
    """Counters of `PPMRewardModel` forwards (a snapshot; see `PPMRewardModel.stats`)."""

    forwards: int = 0
    items: int = 0
    forward_s: float = 0.0
    # batch size -> number of forwards of that size
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass(eq=False)
class _Request:
    texts: list[str]
    future: asyncio.Future[list[float]]
    scores: list[float] = field(init=False)
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.scores = [0.0] * len(self.texts)
        self.remaining = len(self.texts)


class PPMRewardModel:
    """In-process `RewardModel`: scores ``(question, steps)`` prefixes with a PPM.

    Concurrent `score` calls arriving within `batch_window_s` of each other are merged
    into forwards of at most `max_batch_size` items by a single batcher task; forwards
    run one at a time in a worker thread, so the event loop stays free. `close` stops
    the batcher (use the model from one event loop at a time).
    """

    def __init__(
        self,
        model: ProcessPreferenceModel,
        *,
        model_version: str,
        max_length: int = 2048,
        max_batch_size: int = 16,
        batch_window_s: float = 0.005,
        padding_side: str = "right",
        num_threads: int | None = None,
        prompt_format: str = "sft",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, got {batch_window_s}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self._model = model.eval()
        self._version = model_version
        self._format = get_format(prompt_format)
        self._max_length = max_length
        self._max_batch_size = max_batch_size
        self._window_s = batch_window_s
        self._padding_side = padding_side
        if num_threads is not None:
            # Process-wide setting: only touched when asked for.
            torch.set_num_threads(num_threads)
            logger.info("torch intra-op threads set to %d", num_threads)
        self._stats = ScoringStats()
        # Guards against two forwards overlapping even across event loops.
        self._forward_lock = threading.Lock()
        self._queue: asyncio.Queue[_Request] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        *,
        dtype: DType | None = None,
        model_version: str | None = None,
        **kwargs,
    ) -> PPMRewardModel:
        """Load a PPM directory.

        The default version is the one the model registry recorded in the directory's
        ``rstar_model.json``, else ``<objective>:<dir name>:<head digest>`` (objective: ppm,
        orm or pqm, from the directory's ``rstar_ppm.json``). A manifest without a
        kind or of kind ``policy`` (a policy's, copied along with the backbone the PPM was
        initialised from) names the policy, not this model, and is ignored.

        `dtype` None computes in the fastest type of this machine (bf16, or float32 on a
        CPU without AVX-512: `rstar_models.hardware`).
        """
        from rstar_models.store import MANIFEST as REGISTRY_MANIFEST

        model = ProcessPreferenceModel.from_pretrained(model_dir, dtype=dtype or preferred_dtype())
        registered = Path(model_dir) / REGISTRY_MANIFEST
        if model_version is None and registered.is_file():
            manifest = json.loads(registered.read_text())
            if manifest.get("version") and manifest.get("kind") not in (None, "policy"):
                model_version = str(manifest["version"])
        if model_version is None:
            head_bytes = (Path(model_dir) / VALUE_HEAD_FILE).read_bytes()
            digest = hashlib.sha256(head_bytes).hexdigest()[:12]
            model_version = f"{model.objective}:{Path(model_dir).resolve().name}:{digest}"
        return cls(model, model_version=model_version, **kwargs)

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def model(self) -> ProcessPreferenceModel:
        return self._model

    @property
    def stats(self) -> ScoringStats:
        s = self._stats
        return ScoringStats(s.forwards, s.items, s.forward_s, collections.Counter(s.batch_sizes))

    def render(self, item: ScoringItem) -> str:
        """The text the PPM sees for one prefix (the fine-tuned policy's prompt format)."""
        return render_prefix(item.question, item.steps, self._format.name)

    async def score(self, items: Sequence[ScoringItem]) -> list[float]:
        if not items:
            return []
        if self._closed:
            raise RuntimeError("PPMRewardModel is closed")
        queue = self._ensure_batcher()
        texts = [self.render(item) for item in items]
        request = _Request(texts, asyncio.get_running_loop().create_future())
        queue.put_nowait(request)
        return await request.future

    async def close(self) -> None:
        """Stop the batcher; calls still waiting fail with RuntimeError."""
        self._closed = True
        task, self._batcher = self._batcher, None
        if task is None or task.done():
            return
        if task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A batcher of another (finished) loop died with that loop: nothing to await.

    # ---- batching -----------------------------------------------------------------

    def _ensure_batcher(self) -> asyncio.Queue[_Request]:
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.done() or self._batcher.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._batcher = loop.create_task(self._run_batcher(self._queue), name="ppm-batcher")
        assert self._queue is not None
        return self._queue

    async def _run_batcher(self, queue: asyncio.Queue[_Request]) -> None:
        pending: collections.deque[tuple[_Request, int]] = collections.deque()
        batch: list[tuple[_Request, int]] = []
        try:
            while True:
                if not pending:
                    _enqueue(pending, await queue.get())
                await self._collect(queue, pending)
                batch = []
                while pending and len(batch) < self._max_batch_size:
                    slot = pending.popleft()
                    if not slot[0].future.done():  # skip calls cancelled meanwhile
                        batch.append(slot)
                if batch:
                    await self._run_batch(batch, pending)
                batch = []
        finally:
            error = RuntimeError("PPMRewardModel batcher stopped")
            waiting = [req for req, _ in (*batch, *pending)]
            while not queue.empty():
                waiting.append(queue.get_nowait())
            for req in waiting:
                if not req.future.done():
                    req.future.set_exception(error)

    async def _collect(self, queue: asyncio.Queue[_Request], pending: collections.deque) -> None:
        """Wait up to the batching window for more calls, or until a batch is full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._window_s
        while len(pending) < self._max_batch_size:
            timeout = deadline - loop.time()
            if timeout <= 0:
                while not queue.empty() and len(pending) < self._max_batch_size:
                    _enqueue(pending, queue.get_nowait())
                return
            try:
                _enqueue(pending, await asyncio.wait_for(queue.get(), timeout))
            except TimeoutError:
                return

    async def _run_batch(
        self, batch: list[tuple[_Request, int]], pending: collections.deque
    ) -> None:
        texts = [req.texts[i] for req, i in batch]
        start = time.perf_counter()
        try:
            scores = await asyncio.to_thread(self._forward, texts)
        except Exception as exc:  # reported to every caller of the batch
            logger.exception("PPM forward of %d items failed", len(texts))
            failed = {id(req): req for req, _ in batch}
            for req in failed.values():
                if not req.future.done():
                    req.future.set_exception(exc)
            # Drop the rest of the failed calls' items.
            kept = [slot for slot in pending if id(slot[0]) not in failed]
            pending.clear()
            pending.extend(kept)
            return
        elapsed = time.perf_counter() - start
        self._stats.forwards += 1
        self._stats.items += len(texts)
        self._stats.forward_s += elapsed
        self._stats.batch_sizes[len(texts)] += 1
        logger.debug("PPM forward: %d items in %.3fs", len(texts), elapsed)
        for (req, i), value in zip(batch, scores):
            req.scores[i] = value
            req.remaining -= 1
            if req.remaining == 0 and not req.future.done():
                req.future.set_result(req.scores)

    def _forward(self, texts: list[str]) -> list[float]:
        """One batched forward; runs in a worker thread."""
        with self._forward_lock, torch.inference_mode():
            enc = self._model.encode(
                texts, max_length=self._max_length, padding_side=self._padding_side
            )
            score = self._model(enc["input_ids"], enc["attention_mask"]).score
            if not torch.isfinite(score).all():
                raise RuntimeError(f"PPM produced non-finite scores: {score.tolist()}")
            return score.tolist()


def _enqueue(pending: collections.deque, request: _Request) -> None:
    pending.extend((request, i) for i in range(len(request.texts)))
