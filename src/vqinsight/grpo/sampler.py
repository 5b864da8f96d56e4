"""The GRPO trainer's sampler: TRL's repeat pattern over units, so both orders of a comparison (its ``|BA`` copy)
are rolled out in the same generation batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def order_units(sample_ids: Sequence[str]) -> list[list[int]]:
    """Dataset indices grouped so that a comparison's swapped copy (sample_id ending in ``|BA``, written right after
    its original by ``train.with_both_orders``) forms one unit with it; every other row is a unit of its own."""
    units: list[list[int]] = []
    for i, sid in enumerate(sample_ids):
        if str(sid).endswith("|BA") and units and str(sample_ids[units[-1][0]]) == str(sid)[:-3]:
            units[-1].append(i)
        else:
            units.append([i])
    return units


class UnitRepeatSampler(torch.utils.data.Sampler):
    """TRL's ``RepeatSampler`` (same yield pattern: each prompt ``mini_repeat_count`` times in a row, each chunk of
    ``batch_size`` prompts ``repeat_count`` times) that shuffles whole units instead of single rows and packs them
    so that no unit is split across chunks: both orders of a comparison are then rolled out in the same generation
    batch. With both orders a constant answer earns no reward and the A/B bias is a neutral direction of GRPO's
    objective; drawing the two orders in different steps lets that bias random-walk (docs/DEMO_LEARNING.md).
    The same seed on every process gives every process the same order, as in TRL. Incomplete last chunks are
    dropped, as in TRL."""

    def __init__(
        self,
        units: list[list[int]],
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        if any(len(u) > batch_size for u in units):
            raise ValueError(f"a unit of {max(map(len, units))} rows does not fit a batch of {batch_size} prompts")
        self.units, self.mini_repeat_count, self.batch_size = units, mini_repeat_count, batch_size
        self.repeat_count, self.shuffle = repeat_count, shuffle
        self.num_samples = sum(len(u) for u in units)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def chunks(self, generator: torch.Generator | None = None) -> list[list[int]]:
        """The next epoch's chunks (advances ``generator``, by default the sampler's own)."""
        generator = self.generator if generator is None else generator
        order = torch.randperm(len(self.units), generator=generator).tolist() if self.shuffle else None
        units = [self.units[i] for i in order] if order is not None else list(self.units)
        out: list[list[int]] = []
        chunk: list[int] = []
        # A chunk starts with the next unit in shuffled order; its free slots are then filled with the first unit of
        # the parity that keeps the rest fillable (odd free slots: a single row first), so pairs and single rows mix
        # through the epoch; what cannot fill a chunk sits out the epoch, as TRL drops an incomplete last chunk.
        while units:
            free = self.batch_size - len(chunk)
            fits = [j for j, u in enumerate(units) if len(u) <= free]
            if not fits:  # e.g. one free slot and only pairs left: this chunk's rows sit out the epoch
                chunk = []
                continue
            same = [j for j in fits if len(units[j]) % 2 == free % 2]
            j = fits[0] if not chunk else (same or fits)[0]
            chunk.extend(units.pop(j))
            if len(chunk) == self.batch_size:
                out.append(chunk)
                chunk = []
        return out

    def __iter__(self) -> Iterator[int]:
        for chunk in self.chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        """Indices the next epoch yields: rows that sit out the epoch are not counted (the packing is simulated on
        a copy of the generator, so the sampler's own order is not advanced)."""
        probe = torch.Generator()
        probe.set_state(self.generator.get_state())
        return len(self.chunks(probe)) * self.batch_size * self.mini_repeat_count * self.repeat_count
