"""``VideoSegmenter`` deployment: tracks prompted objects through a clip with sam2's video predictor,
streaming one record per frame as propagation runs, and holds interactive video sessions.

One-shot clips (:meth:`VideoSegmenter.track`) are a private, pruned
:class:`models.sam2_video_session.VideoSession` opened, prompted, propagated and dropped within the call.
Interactive sessions (``open_session`` ... ``close_session``) live in the replica's
:class:`deployments.runtime.video_sessions.SessionStore`; every call about one takes its ``session_id``
first and is routed by it (``handle.options(session_id=...)`` with the consistent-hash
:class:`~deployments.runtime.affinity.KeyAffinityRouter`, no fallback replica), so it reaches the replica
that holds the session. A replica that does not hold an id answers ``session_lost``, never a mask.

Both use one model, built with sam2's ``add_all_frames_to_correct_as_cond`` on
(:func:`models.sam2_video.build_sam2_video_model`'s default): sessions need it, so that a correction is a
conditioning frame that later propagations keep; the one-shot path never reads it, since all its prompts
come before tracking and are conditioning frames either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
from ray import serve
from ray.serve.config import RequestRouterConfig

from deployments.contracts import VideoJob
from deployments.errors import InvalidRequest, OutOfClip, OutOfImage, UnknownObject
from deployments.runtime.affinity import ROUTER_CLASS
from deployments.runtime.model_weights import load_sam2_video
from deployments.runtime.replica import pick_device, set_torch_threads
from deployments.runtime.video_sessions import SessionEntry, SessionStore
from deployments.runtime.weights import WeightsSource
from models.masks import POLYGON_TOLERANCE_PX, encode_masks
from models.sam2_video import VideoSettings
from models.sam2_video_session import PromptError, VideoSession
from models.sam2_video_types import FrameMasks, FramePrompt, check_objects

log = logging.getLogger("samgraph.deployments")
_DONE = object()

#: Calls about a video session reach the replica that holds it: the consistent-hash router over
#: ``session_id``, with no fallback replica (another replica does not hold the session's state). The
#: shipped configs set the same; a test keeps them equal.
SESSION_AFFINITY = RequestRouterConfig(
    request_router_class=ROUTER_CLASS,
    request_router_kwargs={"num_fallback_replicas": 0},
)
#: Seconds between sweeps of expired sessions (expiry is also checked on every call).
SWEEP_EVERY_S = 10.0


async def _in_thread(fn, *args):
    """``fn(*args)`` in a worker thread. If the caller is cancelled meanwhile (the client went away), the
    step still runs to its end before the cancellation goes on, so the session it works on is never
    used by two threads at once."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


def _input_error(e: PromptError):
    """The typed 4xx of a session's :class:`PromptError`."""
    cls = {"out_of_clip": OutOfClip, "out_of_image": OutOfImage}.get(e.kind, InvalidRequest)
    return cls(str(e), {"mask": "mask_rle"}.get(e.field, e.field))  # the request's name of the mask


@serve.deployment(
    name="VideoSegmenter",
    ray_actor_options={"num_cpus": 0.15},
    max_ongoing_requests=8,
    request_router_config=SESSION_AFFINITY,
)
class VideoSegmenter:
    """Tracks objects through clips; :meth:`track` is a streaming method (call it with
    ``handle.options(stream=True)``).

    Args:
        model_id: SAM 2 registry name.
        weights: :class:`deployments.runtime.weights.WeightsSource` fields (the image stages' source).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        torch_threads: torch intra-op threads for this replica (None: torch's default).
        settings: :class:`models.sam2_video.VideoSettings` fields.
        max_concurrent_clips: one-shot clips tracked at once by this replica; further requests wait
            their turn (this bounds the replica's memory; ``info`` and ``stats`` still answer meanwhile).
            Session steps (a prompt, one frame of a propagation) also take a slot, one step at a time, so
            sessions interleave frame by frame.
        sessions: :class:`deployments.runtime.video_sessions.SessionStore` arguments
            (``max_sessions``, ``max_bytes``, ``ttl_s``, ``retry_after_s``).
        image_size: the video model's input side in pixels, a multiple of 32 (sam2's
            ``++model.image_size`` override); None: the checkpoint config's (1024 for SAM 2.1).

    Raises:
        ValueError: ``max_concurrent_clips < 1`` or bad settings.
    """

    def __init__(
        self,
        model_id: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        settings: dict | None = None,
        max_concurrent_clips: int = 1,
        sessions: dict | None = None,
        image_size: int | None = None,
    ) -> None:
        if max_concurrent_clips < 1:
            raise ValueError("max_concurrent_clips must be greater than 0")
        threads = set_torch_threads(torch_threads)
        self._device = pick_device(device)
        source = WeightsSource(**weights)
        loaded = load_sam2_video(model_id, source, device=self._device, progress=False, image_size=image_size)
        self._predictor = loaded.model
        self._settings = VideoSettings(**(settings or {}))
        self._sessions = SessionStore(**{"max_sessions": 8, "max_bytes": 2**32, "ttl_s": 600.0, **(sessions or {})})
        self._sweeper: asyncio.Task | None = None
        self._slots = asyncio.Semaphore(max_concurrent_clips)
        self._info = {"model_id": loaded.model_id, "weights": loaded.weights, "device": self._device}
        self._clips = 0
        self._frames = 0
        self._busy_s = 0.0
        log.info(
            "video %s on %s, %d torch threads, weights %s (pid %d)",
            model_id, self._device, threads, loaded.weights, os.getpid(),
        )

    async def track(self, frames: np.ndarray, job: VideoJob) -> AsyncIterator[dict]:
        """Track ``job.objects`` through ``frames``, one record per step as soon as it is done.

        Args:
            frames: (N, H, W, 3) uint8 RGB (usually an ObjectRef, resolved by Ray).
            job: the objects and how far to track them.

        Yields:
            ``{"type": "init", "init_ms", "model_id", "weights"}`` once, then per frame in processing order
            ``{"type": "frame", "frame_index", "propagate_ms", "objects": [{"obj_id", "object_score",
            "object_score_logit", "area_px", "bbox_xyxy", "rle"|"png"}]}``.

        Raises:
            ValueError: objects or settings that do not fit the clip (the ingress checks them first).
        """
        async with self._slots:
            t0 = time.perf_counter()
            steps = self._steps(frames, job)
            try:
                while (record := await asyncio.to_thread(next, steps, _DONE)) is not _DONE:
                    yield record
            finally:
                self._busy_s += time.perf_counter() - t0
                try:
                    steps.close()
                except ValueError:  # a step still running in its thread (the client went away)
                    pass

    def _steps(self, frames: np.ndarray, job: VideoJob) -> Iterator[dict]:
        """A private session over the clip: opened, prompted, propagated (pruned: no correction follows)
        and dropped; its items as JSON-ready records. Runs in a worker thread one step at a time."""
        self._clips += 1
        t0 = time.perf_counter()
        if job.start_frame is not None and not 0 <= job.start_frame < len(frames):
            raise ValueError(f"start_frame {job.start_frame} is outside the clip of {len(frames)} frames")
        session = VideoSession(self._predictor, frames, self._settings, prune=True)
        check_objects(job.objects, session.num_frames, (session.height, session.width))
        for obj in job.objects:
            for prompt in obj.prompts:
                session.add_prompt(obj.obj_id, prompt)
        yield {
            "type": "init",
            "init_ms": (time.perf_counter() - t0) * 1e3,
            "model_id": self._info["model_id"],
            "weights": self._info["weights"],
        }
        for item in session.propagate(job.start_frame, job.max_frames, "both" if job.reverse else "forward"):
            self._frames += 1
            yield frame_record(item, job.mask_format, job.polygon_tolerance_px)

    # ------------------------------------------------------------------ interactive sessions
    def _replica(self) -> str | None:
        try:
            return serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a Serve replica (tests)
            return None

    def _start_sweeper(self) -> None:
        """The periodic sweep of expired sessions, started on the replica's loop by the first call."""
        if self._sweeper is None or self._sweeper.done():

            async def sweep():
                while True:
                    await asyncio.sleep(SWEEP_EVERY_S)
                    for sid in self._sessions.sweep():
                        log.info("video session %s expired", sid)

            self._sweeper = asyncio.get_running_loop().create_task(sweep())

    def _describe(self, entry: SessionEntry) -> dict:
        s = entry.session
        return {
            "session_id": entry.session_id,
            "num_frames": s.num_frames,
            "width": s.width,
            "height": s.height,
            "obj_ids": list(s.obj_ids),
            "expires_at": self._sessions.expires_at(entry),
            "frames_tracked": s.frames_tracked,
            "nbytes": entry.nbytes,
            "propagating": entry.propagating,
            "replica": self._replica(),
            "model_id": self._info["model_id"],
            "weights": self._info["weights"],
        }

    async def open_session(self, session_id: str, frames: np.ndarray) -> dict:
        """Hold a new session over ``frames`` under ``session_id`` (sam2's ``init_state``: frame 0 is
        encoded now).

        Args:
            session_id: made by the caller (uuid4 hex); this call is routed by it.
            frames: (N, H, W, 3) uint8 RGB (usually an ObjectRef, resolved by Ray).

        Returns:
            :meth:`session_info`'s fields, ``init_ms`` included.

        Raises:
            SessionsFull: the replica's session bound (count or bytes) is reached.
        """
        self._start_sweeper()
        self._sessions.reserve(session_id, int(frames.nbytes))
        try:
            async with self._slots:
                t0 = time.perf_counter()
                session = await _in_thread(VideoSession, self._predictor, frames, self._settings)
        except BaseException:
            self._sessions.release(session_id)
            raise
        entry = self._sessions.add(session_id, session, await asyncio.to_thread(session.nbytes))
        log.info(
            "video session %s opened: %d frames %dx%d", session_id, session.num_frames, session.width, session.height
        )
        return {**self._describe(entry), "init_ms": (time.perf_counter() - t0) * 1e3}

    async def session_info(self, session_id: str) -> dict:
        """``{"session_id", "num_frames", "width", "height", "obj_ids", "expires_at" (time.time()
        seconds), "frames_tracked", "nbytes", "propagating", "replica", "model_id", "weights"}``; does not
        wait for a running call.

        Raises:
            UnknownSession: closed or expired. SessionLost: not held by this replica.
        """
        return self._describe(self._sessions.get(session_id))

    async def add_prompt(
        self, session_id: str, obj_id: int, prompt: FramePrompt, clear_old_points: bool = True,
        mask_format: str = "rle", polygon_tolerance_px: float = POLYGON_TOLERANCE_PX,
    ) -> dict:
        """One object's points/box/mask on one frame (see :meth:`VideoSession.add_prompt`).

        Returns:
            A frame record (:func:`frame_record`) with every object's mask on that frame, and
            ``obj_ids``.

        Raises:
            UnknownSession, SessionLost: as :meth:`session_info`. OutOfImage: a point or box outside
            the frame. InvalidRequest: a frame outside the clip, a mask of another size, a box with
            ``clear_old_points=False``.
        """
        entry = self._sessions.get(session_id)
        async with entry.lock:
            try:
                async with self._slots:
                    item = await _in_thread(entry.session.add_prompt, obj_id, prompt, clear_old_points)
            except PromptError as e:
                raise _input_error(e) from None
            finally:
                self._sessions.touch(entry, await asyncio.to_thread(entry.session.nbytes))
        return {**frame_record(item, mask_format, polygon_tolerance_px), "obj_ids": list(item.obj_ids)}

    async def propagate_session(
        self, session_id: str, start_frame: int | None = None, max_frames: int | None = None,
        direction: str = "forward", mask_format: str = "rle", polygon_tolerance_px: float = POLYGON_TOLERANCE_PX,
    ) -> AsyncIterator[dict]:
        """Propagate the session's objects; a streaming method (``handle.options(stream=True)``).

        Yields ``{"type": "start", "obj_ids", ...session fields}`` once, then one frame record per frame
        as it is done. Stops before the next frame when :meth:`cancel_propagation` is called, the session
        is closed, or the caller goes away (Serve cancels this generator; the running frame finishes
        first, so the session stays consistent).

        Raises:
            UnknownSession, SessionLost: as :meth:`session_info`. InvalidRequest: ``start_frame``
            outside the clip, no object with a prompt.
        """
        entry = self._sessions.get(session_id)
        async with entry.lock:
            entry.cancel.clear()
            entry.propagating = True
            steps = entry.session.propagate(start_frame, max_frames, direction, entry.cancel.is_set)
            try:
                try:
                    async with self._slots:
                        first = await _in_thread(next, steps, _DONE)
                except PromptError as e:
                    raise _input_error(e) from None
                yield {"type": "start", **self._describe(entry)}
                item = first
                while item is not _DONE:
                    self._frames += 1
                    yield frame_record(item, mask_format, polygon_tolerance_px)
                    async with self._slots:
                        item = await _in_thread(next, steps, _DONE)
            finally:
                entry.propagating = False
                entry.cancel.set()
                steps.close()
                self._sessions.touch(entry, await asyncio.to_thread(entry.session.nbytes))

    async def cancel_propagation(self, session_id: str) -> dict:
        """Stop the session's running propagation before its next frame; ``{"cancelled": bool}`` (False:
        none was running). Does not wait for the session's lock."""
        entry = self._sessions.get(session_id)
        running = entry.propagating
        if running:
            entry.cancel.set()
        return {"cancelled": running}

    async def remove_object(
        self, session_id: str, obj_id: int, mask_format: str = "rle", polygon_tolerance_px: float = POLYGON_TOLERANCE_PX
    ) -> dict:
        """sam2's ``remove_object``: ``{"obj_ids" (those left), "frames": [frame records of the frames
        where the object had prompts, the others' masks there]}``.

        Raises:
            UnknownObject: no object ``obj_id``. UnknownSession, SessionLost: as :meth:`session_info`.
        """
        entry = self._sessions.get(session_id)
        async with entry.lock:
            try:
                async with self._slots:
                    items = await _in_thread(entry.session.remove_object, obj_id)
            except KeyError:
                raise UnknownObject(
                    f"the session has no object {obj_id} (objects: {list(entry.session.obj_ids)})", "obj_id"
                ) from None
            finally:
                self._sessions.touch(entry, await asyncio.to_thread(entry.session.nbytes))
        return {
            "obj_ids": list(entry.session.obj_ids),
            "frames": [frame_record(i, mask_format, polygon_tolerance_px) for i in items],
        }

    async def reset_session(self, session_id: str) -> dict:
        """sam2's ``reset_state``: every object, prompt and output dropped; the frames stay."""
        entry = self._sessions.get(session_id)
        async with entry.lock:
            await _in_thread(entry.session.reset)
            self._sessions.touch(entry, await asyncio.to_thread(entry.session.nbytes))
        return self._describe(entry)

    async def close_session(self, session_id: str) -> dict:
        """End the session (a running propagation stops at its next frame); ``{"session_id", "closed": True}``."""
        self._sessions.close(session_id)
        log.info("video session %s closed", session_id)
        return {"session_id": session_id, "closed": True}

    def info(self) -> dict:
        """``{"model_id", "weights", "device"}`` of this replica."""
        return dict(self._info)

    def stats(self) -> dict:
        """Work done by this replica: clips, frames tracked, seconds spent tracking; ``sessions``: its
        session store (:meth:`SessionStore.stats`, after a sweep); ``replica``: its id."""
        self._sessions.sweep()
        return {
            "clips": self._clips,
            "frames": self._frames,
            "busy_s": self._busy_s,
            "sessions": self._sessions.stats(),
            "replica": self._replica(),
        }


def frame_record(item: FrameMasks, mask_format: str, polygon_tolerance_px: float = POLYGON_TOLERANCE_PX) -> dict:
    """One frame's masks as a JSON-ready record (see :meth:`VideoSegmenter.track`).

    ``object_score`` is the sigmoid of the model's object-presence logit, in [0, 1]; ``area_px`` and
    ``bbox_xyxy`` (pixel-edge XYXY, [0, 0, 0, 0] when empty) are of the mask at the frame's size.
    """
    encoded = encode_masks(item.masks, mask_format, polygon_tolerance_px)
    objects = []
    for obj_id, logit, enc in zip(item.obj_ids, item.object_score_logits, encoded):
        score = float(1.0 / (1.0 + np.exp(-np.clip(float(logit), -80.0, 80.0))))
        objects.append({"obj_id": int(obj_id), "object_score": score, "object_score_logit": float(logit), **enc})
    return {"type": "frame", "frame_index": item.frame_index, "propagate_ms": item.propagate_ms, "objects": objects}
