"""Import a rig calibration made elsewhere (a COLMAP model or a ``transforms.json``).

A studio may calibrate its rig with other tools; a session can then use that result
instead of board captures. ``import_calibration`` reads it into the project's
``Calibration`` (what ``calibration.json`` holds), so every later step sees cameras
exactly as if the pipeline had calibrated them.

Rules:

- Camera ids come from the image (COLMAP) or frame (``camera_id``, else the file
  name's stem) names: the file name without its folder and image extension, which
  must be a valid id (``[A-Za-z0-9_-]``). One image per camera: two images that give
  the same id are refused (a model of several frames of the rig is not a rig).
- Cameras keep the source's world frame and units; nothing is recentred or rescaled,
  so the source must be metric (the fit and the shards assume metres).
- An imported calibration has no residuals: ``rmse_px`` 0 and no observations. It is
  marked ``source = "imported:<format>"`` (``colmap_text``, ``colmap_binary``,
  ``transforms_json``); a board calibration has no ``source``, and its
  ``calibration.json`` stays byte-identical to what it was before the field existed.

Every refusal is a ``CalibrationImportError`` (a ``ValueError``) whose subclass says
what is wrong and whose message names the path or camera and how to fix it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from capture_schema.calibration_file import Calibration
from capture_schema.cameras import Camera
from capture_schema.converters.colmap import (
    READABLE_MODELS,
    camera_id_from_image_name,
    intrinsics_from_colmap,
    read_colmap_model,
)
from capture_schema.converters.nerf import CAMERA_MODEL as TRANSFORMS_MODEL
from capture_schema.converters.nerf import transforms_to_cameras
from capture_schema.json_file import JsonFileError, read_json_file
from capture_schema.layout import is_valid_id

COLMAP_TEXT, COLMAP_BINARY, TRANSFORMS_JSON = "colmap_text", "colmap_binary", "transforms_json"
FORMATS = (COLMAP_TEXT, COLMAP_BINARY, TRANSFORMS_JSON)
#: ``Calibration.source`` of an imported calibration: this prefix plus the format.
SOURCE_PREFIX = "imported:"
#: Where COLMAP's mapper puts its first model, below the project folder given to it.
COLMAP_SUBMODEL = Path("sparse") / "0"
_COLMAP_FILES = {COLMAP_TEXT: ".txt", COLMAP_BINARY: ".bin"}


class CalibrationImportError(ValueError):
    """A calibration that cannot be imported; the message says what, where and how to fix it."""


class ImportSourceMissingError(CalibrationImportError):
    """The path given does not exist."""


class UnknownCalibrationFormatError(CalibrationImportError):
    """The path is neither a COLMAP model folder nor a ``transforms.json``."""


class UnsupportedCameraModelError(CalibrationImportError):
    """A camera model OpenCV's ``k1 k2 p1 p2 k3`` cannot hold (fisheye, rational terms, ...)."""


class DuplicateCameraIdError(CalibrationImportError):
    """Two images or frames give the same camera id."""


class EmptyCalibrationError(CalibrationImportError):
    """The source holds no camera with a pose."""


class CameraNotInCalibrationError(CalibrationImportError):
    """A requested camera id is not in the calibration; ``missing`` lists them."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


def imported_format(calibration: Calibration) -> str | None:
    """The format a calibration was imported from, or None for one the pipeline computed."""
    source = calibration.source or ""
    return source[len(SOURCE_PREFIX):] if source.startswith(SOURCE_PREFIX) else None


def is_calibration_file(rel: str) -> bool:
    """Whether session.json's ``calibration`` names a calibration.json file rather than a board-capture folder."""
    return rel.lower().endswith(".json")


def select_cameras(calibration: Calibration, cameras: Sequence[str], where: str = "the calibration") -> Calibration:
    """``calibration`` restricted to ``cameras``, in that order (a session's order); errors name every missing id."""
    cameras = list(cameras)
    if not cameras:
        raise CalibrationImportError("no cameras requested: give at least one camera id")
    repeated = sorted({c for c in cameras if cameras.count(c) > 1})
    if repeated:
        raise DuplicateCameraIdError(f"camera id(s) requested twice: {', '.join(repeated)}")
    missing = [c for c in cameras if c not in calibration.cameras]
    if missing:
        raise CameraNotInCalibrationError(
            f"{where} has no camera {', '.join(map(repr, missing))}; it holds "
            f"{', '.join(calibration.cameras)} (image or frame names give the ids: rename them, or list "
            "the cameras it has)", missing)
    return Calibration({c: calibration.cameras[c] for c in cameras}, calibration.rmse_px,
                       {c: calibration.camera_rmse_px.get(c, 0.0) for c in cameras},
                       {c: calibration.n_observations.get(c, 0) for c in cameras}, calibration.source)


def detect_format(src: str | os.PathLike[str]) -> tuple[str, Path]:
    """``(format, path)``: the format of ``src`` and the model folder or file to read."""
    path = Path(src)
    if not path.exists():
        raise ImportSourceMissingError(f"{str(path)!r} does not exist: give a COLMAP model folder "
                                       "(cameras/images .txt or .bin) or a transforms.json file")
    if path.is_dir():
        for folder in (path, path / COLMAP_SUBMODEL):
            for fmt, ext in _COLMAP_FILES.items():
                if all((folder / f"{name}{ext}").is_file() for name in ("cameras", "images")):
                    return fmt, folder
        raise UnknownCalibrationFormatError(
            f"{str(path)!r} is a folder without a COLMAP model: expected cameras.txt + images.txt or "
            f"cameras.bin + images.bin in it or in its {COLMAP_SUBMODEL.as_posix()}/; for a transforms.json, "
            "give the file")
    return TRANSFORMS_JSON, path


def import_calibration(src: str | os.PathLike[str], cameras: Sequence[str] | None = None) -> Calibration:
    """The cameras of a COLMAP model folder (text or binary) or a ``transforms.json`` as a ``Calibration``.

    ``cameras`` restricts and orders the result (the session's order; the first camera
    is listed first, nothing moves the world frame); a camera the source lacks raises
    ``CameraNotInCalibrationError`` naming it.
    """
    fmt, path = detect_format(src)
    found = _read_transforms(path) if fmt == TRANSFORMS_JSON else _read_colmap(path, fmt)
    zeros = {cam_id: 0.0 for cam_id in found}
    calibration = Calibration(found, 0.0, zeros, {cam_id: 0 for cam_id in found}, f"{SOURCE_PREFIX}{fmt}")
    if cameras is None:
        return calibration
    return select_cameras(calibration, cameras, where=f"{str(src)!r}")


# --- COLMAP ------------------------------------------------------------------------------


def _camera_id(name: str, where: str) -> str:
    """A project camera id from an image or frame name: its file name, without an image extension."""
    cam_id = camera_id_from_image_name(posixpath.basename(name.replace("\\", "/")))
    if not is_valid_id(cam_id):
        raise CalibrationImportError(f"{where}: name {name[:120]!r} gives camera id {cam_id[:120]!r}, which is not "
                                     "a valid id ([A-Za-z0-9_-], 1-128 characters); name each camera's image "
                                     "<camera_id>.<jpg|png>")
    return cam_id


@contextlib.contextmanager
def _cameras_only(model_dir: Path, fmt: str) -> Iterator[Path]:
    """A temporary model folder holding ``model_dir``'s cameras, images and rigs/frames (hard links where
    possible) and an empty ``points3D``. A calibration needs no points: an SfM model's points can cost far
    more to read than its cameras, hand-made models often leave the file out (pycolmap requires it), and
    one format alone in the folder leaves the reader no choice to make."""
    ext = _COLMAP_FILES[fmt]
    with tempfile.TemporaryDirectory(prefix="o2a-colmap-") as tmp:
        for name in ("cameras", "images", "rigs", "frames"):
            src, dst = model_dir / f"{name}{ext}", Path(tmp) / f"{name}{ext}"
            if src.is_file():
                try:
                    os.link(src, dst)
                except OSError:  # another file system, or links not allowed
                    shutil.copyfile(src, dst)
        (Path(tmp) / f"points3D{ext}").write_bytes(b"" if ext == ".txt" else bytes(8))  # binary: a zero count
        yield Path(tmp)


def _colmap_ids(rec: Any, model_dir: Path) -> dict[str, str]:
    """Our camera id for each key ``read_colmap_model`` gives (registered images, image-id order), after
    refusing an empty model, duplicate ids and camera models OpenCV's distortion cannot hold."""
    images = [rec.images[i] for i in sorted(rec.images)]
    registered = [image for image in images if image.has_pose]
    if not registered:
        raise EmptyCalibrationError(f"the COLMAP model in {str(model_dir)!r} has no registered image "
                                    f"({len(images)} image(s), none with a pose): nothing to import")
    ids: dict[str, str] = {}
    names: dict[str, str] = {}
    for image in registered:
        where = f"COLMAP image {image.name!r} of {str(model_dir)!r}"
        cam_id = _camera_id(image.name, where)
        if cam_id in names:
            raise DuplicateCameraIdError(f"the COLMAP model in {str(model_dir)!r} has two images for camera "
                                         f"{cam_id!r} ({names[cam_id]!r}, {image.name!r}); import a model with one "
                                         "image per rig camera")
        names[cam_id] = image.name
        colmap_cam = rec.cameras[image.camera_id]
        model = colmap_cam.model.name
        if model not in READABLE_MODELS:
            raise UnsupportedCameraModelError(
                f"{where} (camera {cam_id!r}) uses COLMAP model {model}, which OpenCV's k1 k2 p1 p2 k3 cannot "
                f"hold; use one of {', '.join(READABLE_MODELS)} (e.g. re-run COLMAP with "
                "--ImageReader.camera_model OPENCV)")
        try:
            intrinsics_from_colmap(model, list(colmap_cam.params))
        except ValueError as exc:
            raise UnsupportedCameraModelError(f"{where} (camera {cam_id!r}): {exc}") from None
        ids[camera_id_from_image_name(image.name)] = cam_id
    return ids


def _read_colmap(model_dir: Path, fmt: str) -> dict[str, Camera]:
    """Cameras through ``read_colmap_model`` (the one place that knows COLMAP's conventions), after
    ``_colmap_ids`` has sorted every refusal into its own error."""
    import pycolmap

    kind = "text" if fmt == COLMAP_TEXT else "binary"
    with _cameras_only(model_dir, fmt) as folder:
        try:
            rec = pycolmap.Reconstruction(str(folder))
        except Exception as exc:  # pycolmap raises ValueError, IndexError, RuntimeError... on a bad file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CalibrationImportError(f"cannot read the COLMAP {kind} model in {str(model_dir)!r}: "
                                         f"{reason.replace(str(folder), str(model_dir))[:300]}") from None
        ids = _colmap_ids(rec, model_dir)
        try:
            cameras = read_colmap_model(folder)
        except ValueError as exc:  # e.g. a value no camera can have (Camera's bounds)
            raise CalibrationImportError(f"the COLMAP model in {str(model_dir)!r}: "
                                         f"{str(exc).replace(str(folder), str(model_dir))}") from None
    return {ids[key]: cam for key, cam in cameras.items()}


# --- transforms.json -----------------------------------------------------------------------


def _read_transforms(path: Path) -> dict[str, Camera]:
    try:
        data = read_json_file(path)
    except JsonFileError as exc:
        if exc.kind == "io" and not path.is_file():
            raise UnknownCalibrationFormatError(f"{str(path)!r} is neither a COLMAP model folder nor a "
                                                f"transforms.json file: {exc.reason}") from None
        raise UnknownCalibrationFormatError(f"{str(path)!r} is not a transforms.json (nor a COLMAP model "
                                            f"folder): {exc.reason}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("frames"), list):
        hint = ("; it looks like a calibration.json already: point session.json's 'calibration' at it directly"
                if isinstance(data, Mapping) and isinstance(data.get("cameras"), Mapping) else "")
        raise UnknownCalibrationFormatError(f"{str(path)!r} is not a transforms.json: it needs a 'frames' list"
                                            f"{hint}")
    frames = data["frames"]
    if not frames:
        raise EmptyCalibrationError(f"{str(path)!r} has an empty 'frames' list: nothing to import")
    seen: dict[str, int] = {}
    for i, frame in enumerate(frames):
        where = f"{str(path)!r} frame {i}"
        if not isinstance(frame, Mapping):
            raise CalibrationImportError(f"{where} must be an object")
        name = frame.get("camera_id", frame.get("file_path"))
        if not isinstance(name, str):
            raise CalibrationImportError(f"{where} needs a string 'camera_id' or 'file_path' to name its camera")
        cam_id = _camera_id(name, where) if "camera_id" not in frame else name
        if not is_valid_id(cam_id):
            raise CalibrationImportError(f"{where}: camera_id {cam_id[:120]!r} is not a valid id "
                                         "([A-Za-z0-9_-], 1-128 characters)")
        if cam_id in seen:
            raise DuplicateCameraIdError(f"{where}: camera {cam_id!r} also has frame {seen[cam_id]}; import a "
                                         "transforms.json with one frame per rig camera")
        seen[cam_id] = i
        model = frame.get("camera_model", data.get("camera_model", TRANSFORMS_MODEL))
        rational = [k for k in ("k4", "k5", "k6") if frame.get(k, data.get(k, 0.0)) not in (0, 0.0)]
        if model != TRANSFORMS_MODEL or rational:
            what = (f"camera_model {str(model)[:60]!r}" if model != TRANSFORMS_MODEL
                    else f"distortion term(s) {', '.join(rational)}")
            raise UnsupportedCameraModelError(f"{where} (camera {cam_id!r}): {what} is not supported; only "
                                              f"{TRANSFORMS_MODEL} with k1 k2 p1 p2 k3 (fisheye and rational "
                                              "models cannot be held by the project's cameras)")
    # transforms_to_cameras names a frame by camera_id, else file_path's stem: give it the ids chosen above.
    named = dict(data, frames=[dict(frame, camera_id=cam_id) for frame, cam_id in zip(frames, seen)])
    try:
        return transforms_to_cameras(named)
    except (ValueError, TypeError) as exc:
        raise CalibrationImportError(f"{str(path)!r}: {exc}") from None
