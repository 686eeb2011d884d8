"""Typed input errors raised by the stages and their runtime: one ``ValueError`` subclass per rule.

Each class carries the HTTP ``status`` and the stable ``code`` of its rule; each instance carries the
``message`` (what is wrong and the rule broken) and the ``field`` at fault (``image``, ``frames[1]``,
``collection``), or None. The ingress turns any of them into the documented 4xx body
``{"error": {"code", "message", "field"}}``, so a stage never needs to know about HTTP, and no error changes
its meaning on the way up.

They pickle by ``(message, field)``, so they cross Ray unchanged. A stage's exception reaches the caller
wrapped in Ray's ``RayTaskError``, which is also an instance of the original class and forwards its
attributes, so ``except InputError`` works on the caller's side too.
"""

from __future__ import annotations

from typing import ClassVar


class InputError(ValueError):
    """Bad input: the client's fault, answered with a 4xx.

    Args:
        message: what is wrong and the rule broken.
        field: the request field at fault, or None.

    Attributes:
        status: HTTP status of the rule (class attribute).
        code: stable machine-readable code of the rule (class attribute).
    """

    status: ClassVar[int] = 422
    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):  # pickles (across Ray) by message and field
        return (type(self), (self.message, self.field))


class InvalidRequest(InputError):
    """A value breaks a rule of its field (range, shape, format): 422 ``invalid_request``."""


class UnsupportedByModel(InputError):
    """A prompt or option the model's family cannot take (a concept prompt on SAM 2, ``mask_input`` where
    the family has none): 422 ``unsupported_by_model``, naming the field and the model."""

    code = "unsupported_by_model"

    @classmethod
    def lacking(cls, model_id: str, capability: str, field: str) -> UnsupportedByModel:
        """The error for ``field`` asking ``model_id`` for a ``capability`` it lacks (see
        :class:`models.segmenter.Capabilities`)."""
        return cls(f"model {model_id!r} does not support {capability.replace('_', ' ')}", field)


class InvalidBase64(InputError):
    """A ``base64`` field is not strict base64: 400 ``invalid_base64``."""

    status, code = 400, "invalid_base64"


class InvalidImage(InputError):
    """Bytes that are not an image in a supported format, or a truncated one: 400 ``invalid_image``."""

    status, code = 400, "invalid_image"


class EmptyImage(InputError):
    """An image of 0 pixels: 400 ``empty_image``."""

    status, code = 400, "empty_image"


class ImageTooLarge(InputError):
    """An image over the pixel limit (checked before decoding): 413 ``image_too_large``."""

    status, code = 413, "image_too_large"


class InvalidVideo(InputError):
    """Not a video container, no video stream, or corrupt data: 400 ``invalid_video``."""

    status, code = 400, "invalid_video"


class EmptyVideo(InputError):
    """A clip without frames, or with frames of 0 pixels: 400 ``empty_video``."""

    status, code = 400, "empty_video"


class TooManyFrames(InputError):
    """A clip over the frame limit per request: 413 ``too_many_frames``."""

    status, code = 413, "too_many_frames"


class FrameTooLarge(InputError):
    """Frames over the pixel limit: 413 ``frame_too_large``."""

    status, code = 413, "frame_too_large"


class FrameSizeMismatch(InputError):
    """Frames of one clip with different sizes: 422 ``frame_size_mismatch``."""

    status, code = 422, "frame_size_mismatch"


class DimensionMismatch(InputError):
    """Vectors of one dimension sent to a collection that holds another: 409 ``dimension_mismatch``.

    The field at fault defaults to ``collection``: the collection is fixed to its dimension by its first
    examples.
    """

    status, code = 409, "dimension_mismatch"

    def __init__(self, message: str, field: str | None = "collection") -> None:
        super().__init__(message, field)


class EmbedderMismatch(InputError):
    """Vectors of one embedder sent to (or searched in) a collection that holds another's, or an examples
    file from another embedder than the service's: 409 ``embedder_mismatch``, even at the same dimension.
    The message names both identities (:func:`models.embedders.embedder_identity`).

    The field at fault defaults to ``collection``: a collection is fixed to its embedder by its first
    examples.
    """

    status, code = 409, "embedder_mismatch"

    def __init__(self, message: str, field: str | None = "collection") -> None:
        super().__init__(message, field)


class UnknownCollection(InputError, LookupError):
    """No collection of that name exists: 404 ``unknown_collection``. Also a ``LookupError``.

    Args:
        collection: the name asked for.
        field: the request field that named it.
    """

    status, code = 404, "unknown_collection"

    def __init__(self, collection: str, field: str | None = "collection") -> None:
        super().__init__(f"collection {collection!r} does not exist; add examples first", field)
        self.collection = collection

    def __reduce__(self):  # pickles by name, not by message
        return (type(self), (self.collection, self.field))


class OutOfImage(InputError):
    """A prompt coordinate outside the image: 422 ``out_of_image``."""

    status, code = 422, "out_of_image"


class ImageNotCached(InputError, LookupError):
    """An ``image_id`` that the replica owning it does not hold (never sent, evicted, or the replica
    restarted): 404 ``image_not_cached``. Send the image again, alone or with its ``image_id``.

    A miss also says whether the owner would take an encode of the image now: ``refusal`` is the error an
    encode sent at once would get (the encoder's queue is full, or the encode cannot end before the
    request's deadline), so a caller holding the image's bytes answers 503 at once instead of decoding and
    sending them to be refused.

    Args:
        image_id: the id asked for.
        field: the request field at fault.
        refusal: the error (``BackPressureError``, :class:`DeadlineExceeded`) an encode of the image
            started now would be refused with, or None.
    """

    status, code = 404, "image_not_cached"

    def __init__(self, image_id: str, field: str | None = "image_id", refusal: Exception | None = None) -> None:
        super().__init__("image_id is not (or no longer) cached; send the image again", field)
        self.image_id = image_id
        self.refusal = refusal

    def __reduce__(self):
        return (type(self), (self.image_id, self.field, self.refusal))


class UnknownSession(InputError, LookupError):
    """A video session this replica closed or let expire: 404 ``unknown_session``. Open a new one.

    Args:
        session_id: the id asked for.
    """

    status, code = 404, "unknown_session"

    def __init__(self, session_id: str, field: str | None = "session_id") -> None:
        super().__init__(f"video session {session_id!r} was closed or expired; open a new session", field)
        self.session_id = session_id

    def __reduce__(self):
        return (type(self), (self.session_id, self.field))


class SessionLost(InputError, LookupError):
    """A video session the replica that owns its id does not hold: it was opened on a replica that has
    since died, or the replicas changed and the id now hashes to another one: 404 ``session_lost``. Its
    state is gone; open a new session (never a mask from another session's state).

    Args:
        session_id: the id asked for.
    """

    status, code = 404, "session_lost"

    def __init__(self, session_id: str, field: str | None = "session_id") -> None:
        super().__init__(
            f"video session {session_id!r} is lost (its replica restarted or the replicas changed); open a new session",
            field,
        )
        self.session_id = session_id

    def __reduce__(self):
        return (type(self), (self.session_id, self.field))


class SessionsFull(InputError):
    """The replica that would own a new video session holds as many sessions (or bytes) as it may:
    503 ``sessions_full``, to be retried after ``retry_after_s`` seconds (an idle session expires or is
    closed meanwhile). Open sessions are never evicted to make room.

    Args:
        message: which bound is reached.
        retry_after_s: seconds until a retry may find room.
    """

    status, code = 503, "sessions_full"

    def __init__(self, message: str, retry_after_s: float = 30.0) -> None:
        super().__init__(message, None)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))


class UnknownObject(InputError, LookupError):
    """An ``obj_id`` the video session has no prompt for: 404 ``unknown_object``."""

    status, code = 404, "unknown_object"


class OutOfClip(InputError):
    """A frame index outside the clip: 422 ``out_of_clip``."""

    status, code = 422, "out_of_clip"


class DeadlineExceeded(InputError):
    """A request that cannot finish before its deadline (the ``X-Request-Timeout`` it was sent with, or the
    service's ``limits.request_timeout_s``): 503 ``deadline``, refused at once, before it waits in a queue,
    to be retried after ``retry_after_s`` seconds (whole seconds >= 1, from the queue ahead of it). See
    :class:`deployments.runtime.admission.StageAdmission`.

    Args:
        message: which stage refused it and its estimate.
        retry_after_s: seconds until the queue ahead has drained enough for the same budget.
    """

    status, code = 503, "deadline"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, None)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))
