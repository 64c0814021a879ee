"""The offline router: trained classifiers over MiniLM sentence embeddings and the text itself.

No network, no torch: the encoder is numpy (core/routing/embedding.py) and the classifiers are weight
matrices in core/data/local_router.npz, written by `python -m core.routing.training`. A bare
nearest-neighbour match on embeddings follows the topic ("a story about a programmer" lands near
coding); a trained layer, helped by form features (option lists, LaTeX, digits) and by a lexical
model over words and character n-grams, learns the task.

Follow-ups ("why?", "now make it recursive") say little on their own, so `classify` mixes the
follow-up's probabilities with those of the thread's earlier user turns and the last answer, trusting
the thread more when the follow-up is short or unsure. The mixing weights are fitted on the project's
own thread examples (core/data/router_examples/threads.jsonl).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.routing.embedding import MiniLMEncoder
from core.routing.selection import Exploration, select_model
from core.types import QUERY_TYPES, Complexity, Decision, Inventory, QueryType, RouteRequest, Turn

DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "data" / "local_router.npz"

# Word pieces of a question the classifier reads. The forward pass costs time linear in tokens; grouped
# cross-validation over three fold seeds scored the opening 48 within 0.002 macro-F1 of 64 and 0.003 of
# 128 (the lexical model and the form features still see the whole text), so the latency target
# (p99 <= 25 ms on one BLAS thread) sets the cut.
QUERY_TOKENS = 48
# "A bit of the assistant answer": its opening says what kind of answer it was.
ANSWER_TOKENS = 64
# Earlier user turns count for less the further back they are.
TURN_DECAY = 0.5
MAX_USER_TURNS = 3

# --------------------------------------------------------------------------------------------------
# Form features: cheap facts about the text's shape that embeddings blur (numbers, code, option lists).

_OPTION = re.compile(r"(?:^|[\s(\[])\(?([A-Ea-e])[).:]\s")
_LATEX = re.compile(
    r"\\(?:frac|sqrt|int|sum|prod|lim|cdot|times|left|right|boxed|begin|pi|alpha|beta|theta)\b|\$[^$\n]+\$"
)
_CODE_CHARS = set("{}[]();<>=_#`\\|&")
_MATH_CHARS = set("+-*/^=%<>")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"\w+", re.UNICODE)
_CODE_LINE = re.compile(
    r"^(?: {4}|\t)\S"  # an indented line
    r"|^\s*(?:def|class|return|import|for|while|if|elif|else|function|const|let|var)\b.*[:{;]\s*$",
    re.M,
)

FORM_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "math_char_share",
    "code_char_share",
    "log_numbers",
    "code_fence_or_lines",
    "option_list",
    "latex",
    "question_mark",
    "search_style",
    "non_ascii_share",
    "upper_share",
)


def form_features(text: str) -> np.ndarray:
    """The FORM_FEATURES of `text`, in order (float32)."""
    n = max(len(text), 1)
    words = _WORD.findall(text)
    letters = [c for c in text if c.isalpha()]
    options = {m.group(1).upper() for m in _OPTION.finditer(text)}
    stripped = text.strip()
    search_style = bool(
        stripped
        and not re.search(r"[.?!,:;()\"]", stripped)
        and stripped == stripped.lower()
        and len(words) <= 14
    )
    values = (
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(text.count("\n")),
        sum(c.isdigit() for c in text) / n,
        sum(c in _MATH_CHARS for c in text) / n,
        sum(c in _CODE_CHARS for c in text) / n,
        math.log1p(len(_NUMBER.findall(text))),
        float("```" in text or len(_CODE_LINE.findall(text)) >= 2),
        float({"A", "B"} <= options or bool(re.search(r"\bOptions?:", text))),
        float(bool(_LATEX.search(text))),
        float("?" in text or "？" in text),
        float(search_style),
        sum(not c.isascii() for c in letters) / max(len(letters), 1),
        sum(c.isupper() for c in letters) / max(len(letters), 1),
    )
    return np.asarray(values, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Lexical features: hashed tf-idf of words, word pairs and character n-grams. They catch what a small
# English sentence encoder misses (a "css" or "SQL" in a short question, non-English text); the
# embedding catches meaning across wordings. Cross-validation on our examples favours the two together.

LEX_BITS = 16
LEX_SIZE = 1 << LEX_BITS  # buckets per block (words, characters)
LEX_MAX_CHARS = 2000  # bounds the cost on pasted documents; the opening says what is asked


def lexical_counts(text: str) -> tuple[Counter[int], Counter[int]]:
    """Hashed counts of (words and word pairs, character 2-5-grams within space-padded words).

    crc32, unlike hash(), gives the same bucket in every process.
    """
    text = text[:LEX_MAX_CHARS].lower()
    words = _WORD.findall(text)
    word_grams = [f"w {w}" for w in words] + [f"b {a} {b}" for a, b in zip(words, words[1:], strict=False)]
    char_grams = []
    for token in text.split():
        padded = f" {token} "
        for n in range(2, 6):
            char_grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    mask = LEX_SIZE - 1
    return (
        Counter(zlib.crc32(g.encode()) & mask for g in word_grams),
        Counter(zlib.crc32(g.encode()) & mask for g in char_grams),
    )


def lexical_vector(
    counts: tuple[Counter[int], Counter[int]], idf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse tf-idf (indices into 2 * LEX_SIZE, values): sublinear tf, each block L2-normalised."""
    indices, values = [], []
    for block, c in enumerate(counts):
        if not c:
            continue
        idx = np.fromiter(c.keys(), dtype=np.int64, count=len(c))
        val = (1.0 + np.log(np.fromiter(c.values(), dtype=np.float32, count=len(c)))) * idf[block, idx]
        indices.append(idx + block * LEX_SIZE)
        values.append(val / max(float(np.linalg.norm(val)), 1e-12))
    if not indices:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(indices), np.concatenate(values).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The trained artifact: numpy arrays only, so inference needs no scikit-learn.


@dataclass(frozen=True)
class TrainedModel:
    """Two classifiers and how to blend them.

    dense:   standardise -> (x @ w + b, ReLU between layers) over embedding + form features
    lexical: hashed tf-idf -> x @ lex_weights + lex_bias
    blend:   softmax((share * log p_dense + (1 - share) * log p_lexical) / temperature); share and
             temperature are fitted on held-out folds, which also calibrates the confidence.
    thread:  the follow-up mixing weights (see `thread_mix`).
    """

    labels: tuple[QueryType, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    lex_idf: np.ndarray  # (2, LEX_SIZE)
    lex_weights: np.ndarray  # (2 * LEX_SIZE, labels)
    lex_bias: np.ndarray
    dense_share: float
    temperature: float
    thread: np.ndarray
    data_hash: str
    query_tokens: int = QUERY_TOKENS
    answer_tokens: int = ANSWER_TOKENS
    info: dict[str, object] = field(default_factory=dict)  # training metrics, for reports

    def dense_logits(self, features: np.ndarray) -> np.ndarray:
        return mlp_forward(features, self.mean, self.scale, self.weights, self.biases)

    def lexical_logits(self, text: str) -> np.ndarray:
        idx, val = lexical_vector(lexical_counts(text), self.lex_idf)
        return val @ self.lex_weights[idx] + self.lex_bias

    def blend(self, dense_logits: np.ndarray, lexical_logits: np.ndarray) -> np.ndarray:
        mixed = self.dense_share * log_softmax(dense_logits) + (1.0 - self.dense_share) * log_softmax(
            lexical_logits
        )
        return softmax(mixed / self.temperature)

    def probs(self, features: np.ndarray, text: str) -> np.ndarray:
        """Calibrated probabilities for one text, given its embedding + form features."""
        return self.blend(self.dense_logits(features[None, :])[0], self.lexical_logits(text))

    def to_bytes(self) -> bytes:
        """The model as npz bytes: the artifact file's content, and what the database stores."""
        arrays: dict[str, np.ndarray] = {
            "labels": np.array(self.labels),
            "mean": self.mean,
            "scale": self.scale,
            "lex_idf": self.lex_idf.astype(np.float32),
            "lex_weights": self.lex_weights.astype(np.float32),
            "lex_bias": self.lex_bias.astype(np.float32),
            "dense_share": np.array(self.dense_share, dtype=np.float64),
            "temperature": np.array(self.temperature, dtype=np.float64),
            "thread": self.thread,
            "data_hash": np.array(self.data_hash),
            "query_tokens": np.array(self.query_tokens),
            "answer_tokens": np.array(self.answer_tokens),
            "info": np.array(json.dumps(self.info, sort_keys=True)),
            "layers": np.array(len(self.weights)),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"] = w.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        return cls.from_bytes(Path(path).read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "artifact") -> TrainedModel:
        """The model from npz bytes (a file's, or a version stored in the database)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            layers = int(z["layers"])
            labels = tuple(str(x) for x in z["labels"])
            if labels != QUERY_TYPES:
                raise ValueError(f"{name}: labels {labels} are not the query types {QUERY_TYPES}")
            return cls(
                labels=labels,  # type: ignore[arg-type]
                mean=z["mean"].astype(np.float32),
                scale=z["scale"].astype(np.float32),
                weights=tuple(z[f"w{i}"] for i in range(layers)),
                biases=tuple(z[f"b{i}"] for i in range(layers)),
                lex_idf=z["lex_idf"],
                lex_weights=z["lex_weights"],
                lex_bias=z["lex_bias"],
                dense_share=float(z["dense_share"]),
                temperature=float(z["temperature"]),
                thread=z["thread"].astype(np.float64),
                data_hash=str(z["data_hash"]),
                query_tokens=int(z["query_tokens"]),
                answer_tokens=int(z["answer_tokens"]),
                info=json.loads(str(z["info"])),
            )


def mlp_forward(
    x: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
) -> np.ndarray:
    x = (x - mean) / scale
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        x = x @ w + b
        if i < len(weights) - 1:
            x = np.maximum(x, 0.0)
    return x


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def thread_mix(
    p_query: np.ndarray,
    query_pieces: int,
    p_users: np.ndarray | None,
    p_answer: np.ndarray | None,
    params: np.ndarray,
) -> np.ndarray:
    """The follow-up's probabilities blended with its thread's. Shared by inference and training.

    alpha, the follow-up's own weight, rises with its length and its confidence; the rest goes to the
    earlier user turns and the last answer, split by params[3].
    """
    if p_users is None and p_answer is None:
        return p_query
    a0, a_len, a_conf, user_share = params
    alpha = sigmoid(a0 + a_len * math.log(max(query_pieces, 1)) + a_conf * float(p_query.max()))
    if p_users is None:
        history = p_answer
    elif p_answer is None:
        history = p_users
    else:
        share = min(max(float(user_share), 0.0), 1.0)
        history = share * p_users + (1.0 - share) * p_answer
    assert history is not None
    return alpha * p_query + (1.0 - alpha) * history


# --------------------------------------------------------------------------------------------------
# Complexity and specialisations: keyword and shape heuristics, cheap and explainable.

_SPECIALISATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    # (regex, specialisation); names follow the catalog's vocabulary where it has one
    "coding": (
        (r"\b(?:python|pandas|numpy|django|flask|pytest|\.py)\b", "python"),
        (r"\b(?:javascript|js|node(?:\.js)?|react|typescript|ts|npm|vue)\b", "javascript"),
        (r"\b(?:sql|postgres(?:ql)?|mysql|sqlite|select\s.+\sfrom|join)\b", "sql"),
        (r"\b(?:bash|shell|linux|unix|grep|awk|sed|chmod|find \.|command line|one-liner)\b", "shell"),
        (r"\b(?:java|kotlin|spring)\b", "java"),
        (r"\b(?:rust|cargo)\b", "rust"),
        (r"\b(?:golang|go (?:function|program|code))\b", "go"),
        (r"(?:c\+\+|\bcpp\b|\bc#|\.net\b)", "c-family"),
        (r"\bregex|regular expression", "regex"),
        (r"\b(?:html|css|tailwind)\b", "web"),
        (
            r"\b(?:bug|debug\w*|\w*error|\w*exception|traceback|stack trace|crash|fails?|failing|broken|"
            r"doesn'?t work|not working|segfault|undefined|null ?pointer|fix)\b",
            "debugging",
        ),
        (r"\b(?:review|refactor|clean up|code smell|improve this code)\b", "code-review"),
        (r"\b(?:complexity|big-?o|o\(n|algorithm|recursion|recursive|dynamic programming)\b", "algorithms"),
    ),
    "math": (
        (
            r"\b(?:derivative|differentiate|integral|integrate|limit|lim|d/dx|dy/dx|calculus|series)\b",
            "calculus",
        ),
        (r"\b(?:solve|equation|polynomial|factor|quadratic|roots?|inequality|simplify)\b", "algebra"),
        (
            r"\b(?:probability|odds|expected value|dice|coin|random|variance|standard deviation"
            r"|mean|median)\b",
            "probability-statistics",
        ),
        (r"\b(?:triangle|circle|angle|area|perimeter|radius|polygon|volume|geometry)\b", "geometry"),
        (r"\b(?:matrix|matrices|eigen\w*|vector|determinant|linear algebra)\b", "linear-algebra"),
        (r"\b(?:prime|divisible|gcd|lcm|modulo|mod|remainder|integer)\b", "number-theory"),
        (r"\b(?:prove|proof|show that|lemma|theorem)\b", "proofs"),
        (r"\b(?:interest|loan|mortgage|apr|investment|profit|discount|price)\b", "finance"),
        (r"\b(?:how many|how much|total|each|per|costs?|left)\b", "word-problems"),
    ),
    "creative": (
        (r"\b(?:poem|poetry|haiku|sonnet|limerick|verse|rhym\w*|stanza)\b", "poetry"),
        (r"\b(?:story|stories|tale|fiction|narrative|plot|chapter|fable)\b", "storytelling"),
        (r"\b(?:song|lyrics|rap|chorus)\b", "lyrics"),
        (r"\b(?:joke|pun|funny|humou?r|comedy)\b", "humor"),
        (r"\b(?:act as|pretend|role-?play|you are a|persona|character)\b", "roleplay"),
        (r"\b(?:slogan|tagline|ad|advert\w*|marketing|product description|catchy)\b", "marketing"),
        (r"\b(?:names? for|name ideas|brainstorm)\b", "naming"),
    ),
    "reasoning": (
        (r"\b(?:logic|logical|deduc\w*|syllogism|premise|conclusion|valid|true or false|fallacy)\b", "logic"),
        (r"\b(?:puzzle|riddle|brain ?teaser)\b", "puzzles"),
        (r"\b(?:estimate|roughly|approximately|fermi)\b", "estimation"),
        (r"\b(?:step by step|explain your reasoning|reasoning)\b", "step-by-step"),
    ),
    "general": (
        (
            r"\b(?:translate|translation|in (?:french|spanish|german|english|japanese|chinese))\b",
            "translation",
        ),
        (r"\b(?:summari[sz]e|summary|tl;?dr|key points)\b", "summarization"),
        (r"\b(?:rewrite|rephrase|proofread|grammar|correct (?:this|the)|edit)\b", "writing"),
        (r"\b(?:should i|recommend|advice|tips|best way)\b", "advice"),
        (r"\b(?:physics|chemistry|biology|science|atom|molecule|cell)\b", "science"),
    ),
}
_SPEC_PATTERNS = {t: tuple((re.compile(p, re.I), s) for p, s in pats) for t, pats in _SPECIALISATIONS.items()}

_COMPLEX_HINTS = re.compile(
    r"\b(?:prove|proof|architecture|design a|scalable|distributed|optimi[sz]e|concurren\w*|thread-safe|"
    r"production|end-to-end|in depth|in detail|comprehensive|trade-?offs?|compare and contrast|"
    r"step by step|derive|rigorous|multi-?step|migration plan|from scratch)\b",
    re.I,
)
_SIMPLE_HINTS = re.compile(
    r"^(?:what is|what's|who is|who was|when did|where is|define|quick|simple|briefly|one-liner)\b", re.I
)


def specialisations_for(query_type: str, text: str) -> tuple[str, ...]:
    found = {spec for pattern, spec in _SPEC_PATTERNS.get(query_type, ()) if pattern.search(text)}
    letters = [c for c in text if c.isalpha()]
    if letters and sum(not c.isascii() for c in letters) / len(letters) > 0.3:
        found.add("multilingual")
    return tuple(sorted(found))


def complexity_for(query_type: str, text: str, pieces: int) -> Complexity:
    """Length, code and wording decide; the thresholds are in word pieces of the question."""
    score = 0
    if pieces > 60:
        score += 1
    if pieces > 180:
        score += 1
    if "```" in text or len(_CODE_LINE.findall(text)) >= 6:
        score += 1
    score += min(len(_COMPLEX_HINTS.findall(text)), 2)
    if query_type in ("math", "reasoning") and pieces > 40:
        score += 1  # multi-step word problems and puzzles need a stronger model than chit-chat does
    if _SIMPLE_HINTS.search(text.strip()) and pieces <= 30:
        score -= 1
    if pieces <= 12 and score <= 0:
        return "simple"
    if score <= 0:
        return "simple" if pieces <= 40 else "moderate"
    return "moderate" if score <= 2 else "complex"


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    query_type: QueryType
    probs: dict[str, float]
    confidence: float
    complexity: Complexity
    specializations: tuple[str, ...]


def limit_blas_threads(threads: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its default pool (OPENBLAS_NUM_THREADS still works)
        return
    threadpool_limits(threads, user_api="blas")


@dataclass(frozen=True)
class _Read:
    probs: np.ndarray
    pieces: int
    embedding: np.ndarray  # unit length; the decision memory keeps it too


class _LRU:
    """A small thread-safe (text, tokens) -> _Read cache: a thread's earlier turns are re-read on every
    follow-up, and the decision memory wants the question's embedding, so each text is encoded once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[tuple[str, int], _Read] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> _Read | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], value: _Read) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


class LocalRouter:
    """Offline routing: `classify` a question (with its thread), then `select_model` from the inventory."""

    def __init__(
        self,
        encoder: MiniLMEncoder,
        model: TrainedModel,
        version: int = 0,
        *,
        exploration: Exploration | None = None,
        ratings: bool = True,
    ) -> None:
        self.encoder = encoder
        self.exploration = exploration
        self.ratings = ratings  # whether users' ratings steer the model choice (user_feedback_integration)
        # the model and the cache of its reads change together (one assignment), so a question
        # classified during a switch never files one model's probabilities under the other
        self._state = (model, _LRU(512))
        self.version = version  # 0: the shipped artifact; else the database version in use
        self.shipped = model if version == 0 else None  # kept for a rollback to version 0

    @property
    def model(self) -> TrainedModel:
        return self._state[0]

    def use(self, model: TrainedModel, version: int) -> None:
        """Switch to another trained model (a newly activated version) without a restart."""
        self._state = (model, _LRU(512))
        self.version = version

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        encoder: MiniLMEncoder | None = None,
        *,
        blas_threads: int | None = 1,
        exploration: Exploration | None = None,
        ratings: bool = True,
    ) -> LocalRouter:
        """Load the encoder and the artifact once; the router is then reused for every question.

        `blas_threads` sets this process's BLAS thread pool (None leaves it alone). One thread,
        because our matrices are small and multi-threaded OpenBLAS spin-waits for cores that Ollama
        or anything else is using: bench/local_latency.py measured p99 537 ms with two threads on a
        loaded machine against 62 ms with one.
        """
        if blas_threads is not None:
            limit_blas_threads(blas_threads)
        model = TrainedModel.load(Path(path) if path is not None else DEFAULT_ARTIFACT)
        return cls(encoder or MiniLMEncoder.load(), model, exploration=exploration, ratings=ratings)

    def clear_cache(self) -> None:
        """Forget the texts seen so far (benchmarks measure first sight with it)."""
        self._state = (self.model, _LRU(512))

    # --- classification --------------------------------------------------------------------------
    def features(self, text: str, max_tokens: int) -> tuple[np.ndarray, int]:
        """Classifier input for one text: its embedding and form features; and its word-piece count."""
        ids = self.encoder.tokenize(text)
        embedding = self.encoder.encode_ids(ids, max_tokens)
        return np.concatenate([embedding, form_features(text)]), len(ids)

    def _read(self, text: str, max_tokens: int) -> _Read:
        model, cache = self._state
        key = (text, max_tokens)
        hit = cache.get(key)
        if hit is None:
            feats, pieces = self.features(text, max_tokens)
            hit = _Read(model.probs(feats, text), pieces, feats[: self.encoder.dim])
            cache.put(key, hit)
        return hit

    def text_probs(self, text: str, max_tokens: int) -> tuple[np.ndarray, int]:
        read = self._read(text, max_tokens)
        return read.probs, read.pieces

    def embedding(self, query: str) -> np.ndarray:
        """The question's unit-length embedding, as classifying it computed (and cached) it."""
        return self._read(query, self.model.query_tokens).embedding

    def history_probs(self, history: Sequence[Turn]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Probabilities of the earlier user turns (recent ones weigh more) and of the last answer."""
        users = [t.content for t in history if t.role == "user" and t.content.strip()][-MAX_USER_TURNS:]
        answers = [t.content for t in history if t.role == "assistant" and t.content.strip()]
        p_users = None
        if users:
            weights = [TURN_DECAY**i for i in range(len(users))][::-1]
            stacked = np.stack([self.text_probs(u, self.model.query_tokens)[0] for u in users])
            p_users = (np.asarray(weights)[:, None] * stacked).sum(0) / sum(weights)
        p_answer = self.text_probs(answers[-1], self.model.answer_tokens)[0] if answers else None
        return p_users, p_answer

    def classify(self, query: str, history: Sequence[Turn] = ()) -> Classification:
        p_query, pieces = self.text_probs(query, self.model.query_tokens)
        p_users, p_answer = self.history_probs(history) if history else (None, None)
        probs = thread_mix(p_query, pieces, p_users, p_answer, self.model.thread)
        best = int(np.argmax(probs))
        query_type = self.model.labels[best]
        # a short follow-up inherits the weight and topic of the question it follows
        context = query
        last_user = next(
            (t.content for t in reversed(history) if t.role == "user" and t.content.strip()), None
        )
        if last_user and pieces <= 24:
            context = f"{last_user}\n{query}"
            pieces += self.encoder.token_count(last_user)
        return Classification(
            query_type=query_type,
            probs={label: round(float(p), 4) for label, p in zip(self.model.labels, probs, strict=True)},
            confidence=round(float(probs[best]), 4),
            complexity=complexity_for(query_type, context, pieces),
            specializations=specialisations_for(query_type, context),
        )

    # --- decision --------------------------------------------------------------------------------
    def decide_sync(self, req: RouteRequest, inv: Inventory) -> Decision:
        started = time.perf_counter()
        c = self.classify(req.query, req.history)
        sel = select_model(
            c.query_type,
            c.complexity,
            inv,
            specializations=c.specializations,
            explore=self.exploration,
            ratings=self.ratings,
        )
        needs = f" ({', '.join(c.specializations)})" if c.specializations else ""
        reasoning = (
            f"Looks like a {c.complexity} {c.query_type} question{needs}, {c.confidence:.0%} sure. "
            + sel.reasoning
        )
        return Decision(
            recommended_model=sel.model,
            confidence=c.confidence,
            reasoning=reasoning,
            query_type=c.query_type,
            complexity=c.complexity,
            specializations_needed=list(c.specializations),
            alternatives=sel.alternatives,
            download_if_needed=sel.download_needed,
            source="local",
            decision_ms=round((time.perf_counter() - started) * 1000.0, 2),
            cost_usd=0.0,
        )

    async def decide(self, req: RouteRequest, inv: Inventory) -> Decision:
        """Decide in a worker thread: a long question costs tens of ms of matrix work, which would
        stall every other chat stream on the event loop; numpy releases the GIL meanwhile, and the
        hop itself costs well under a millisecond (bench/local_latency.py measures both)."""
        return await asyncio.to_thread(self.decide_sync, req, inv)
