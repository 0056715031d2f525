"""The task of one (model, scoring block) of a volume: its block plus halo, in bounded memory."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SegrankError
from ..inference.normalize import ImageSample
from ..models.description import Model
from ..scoring.options import ScoringOptions
from ..scoring.volume import VolumeJob
from .failures import Failure, Stage
from .rundir import unit_row
from .units import Unit


@dataclass(frozen=True)
class BlockTask:
    """The work for one (model, scoring block) of a volume (`scoring.volume.score_block`)."""

    job: VolumeJob  # shared by the blocks of one (model, volume)
    unit: Unit
    todo: frozenset

    def run(self) -> dict:
        """Rows of the block; a failure comes back as data, not as an exception."""
        from ..scoring.volume import score_block

        counts: dict = {}
        try:
            scores = score_block(self.job, self.unit.name, self.unit.region, self.todo, counts=counts)
        except SegrankError as err:
            return {"failure": self.failure(str(err))}
        rows = [unit_row(self.job.model.name, spec, self.unit.name, repeat, score) for spec, repeat, score in scores]
        return {"rows": rows, "predictions": counts}

    def failure(self, error: str) -> Failure:
        return Failure(self.job.model.name, Stage.PREDICT, error, image=self.unit.image, unit=self.unit.name)


def volume_job(model: Model, dropout_model: Model | None, image, session, options: ScoringOptions, block, tile, halo,
               samples: dict[str, ImageSample]) -> VolumeJob:
    """The VolumeJob of one (model, volume): whole-volume normalisation (its sample read once
    per volume and shared by the models through `samples`), contrast centre and tiling."""
    from ..inference.axes import channel_first
    from ..inference.normalize import sample_image
    from ..inference.prepared import prepare_image
    from ..scoring.grid import scoring_blocking
    from ..scoring.volume import normalized_mean

    data, _, _, _ = channel_first(image, None, model)
    if image.name not in samples:
        samples[image.name] = sample_image(data)
    sample = samples[image.name]
    model_c, blocking = scoring_blocking(model, session, data, block, tile=tile, halo=halo)
    prepared = prepare_image(model, image, session=session, blocking=blocking, sample=sample)
    center = normalized_mean(prepared.norm, sample) if any(s.kind == "contrast" for s in options.specs) else 0.0
    return VolumeJob(model_c, dropout_model, image, prepared.norm, center, blocking, prepared.identity, options)


__all__ = ["BlockTask", "volume_job"]
