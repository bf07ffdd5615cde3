"""BentoML service: the classical analyses of an upload, with the settings of the project's configs.

``POST /colonies`` (multipart field ``image``, a phase-contrast image): one row per colony (area, boxes, hull,
moments, shape measures, ``touches_border``) and the sizes the image was analysed with, as JSON;
``POST /colonies_overlay``: the lab's overlay PNG (upright box red, rotated box green, hull white, contour blue).
``POST /nuclei`` / ``/nuclei_overlay`` (``image``, a nuclear stain): per-nucleus shape table / outlines PNG.
``POST /calcium`` / ``/calcium_overlay`` (``movie``, a (frames, rows, columns) TIFF stack): per-cell response
metrics and dF/F0 traces / the cells outlined on the movie's mean frame. ``POST /metadata``: the settings and
the code version. Bad requests get a 4xx naming the problem (see :mod:`bento.common`).

Uploads may be OME-TIFF or ImageJ TIFF: the optional form field ``channel`` (a name or an index) chooses the channel
of a multi-channel file (one with several and none chosen is refused, naming them), and the pixel size the file
states converts the sizes the configs give in µm and adds a µm column beside every size in pixels
(``pixel_size_um`` in the answer; null without one).
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from pathlib import Path

import bentoml
import numpy as np
import yaml
from bentoml.exceptions import InvalidArgument, UnprocessableEntity

from bento.common import Upload, build_info, guard, max_pixels, max_request_bytes, read_upload
from cellops.telemetry import disable_telemetry

disable_telemetry()

#: Where the analysis settings come from (the pipelines' own configs, copied into the bento).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: Limits of one request (no registered model carries them: the classical service has no model). As for the model
#: services, ``CELLOPS_MAX_PIXELS`` and ``CELLOPS_MAX_REQUEST_BYTES`` can only tighten them (:func:`env_limit`);
#: a value that is not a positive whole number stops the service as it starts.
STORED_LIMITS = {"max_pixels": 25_000_000, "max_request_bytes": 256 * 2**20, "max_frames": 2000}
LIMITS = {**STORED_LIMITS, "max_pixels": max_pixels(STORED_LIMITS),
          "max_request_bytes": max_request_bytes(STORED_LIMITS)}


def _analysis(config: str) -> dict:
    """The analysis parameters of a config; its ``channel`` and ``scene`` keys are for files, not for uploads (a
    request chooses its channel)."""
    values = dict(yaml.safe_load((CONFIGS / config).read_text())["parameters"]["analysis"])
    values.pop("channel", None)
    values.pop("scene", None)
    return values


def _records(table) -> list[dict]:
    """Rows of a table as JSON-safe dicts (numpy scalars and NaN made plain)."""
    import json

    return json.loads(table.to_json(orient="records"))


@contextmanager
def _unprocessable():
    """A readable image the analysis cannot work on (the library says why with a ValueError): 422 with its
    reason, e.g. no nucleus standing out of the noise to measure the nucleus size from."""
    try:
        yield
    except ValueError as error:
        raise UnprocessableEntity(f"the image was read but cannot be analysed: {error}") from error


@bentoml.service(name="cellops-classical", traffic={"timeout": 300, "max_concurrency": 32})
class ClassicalAnalyses:
    def __init__(self) -> None:
        from cellops.classical.calcium import CalciumParams
        from cellops.classical.colonies import ColonyParams
        from cellops.classical.nuclei import NucleusParams
        from cellops.config import from_mapping

        self.colony_params = from_mapping(ColonyParams, _analysis("colonies.yaml"))
        self.nucleus_params = from_mapping(NucleusParams, _analysis("nuclei.yaml"))
        self.calcium_params = from_mapping(CalciumParams, _analysis("calcium.yaml"))

    @staticmethod
    def _image(data: bytes, channel: str | int = "") -> tuple[np.ndarray, float | None]:
        """A 2-D grey image (colour pictures are made grey: phase contrast and stains are one channel) and the pixel
        size its file states."""
        # A form value that looks like a number arrives as one: an index.
        decoded = read_upload(data, LIMITS["max_pixels"], "grey picture", channel=str(channel))
        return decoded.array, decoded.pixel_size_um

    def _movie(self, data: bytes, channel: str | int = "") -> tuple[np.ndarray, float | None]:
        decoded = read_upload(data, LIMITS["max_pixels"], "stack", channel=str(channel),
                              hint="a calcium movie is a (frames, rows, columns) TIFF stack")
        movie = decoded.array
        needed = self.calcium_params.baseline_frames + 2
        if not needed <= len(movie) <= LIMITS["max_frames"]:
            raise InvalidArgument(f"a movie of {len(movie)} frames; this analysis needs {needed} to "
                                  f"{LIMITS['max_frames']} (the first {self.calcium_params.baseline_frames} "
                                  "are the F0 baseline)")
        return movie, decoded.pixel_size_um

    def _colonies(self, data: bytes, channel: str | int = ""):
        from cellops.classical.colonies import measure_colonies
        from cellops.units import with_physical_sizes

        image, pixel_size = self._image(data, channel)
        with _unprocessable():
            params = self.colony_params.at_pixel_size(pixel_size)
            result = measure_colonies(image, params)
            result.table = with_physical_sizes(result.table, params.pixel_size_um)
            return image, result, params.pixel_size_um

    def _nuclei(self, data: bytes, channel: str | int = ""):
        from cellops.classical.nuclei import nucleus_table, segment_nuclei_with_settings
        from cellops.units import with_physical_sizes

        image, pixel_size = self._image(data, channel)
        with _unprocessable():
            params = self.nucleus_params.at_pixel_size(pixel_size)
            found = segment_nuclei_with_settings(image, params)
            table = with_physical_sizes(nucleus_table(found.labels, image), params.pixel_size_um)
            return image, found, table, params.pixel_size_um

    def _calcium(self, data: bytes, channel: str | int = ""):
        from cellops.classical.calcium import measure_calcium_movie

        movie, pixel_size = self._movie(data, channel)
        with _unprocessable():
            params = self.calcium_params.at_pixel_size(pixel_size)
            return movie, measure_calcium_movie(movie, params), params.pixel_size_um

    @staticmethod
    def _png(rgb: np.ndarray, ctx: bentoml.Context, name: str) -> Path:
        from cellops.plots import save_png

        return save_png(rgb, Path(ctx.temp_dir) / name)  # removed after the response

    @bentoml.api
    async def colonies(self, image: Path, channel: str | int = "") -> dict:
        """Per-colony table (sizes in pixels, and in µm when the file states its pixel size) and the settings the
        image was analysed with."""
        from dataclasses import asdict

        _, result, pixel_size = await asyncio.to_thread(self._colonies, Path(image).read_bytes(), channel)
        return {"count": len(result.table), "colonies": _records(result.table), "settings": asdict(result.settings),
                "pixel_size_um": pixel_size}

    @bentoml.api
    async def colonies_overlay(self, image: Path, ctx: bentoml.Context, channel: str | int = "") -> Path:
        """Overlay PNG: upright box red, rotated box green, convex hull white, contour blue."""
        from cellops.classical.colonies import colony_overlay

        picture, result, _ = await asyncio.to_thread(self._colonies, Path(image).read_bytes(), channel)
        ctx.response.headers["X-Colonies"] = str(len(result.table))
        return self._png(colony_overlay(picture, result.contours), ctx, "colonies.png")

    @bentoml.api
    async def nuclei(self, image: Path, channel: str | int = "") -> dict:
        """Per-nucleus shape table (sizes in pixels, and in µm when the file states its pixel size), the diameter
        and threshold used and why."""
        _, found, table, pixel_size = await asyncio.to_thread(self._nuclei, Path(image).read_bytes(), channel)
        return {"count": len(table), "nuclei": _records(table), "diameter_px": round(found.diameter_px, 2),
                "pixel_size_um": pixel_size,
                "diameter_source": found.diameter_source, "threshold": found.threshold,
                "threshold_reason": found.threshold_reason}

    @bentoml.api
    async def nuclei_overlay(self, image: Path, ctx: bentoml.Context, channel: str | int = "") -> Path:
        """Nucleus outlines on the image, as a PNG."""
        from cellops.classical.common import label_overlay

        picture, found, table, _ = await asyncio.to_thread(self._nuclei, Path(image).read_bytes(), channel)
        ctx.response.headers["X-Nuclei"] = str(len(table))
        return self._png(label_overlay(picture, found.labels), ctx, "nuclei.png")

    @bentoml.api
    async def calcium(self, movie: Path, channel: str | int = "") -> dict:
        """Per-cell response metrics and dF/F0 traces (one list per cell, one value per frame)."""
        _, result, pixel_size = await asyncio.to_thread(self._calcium, Path(movie).read_bytes(), channel)
        return {"cells": len(result.cell_ids), "frame_interval_s": self.calcium_params.frame_interval_s,
                "pixel_size_um": pixel_size,
                "metrics": _records(result.metrics),
                "dff": {str(int(cell)): [round(float(v), 5) for v in trace]
                        for cell, trace in zip(result.cell_ids, result.dff)}}

    @bentoml.api
    async def calcium_overlay(self, movie: Path, ctx: bentoml.Context, channel: str | int = "") -> Path:
        """Cell outlines on the movie's mean frame, as a PNG."""
        from cellops.classical.common import label_overlay

        frames, result, _ = await asyncio.to_thread(self._calcium, Path(movie).read_bytes(), channel)
        ctx.response.headers["X-Cells"] = str(len(result.cell_ids))
        return self._png(label_overlay(frames.mean(axis=0), result.labels), ctx, "cells.png")

    @bentoml.api
    def metadata(self) -> dict:
        """The analysis settings (from the configs) and the commit the bento was built from."""
        from dataclasses import asdict

        return {"service": "cellops-classical", "bento_build": build_info(),
                "colonies": asdict(self.colony_params), "nuclei": asdict(self.nucleus_params),
                "calcium": asdict(self.calcium_params), "limits": LIMITS}


guard(ClassicalAnalyses, {f"/{route}": Upload(field, options=("channel",)) for route, field in (
    ("colonies", "image"), ("colonies_overlay", "image"), ("nuclei", "image"), ("nuclei_overlay", "image"),
    ("calcium", "movie"), ("calcium_overlay", "movie"))}, LIMITS)
