"""Pictures in the Prefect UI: a PNG written into a markdown artifact as a data URL.

On a pool the picture must load in any browser that opens the UI, from any machine, long after
the run's workspace is gone: the server cannot serve files, and a presigned URL into the DVC
remote expires (a week at most with S3) and would send browsers to the object store. A data URL
lives in the artifact itself, in the server's database, and the UI's markdown renders it (tested
in headless Chromium: tests/e2e/test_ui.py). A 560 x 360 curve is ~25 kB of base64.
"""

from __future__ import annotations

import base64
from uuid import UUID

from rnn.evaluation.report import Curve, curves_png


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def picture_markdown(title: str, png: bytes, caption: str) -> str:
    return f"# {title}\n\n{markdown_image(png, title)}\n\n{caption}\n"


def show_picture(key: str, title: str, png: bytes, caption: str, description: str) -> UUID:
    """A new markdown artifact ``key`` holding the picture."""
    from prefect.artifacts import create_markdown_artifact

    markdown = picture_markdown(title, png, caption)
    return create_markdown_artifact(markdown=markdown, key=key, description=description)


def show_curves(
    artifact: UUID | None, key: str, run: str, curves: dict[str, Curve], total: int
) -> UUID:
    """One training's perplexity curves so far: a new artifact the first time, then the same
    artifact updated in place (the run's Artifacts tab keeps one picture, the latest)."""
    png = curves_png({run: curves}, size=(7, 4.5))
    epochs = max((e for points in curves.values() for e, _ in points), default=0)
    last = {split: points[-1][1] for split, points in curves.items() if points}
    caption = f"epoch {epochs}/{total}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items())
    title = f"{run}: perplexity per epoch"
    if artifact is None:
        return show_picture(key, title, png, caption, f"training {run}: perplexity curves")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    markdown = picture_markdown(title, png, caption)
    with get_client(sync_client=True) as client:
        client.update_artifact(artifact, ArtifactUpdate(data=markdown))
    return artifact
