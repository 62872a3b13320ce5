"""Videos decoded with PyAV: one frame sampled every ``interval`` seconds, each with its time span."""

from __future__ import annotations

import io
from collections.abc import Iterator

import av

from patchseek.errors import DocumentReadError
from patchseek.types import SourceUnit


def _open(data: bytes) -> av.container.InputContainer:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise DocumentReadError(
            f"the video cannot be opened ({exc}); it may be corrupt or truncated"
        ) from exc
    if not container.streams.video:
        container.close()
        raise DocumentReadError("the file has no video stream")
    return container


def read_video(data: bytes, *, interval: float = 1.0, max_frames: int = 3600) -> Iterator[SourceUnit]:
    """Yield sampled frames as units of kind ``frame`` with ``t_start`` / ``t_end`` in seconds.

    A frame is taken at t = 0, interval, 2·interval, …; it stands for the span up to the next sample
    (the last one up to the end of the stream). Frames are decoded sequentially, so memory stays flat.
    """
    container = _open(data)
    stream = container.streams.video[0]
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000

    def frames() -> Iterator[SourceUnit]:
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
                pending = SourceUnit(
                    kind="frame", index=index, image=frame.to_image().convert("RGB"), t_start=t
                )
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

    return frames()
