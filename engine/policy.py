"""Cache policies: which KV slots survive when the cache must shrink.

One pure implementation shared by every backend and by the tests. A policy looks only at the
cache as it is now (for each slot, whether its token is a separator) and at how many tokens are
about to be appended; it answers with the slots to keep, in cache order, or ``None`` when
nothing has to go. Backends then remove the other slots and renumber positions ``0..n-1``.

- ``full``: never evicts; the document must fit the context.
- ``streaming(a, c)``: StreamingLLM. ``a`` initial tokens (attention sinks) and the most recent
  tokens, so that after appending the cache holds exactly ``c``.
- ``sepllm(a, s, w, c)``: SepLLM's four tiers ``initial | separators | past window | local
  window``. While the cache (with what comes next) fits ``c`` nothing happens; past that the
  past window keeps only its separators, at most ``s`` separators survive (the most recent),
  and the cache drops to about ``a + s + w`` before growing again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Full:
    name = "full"

    def keep(self, is_separator: np.ndarray, incoming: int) -> np.ndarray | None:
        return None

    @property
    def capacity(self) -> int | None:
        return None

    def max_chunk(self, default: int) -> int:
        return default

    def describe(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class Streaming:
    """StreamingLLM: ``initial`` sinks plus the most recent tokens, ``capacity`` in all."""

    initial: int = 4
    capacity: int = 800
    name = "streaming"

    def __post_init__(self):
        if self.initial < 0 or self.capacity <= self.initial:
            raise ValueError(f"streaming needs 0 <= a < c, got a={self.initial}, c={self.capacity}")

    def keep(self, is_separator: np.ndarray, incoming: int) -> np.ndarray | None:
        n = len(is_separator)
        if n + incoming <= self.capacity:
            return None
        recent = max(self.capacity - self.initial - incoming, 0)
        sinks = np.arange(min(self.initial, n))
        window = np.arange(max(n - recent, len(sinks)), n)
        return np.concatenate([sinks, window])

    def max_chunk(self, default: int) -> int:
        # A chunk larger than the recent share would push out every non-sink token at once.
        return max(1, min(default, (self.capacity - self.initial) // 2))

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class SepLLM:
    """SepLLM's four-tier cache: initial ``a``, separators ``s``, local window ``w``, capacity ``c``."""

    initial: int = 4
    separators: int = 64
    window: int = 256
    capacity: int = 800
    name = "sepllm"

    def __post_init__(self):
        a, s, w, c = self.initial, self.separators, self.window, self.capacity
        if min(a, s, w) < 0 or a + s + w >= c:
            raise ValueError(f"sepllm needs a + s + w < c, got a={a}, s={s}, w={w}, c={c}")

    @property
    def floor(self) -> int:
        """The most the cache holds right after an eviction."""
        return self.initial + self.separators + self.window

    def keep(self, is_separator: np.ndarray, incoming: int) -> np.ndarray | None:
        n = len(is_separator)
        if n + incoming <= self.capacity:
            return None
        a = min(self.initial, n)
        local_start = max(n - self.window, a)
        middle = np.flatnonzero(is_separator[a:local_start]) + a
        kept_separators = middle[len(middle) - min(self.separators, len(middle)):]
        return np.concatenate([np.arange(a), kept_separators, np.arange(local_start, n)])

    def max_chunk(self, default: int) -> int:
        # After an eviction the cache holds at most a+s+w; the chunk must fit in what is left of c.
        return max(1, min(default, self.capacity - self.floor))

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self)}


Policy = Full | Streaming | SepLLM

# The one list of policies: the CLI's choices, the settings dialog and memory headers read it.
POLICIES: dict[str, type[Full] | type[Streaming] | type[SepLLM]] = {
    "sepllm": SepLLM, "streaming": Streaming, "full": Full}
DEFAULT_CAPACITY = 800


def make_policy(name: str, capacity: int | None = None, **sizes: int) -> Policy:
    """Build a policy from its CLI name; tier sizes scale with ``capacity`` when not given.

    The defaults are SepLLM's published setting (a=4, s=64, w=256, c=800); a larger ``c`` keeps
    those proportions so that a person sets one number, the memory budget.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose {', '.join(POLICIES)}")
    if name == "full":
        return Full()
    c = capacity or DEFAULT_CAPACITY
    a = sizes.get("initial", 4)
    if name == "streaming":
        return Streaming(initial=a, capacity=c)
    s = sizes.get("separators", max(1, round(c * 64 / DEFAULT_CAPACITY)))
    w = sizes.get("window", max(1, round(c * 256 / DEFAULT_CAPACITY)))
    return SepLLM(initial=a, separators=s, window=w, capacity=c)


def policy_from_description(description: dict) -> Policy:
    """Inverse of ``describe()``: used when a memory file says which policy made it."""
    fields = {k: v for k, v in description.items() if k != "name"}
    return POLICIES[description["name"]](**fields)


def policy_key(policy: Policy) -> str:
    """A short stable name, e.g. ``sepllm-4-64-256-800``, for the library and file names."""
    d = policy.describe()
    return "-".join([d.pop("name"), *(str(v) for v in d.values())])
