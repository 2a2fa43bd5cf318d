"""``export_dataset``: the selected cells of a dataset as folders another tool opens.

What ``o2a export`` and the ``dataset_export`` asset call. It reads only the dataset
index, its coverage summary and the shards that hold selected cells (from any
storage root: ``file://`` or ``s3://``), writes one folder per frame
(``training.export.formats``), ``CONVENTIONS.md`` and ``export.json`` (what was
asked for, what was exported, which requested cells do not exist). A cell the
index lacks is reported, never made up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

from capture_schema import derived_layout as layout
from capture_schema.atomic import atomic_write_bytes, atomic_write_json
from capture_schema.cameras import Camera
from capture_schema.storage import Storage
from training.export.cells import Cell, frames
from training.export.formats import (FORMATS, UNDISTORT_BY_DEFAULT, fit_document, image_path, mask_path, ply_bytes,
                                     write_cameras)
from training.selection import FILTER_COLUMNS, SampleFilter, select
from training.stage_io import StageError, read_index

#: JPEG quality of re-encoded (undistorted) JPEG originals; PNG originals stay lossless.
JPEG_QUALITY = 95


class ExportError(StageError):
    """The export cannot be made as asked; the message says why."""


@dataclass
class ExportReport:
    out: str
    format: str
    undistorted: bool
    frames: list[dict] = field(default_factory=list)
    cells: int = 0
    missing_cells: list[str] = field(default_factory=list)
    unknown: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": self.format, "undistorted": self.undistorted, "cells": self.cells,
                "frames": self.frames, "missing_cells": self.missing_cells, "unknown_filter_values": self.unknown}


def conventions_text() -> str:
    """The project's ``CONVENTIONS.md`` (shipped inside ``capture_schema``)."""
    return resources.files("capture_schema").joinpath(layout.CONVENTIONS_FILE).read_text(encoding="utf-8")


class _Undistorter:
    """Undistortion maps per camera, computed once per export (a session's frames share a rig)."""

    def __init__(self) -> None:
        self._maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def maps(self, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        key = (camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy, tuple(camera.dist))
        if key not in self._maps:
            K = camera.K
            self._maps[key] = cv2.initUndistortRectifyMap(K, np.asarray(camera.dist, np.float64), None, K,
                                                          (camera.width, camera.height), cv2.CV_32FC1)
        return self._maps[key]

    def image(self, data: bytes, ext: str, camera: Camera) -> bytes:
        import cv2

        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        out = cv2.remap(image, *self.maps(camera), cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == "jpg" else []
        return cv2.imencode(f".{ext}", out, params)[1].tobytes()

    def mask(self, mask: np.ndarray, camera: Camera) -> np.ndarray:
        import cv2

        return cv2.remap(mask, *self.maps(camera), cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)


def full_size_mask(data: bytes, camera: Camera) -> np.ndarray:
    """The stored head mask (training size) at the image's size: bilinear, then cut at half (0/255)."""
    import cv2

    small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(small, (camera.width, camera.height), interpolation=cv2.INTER_LINEAR)
    return np.where(big >= 128, 255, 0).astype(np.uint8)


def _frame_mesh(fit: dict | None, face_model: Any) -> np.ndarray | None:
    if fit is None or face_model is None or fit["model"] != face_model.name:
        return None
    return face_model.vertices(np.asarray(fit["identity"]), np.asarray(fit["expression"]),
                               np.asarray(fit["rotation"]), np.asarray(fit["translation"]))


def _picture(cameras: dict[str, Camera], vertices: np.ndarray | None, faces: np.ndarray | None, title: str) -> bytes:
    from fitting.rig_picture import rig_picture

    return rig_picture(cameras, vertices, faces if vertices is not None else None, title=title)


def _write_frame(out_dir: Path, fmt: str, cells: list[Cell], undistorter: _Undistorter | None,
                 face_model: Any, picture: bool) -> dict:
    first = cells[0]
    folder = out_dir / layout.export_frame_dir(first.session_id, first.expression)
    originals = {c.camera_id: c.camera for c in cells}
    cameras = {cam: replace(c, dist=(0.0,) * 5) for cam, c in originals.items()} if undistorter else originals
    for cell in cells:
        data = undistorter.image(cell.image, cell.image_ext, originals[cell.camera_id]) if undistorter else cell.image
        atomic_write_bytes(folder / image_path(cell.camera_id, cell.image_ext), data)
    masks = all(c.mask is not None for c in cells)
    if masks:
        import cv2

        for cell in cells:
            mask = full_size_mask(cell.mask, originals[cell.camera_id])
            if undistorter:
                mask = undistorter.mask(mask, originals[cell.camera_id])
            atomic_write_bytes(folder / mask_path(cell.camera_id), cv2.imencode(".png", mask)[1].tobytes())
    fit = next((c.fit for c in cells if c.fit is not None), None)
    vertices = _frame_mesh(fit, face_model)
    if vertices is not None:
        atomic_write_bytes(folder / layout.EXPORT_MESH_FILE, ply_bytes(vertices, face_model.faces))
    if fit is not None:
        views = {c.camera_id: {"view_status": c.fit["view_status"], "rmse_px": c.fit["rmse_px"]}
                 for c in cells if c.fit is not None}
        atomic_write_json(folder / layout.EXPORT_FIT_FILE, fit_document(fit, views, vertices is not None))
    write_cameras(folder, fmt, cameras, {c.camera_id: c.image_ext for c in cells}, masks, vertices is not None)
    if picture:
        title = f"{first.session_id} / {first.expression}"
        atomic_write_bytes(folder / layout.EXPORT_PICTURE_FILE,
                           _picture(cameras, vertices, getattr(face_model, "faces", None), title))
    return {"folder": f"{first.session_id}/{first.expression}", "subject_id": first.subject_id,
            "session_id": first.session_id, "expression": first.expression,
            "cameras": [c.camera_id for c in cells], "masks": masks, "mesh": vertices is not None,
            "fit": fit is not None}


def read_coverage(store: Storage) -> dict:
    """The dataset's coverage summary (missing cells, ...), or {} when the index was written without one."""
    return json.loads(store.read_bytes(layout.COVERAGE)) if store.exists(layout.COVERAGE) else {}


def _quiet(_: str) -> None:
    pass


def export_dataset(store: Storage, out_dir: str | Path, fmt: str, sample_filter: SampleFilter = SampleFilter(),
                   splits: Collection[str] | None = None, *, undistort: bool | None = None, face_model: Any = None,
                   picture: bool = True, storage_options: dict[str, Any] | None = None,
                   log: Callable[[str], None] = _quiet) -> ExportReport:
    """Export the cells ``sample_filter`` and ``splits`` select from ``store``'s dataset into ``out_dir``
    (absent or empty) as ``fmt``. ``undistort`` None takes the format's default; ``face_model`` (the model
    the fits come from) adds each frame's posed mesh. Raises ``ExportError`` when nothing is selected."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} exists and is not an empty folder: export into a new folder "
                          "(an export never mixes with other files)")
    selection = select(read_index(store), read_coverage(store), sample_filter, splits)
    for name, values in selection.unknown.items():
        log(f"no {name[:-1]} {', '.join(values)} in the dataset index")
    if selection.rows.empty:
        asked = "; ".join(f"{k}: {', '.join(v)}" for k, v in selection.unknown.items()) or "the filters"
        raise ExportError(f"nothing to export: no indexed cell matches ({asked}); `o2a list` shows what the "
                          f"dataset holds ({len(selection.missing_cells)} requested cell(s) are missing)")
    undistort = UNDISTORT_BY_DEFAULT[fmt] if undistort is None else undistort
    report = ExportReport(str(out_dir), fmt, undistort, missing_cells=selection.missing_cells,
                          unknown=selection.unknown)
    out_dir.mkdir(parents=True, exist_ok=True)
    undistorter = _Undistorter() if undistort else None
    split_of = dict(zip(selection.rows.session_id, selection.rows.split))
    total = selection.rows.groupby(["session_id", "expression"]).ngroups
    for cells in frames(selection.rows, storage_options):
        record = _write_frame(out_dir, fmt, cells, undistorter, face_model, picture)
        report.frames.append({**record, "split": split_of[record["session_id"]]})
        report.cells += len(cells)
        log(f"exported {record['folder']} ({len(cells)} image(s)) [{len(report.frames)}/{total} frames]")
    for key in selection.missing_cells:
        log(f"missing (not exported): {key}")
    atomic_write_bytes(out_dir / layout.CONVENTIONS_FILE, conventions_text().encode())
    atomic_write_json(out_dir / layout.EXPORT_SUMMARY_FILE, {**report.to_dict(), "source": store.uri(layout.INDEX),
                                              "filters": _filters(sample_filter, splits)})
    return report


def _filters(sample_filter: SampleFilter, splits: Collection[str] | None) -> dict:
    values = {name: getattr(sample_filter, name) for name in FILTER_COLUMNS}
    values["splits"] = splits
    return {k: sorted(v) for k, v in values.items() if v is not None}
