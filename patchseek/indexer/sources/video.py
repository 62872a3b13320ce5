"""Videos decoded with PyAV, sampled one of two ways, each unit with its time span in seconds.

- ``interval``: one frame every ``interval`` seconds (unit kind ``frame``);
- ``scenes``: one unit per shot (kind ``shot``), its span the shot's, its image the shot's middle frame.
  Shots are found by PySceneDetect's ``AdaptiveDetector`` on its PyAV backend (``VideoStreamAv``).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from typing import Any

import av

from patchseek.errors import DocumentReadError, ImageTooLargeError, MissingDependencyError
from patchseek.indexer.sources.base import UnitStream, VideoSampling
from patchseek.types import SourceUnit

log = logging.getLogger(__name__)

# PySceneDetect's default floor (15) on the frame-to-frame change misses the cut between two slides of
# dark text on a light background (a change of ~4 on its 0-255 HSV scale); the adaptive ratio (a cut
# changes ``scene_threshold`` times more than its neighbours do) keeps camera motion from cutting.
MIN_CONTENT_CHANGE = 2.0


def _open(data: bytes, max_pixels: int | None = None) -> av.container.InputContainer:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise DocumentReadError(
            f"the video cannot be opened ({exc}); it may be corrupt or truncated"
        ) from exc
    if not container.streams.video:
        container.close()
        raise DocumentReadError("the file has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if max_pixels is not None and width * height > max_pixels:
        container.close()
        raise ImageTooLargeError(
            f"the video's frames are {width}x{height} pixels, over the budget of {max_pixels} "
            "(PATCHSEEK_MAX_DECODE_PIXELS); scale the video down"
        )
    return container


def _duration(container: av.container.InputContainer) -> float | None:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def read_video(
    data: bytes,
    *,
    interval: float = 1.0,
    max_frames: int = 3600,
    sampling: VideoSampling = "interval",
    min_shot_seconds: float = 0.5,
    scene_threshold: float = 3.0,
    max_pixels: int | None = None,
) -> UnitStream:
    """Yield the video's units with ``t_start`` / ``t_end`` in seconds, at most ``max_frames`` of them.

    ``sampling="interval"``: a frame is taken at t = 0, interval, 2·interval, …; it stands for the span
    up to the next sample (the last one up to the end of the stream). ``sampling="scenes"``: one unit
    per shot at least ``min_shot_seconds`` long, cut where a frame changes ``scene_threshold`` times
    more than its neighbours (see ``scene_spans``). Frames are decoded sequentially, so memory stays
    flat. Frames over ``max_pixels`` fail the video (``image_too_large``); a corrupt stream fails it
    with ``unreadable_document``.
    """
    if sampling == "scenes":
        # Shots are found (a first decode) before the units are read (a second one): the span of a
        # shot, hence its middle frame, is only known at the cut that ends it.
        _open(data, max_pixels).close()
        spans = scene_spans(data, min_shot_seconds=min_shot_seconds, threshold=scene_threshold)
        spans = spans[:max_frames]
        return UnitStream(_shots(_open(data, max_pixels), spans), len(spans))
    container = _open(data, max_pixels)
    duration = _duration(container)
    expected = None if duration is None else max(1, min(max_frames, math.ceil(duration / interval - 1e-6)))
    return UnitStream(_frames(container, interval, max_frames), expected)


def _frames(container: av.container.InputContainer, interval: float, max_frames: int) -> Iterator[SourceUnit]:
    stream = container.streams.video[0]
    duration = _duration(container)
    next_t = 0.0
    pending: SourceUnit | None = None
    index = 0
    last_t = 0.0
    try:
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t = float(frame.time)
            last_t = t
            if t + 1e-6 < next_t:
                continue
            if pending is not None:
                pending.t_end = t
                yield pending
            if index >= max_frames:
                pending = None
                break
            pending = SourceUnit(kind="frame", index=index, image=frame.to_image().convert("RGB"), t_start=t)
            index += 1
            next_t = t + interval
    except av.error.FFmpegError as exc:
        raise DocumentReadError(f"the video stream is corrupt near {last_t:.1f}s ({exc})") from exc
    finally:
        container.close()
    if pending is not None:
        end = duration if duration is not None and duration > (pending.t_start or 0) else last_t
        pending.t_end = max(end, (pending.t_start or 0.0) + min(interval, 1e-3))
        yield pending
    elif index == 0:
        raise DocumentReadError("the video has no decodable frames")


def scene_spans(
    data: bytes, *, min_shot_seconds: float = 0.5, threshold: float = 3.0
) -> list[tuple[float, float]]:
    """The shots of a video as ``(t_start, t_end)`` seconds, in order, covering the whole stream.

    PySceneDetect's ``AdaptiveDetector`` (HSV content change of each frame against the rolling average
    of its neighbours) on its PyAV backend; a video without a cut is one shot.
    """
    try:
        from scenedetect import AdaptiveDetector, SceneManager
        from scenedetect.backends.pyav import VideoStreamAv
        from scenedetect.video_stream import VideoOpenFailure
    except ImportError as exc:
        raise MissingDependencyError(
            "scene sampling needs PySceneDetect: `pip install scenedetect-headless`, or set "
            "PATCHSEEK_VIDEO_SAMPLING=interval"
        ) from exc
    errors: tuple[type[BaseException], ...] = (av.error.FFmpegError, VideoOpenFailure, ValueError)
    try:
        video = VideoStreamAv(io.BytesIO(data), suppress_output=True)
        manager = SceneManager()
        manager.add_detector(
            AdaptiveDetector(
                adaptive_threshold=threshold,
                min_scene_len=float(min_shot_seconds),
                min_content_val=MIN_CONTENT_CHANGE,
            )
        )
        manager.detect_scenes(video)
        scenes: list[tuple[Any, Any]] = manager.get_scene_list(start_in_scene=True)
    except errors as exc:
        raise DocumentReadError(f"the video cannot be decoded for scene detection ({exc})") from exc
    spans = [(float(start.seconds), float(end.seconds)) for start, end in scenes]
    log.debug("scene detection: %d shots", len(spans))
    return spans


def _shots(container: av.container.InputContainer, spans: list[tuple[float, float]]) -> Iterator[SourceUnit]:
    """One unit per span, its image the first frame at or after the span's middle."""
    stream = container.streams.video[0]
    at = 0  # the span waiting for its frame
    n = 0  # units yielded
    last_t = 0.0
    last: av.VideoFrame | None = None
    try:
        for frame in container.decode(stream):
            if at >= len(spans):
                break
            if frame.time is None:
                continue
            t = last_t = float(frame.time)
            last = frame
            start, end = spans[at]
            if t + 1e-6 < (start + end) / 2:
                continue
            yield SourceUnit(
                kind="shot", index=n, image=frame.to_image().convert("RGB"), t_start=start, t_end=end
            )
            n += 1
            at += 1
            # Shots this frame is already past the end of (shorter than a frame step) have no frame
            # of their own; they are left out rather than given another shot's frame.
            while at < len(spans) and t + 1e-6 >= spans[at][1]:
                at += 1
        if at < len(spans) and last is not None and spans[at][0] <= last_t + 1e-6 < spans[at][1]:
            # The stream ended before the last shot's middle (its end is the container's duration).
            start, end = spans[at]
            yield SourceUnit(
                kind="shot", index=n, image=last.to_image().convert("RGB"), t_start=start, t_end=end
            )
            n += 1
    except av.error.FFmpegError as exc:
        raise DocumentReadError(f"the video stream is corrupt near {last_t:.1f}s ({exc})") from exc
    finally:
        container.close()
    if n == 0:
        raise DocumentReadError("the video has no decodable frames")
