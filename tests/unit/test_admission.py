"""deployments.runtime.admission.StageAdmission: the wait estimate from the measured service time and the
queue, and the refusal of a request that cannot make its deadline (exact numbers, injected clock)."""

from __future__ import annotations

import asyncio
import pickle
import time

import numpy as np
import pytest

from deployments.errors import DeadlineExceeded
from deployments.runtime.admission import StageAdmission


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_service_time_is_a_moving_average_of_the_time_per_request():
    a = StageAdmission("encode", alpha=0.5, clock=Clock())
    assert a.service_s is None and a.wait_s() == 0.0  # unknown: nothing estimated
    a.observe(2.0)
    assert a.service_s == 2.0  # the first batch sets it
    a.observe(4.0)
    assert a.service_s == 3.0
    a.observe(1.0)
    assert a.service_s == 2.0
    a.observe(8.0, size=4)  # a batch of 4 in 8 s: 2 s per request
    assert a.service_s == 2.0
    a.observe(2.0, size=4)
    assert a.service_s == 1.25


@pytest.mark.parametrize(
    ("in_flight", "parallel", "services"), [(0, 1, 1), (3, 1, 4), (3, 4, 1), (4, 4, 1.25), (9, 2, 5)]
)
def test_wait_is_the_requests_ahead_and_its_own_at_the_service_time(in_flight, parallel, services):
    a = StageAdmission("encode", parallel=parallel, service_s=2.5, clock=Clock())
    a.in_flight = in_flight
    assert a.wait_s() == services * 2.5
    assert a.wait_s(ahead=0) == 2.5 / parallel


def test_a_full_queue_at_a_batching_stage_is_not_underestimated():
    """On a CPU a batch of 8 costs about 8 single requests: a batch time measured at light load (batches of
    1) must not make a full queue look 8 times shorter than it is."""
    a = StageAdmission("decode", clock=Clock())
    a.observe(0.1)  # light load: batches of one, 0.1 s each
    a.observe(0.8, size=8)  # then full batches of 8 at 0.8 s
    a.in_flight = 15
    assert a.wait_s() == pytest.approx(1.6)  # 16 requests at 0.1 s each, not 2 batches of 0.1 s


def test_admits_what_fits_and_counts_it_in_flight():
    clock = Clock(1000.0)
    a = StageAdmission("encode", service_s=2.0, clock=clock)
    with a.admit(deadline=1002.0):  # exactly 2 s left for 2 s of work
        assert a.in_flight == 1
        with a.admit(deadline=1004.5):  # one ahead: 4 s
            assert a.in_flight == 2
    assert a.in_flight == 0 and a.refused == 0
    a.check(None)  # no deadline: always admitted


def test_refuses_at_once_with_retry_after_from_the_queue():
    clock = Clock(1000.0)
    a = StageAdmission("encode", service_s=3.0, clock=clock)
    a.in_flight = 3  # 4 batches: 12 s
    with pytest.raises(DeadlineExceeded) as info:
        with a.admit(deadline=1000.05):
            pytest.fail("admitted")
    err = info.value
    assert (err.status, err.code, err.field) == (503, "deadline", None)
    assert err.retry_after_s == 12  # ceil(12 - 0.05)
    assert a.in_flight == 3 and a.refused == 1  # not counted in flight
    assert "encode" in err.message and "3 in flight" in err.message and "3.000 s per request" in err.message
    with pytest.raises(DeadlineExceeded) as info:
        a.check(deadline=1010.0, before_s=0.5)  # 12.5 s needed, 10 left
    assert info.value.retry_after_s == 3  # ceil(2.5)


def test_a_deadline_already_past_is_refused_even_with_no_service_time_known():
    clock = Clock(1000.0)
    a = StageAdmission("decode", clock=clock)
    with pytest.raises(DeadlineExceeded) as info:
        a.check(deadline=999.0)
    assert info.value.retry_after_s == 1  # never below 1
    assert "passed" in info.value.message
    a.check(deadline=1000.001)  # unknown service time: admitted while time is left


def test_report_takes_the_stage_s_own_numbers():
    a = StageAdmission("encode", clock=Clock())
    a.report(1.5, parallel=2)
    a.in_flight = 2
    assert (a.service_s, a.parallel, a.wait_s()) == (1.5, 2, 2.25)  # 3 requests, 2 replicas at once
    a.report(None)
    assert a.service_s == 1.5
    assert a.state() == {"in_flight": 2, "service_s": 1.5, "parallel": 2, "refused": 0}


@pytest.mark.parametrize(
    "kwargs", [{"parallel": 0}, {"parallel": 1.5}, {"alpha": 0.0}, {"alpha": 1.5}, {"service_s": -1.0}]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        StageAdmission("encode", **kwargs)


def test_the_refusal_crosses_ray_unchanged():
    err = pickle.loads(pickle.dumps(DeadlineExceeded("encode would take 12 s", 7)))
    assert (err.message, err.retry_after_s, err.code, err.status) == ("encode would take 12 s", 7, "deadline", 503)


# --- the encoder's caller (a MaskDecoder replica's OwnedImages): refusal before sending, cancellation --------


class SlowEncoder:
    """The encoder handle as OwnedImages uses it (``encode_image.remote(pixels, deadline)``): each encode
    waits for ``release`` and reports a batch time of ``service_s``; ``computed`` counts encodes that ran
    to the end, ``cancelled`` those cancelled while they waited."""

    def __init__(self, service_s: float = 2.0) -> None:
        self.encode_image = self
        self.service_s = service_s
        self.release = asyncio.Event()
        self.sent = self.computed = self.cancelled = 0

    def remote(self, pixels, deadline=None):
        from deployments.contracts import EncodedImage

        self.sent += 1

        async def run():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            self.computed += 1
            return EncodedImage(f"features of {pixels.shape}", self.service_s)

        return run()


PIXELS = np.zeros((8, 6, 3), np.uint8)


def _owned(encoder, clock):
    from deployments.runtime.owned_images import OwnedImages

    images = OwnedImages(encoder, max_entries=4, max_bytes=10**9, feature_nbytes=10, put=lambda p: p)
    images.encoder_admission.clock = clock
    return images


def test_the_owner_refuses_an_encode_that_cannot_make_the_deadline_before_sending_it():
    clock = Clock(1000.0)
    encoder = SlowEncoder(service_s=2.0)
    images = _owned(encoder, clock)

    async def go():
        first, _ = images.entry("a", PIXELS, deadline=1000.01)  # no batch time known yet: sent
        encoder.release.set()
        await images.features("a", first, {})
        assert images.encoder_admission.service_s == 2.0  # as the encoder reported it
        encoder.release.clear()
        second, _ = images.entry("b", PIXELS, deadline=1010.0)  # 2 s of 10: sent
        assert images.encoder_admission.in_flight == 1
        with pytest.raises(DeadlineExceeded) as info:
            images.entry("c", PIXELS, deadline=1003.5)  # one ahead: 4 s of 3.5
        encoder.release.set()
        await images.features("b", second, {})
        sent, held = encoder.sent, "c" in images.entries
        third, _ = images.entry("c", PIXELS)  # no deadline: the stage's bounded queue decides
        await images.features("c", third, {})
        return info.value, sent, held

    err, sent, held = asyncio.run(go())
    assert err.retry_after_s == 1  # ceil(4 - 3.5)
    assert (sent, held) == (2, False) and images.encoder_admission.in_flight == 0
    assert images.encodes == 3


def test_an_encode_no_request_waits_for_is_cancelled_not_computed():
    encoder = SlowEncoder()
    images = _owned(encoder, Clock())

    async def go():
        entry, _ = images.entry("img", PIXELS)
        one = asyncio.ensure_future(images.features("img", entry, {}))
        two = asyncio.ensure_future(images.features("img", entry, {}))
        await asyncio.sleep(0.01)
        one.cancel()  # one client gone: the other still waits, the encode goes on
        await asyncio.sleep(0.01)
        assert encoder.cancelled == 0 and not entry.features.done() and "img" in images.entries
        two.cancel()  # the last one gone: the encode is cancelled and the entry dropped
        await asyncio.sleep(0.01)
        encoder.release.set()
        await asyncio.sleep(0.01)
        return one.cancelled(), two.cancelled()

    assert asyncio.run(go()) == (True, True)
    assert (encoder.sent, encoder.cancelled, encoder.computed) == (1, 1, 0)
    assert "img" not in images.entries and images.encoder_admission.in_flight == 0


def test_a_request_that_stays_gets_the_shared_encode_when_another_leaves():
    encoder = SlowEncoder()
    images = _owned(encoder, Clock())

    async def go():
        entry, _ = images.entry("img", PIXELS)
        gone = asyncio.ensure_future(images.features("img", entry, {}))
        stays = asyncio.ensure_future(images.features("img", entry, {}))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        encoder.release.set()
        return await stays

    assert asyncio.run(go()) == "features of (8, 6, 3)"
    assert (encoder.cancelled, encoder.computed) == (0, 1) and "img" in images.entries


class FullEncoder(SlowEncoder):
    """A :class:`SlowEncoder` whose queue at the caller holds ``room`` encodes: one more is refused as Ray
    Serve's handle refuses it (``BackPressureError``, ``max_queued_requests``)."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room, self.running = room, 0

    def remote(self, pixels, deadline=None):
        from ray.serve.exceptions import BackPressureError

        if self.running >= self.room:

            async def refused():
                raise BackPressureError(num_queued_requests=self.room, max_queued_requests=self.room, retry_after_s=3.0)

            return refused()
        self.running += 1
        inner = super().remote(pixels, deadline)

        async def run():
            try:
                return await inner
            finally:
                self.running -= 1

        return run()


def test_once_the_encoder_refused_a_full_queue_misses_are_refused_until_an_encode_ends():
    from ray.serve.exceptions import BackPressureError

    from deployments.errors import ImageNotCached

    encoder = FullEncoder(room=1)
    images = _owned(encoder, Clock())

    async def go():
        held, _ = images.entry("a", PIXELS)  # takes the encoder's one place
        waiting = asyncio.ensure_future(images.features("a", held, {}))
        second, _ = images.entry("b", PIXELS)
        with pytest.raises(BackPressureError):  # the encoder's queue is full: refused by the handle
            await images.features("b", second, {})
        sent = encoder.sent
        with pytest.raises(ImageNotCached) as miss:  # a miss now says an encode would be refused
            images.entry("c", None)
        with pytest.raises(BackPressureError) as direct:  # and an encode is refused without being sent
            images.entry("c", PIXELS)
        refused_without_sending = encoder.sent == sent and "c" not in images.entries
        encoder.release.set()
        await waiting  # an encode ended: there is room again
        with pytest.raises(ImageNotCached) as later:
            images.entry("c", None)
        third, _ = images.entry("c", PIXELS)
        await images.features("c", third, {})
        return miss.value, direct.value, refused_without_sending, later.value

    miss, direct, refused_without_sending, later = asyncio.run(go())
    assert isinstance(miss.refusal, BackPressureError) and miss.refusal.retry_after_s == 3.0
    assert direct.retry_after_s == 3.0 and refused_without_sending
    assert later.refusal is None and "c" in images.entries
    assert images.encoder_admission.refused == 1 and images.encoder_admission.in_flight == 0


def test_a_miss_carries_the_deadline_refusal_an_encode_would_get_and_crosses_ray():
    from deployments.errors import ImageNotCached

    clock = Clock(1000.0)
    encoder = SlowEncoder(service_s=2.0)
    images = _owned(encoder, clock)
    images.encoder_admission.report(2.0)

    async def go():
        images.entry("a", PIXELS)  # one in flight: a new encode ends 4 s from now
        with pytest.raises(ImageNotCached) as tight:
            images.entry("b", None, deadline=1003.0)
        with pytest.raises(ImageNotCached) as loose:
            images.entry("b", None, deadline=1010.0)
        encoder.release.set()
        return tight.value, loose.value

    tight, loose = asyncio.run(go())
    crossed = pickle.loads(pickle.dumps(tight))
    assert isinstance(crossed.refusal, DeadlineExceeded) and crossed.refusal.retry_after_s == 1  # ceil(4 - 3)
    assert (crossed.image_id, crossed.status) == ("b", 404) and loose.refusal is None
    assert images.encoder_admission.refused == 0  # a miss is not a refusal unless the caller acts on it


def test_served_times_a_block_shared_by_the_requests_in_flight_and_skips_a_failed_one():
    clock = Clock(1000.0)
    a = StageAdmission("fade", clock=clock)
    t0 = time.perf_counter()
    with a.served(deadline=None):
        a.in_flight += 1  # another request joined while this one ran: the time is shared by two
        time.sleep(0.04)
    elapsed = time.perf_counter() - t0
    a.in_flight -= 1
    assert a.service_s is not None and 0.015 <= a.service_s <= elapsed / 2
    measured = a.service_s
    with pytest.raises(RuntimeError), a.served(deadline=None):
        raise RuntimeError("failed")
    assert a.service_s == measured and a.in_flight == 0  # a failure measures nothing
    with pytest.raises(DeadlineExceeded), a.served(deadline=999.0):
        pytest.fail("a late request must not run")
    assert (a.refused, a.in_flight) == (1, 0)


def test_automatic_masks_run_one_at_a_time_per_decoder_replica(monkeypatch):
    """Each automatic-mask generation holds its grid pass's decoder activations (1.7 GB for 64 clicks) and
    takes every core, so a MaskDecoder replica runs them one after another: their time is measured per
    generation, and one whose deadline passed while it waited for its turn is refused without being
    computed."""
    import threading

    import deployments.decoder as decoder_module
    from models.amg import AmgSettings
    from tests.conftest import MODEL_ID

    running, seen, calls, lock = [0], [0], [], threading.Lock()

    def fake_generate(decoder, features, settings):  # the generator's cost, not its masks: a stand-in clock
        with lock:
            running[0] += 1
            seen[0] = max(seen[0], running[0])
            calls.append(features)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return []

    monkeypatch.setattr(decoder_module, "generate_masks", fake_generate)
    replica = decoder_module.MaskDecoder.func_or_class(MODEL_ID, {"kind": "random", "seed": 0}, device="cpu")

    async def go():
        together = await asyncio.gather(*(replica.generate(f"image {i}", AmgSettings()) for i in range(3)))
        replica._admission["amg"].service_s = None  # no estimate: the next one is admitted on arrival
        first = asyncio.ensure_future(replica.generate("long", AmgSettings()))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded) as late:  # admitted, its deadline passed while it waited
            await replica.generate("late", AmgSettings(), deadline=time.time() + 0.02)
        await first
        assert "deadline passed" in late.value.message, late.value.message
        return together

    together = asyncio.run(go())
    amg = replica._admission["amg"]
    assert len(together) == 3 and seen[0] == 1  # never two at once
    assert "late" not in calls and calls[-1] == "long"
    assert 0.04 <= amg.service_s < 0.5 and amg.in_flight == 0 and amg.refused == 1


def test_a_request_whose_turn_has_come_counts_no_queue_behind_it():
    clock = Clock(1000.0)
    a = StageAdmission("amg", service_s=7.0, clock=clock)
    a.in_flight = 10  # this one, now running, and nine waiting behind it
    with pytest.raises(DeadlineExceeded):
        a.check(1020.0)  # on arrival: 11 service times ahead, 77 s of 20
    a.check(1020.0, ahead=0)  # its turn: 7 s of 20, in time
    with pytest.raises(DeadlineExceeded):
        a.check(1005.0, ahead=0)  # 7 s of 5: late even alone
    assert a.refused == 2
