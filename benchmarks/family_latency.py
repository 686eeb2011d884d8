"""Per model family on CPU: /v1/segment latency through a running service against the bare model in this
process, measured in the same run, and memory per cached image.

Service: one app serving every model measured (``args.models``, as ``configs/serve.sam3.yaml`` serves SAM 3
and MobileSAM), built here from that config: each model gets its own ImageEncoder and MaskDecoder
deployment (``serve_app.app.stage_names``), one replica each, ``torch_threads`` on both; ``serve run`` on
127.0.0.1 with ``SAMGRAPH_WEIGHTS=random`` (seed 0: the real compute, meaningless masks). One app rather than
one per model: it is the shipped shape of a multi-family service, it starts one local cluster instead of
several, and the models' replicas sit idle while another model is measured (requests go one at a time).

Baseline ("bare", :class:`benchmarks.baselines.BareSegmenter`): the same model built through its family
(``family_of(model_id).build/encoder/decoder``) with the same seeded weights and torch threads, in this
process, no serving. Bare and service calls alternate (bare, service, bare, ...), so load from other
processes falls on both alike.

Workloads, one request at a time:
  cold    - a new image (truck.jpg, 1800x1200, as PNG with one pixel changed: a new image_id, the same
            compute) and one box; bare: decode the PNG bytes, encode, decode the box, RLE;
  click   - one foreground click (three masks) on a cached image, by image_id; bare: decoder + RLE;
  concept - (models with concept prompts) a text prompt on a cached image, ``score_thresh`` 0 and
            ``max_instances`` 5 so that random weights answer exactly 5 instances; bare: detector + RLE.

Efficiency = bare p50 / service p50 per workload (1.0: serving costs nothing; ``efficiency_min``: the same of
the fastest calls, the least disturbed by other load); for clicks and concepts also
service - bare in ms (the ingress, HTTP and Ray hops, which dominate small models). Memory per cached image:
``feature_bytes`` (GET /v1/models), the decoder cache's bytes per entry (GET /v1/stats ``cache_by_model``:
features plus pixels), and the decoder replica's resident-set growth per image over the cold requests.
Checks that bare and service answer alike (mask areas), so the baseline is the same model.

Writes benchmarks/results/families.json (``--out``), with the CPU model, its flags and the load average
sampled through the run.

    python benchmarks/family_latency.py [--models ...] [--with-sam3-full] [--cold 5] [--clicks 30] [--concepts 10]
    python benchmarks/family_latency.py --models sam3 --bare-only --merge   # the full SAM 3, bare side once
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.baselines import BareSegmenter, load_rgb
from benchmarks.common import (
    REPO,
    RESULTS,
    SHARED_DATA,
    b64,
    png_variants,
    serve_app,
    stage_medians,
    summarize,
    timed_post,
    write_result,
)

DEFAULT_MODELS = ("sam2.1_hiera_tiny", "mobile_sam", "sam3-tiny")
FULL_SAM3 = "sam3"
TRUCK_BOX = [75, 275, 1725, 850]
CLICK_XY = [500, 375]
CONCEPT_TEXT = "truck"
CONCEPT_SCORE_THRESH, CONCEPT_MAX_INSTANCES = 0.0, 5
TEMPLATE = REPO / "configs" / "serve.sam3.yaml"


# ---------------------------------------------------------------------------------------------- the service
def serve_config(models: list[str], threads: int, cold: int) -> dict:
    """A Serve config serving ``models`` (the first is the default): configs/serve.sam3.yaml with its
    ``models`` replaced, one encoder and one decoder deployment per model (sized as that file sizes SAM 3's,
    with CPU shares that fit 2 cores and a decoder queue of 128 so that ``/v1/stats`` answers), ``threads``
    torch threads on each, and a cache that holds every image the run sends."""
    from models.registry import family_of, get_model_spec
    from serve_app.app import stage_names

    config = yaml.safe_load(TEMPLATE.read_text())
    app = config["applications"][0]
    by_name = {d["name"]: d for d in app["deployments"]}
    stage = {"device": "cpu", "torch_threads": threads, "precision": "fp32", "compile": False}
    served = []
    deployments = [d for d in app["deployments"] if not d["name"].startswith(("ImageEncoder", "MaskDecoder"))]
    for i, m in enumerate(models):
        nbytes = family_of(m).feature_nbytes(get_model_spec(m))
        entries = cold + 8
        cache = {"max_entries": entries, "max_bytes": int(entries * (nbytes + 1800 * 1200 * 3) * 1.2)}
        served.append({"model_id": m, "encoder": stage, "decoder": stage, "cache": cache})
        enc_name, dec_name = stage_names(i, m)
        enc, dec = copy.deepcopy(by_name["ImageEncoder"]), copy.deepcopy(by_name["MaskDecoder"])
        enc.update(name=enc_name, ray_actor_options={"num_cpus": 0.2})
        # /v1/stats asks each decoder deployment under 64 session ids at once (STATS_KEYS): the shipped
        # MaskDecoder's 16 ongoing + 32 queued turn that into a 503, so queue more here
        dec.update(name=dec_name, ray_actor_options={"num_cpus": 0.1}, max_queued_requests=128)
        deployments += [enc, dec]
    app["args"]["models"] = served
    app["deployments"] = deployments
    config["http_options"]["request_timeout_s"] = 1800
    return config


def cache_stats(client, model_id: str) -> dict:
    """``cache_by_model[model_id]`` of GET /v1/stats: entries, bytes, hits, misses, evictions, encodes.

    Raises:
        RuntimeError: /v1/stats did not answer 200.
    """
    r = client.get("/v1/stats")
    if r.status_code != 200:
        raise RuntimeError(f"/v1/stats answered {r.status_code}: {r.text[:500]}")
    return r.json()["cache_by_model"][model_id]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (all their threads)."""
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def decoder_rss(serve_pid: int, deployment: str) -> int:
    """Summed resident set of ``deployment``'s replicas (bytes)."""
    from benchmarks.procmem import replica_pids, rss_bytes

    return sum(rss_bytes(p) for p in replica_pids(serve_pid, deployment))


class LoadSampler:
    """The machine's 1-minute load average, sampled every ``period_s`` in a thread while the run goes."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def _run(self, period_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(period_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """:meth:`stats` of all the samples."""
        return self.stats(self.samples)

    @staticmethod
    def stats(samples: list[float]) -> dict:
        """``{"n", "min", "median", "max"}`` of load samples."""
        a = np.asarray(samples or [float("nan")])
        return {"n": len(samples), "min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def other_load() -> dict:
    """Processes of other users of the machine now (pytest runs, Ray raylets), by their command line."""
    import psutil

    from benchmarks.procmem import title

    mine = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    titles = [title(p) for p in psutil.process_iter() if p.pid not in mine]
    return {
        "pytest": sum("pytest" in t for t in titles),
        "raylet": sum(t.split(" ", 1)[0].endswith("/raylet") for t in titles),
    }


# ------------------------------------------------------------------------------------------------ one model
#: The server-side stages of a /v1/segment answer (``timing_ms``) that are the model's work (as the bare
#: baseline does it): image decode, encode, decoder or detector, mask encoding.
MODEL_STAGES = ("decode_image", "encode", "decode_masks", "concepts", "postprocess")


def service_summary(calls: list[tuple[float, dict]]) -> dict:
    """Client-side latency of service calls, the model's share of it (:data:`MODEL_STAGES` of each answer's
    ``timing_ms``), and the rest: the serving overhead (HTTP, ingress, Ray hops, queues), per request."""
    model_s = [sum(r["timing_ms"].get(k, 0.0) for k in MODEL_STAGES) / 1e3 for _, r in calls]
    return {
        **summarize([s for s, _ in calls]),
        "model_stages": summarize(model_s),
        "serving_overhead": summarize([s - m for (s, _), m in zip(calls, model_s)]),
        "stage_median_ms": stage_medians([r["timing_ms"] for _, r in calls]),
    }


def areas(masks: list[dict]) -> list[int]:
    """Sorted mask areas (pixels) of a list of encoded masks: equal for equal answers in any order."""
    return sorted(int(m["area_px"]) for m in masks)


def measure_model(client, serve_pid: int, index: int, model_id: str, rgb: np.ndarray, args, full: bool) -> dict:
    """Bare and service, alternating, for one model: cold, click, concept (if it takes them), memory."""
    from models.prompts import PromptSpec
    from models.registry import family_of
    from serve_app.app import stage_names

    n_cold, n_clicks, n_concepts = (args.full_cold, args.full_clicks, args.full_concepts) if full else (args.cold, args.clicks, args.concepts)
    warm = not full  # SAM 3 at 1008 px: an encode takes minutes; first-call costs are noise beside it
    t_build = time.perf_counter()
    bare = BareSegmenter(model_id, args.threads, args.threads)
    build_s = time.perf_counter() - t_build
    box = PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32))
    click = PromptSpec(point_coords=np.array([CLICK_XY], np.float32), point_labels=np.ones(1, np.int32))
    from benchmarks.procmem import replica_pids

    enc_name, dec_name = stage_names(index, model_id)
    service_pids = replica_pids(serve_pid, enc_name) + replica_pids(serve_pid, dec_name)
    # distinct bytes per model too: the image_id is the bytes' hash, and caches are per model anyway
    pngs = png_variants(rgb, n_cold + 1, start=40 * index)

    def cold_body(png: bytes) -> dict:
        return {"model_id": model_id, "image": {"base64": b64(png)}, "prompts": [{"box_xyxy": TRUCK_BOX}]}

    print(f"[{model_id}] bare build {build_s:.1f} s; cold x{n_cold}{' (+1 warm-up each)' if warm else ''}", flush=True)
    if warm:
        bare.cold(pngs[0], box, False)
        timed_post(client, cold_body(pngs[0]))
    stats0 = cache_stats(client, model_id)
    rss0 = decoder_rss(serve_pid, dec_name)
    bare_cold, svc_cold, cores = [], [], {"bare": [], "service": []}
    for png in pngs[1:]:
        c0 = time.process_time()
        bare_cold.append(bare.cold(png, box, False))
        cores["bare"].append((time.process_time() - c0) / bare_cold[-1]["total_s"])
        c0 = cpu_seconds(service_pids)
        svc_cold.append(timed_post(client, cold_body(png)))
        cores["service"].append((cpu_seconds(service_pids) - c0) / svc_cold[-1][0])
        print(f"[{model_id}] cold bare {bare_cold[-1]['total_s']:.2f} s, service {svc_cold[-1][0]:.2f} s", flush=True)
    rss1 = decoder_rss(serve_pid, dec_name)
    stats1 = cache_stats(client, model_id)
    new_entries = stats1["entries"] - stats0["entries"]

    features, image_id = bare_cold[-1]["features"], svc_cold[-1][1]["image_id"]
    click_body = {"model_id": model_id, "image_id": image_id, "prompts": [{"points": [[*CLICK_XY, 1]]}]}
    for _ in range(3 if warm else 1):
        bare.decode(features, click, True)
        timed_post(client, click_body)
    bare_click, svc_click = [], []
    for _ in range(n_clicks):
        bare_click.append(bare.decode(features, click, True))
        svc_click.append(timed_post(client, click_body))
    agree = {
        "cold": areas(bare_cold[-1]["masks"]) == areas(svc_cold[-1][1]["results"][0]["masks"]),
        "click": areas(bare_click[-1][2]) == areas(svc_click[-1][1]["results"][0]["masks"]),
    }
    out = {
        "family": family_of(model_id).name,
        "bare_build_s": build_s,
        "bare": {
            "cold": summarize([c["total_s"] for c in bare_cold]),
            "image_decode": summarize([c["image_decode_s"] for c in bare_cold]),
            "encode": summarize([c["encode_s"] for c in bare_cold]),
            "click_decoder": summarize([c[0] for c in bare_click]),
            "click": summarize([c[1] for c in bare_click]),
        },
        "service": {"cold": service_summary(svc_cold), "click": service_summary(svc_click)},
    }
    if bare.concepts:
        concept_body = {
            "model_id": model_id,
            "image_id": image_id,
            "score_thresh": CONCEPT_SCORE_THRESH,
            "max_instances": CONCEPT_MAX_INSTANCES,
            "prompts": [{"text": CONCEPT_TEXT}],
        }
        concept = (features, CONCEPT_TEXT, CONCEPT_SCORE_THRESH, CONCEPT_MAX_INSTANCES)
        for _ in range(2 if warm else 1):
            bare.concept(*concept)
            timed_post(client, concept_body)
        bare_concept, svc_concept = [], []
        for _ in range(n_concepts):
            bare_concept.append(bare.concept(*concept))
            svc_concept.append(timed_post(client, concept_body))
        out["bare"]["concept_decoder"] = summarize([c[0] for c in bare_concept])
        out["bare"]["concept"] = summarize([c[1] for c in bare_concept])
        out["service"]["concept"] = service_summary(svc_concept)
        svc_inst = svc_concept[-1][1]["results"][0]["instances"]
        agree["concept"] = areas(bare_concept[-1][2]) == areas(svc_inst)
        out["concept_instances"] = len(svc_inst)
    b, s = out["bare"], out["service"]
    out["efficiency"] = {w: b[w]["p50_ms"] / s[w]["p50_ms"] for w in ("cold", "click", "concept") if w in s}
    out["efficiency_min"] = {w: b[w]["min_ms"] / s[w]["min_ms"] for w in out["efficiency"]}  # the least-disturbed calls
    # the service's own model stages over its client-side latency, per request: immune to the bare process
    # getting a different share of a contended machine than the replicas do
    out["in_service_efficiency"] = {w: s[w]["model_stages"]["p50_ms"] / s[w]["p50_ms"] for w in out["efficiency"]}
    out["overhead_p50_ms"] = {w: s[w]["p50_ms"] - b[w]["p50_ms"] for w in ("cold", "click", "concept") if w in s}
    out["answers_agree"] = agree
    # CPU seconds per wall second of a cold request (this process; the model's two replicas): below the
    # torch threads, the side was waiting for a CPU (other load) or for I/O
    out["cold_cores_used_median"] = {k: float(np.median(v)) for k, v in cores.items()}
    out["memory"] = {
        "new_cache_entries": new_entries,
        "cache_bytes_per_entry": (stats1["bytes"] - stats0["bytes"]) / new_entries if new_entries else None,
        "decoder_rss_growth_per_image": (rss1 - rss0) / new_entries if new_entries else None,
        "decoder_rss_bytes": rss1,
    }
    del bare, features, bare_cold
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------------- main
def measure_bare_only(model_id: str, rgb: np.ndarray, args) -> dict:
    """The bare side alone, once (no service, no warm-up): for a model too big to serve beside its baseline
    on this machine (the full SAM 3: ~4.7 GB encoder replica, ~2.5 GB decoder replica, ~4.6 GB baseline).
    One cold request's work, then ``full_clicks`` clicks and ``full_concepts`` concept prompts on it."""
    from models.prompts import PromptSpec

    t = time.perf_counter()
    bare = BareSegmenter(model_id, args.threads, args.threads)
    build_s = time.perf_counter() - t
    png = png_variants(rgb, 1)[0]
    c0 = time.process_time()
    cold = bare.cold(png, PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32)), False)
    cores = (time.process_time() - c0) / cold["total_s"]
    print(f"[{model_id}] bare only: build {build_s:.1f} s, cold {cold['total_s']:.1f} s ({cores:.2f} cores)", flush=True)
    click = PromptSpec(point_coords=np.array([CLICK_XY], np.float32), point_labels=np.ones(1, np.int32))
    out = {
        "family": bare.family_name,
        "bare_only": True,
        "bare_build_s": build_s,
        "bare": {
            "cold": summarize([cold["total_s"]]),
            "image_decode": summarize([cold["image_decode_s"]]),
            "encode": summarize([cold["encode_s"]]),
            "click": summarize([bare.decode(cold["features"], click, True)[1] for _ in range(args.full_clicks)]),
        },
        "service": None,
        "cold_cores_used_median": {"bare": cores},
        "memory": {"feature_bytes": cold["features"].nbytes},
    }
    if bare.concepts:
        concept = (cold["features"], CONCEPT_TEXT, CONCEPT_SCORE_THRESH, CONCEPT_MAX_INSTANCES)
        out["bare"]["concept"] = summarize([bare.concept(*concept)[1] for _ in range(args.full_concepts)])
    return out


def merged(name: str, results: dict, merge: bool) -> dict:
    """``results``, over the per-model results of the existing ``benchmarks/results/{name}.json`` with
    ``merge`` (a model measured in another run keeps its own ``measured_at`` and load)."""
    import json

    path = RESULTS / f"{name}.json"
    if not merge or not path.exists():
        return results
    return {**json.loads(path.read_text()).get("results", {}), **results}


def main() -> None:
    import httpx

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--with-sam3-full", action="store_true", help=f"add {FULL_SAM3!r} (minutes per encode on 2 cores)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the encoder and decoder, bare and served")
    p.add_argument("--cold", type=int, default=5)
    p.add_argument("--clicks", type=int, default=30)
    p.add_argument("--concepts", type=int, default=10)
    p.add_argument("--full-cold", type=int, default=2, help="cold requests on the full SAM 3 (no warm-up)")
    p.add_argument("--full-clicks", type=int, default=5)
    p.add_argument("--full-concepts", type=int, default=3)
    p.add_argument("--out", default="families", help="results file name under benchmarks/results/")
    p.add_argument("--merge", action="store_true", help="keep the other models' results already in the file")
    p.add_argument("--bare-only", action="store_true", help="measure the models' bare side once, start no service")
    p.add_argument("--serve-log", type=Path, default=None, help="keep the service's log here")
    args = p.parse_args()
    models = list(args.models) + ([FULL_SAM3] if args.with_sam3_full and FULL_SAM3 not in args.models else [])

    rgb = load_rgb(SHARED_DATA / "images" / "truck.jpg")
    config = serve_config(models, args.threads, max(args.cold, args.full_cold))
    load_before = other_load()
    results, t0 = {}, time.perf_counter()
    if args.bare_only:
        with LoadSampler() as load:
            for m in models:
                n_load = len(load.samples)
                results[m] = measure_bare_only(m, rgb, args)
                results[m]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                results[m]["loadavg_1min_while_measured"] = LoadSampler.stats(load.samples[n_load:])
        path = write_partial(args.out, models, args, results, load, {**load_before, "after": other_load()}, None)
        print(f"wrote {path}")
        return
    with tempfile.TemporaryDirectory() as data_dir, LoadSampler() as load:
        env = {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_SEED": "0", "SAMGRAPH_DATA_DIR": data_dir}
        with serve_app(config, env, ready_timeout_s=900, keep_log=args.serve_log) as served, httpx.Client(base_url=served.url, timeout=1800) as c:
            start_s = time.perf_counter() - t0
            listed = {m["model_id"]: m for m in c.get("/v1/models").json()["models"]}
            for i, m in enumerate(models):
                n_load = len(load.samples)
                results[m] = measure_model(c, served.pid, i, m, rgb, args, full=m == FULL_SAM3)
                results[m]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                results[m]["loadavg_1min_while_measured"] = LoadSampler.stats(load.samples[n_load:])
                results[m]["memory"]["feature_bytes"] = listed[m]["feature_bytes"]
                results[m]["params_m"], results[m]["image_size"] = listed[m]["params_m"], listed[m]["image_size"]
                write_partial(args.out, models, args, results, load, load_before, start_s)

    path = write_partial(args.out, models, args, results, load, {**load_before, "after": other_load()}, start_s)
    print_table(results)
    print(f"wrote {path}")


def write_partial(name: str, models, args, results, load, load_before, start_s) -> Path:
    """Write what is measured so far (a long run keeps its finished models if it is stopped); with
    ``--merge``, over the other models already in the file. Load and counts at the top are this run's;
    each model keeps its own ``measured_at`` and ``loadavg_1min_while_measured``."""
    results = merged(name, results, args.merge)
    return write_result(
        name,
        {
            "models": list(results),
            "models_this_run": models,
            "threads": {"encoder": args.threads, "decoder": args.threads},
            "counts": {k: getattr(args, k) for k in ("cold", "clicks", "concepts", "full_cold", "full_clicks", "full_concepts")},
            "image": "truck.jpg 1800x1200, PNG, box [75, 275, 1725, 850], click [500, 375]",
            "concept": {"text": CONCEPT_TEXT, "score_thresh": CONCEPT_SCORE_THRESH, "max_instances": CONCEPT_MAX_INSTANCES},
            "service_start_s": start_s,
            "machine_load": {"loadavg_1min_during_run": load.summary(), "other_processes_at_start": load_before},
            "results": results,
        },
    )


def print_table(results: dict) -> None:
    """p50s, efficiencies and memory per model on stdout."""
    print(f"{'model':<20} {'workload':<8} {'bare p50':>10} {'svc p50':>10} {'svc p95':>10} {'eff':>6} {'svc-bare':>10} {'in-svc':>7}")
    for m, r in results.items():
        for w in r["efficiency"]:
            b, s = r["bare"][w], r["service"][w]
            print(f"{m:<20} {w:<8} {b['p50_ms']:>10.1f} {s['p50_ms']:>10.1f} {s['p95_ms']:>10.1f} {r['efficiency'][w]:>6.2f} {r['overhead_p50_ms'][w]:>10.1f} {r['in_service_efficiency'][w]:>7.2f}")
        mem = r["memory"]
        print(f"{m:<20} memory: features {mem['feature_bytes'] / 1e6:.2f} MB, cache entry {(mem['cache_bytes_per_entry'] or 0) / 1e6:.2f} MB, "
              f"decoder RSS +{(mem['decoder_rss_growth_per_image'] or 0) / 1e6:.2f} MB/image; answers agree {r['answers_agree']}")


if __name__ == "__main__":
    main()
