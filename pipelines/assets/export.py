"""``dataset_export``: a configured part of the dataset, exported for another tool, tracked like the rest.

Thin by design: the work is ``training.export.run.export_dataset`` (``o2a export`` runs
it too). The export is built in a local staging folder and published whole under
``exports/<name>/`` of the storage root (local or a bucket), so a reader never sees
half an export and a second materialisation replaces the first instead of mixing with it.
"""

import tempfile
from pathlib import Path

import dagster as dg

from capture_schema import derived_layout as layout
from pipelines.assets.dataset_index import dataset_index
from pipelines.assets.metadata_images import png_markdown
from pipelines.resources import FaceModelResource, StorageResource


class ExportConfig(dg.Config):
    """What to export and how; an empty list means "all"."""

    name: str = "default"
    """Folder under ``exports/`` of the storage root."""
    format: str = "nerfstudio"
    """nerfstudio, colmap or images (CONVENTIONS.md in the export says what each file holds)."""
    subjects: list[str] = []
    sessions: list[str] = []
    expressions: list[str] = []
    cameras: list[str] = []
    splits: list[str] = []
    undistort: bool | None = None
    """Undistort images and write pinhole cameras; unset: the format's default (only colmap undistorts)."""


def _summary_markdown(report) -> str:
    lines = ["| frame | split | images | masks | mesh |", "|---|---|---|---|---|"]
    lines += [f"| `{f['folder']}` | {f['split']} | {len(f['cameras'])} | {'yes' if f['masks'] else 'no'} | "
              f"{'yes' if f['mesh'] else 'no'} |" for f in report.frames[:20]]
    if len(report.frames) > 20:
        lines.append(f"\n... and {len(report.frames) - 20} more frames (see export.json).")
    return "\n".join(lines)


@dg.asset(deps=[dataset_index], group_name="dataset", kinds={"nerfstudio", "colmap"})
def dataset_export(context: dg.AssetExecutionContext, config: ExportConfig, storage: StorageResource,
                   face_model: FaceModelResource) -> dg.MaterializeResult:
    """The selected cells (images, cameras, masks, 3DMM fits and meshes) as nerfstudio, COLMAP or plain images."""
    from training.export.run import export_dataset
    from training.selection import FILTER_COLUMNS, SampleFilter
    from training.stage_io import StageError

    store = storage.storage()
    chosen = {k: getattr(config, k) or None for k in FILTER_COLUMNS}
    relpath = layout.export_dir(config.name)
    with tempfile.TemporaryDirectory(prefix="o2a-export-") as tmp:
        out = Path(tmp) / config.name
        try:
            report = export_dataset(store, out, config.format, SampleFilter(**chosen), config.splits or None,
                                    undistort=config.undistort, face_model=face_model.load(), log=context.log.info)
        except StageError as exc:
            raise dg.Failure(str(exc)) from None
        picture = out / layout.export_frame_dir(report.frames[0]["session_id"], report.frames[0]["expression"]) \
            / layout.EXPORT_PICTURE_FILE
        store.put_directory(out, relpath)
        metadata = {
            "format": report.format,
            "undistorted": report.undistorted,
            "images": report.cells,
            "frames": len(report.frames),
            "missing_cells": len(report.missing_cells),
            "export": dg.MetadataValue.path(store.uri(relpath)),
            "summary": dg.MetadataValue.md(_summary_markdown(report)),
            "cameras": dg.MetadataValue.md(png_markdown(picture.read_bytes(), "cameras and the fitted head")),
        }
    if report.missing_cells or report.unknown:
        context.log.warning(f"{len(report.missing_cells)} requested cell(s) are missing and were not exported; "
                            f"unknown filter values: {report.unknown or 'none'} (export.json lists them)")
    return dg.MaterializeResult(metadata=metadata)
