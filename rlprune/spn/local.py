"""The SPN where it is used: a local copy that follows the world model's weights, and a plain predictor.

An env copy on an RLlib env runner, a search re-scoring its candidates and the SPN-driven baselines all
query the SPN in-process; one call to the world-model actor per env step would be 3x slower
(DESIGN.md). :class:`LocalSPN` holds the copy and adopts newer weights, pushed or pulled;
:func:`spn_predictor` turns a checkpoint into an ``(N, G) -> (N,)`` function.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rlprune.spn.predictor import SPN, load_spn


# ====================================================================== env-side copy
class LocalSPN:
    """The SPN copy an env holds: predictions stay in-process, weights follow the world model.

    New weights arrive either pushed (``set_weights``, e.g. from ``foreach_env_runner``) or pulled: with a
    ``fetch`` callable, :meth:`predict` asks at most every ``check_every_s`` seconds whether a newer
    version exists (one round trip every few seconds, never one per env step).

    Args:
        spn: an ``SPN``, a checkpoint path, or an ``SPN.state()`` dict.
        version: the version of those weights.
        fetch: ``fetch(version) -> None | (new_version, state)``; ``rlprune.spn.world_model.actor_fetch(handle)``
            builds one for the world-model actor.
        check_every_s: minimum seconds between two ``fetch`` calls.
    """

    def __init__(self, spn, version: int = 0, fetch: Callable | None = None, check_every_s: float = 2.0):
        if isinstance(spn, SPN):
            self.spn = spn
        elif isinstance(spn, dict):
            self.spn = SPN.from_state(spn)
        else:
            self.spn = load_spn(spn)
        self.version = int(version)
        self.fetch = fetch
        self.check_every_s = float(check_every_s)
        self._last_check = time.monotonic()
        self.reloads = 0

    def set_weights(self, state: dict, version: int) -> bool:
        """Adopt pushed weights if they are newer than ours.

        Returns:
            True if the SPN was replaced.
        """
        if int(version) <= self.version:
            return False
        self.spn = SPN.from_state(state)
        self.version = int(version)
        self.reloads += 1
        return True

    def maybe_sync(self, force: bool = False) -> bool:
        """Pull newer weights through ``fetch`` if the check interval has passed (or ``force``).

        Returns:
            True if the SPN was replaced.
        """
        now = time.monotonic()
        if self.fetch is None or (not force and now - self._last_check < self.check_every_s):
            return False
        self._last_check = now
        got = self.fetch(self.version)
        return got is not None and self.set_weights(got[1], got[0])

    def predict(self, R, fingerprint: str, target: str = "acc_drop", fidelity=None):
        """:meth:`SPN.predict` after a (rate-limited) version check.

        Args:
            R, fingerprint, target: as :meth:`SPN.predict`.
            fidelity: label fine-tune steps to predict at (None: the SPN's default, the highest it learnt).

        Returns:
            ``(mean, std)`` arrays of shape ``(N,)``.

        Raises:
            ConfigError: unknown model, a ratio matrix of the wrong shape, or a fidelity the SPN cannot predict.
        """
        self.maybe_sync()
        return self.spn.predict(R, fingerprint, target, fidelity=fidelity)


def spn_predictor(spn_path, space, fingerprint: str):
    """An ``(N, G) -> (N,)`` accuracy-drop predictor from an SPN checkpoint, for the SPN-based baselines.

    The model is registered with the SPN from its group features if the SPN has not seen it (zero-shot).

    Raises:
        CheckpointError: unreadable checkpoint.
    """
    spn = load_spn(spn_path)
    if fingerprint not in spn.known:
        spn.add_model(fingerprint, space.features())
    return lambda R: spn.predict(R, fingerprint)[0]


__all__ = ["LocalSPN", "spn_predictor"]
