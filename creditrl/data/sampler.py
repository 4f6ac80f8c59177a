"""A resumable prompt sampler: a seeded permutation per epoch and a position in it.

The state is two integers (epoch, position), saved in checkpoints. Resuming at an epoch boundary continues with
the next epoch's permutation: it never silently trains zero steps (verl#7401).
"""

from __future__ import annotations

import random


class PromptSampler:
    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        idx = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(idx)
        return idx

    def next_indices(self, k: int) -> list[int]:
        """The next `k` dataset indices, crossing epoch boundaries as needed."""
        out: list[int] = []
        while len(out) < k:
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
                self._perm = self._permutation(self.epoch)
            take = min(k - len(out), self.n - self.position)
            out.extend(self._perm[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"checkpoint was made with {state['n']} training prompts, the data now has {self.n}: "
                             f"resume with the same data files")
        self.epoch, self.position = state["epoch"], state["position"]
        self._perm = self._permutation(self.epoch)
