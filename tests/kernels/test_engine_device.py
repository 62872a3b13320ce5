"""The index engine's device path (``patchseek.search.device``): every stage through the Triton kernels.

Runs in the kernel tests' process: on the CPU under ``TRITON_INTERPRET=1`` the device path keeps its
resident parts as CPU tensors and the interpreter runs the very launchers a GPU would. Each test builds a
tiny real collection through ``IndexEngine`` (write, publish, fit), searches it once through the default
CPU path with the torch references and once through the device path, counts the launches per stage, and
compares the hits. ``gpu``-marked tests do the same on CUDA with compiled kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from patchseek.errors import DeviceMemoryError, KernelUnavailableError
from patchseek.indexer.compress import CompressionConfig
from patchseek.kernels import count_launches
from patchseek.search.device import DevicePlan
from patchseek.search.engine import IndexEngine, UnitBatch
from patchseek.types import PatchBag

DIM = 16
N_DOCS = 24

# codec -> (compression, the stage-2 kernel the codec scores with)
CODECS: dict[str, tuple[dict[str, Any], str]] = {
    "binary": ({"quantizer": "binary", "binary_center": True}, "binary_maxsim"),
    "kmeans": ({"quantizer": "kmeans", "kmeans_k": 16}, "code_maxsim"),
    "kmeans-residual": ({"quantizer": "kmeans", "kmeans_k": 16, "residual_bits": 2}, "code_maxsim"),
    "pq": ({"quantizer": "pq", "pq_m": 4, "pq_opq": False}, "code_maxsim"),
    "bebr-sdc": ({"quantizer": "bebr", "bebr_rounds": 1, "bebr_scoring": "sdc"}, "sdc_maxsim"),
}


def _bags(rng: np.random.Generator, n_units: int) -> list[PatchBag]:
    out = []
    for _ in range(n_units):
        n = int(rng.integers(4, 14))
        v = torch.from_numpy(rng.standard_normal((n, DIM)).astype(np.float32))
        v = v / v.norm(dim=1, keepdim=True)
        out.append(PatchBag(v, torch.ones(n), torch.zeros(n, 2, dtype=torch.int64), (4, 4)))
    return out


def _build(root: Path, compression: dict[str, Any], **engine_kwargs: Any) -> IndexEngine:
    """A fitted collection of ``N_DOCS`` documents x 3 units in two segments (about 600 vectors)."""
    rng = np.random.default_rng(3)
    config = CompressionConfig.from_dict({"keep": "float16", **compression})
    engine = IndexEngine(root, DIM, config, auto_fit=False, **engine_kwargs)
    for half in (range(1, N_DOCS // 2 + 1), range(N_DOCS // 2 + 1, N_DOCS + 1)):
        batches = [UnitBatch.from_bags(d, "pdf", _bags(rng, 3), DIM) for d in half]
        engine.publish([engine.write(UnitBatch.concat(batches, DIM))])
    assert engine.fit(force=True)
    return engine


def _queries(n: int, seed: int = 9) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.functional.normalize(torch.randn(int(5 + 3 * i), DIM, generator=g), dim=1) for i in range(n)
    ]


def _hits(result: Any) -> list[tuple[int, int, float]]:
    return [(h.doc_id, h.ordinal, h.score) for h in result.hits]


def _same(device_hits: list[tuple[int, int, float]], cpu_hits: list[tuple[int, int, float]]) -> None:
    assert [(d, o) for d, o, _ in device_hits] == [(d, o) for d, o, _ in cpu_hits]
    np.testing.assert_allclose([s for *_, s in device_hits], [s for *_, s in cpu_hits], rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("triton_cpu")
class TestDevicePathOnTheInterpreter:
    @pytest.mark.parametrize("codec", list(CODECS))
    def test_each_codec_scores_stage_2_and_3_with_triton_and_matches_the_cpu_path(
        self, tmp_path: Path, codec: str
    ) -> None:
        compression, stage2_kernel = CODECS[codec]
        engine = _build(tmp_path / "device", compression, kernels="triton")
        reference = IndexEngine(tmp_path / "device", DIM, engine.config, kernels="torch")  # same files
        q = _queries(1)[0]
        cpu = reference.snapshot().search(q, top_k_hits=5, candidates=20)
        snap = engine.snapshot()
        with count_launches() as launches:
            dev = snap.search(q, top_k_hits=5, candidates=20)
        assert dev.stage1 == "exact" and len(dev.hits) == 5
        # stage 2: one launch per segment on its resident codes; stage 3: one rerank per segment hit
        assert launches[stage2_kernel] == 2
        assert 1 <= launches["maxsim"] <= 2
        _same(_hits(dev), _hits(cpu))
        stats = snap.stats()
        assert stats["device"] == "cpu" and stats["device_bytes"]["codes"] == stats["disk_bytes"]["codes"]
        assert "vectors" not in stats["device_bytes"]  # rerank rows are gathered per query, not resident

    @pytest.mark.parametrize("stage1", ["exact", "dense", "faiss"])
    def test_a_codec_less_collection_runs_stage_1_and_2_on_resident_rows(
        self, tmp_path: Path, stage1: str
    ) -> None:
        engine = _build(tmp_path, {}, kernels="triton")
        reference = IndexEngine(tmp_path, DIM, engine.config, kernels="torch")
        q = _queries(1)[0]
        cpu = reference.snapshot().search(q, top_k_hits=5, stage1=stage1, stage1_k=40, nprobe=4)
        snap = engine.snapshot()
        with count_launches() as launches:
            dev = snap.search(q, top_k_hits=5, stage1=stage1, stage1_k=40, nprobe=4)
        assert dev.stage1 == stage1
        if stage1 == "dense":  # the summary scan (one launch per segment), then the rerank
            assert launches["maxsim"] >= 3
            assert snap.stats()["device_bytes"]["dense"] == snap.stats()["disk_bytes"]["dense"]
        else:  # exact MaxSim on the resident rows is stage 2 and final
            assert launches["maxsim"] == 2
            assert snap.stats()["device_bytes"]["vectors"] == snap.stats()["disk_bytes"]["vectors"]
        _same(_hits(dev), _hits(cpu))

    @pytest.mark.parametrize(
        ("compression", "stage1"), [({}, "exact"), ({}, "dense"), ({"quantizer": "pq", "pq_m": 4}, "exact")]
    )
    def test_search_many_equals_one_by_one_and_batches_the_scans(
        self, tmp_path: Path, compression: dict[str, Any], stage1: str
    ) -> None:
        engine = _build(tmp_path, compression, kernels="triton")
        snap = engine.snapshot()
        queries = _queries(3)
        one_by_one = [_hits(snap.search(q, top_k_hits=4, stage1=stage1)) for q in queries]
        with count_launches() as launches:
            many = snap.search_many(queries, top_k_hits=4, stage1=stage1)
        for got, want in zip(many, one_by_one, strict=True):
            _same(_hits(got), want)
        if not compression:  # the whole-segment scans ran once per segment for all three queries
            per_query = 2 if stage1 == "dense" else 0  # + the reranks
            assert launches["maxsim"] == 2 + 3 * per_query

    def test_concurrent_searches_wait_for_the_running_one_then_run_as_one_batch(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import threading
        import time

        from patchseek.search.engine import Snapshot

        snap = _build(tmp_path, {}, kernels="triton").snapshot()
        queries = _queries(4)
        want = [_hits(snap.search(q, top_k_hits=4)) for q in queries]
        assert snap.batch_sizes == [1, 1, 1, 1]  # a lone search never waits for company
        original = Snapshot._many
        first = threading.Event()

        def first_waits_for_three(self: Snapshot, qs: Any, params: Any) -> Any:
            if not first.is_set():  # the first search runs only once the three others are queued
                first.set()
                deadline = time.monotonic() + 60
                while len(self._waiting) < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
            return original(self, qs, params)

        monkeypatch.setattr(Snapshot, "_many", first_waits_for_three)
        got: dict[int, Any] = {}

        def run(i: int) -> None:
            got[i] = _hits(snap.search(queries[i], top_k_hits=4))

        threads = [threading.Thread(target=run, args=(0,), daemon=True)]
        threads[0].start()
        first.wait(30)
        threads += [threading.Thread(target=run, args=(i,), daemon=True) for i in (1, 2, 3)]
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert snap.batch_sizes[4:] == [1, 3]
        for i in range(4):
            _same(got[i], want[i])

    def test_a_tiny_budget_keeps_parts_on_the_cpu_or_fails_clearly(self, tmp_path: Path) -> None:
        pq = {"quantizer": "pq", "pq_m": 4, "pq_opq": False}
        _build(tmp_path, pq)
        q = _queries(1)[0]
        want = _hits(
            IndexEngine(tmp_path, DIM, CompressionConfig.from_dict(pq), kernels="torch").snapshot().search(q)
        )
        small = IndexEngine(
            tmp_path, DIM, CompressionConfig.from_dict(pq), kernels="triton", device_memory_bytes=64
        )
        snap = small.snapshot()
        with count_launches() as launches:
            got = snap.search(q)
        _same(_hits(got), want)
        assert snap.stats()["device_bytes"] == {}  # nothing fit: the codes stayed memory-mapped
        assert launches["code_maxsim"] == 2  # scored from CPU codes (Triton runs on them here too)
        strict = IndexEngine(
            tmp_path,
            DIM,
            CompressionConfig.from_dict(pq),
            kernels="triton",
            device_memory_bytes=64,
            device_fallback="error",
        )
        with pytest.raises(DeviceMemoryError, match="PATCHSEEK_DEVICE_MEMORY_BYTES=64"):
            strict.snapshot().search(q)


class TestPlan:
    def test_the_default_plan_is_the_cpu_path(self) -> None:
        plan = DevicePlan.resolve("cpu", "auto")
        assert not plan.resident and plan.device.type == "cpu"

    def test_triton_on_the_cpu_needs_the_interpreter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from patchseek.kernels import _dispatch

        monkeypatch.setattr(_dispatch, "INTERPRET", False)
        with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
            DevicePlan.resolve("cpu", "triton")


@pytest.mark.gpu
class TestDevicePathOnCuda:
    @pytest.mark.parametrize("codec", ["none", *CODECS])
    def test_every_stage_runs_on_the_gpu_and_matches_the_cpu_path(
        self, tmp_path: Path, cuda: torch.device, codec: str
    ) -> None:
        compression, stage2_kernel = CODECS.get(codec, ({}, "maxsim"))
        engine = _build(tmp_path, compression, device="cuda")
        reference = IndexEngine(tmp_path, DIM, engine.config, device="cpu", kernels="torch")
        q = _queries(1)[0]
        cpu = reference.snapshot().search(q, top_k_hits=5, candidates=20)
        snap = engine.snapshot()
        with count_launches() as launches:
            dev = snap.search(q, top_k_hits=5, candidates=20)
        assert launches[stage2_kernel] >= 2
        assert snap.stats()["device"] == "cuda"
        assert all(v > 0 for v in snap.stats()["device_bytes"].values())
        _same(_hits(dev), _hits(cpu))


_CLI_WITH_COUNTS = """
import itertools, json, sys
from patchseek.cli import app
from patchseek.kernels import launch_counts
try:  # commands separated by '::' run in this one process
    for sep, group in itertools.groupby(sys.argv[1:], key=lambda a: a == "::"):
        if not sep:
            app(list(group), standalone_mode=False)
finally:
    print("LAUNCHES " + json.dumps(launch_counts()), file=sys.stderr)
"""


def _cli(data: Path, *args: str, **env: str) -> tuple[str, dict[str, int]]:
    import json
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PATCHSEEK_DATA_DIR": str(data), "TRITON_INTERPRET": "1", **env}
    full_env.pop("PATCHSEEK_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", _CLI_WITH_COUNTS, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    counts = [line for line in done.stderr.splitlines() if line.startswith("LAUNCHES ")]
    return done.stdout, json.loads(counts[-1].removeprefix("LAUNCHES "))


@pytest.mark.usefixtures("triton_cpu")
def test_the_cli_search_runs_the_device_path_with_patchseek_kernels_triton(
    tmp_path: Path, samples: Any
) -> None:
    """``PATCHSEEK_KERNELS=triton`` reaches the engine through the service: the same hits as the torch
    path, every score a Triton launch."""
    import json

    data = tmp_path / "data"
    _cli(data, "init", "::", "ingest", str(samples.pdf), "--collection", "demo")
    args = ("search", "glacier meltwater", "-c", "demo", "--json", "--top-k", "3")
    torch_out, torch_launches = _cli(data, *args, PATCHSEEK_KERNELS="torch")
    triton_out, triton_launches = _cli(data, *args, PATCHSEEK_KERNELS="triton")
    assert torch_launches == {} and triton_launches.get("maxsim", 0) >= 1
    want = [json.loads(line) for line in torch_out.splitlines()]
    got = [json.loads(line) for line in triton_out.splitlines()]
    assert [h["page"] for h in got] == [h["page"] for h in want] and want[0]["page"] == 3
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], rtol=1e-4)
